//! Per-client state in a fixed-capacity, sharded table: open and idle connections, requests
//! in progress, the GCRA rate-limit state (global and per route), and the violation score.
//!
//! Memory is bounded by `max_tracked_clients`: when a shard is full, the least valuable entry
//! goes (no open connection, lowest score, longest unseen). Bans do not live here, so
//! eviction never lifts one.

use super::identity::ClientKey;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

const SHARDS: usize = 64;
/// Per-route rate limits tracked per client.
pub const MAX_ROUTE_LIMITS: usize = 2;

#[derive(Debug, Clone, Copy, Default)]
struct Client {
    /// GCRA theoretical arrival times in µs (global, then per route).
    tat: u64,
    route_tat: [u64; MAX_ROUTE_LIMITS],
    conns: u32,
    idle: u16,
    active: u32,
    score: f32,
    /// Seconds since the clock's start (u32: 136 years), to keep an entry at 48 bytes.
    score_s: u32,
    last_seen_s: u32,
}

/// The table's key: a client's 128 bits as two words, so an entry is 8-byte aligned (a u128
/// key would pad every entry to 16 bytes: 1,000,000 clients then cost ~200 MB instead of ~130).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Slot([u64; 2]);

impl From<ClientKey> for Slot {
    fn from(k: ClientKey) -> Slot {
        Slot([(k.0 >> 64) as u64, k.0 as u64])
    }
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// The outcome of a request check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RequestCheck {
    Ok,
    /// Over the rate: retry after this many milliseconds.
    RateLimited {
        retry_after_ms: u64,
    },
    /// Too many requests in progress at once.
    Concurrency,
}

/// A rate limit: requests per second and burst.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub rate: f64,
    pub burst: u32,
}

/// The table.
pub struct ClientTable {
    shards: Box<[Mutex<HashMap<Slot, Client>>]>,
    per_shard: AtomicUsize,
    hasher: std::hash::RandomState,
    tracked: AtomicUsize,
}

impl std::fmt::Debug for ClientTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTable")
            .field("tracked", &self.tracked())
            .finish()
    }
}

/// GCRA: allow when the theoretical arrival time is within the burst tolerance of now.
fn gcra(tat: &mut u64, now_us: u64, l: Limit) -> Result<(), u64> {
    let t = (1_000_000.0 / l.rate.max(1e-6)) as u64;
    let tolerance = t.saturating_mul(u64::from(l.burst.max(1) - 1));
    let base = (*tat).max(now_us);
    if base > now_us + tolerance {
        return Err((base - now_us - tolerance).div_ceil(1000).max(1));
    }
    *tat = base + t;
    Ok(())
}

fn decay(score: f32, since_ms: u64, now_ms: u64, half_life_ms: u64) -> f32 {
    if score <= 0.0 || now_ms <= since_ms {
        return score.max(0.0);
    }
    let dt = (now_ms - since_ms) as f32 / half_life_ms.max(1) as f32;
    score * (-dt * std::f32::consts::LN_2).exp()
}

impl ClientTable {
    pub fn new(max_tracked: usize) -> ClientTable {
        ClientTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: AtomicUsize::new((max_tracked / SHARDS).max(16)),
            hasher: std::hash::RandomState::new(),
            tracked: AtomicUsize::new(0),
        }
    }

    /// Changes the capacity (on reload); shrinking evicts lazily.
    pub fn set_capacity(&self, max_tracked: usize) {
        self.per_shard
            .store((max_tracked / SHARDS).max(16), Ordering::Relaxed);
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    fn with<R>(&self, key: ClientKey, now_ms: u64, f: impl FnOnce(&mut Client) -> R) -> R {
        let key = Slot::from(key);
        let idx = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut shard = match self.shards[idx].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if !shard.contains_key(&key) {
            let cap = self.per_shard.load(Ordering::Relaxed);
            if shard.len() >= cap {
                Self::evict(&mut shard, now_ms);
                self.tracked.fetch_sub(1, Ordering::Relaxed);
            }
            shard.insert(
                key,
                Client {
                    score_s: secs(now_ms),
                    last_seen_s: secs(now_ms),
                    ..Client::default()
                },
            );
            self.tracked.fetch_add(1, Ordering::Relaxed);
        }
        match shard.get_mut(&key) {
            Some(c) => {
                c.last_seen_s = secs(now_ms);
                f(c)
            }
            None => f(&mut Client::default()),
        }
    }

    /// Removes the least valuable of a few entries: no open connection, then the lowest score,
    /// then the longest unseen.
    fn evict(shard: &mut HashMap<Slot, Client>, now_ms: u64) {
        let victim = shard
            .iter()
            .take(32)
            .min_by(|(_, a), (_, b)| {
                let va = (
                    a.conns + a.active > 0,
                    decay(a.score, u64::from(a.score_s) * 1000, now_ms, 60_000),
                    a.last_seen_s,
                );
                let vb = (
                    b.conns + b.active > 0,
                    decay(b.score, u64::from(b.score_s) * 1000, now_ms, 60_000),
                    b.last_seen_s,
                );
                va.0.cmp(&vb.0)
                    .then(va.1.total_cmp(&vb.1))
                    .then(va.2.cmp(&vb.2))
            })
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            shard.remove(&k);
        }
    }

    /// A new connection; `Err(n)` when it would be more than `max` open.
    pub fn connect(
        &self,
        key: ClientKey,
        max: u32,
        enforce: bool,
        now_ms: u64,
    ) -> Result<u32, u32> {
        self.with(key, now_ms, |c| {
            if c.conns >= max && enforce {
                return Err(c.conns + 1);
            }
            c.conns += 1;
            if c.conns > max {
                Err(c.conns)
            } else {
                Ok(c.conns)
            }
        })
    }

    /// A connection closed.
    pub fn disconnect(&self, key: ClientKey, was_idle: bool, now_ms: u64) {
        self.with(key, now_ms, |c| {
            c.conns = c.conns.saturating_sub(1);
            if was_idle {
                c.idle = c.idle.saturating_sub(1);
            }
        });
    }

    /// A connection became idle (+1) or busy again (-1); returns the client's idle count.
    pub fn idle(&self, key: ClientKey, became_idle: bool, now_ms: u64) -> u32 {
        self.with(key, now_ms, |c| {
            if became_idle {
                c.idle = c.idle.saturating_add(1);
            } else {
                c.idle = c.idle.saturating_sub(1);
            }
            u32::from(c.idle)
        })
    }

    /// A request: rate limits (global, then the route's) and concurrency. On `Ok` the request
    /// counts as in progress until [`ClientTable::request_done`]. With `enforce` false the
    /// checks are computed but the request always counts as admitted.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        key: ClientKey,
        now_ms: u64,
        global: Limit,
        route: Option<(usize, Limit)>,
        max_active: u32,
        enforce_rate: bool,
        enforce_concurrency: bool,
    ) -> RequestCheck {
        let now_us = now_ms * 1000;
        self.with(key, now_ms, |c| {
            let mut verdict = RequestCheck::Ok;
            let mut tat = c.tat;
            match gcra(&mut tat, now_us, global) {
                Ok(()) => {}
                Err(ms) => verdict = RequestCheck::RateLimited { retry_after_ms: ms },
            }
            let mut rtat = None;
            if verdict == RequestCheck::Ok
                && let Some((i, l)) = route
                && let Some(slot) = c.route_tat.get(i)
            {
                let mut t = *slot;
                match gcra(&mut t, now_us, l) {
                    Ok(()) => rtat = Some((i, t)),
                    Err(ms) => verdict = RequestCheck::RateLimited { retry_after_ms: ms },
                }
            }
            if verdict == RequestCheck::Ok && c.active >= max_active {
                verdict = RequestCheck::Concurrency;
            }
            let blocked = match verdict {
                RequestCheck::Ok => false,
                RequestCheck::RateLimited { .. } => enforce_rate,
                RequestCheck::Concurrency => enforce_concurrency,
            };
            if verdict == RequestCheck::Ok {
                c.tat = tat;
                if let Some((i, t)) = rtat {
                    c.route_tat[i] = t;
                }
            }
            if !blocked {
                c.active += 1;
            }
            verdict
        })
    }

    /// A request admitted by [`ClientTable::request`] finished.
    pub fn request_done(&self, key: ClientKey, now_ms: u64) {
        self.with(key, now_ms, |c| c.active = c.active.saturating_sub(1));
    }

    /// Adds to the client's violation score (which halves every `half_life_ms`); returns the
    /// new score.
    pub fn add_score(&self, key: ClientKey, weight: f64, half_life_ms: u64, now_ms: u64) -> f64 {
        self.with(key, now_ms, |c| {
            c.score =
                decay(c.score, u64::from(c.score_s) * 1000, now_ms, half_life_ms) + weight as f32;
            c.score_s = secs(now_ms);
            f64::from(c.score)
        })
    }

    /// Resets the score (after a ban).
    pub fn clear_score(&self, key: ClientKey, now_ms: u64) {
        self.with(key, now_ms, |c| c.score = 0.0);
    }

    /// Drops entries unseen for `idle_ms` with nothing open. Returns how many went.
    pub fn sweep(&self, idle_ms: u64, now_ms: u64) -> usize {
        let mut removed = 0;
        for s in self.shards.iter() {
            let mut shard = match s.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let before = shard.len();
            shard.retain(|_, c| {
                c.conns > 0
                    || c.active > 0
                    || now_ms.saturating_sub(u64::from(c.last_seen_s) * 1000) < idle_ms
            });
            removed += before - shard.len();
        }
        self.tracked.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let t = ClientTable::new(10_000);
        let k = ClientKey(1);
        let l = Limit {
            rate: 10.0,
            burst: 5,
        };
        let ok = (0..20)
            .filter(|_| t.request(k, 1000, l, None, 1000, true, true) == RequestCheck::Ok)
            .count();
        assert_eq!(ok, 5, "burst of 5 at one instant");
        // A second later the bucket is full again: another burst of 5...
        let ok = (0..20)
            .filter(|_| t.request(k, 2000, l, None, 1000, true, true) == RequestCheck::Ok)
            .count();
        assert_eq!(ok, 5);
        match t.request(k, 2000, l, None, 1000, true, true) {
            RequestCheck::RateLimited { retry_after_ms } => {
                assert!(retry_after_ms <= 100, "{retry_after_ms}")
            }
            other => panic!("{other:?}"),
        }
        // ...then the sustained rate: 10/s, so 2 in the next 200 ms.
        let ok = (0..20)
            .filter(|_| t.request(k, 2200, l, None, 1000, true, true) == RequestCheck::Ok)
            .count();
        assert_eq!(ok, 2);
    }

    #[test]
    fn table_stays_bounded_and_keeps_clients_with_connections() {
        let t = ClientTable::new(64 * 16);
        let busy = ClientKey(7);
        assert!(t.connect(busy, 10, true, 1).is_ok());
        for i in 0..100_000u128 {
            let k = ClientKey(1_000_000 + i);
            t.request(
                k,
                2,
                Limit {
                    rate: 50.0,
                    burst: 100,
                },
                None,
                100,
                true,
                true,
            );
            t.request_done(k, 2);
        }
        assert!(t.tracked() <= 64 * 16, "tracked {}", t.tracked());
        // The client with an open connection survived eviction: its count is still 1.
        assert_eq!(t.connect(busy, 1, true, 3), Err(2));
    }

    #[test]
    fn scores_decay_by_half_life() {
        let t = ClientTable::new(10_000);
        let k = ClientKey(9);
        assert_eq!(t.add_score(k, 10.0, 1000, 0), 10.0);
        let s = t.add_score(k, 0.0, 1000, 1000);
        assert!((s - 5.0).abs() < 0.01, "{s}");
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn an_entry_stays_small() {
        // Key and value of one tracked client: 1,000,000 of them fit in ~130 MB with the
        // hash table's load factor (see bench/shield_memory.sh).
        assert!(
            std::mem::size_of::<(super::Slot, super::Client)>() <= 64,
            "{}",
            std::mem::size_of::<(super::Slot, super::Client)>()
        );
    }
}
