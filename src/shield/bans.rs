//! The ban table: single clients and ranges, bounded. When it fills up, the most crowded /24
//! (or IPv6 /48) is merged into one range ban, so a flood from many addresses can never grow
//! it without bound and never makes it forget a ban.

use super::cidr::{bits_len, ip_bits, mask};
use super::identity::ClientKey;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

/// Why a client was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BanReason {
    RateLimit,
    Connections,
    Malformed,
    SlowClient,
    Scan,
    Concurrency,
    Manual,
    Merged,
}

impl BanReason {
    pub const ALL: [BanReason; 8] = [
        BanReason::RateLimit,
        BanReason::Connections,
        BanReason::Malformed,
        BanReason::SlowClient,
        BanReason::Scan,
        BanReason::Concurrency,
        BanReason::Manual,
        BanReason::Merged,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::RateLimit => "rate_limit",
            BanReason::Connections => "connections",
            BanReason::Malformed => "malformed",
            BanReason::SlowClient => "slow_client",
            BanReason::Scan => "scan",
            BanReason::Concurrency => "concurrency",
            BanReason::Manual => "manual",
            BanReason::Merged => "merged",
        }
    }
}

/// One ban.
#[derive(Debug, Clone, Serialize)]
pub struct Ban {
    /// The banned address or range, e.g. "203.0.113.7/32" or "203.0.113.0/24".
    pub target: IpNet,
    pub reason: BanReason,
    #[serde(skip)]
    pub until_ms: u64,
    #[serde(serialize_with = "ser_time")]
    pub since: SystemTime,
    #[serde(serialize_with = "ser_time")]
    pub until: SystemTime,
    /// How many times this target was banned (durations double).
    pub count: u32,
    pub manual: bool,
    /// Free text: why, with evidence.
    pub note: String,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
}

#[derive(Debug, Default)]
struct Table {
    /// Keyed by (prefix length in 128-bit space, masked bits). Single clients use 128 (v4: /32
    /// maps to 128).
    entries: HashMap<(u8, u128), Ban>,
    lens: Vec<u8>,
    /// Ban counts of targets whose ban ended, for doubling on repeat (bounded with the table).
    history: HashMap<(u8, u128), u32>,
}

fn key_of(net: &IpNet) -> (u8, u128) {
    let len = bits_len(net);
    (len, mask(ip_bits(net.network()), len))
}

/// The net of a client key (its address as /32, or its IPv6 group).
pub fn client_net(key: ClientKey, v6_prefix: u8) -> IpNet {
    let ip = key.ip();
    let len = if key.is_v4() { 32 } else { v6_prefix };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// The ban table.
#[derive(Debug, Default)]
pub struct Bans {
    table: RwLock<Table>,
    active: AtomicUsize,
}

impl Bans {
    /// Active bans.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The ban covering this address, if any is in force.
    pub fn find(&self, ip: std::net::IpAddr, now_ms: u64) -> Option<Ban> {
        if self.active() == 0 {
            return None;
        }
        let t = self.table.read().ok()?;
        let bits = ip_bits(ip);
        t.lens.iter().rev().find_map(|len| {
            t.entries
                .get(&(*len, mask(bits, *len)))
                .filter(|b| b.until_ms > now_ms)
                .cloned()
        })
    }

    /// Is this address banned now? (Cheap when nothing is banned.)
    pub fn is_banned(&self, ip: std::net::IpAddr, now_ms: u64) -> bool {
        if self.active() == 0 {
            return false;
        }
        let Ok(t) = self.table.read() else {
            return false;
        };
        let bits = ip_bits(ip);
        t.lens.iter().any(|len| {
            t.entries
                .get(&(*len, mask(bits, *len)))
                .is_some_and(|b| b.until_ms > now_ms)
        })
    }

    /// Bans `target`. `duration` None: automatic, `base` doubled per repeat up to `max`.
    /// Returns the ban and, when the table was full, the range bans created by merging.
    #[allow(clippy::too_many_arguments)]
    pub fn ban(
        &self,
        target: IpNet,
        reason: BanReason,
        duration: Option<Duration>,
        base: Duration,
        max: Duration,
        note: String,
        now_ms: u64,
        max_bans: usize,
    ) -> (Ban, Vec<Ban>) {
        let target = target.trunc();
        let key = key_of(&target);
        let Ok(mut t) = self.table.write() else {
            return (placeholder(target, reason), Vec::new());
        };
        let prev = t
            .entries
            .get(&key)
            .map(|b| b.count)
            .or_else(|| t.history.get(&key).copied())
            .unwrap_or(0);
        let count = prev + 1;
        let d = duration.unwrap_or_else(|| {
            let factor = 1u32.checked_shl(prev.min(20)).unwrap_or(u32::MAX);
            base.saturating_mul(factor).min(max)
        });
        let now = SystemTime::now();
        let ban = Ban {
            target,
            reason,
            until_ms: now_ms + d.as_millis() as u64,
            since: now,
            until: now + d,
            count,
            manual: reason == BanReason::Manual,
            note,
        };
        if t.entries.insert(key, ban.clone()).is_none() {
            self.active.fetch_add(1, Ordering::Relaxed);
        }
        if !t.lens.contains(&key.0) {
            t.lens.push(key.0);
            t.lens.sort_unstable();
        }
        let merged = if t.entries.len() > max_bans {
            self.merge(&mut t, max_bans, now_ms)
        } else {
            Vec::new()
        };
        (ban, merged)
    }

    /// Merges the most crowded ranges until the table is back under 90% of `max_bans`.
    fn merge(&self, t: &mut Table, max_bans: usize, now_ms: u64) -> Vec<Ban> {
        let mut out = Vec::new();
        while t.entries.len() > max_bans * 9 / 10 {
            let mut counts: HashMap<(u8, u128), usize> = HashMap::new();
            for k in t.entries.keys() {
                if let Some(p) = parent(*k) {
                    *counts.entry(p).or_insert(0) += 1;
                }
            }
            let Some((range, n)) = counts.into_iter().max_by_key(|(_, n)| *n) else {
                break;
            };
            if n < 2 {
                break;
            }
            let members: Vec<(u8, u128)> = t
                .entries
                .keys()
                .filter(|k| parent(**k) == Some(range))
                .copied()
                .collect();
            let mut until_ms = now_ms;
            let mut until = SystemTime::now();
            for m in &members {
                if let Some(b) = t.entries.remove(m) {
                    if b.until_ms > until_ms {
                        until_ms = b.until_ms;
                        until = b.until;
                    }
                    self.active.fetch_sub(1, Ordering::Relaxed);
                }
            }
            let ip = std::net::Ipv6Addr::from(range.1);
            let net = match ip.to_ipv4_mapped() {
                Some(v4) if range.0 >= 96 => IpNet::new(std::net::IpAddr::V4(v4), range.0 - 96),
                _ => IpNet::new(std::net::IpAddr::V6(ip), range.0),
            };
            let Ok(net) = net else { break };
            let ban = Ban {
                target: net,
                reason: BanReason::Merged,
                until_ms,
                since: SystemTime::now(),
                until,
                count: 1,
                manual: false,
                note: format!(
                    "{} banned clients merged into one range: the ban table was full",
                    members.len()
                ),
            };
            if t.entries.insert(range, ban.clone()).is_none() {
                self.active.fetch_add(1, Ordering::Relaxed);
            }
            if !t.lens.contains(&range.0) {
                t.lens.push(range.0);
                t.lens.sort_unstable();
            }
            out.push(ban);
        }
        while t.history.len() > max_bans {
            let Some(k) = t.history.keys().next().copied() else {
                break;
            };
            t.history.remove(&k);
        }
        out
    }

    /// Lifts the ban on exactly this target. Returns it if there was one.
    pub fn unban(&self, target: &IpNet) -> Option<Ban> {
        let key = key_of(&target.trunc());
        let mut t = self.table.write().ok()?;
        let b = t.entries.remove(&key)?;
        self.active.fetch_sub(1, Ordering::Relaxed);
        t.history.insert(key, b.count);
        Some(b)
    }

    /// Bans in force.
    pub fn list(&self, now_ms: u64) -> Vec<Ban> {
        let Ok(t) = self.table.read() else {
            return Vec::new();
        };
        let mut v: Vec<Ban> = t
            .entries
            .values()
            .filter(|b| b.until_ms > now_ms)
            .cloned()
            .collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.since));
        v
    }

    /// Removes expired bans (keeping their counts for doubling) and returns them.
    pub fn sweep(&self, now_ms: u64) -> Vec<Ban> {
        let Ok(mut t) = self.table.write() else {
            return Vec::new();
        };
        let expired: Vec<(u8, u128)> = t
            .entries
            .iter()
            .filter(|(_, b)| b.until_ms <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::with_capacity(expired.len());
        for k in expired {
            if let Some(b) = t.entries.remove(&k) {
                self.active.fetch_sub(1, Ordering::Relaxed);
                t.history.insert(k, b.count);
                out.push(b);
            }
        }
        out
    }
}

/// The range a single-client ban merges into: /24 for IPv4, /48 for IPv6.
fn parent(k: (u8, u128)) -> Option<(u8, u128)> {
    let v4 = k.1 >> 32 == 0xffff;
    match (v4, k.0) {
        (true, 128) => Some((120, mask(k.1, 120))),
        (false, l) if l > 48 => Some((48, mask(k.1, 48))),
        _ => None,
    }
}

fn placeholder(target: IpNet, reason: BanReason) -> Ban {
    Ban {
        target,
        reason,
        until_ms: 0,
        since: SystemTime::now(),
        until: SystemTime::now(),
        count: 0,
        manual: false,
        note: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn bans_double_on_repeat_and_ranges_cover_members() {
        let b = Bans::default();
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(25);
        let (first, _) = b.ban(
            net("203.0.113.7/32"),
            BanReason::RateLimit,
            None,
            base,
            max,
            String::new(),
            0,
            1000,
        );
        assert_eq!(first.until_ms, 10_000);
        assert!(b.is_banned("203.0.113.7".parse().unwrap(), 5_000));
        assert!(!b.is_banned("203.0.113.8".parse().unwrap(), 5_000));
        assert_eq!(b.sweep(10_000).len(), 1);
        assert!(!b.is_banned("203.0.113.7".parse().unwrap(), 10_001));
        let (second, _) = b.ban(
            net("203.0.113.7/32"),
            BanReason::RateLimit,
            None,
            base,
            max,
            String::new(),
            20_000,
            1000,
        );
        assert_eq!(second.until_ms, 40_000, "doubled");
        let (third, _) = b
            .unban(&net("203.0.113.7/32"))
            .map(|_| {
                b.ban(
                    net("203.0.113.7/32"),
                    BanReason::RateLimit,
                    None,
                    base,
                    max,
                    String::new(),
                    50_000,
                    1000,
                )
            })
            .unwrap();
        assert_eq!(third.until_ms, 75_000, "capped at max");
        b.ban(
            net("198.51.100.0/24"),
            BanReason::Manual,
            Some(Duration::from_secs(60)),
            base,
            max,
            String::new(),
            0,
            1000,
        );
        assert!(b.is_banned("198.51.100.200".parse().unwrap(), 1));
    }

    #[test]
    fn a_full_table_merges_into_ranges_and_forgets_no_one() {
        let b = Bans::default();
        let d = Duration::from_secs(60);
        for i in 0..200u32 {
            let ip = format!("10.{}.{}.{}/32", i / 100, (i / 10) % 10, i % 10);
            b.ban(
                net(&ip),
                BanReason::RateLimit,
                None,
                d,
                d,
                String::new(),
                0,
                50,
            );
        }
        assert!(b.list(1).len() <= 50, "bounded: {}", b.list(1).len());
        for i in 0..200u32 {
            let ip = format!("10.{}.{}.{}", i / 100, (i / 10) % 10, i % 10);
            assert!(
                b.is_banned(ip.parse().unwrap(), 1),
                "{ip} still banned after merging"
            );
        }
    }
}
