//! The capacity model of a pool, from the servers' declared `capacity_rps`, the pool's
//! `peak_rps` and `typical_latency`: capacity, headroom at peak, N+1 (losing the largest
//! server at peak), the worst load on one server with retries, and whether `max_concurrency`
//! fits the capacity by Little's law (concurrency = rate × latency). Each failure is a finding.

use super::{Ctx, Finding, Rule, Severity};
use crate::config::{Algorithm, Pool};
use serde::Serialize;
use serde_json::json;

/// Below this headroom at peak a pool has no room for a surprise.
pub const MIN_HEADROOM: f64 = 0.25;

/// The model of one pool. Fields are `None` when the config lacks what they need.
#[derive(Debug, Clone, Serialize)]
pub struct PoolCapacity {
    pub pool: String,
    pub servers: usize,
    /// Sum of the servers' `capacity_rps`, when every server declares one.
    pub capacity_rps: Option<f64>,
    pub peak_rps: Option<f64>,
    /// `1 − peak / capacity`.
    pub headroom: Option<f64>,
    /// Losing the largest server at peak.
    pub n_plus_1: Option<NPlus1>,
    /// The most loaded server at peak, retries included (budgeted).
    pub worst_server: Option<ServerLoad>,
    /// Pool load at peak with retries: `peak × (1 + min(attempts − 1, budget_ratio)) +
    /// budget_min_per_second` (`peak × attempts` without a working budget).
    pub peak_with_retries_rps: Option<f64>,
    /// Per server: `max_concurrency` against `capacity_rps × typical_latency`.
    pub little: Vec<LittleFit>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NPlus1 {
    /// The server lost (the one with the most capacity).
    pub without: String,
    pub capacity_left_rps: f64,
    /// The most loaded remaining server's load / capacity at peak.
    pub worst_utilisation: f64,
    pub survives: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerLoad {
    pub server: String,
    pub load_rps: f64,
    pub capacity_rps: f64,
    pub utilisation: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LittleFit {
    pub server: String,
    pub max_concurrency: u32,
    /// `capacity_rps × typical_latency`: requests a server works on at once at full capacity.
    pub needed: f64,
    pub ratio: f64,
}

/// Each server's share of the pool's requests: equal for round robin, by weight otherwise
/// (consistent hashing may overshoot by up to `hash_balance_factor`).
pub fn shares(p: &Pool) -> Vec<f64> {
    let n = p.servers.len().max(1) as f64;
    let total: f64 = p.servers.iter().map(|s| f64::from(s.weight)).sum();
    p.servers
        .iter()
        .map(|s| match p.algorithm {
            Algorithm::RoundRobin => 1.0 / n,
            Algorithm::ConsistentHash => {
                (f64::from(s.weight) / total * p.hash_balance_factor).min(1.0)
            }
            _ => f64::from(s.weight) / total,
        })
        .collect()
}

/// The pool's load at `peak` with retries, as the retry budget allows.
pub fn with_retries(p: &Pool, peak: f64) -> f64 {
    let r = &p.retry;
    if r.attempts <= 1 {
        return peak;
    }
    let extra = f64::from(r.attempts - 1);
    if r.budget_ratio >= 1.0 {
        return peak * f64::from(r.attempts);
    }
    (peak * (1.0 + extra.min(r.budget_ratio)) + f64::from(r.budget_min_per_second))
        .min(peak * f64::from(r.attempts))
}

/// Builds the model of one pool.
pub fn model(p: &Pool) -> PoolCapacity {
    let caps: Option<Vec<f64>> = p.servers.iter().map(|s| s.capacity_rps).collect();
    let capacity = caps.as_ref().map(|c| c.iter().sum::<f64>());
    let peak = p.peak_rps;
    let shares = shares(p);
    let mut m = PoolCapacity {
        pool: p.name.clone(),
        servers: p.servers.len(),
        capacity_rps: capacity,
        peak_rps: peak,
        headroom: None,
        n_plus_1: None,
        worst_server: None,
        peak_with_retries_rps: peak.map(|pk| with_retries(p, pk)),
        little: Vec::new(),
    };
    if let (Some(caps), Some(lat)) = (&caps, p.typical_latency) {
        m.little = p
            .servers
            .iter()
            .zip(caps)
            .map(|(s, c)| {
                let needed = c * lat.as_secs_f64();
                LittleFit {
                    server: s.name.clone(),
                    max_concurrency: s.max_concurrency,
                    needed,
                    ratio: f64::from(s.max_concurrency) / needed.max(1e-9),
                }
            })
            .collect();
    }
    let (Some(caps), Some(capacity), Some(peak)) = (caps, capacity, peak) else {
        return m;
    };
    m.headroom = Some(1.0 - peak / capacity);
    let load = with_retries(p, peak);
    m.worst_server = p
        .servers
        .iter()
        .zip(&caps)
        .zip(&shares)
        .map(|((s, c), sh)| ServerLoad {
            server: s.name.clone(),
            load_rps: load * sh,
            capacity_rps: *c,
            utilisation: load * sh / c,
        })
        .max_by(|a, b| a.utilisation.total_cmp(&b.utilisation));
    if p.servers.len() > 1 {
        let lost = caps
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        let rest_share: f64 = shares
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != lost)
            .map(|(_, s)| s)
            .sum();
        let worst = caps
            .iter()
            .zip(&shares)
            .enumerate()
            .filter(|(i, _)| *i != lost)
            .map(|(_, (c, sh))| peak * sh / rest_share.max(1e-9) / c)
            .fold(0.0, f64::max);
        m.n_plus_1 = Some(NPlus1 {
            without: p.servers[lost].name.clone(),
            capacity_left_rps: capacity - caps[lost],
            worst_utilisation: worst,
            survives: worst <= 1.0,
        });
    }
    m
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}
fn rps(x: f64) -> String {
    format!("{x:.0} rps")
}

fn pool_model<'a>(cx: &'a Ctx, name: &str) -> Option<&'a PoolCapacity> {
    cx.capacity.iter().find(|c| c.pool == name)
}

/// L101: a peak is declared but the capacity model cannot be built.
pub fn incomplete(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        let missing: Vec<&str> = p
            .servers
            .iter()
            .filter(|s| s.capacity_rps.is_none())
            .map(|s| s.name.as_str())
            .collect();
        let some_declared = missing.len() < p.servers.len();
        if (p.peak_rps.is_some() || some_declared) && !missing.is_empty() {
            out.push(cx.finding(rule, Severity::Warning, format!("pools.{}.servers", p.name),
                format!("pool {:?} declares {} but server{} {} {} no capacity_rps, so its capacity cannot be reviewed", p.name,
                    if p.peak_rps.is_some() { "peak_rps" } else { "capacity_rps on some servers" },
                    if missing.len() == 1 { "" } else { "s" }, missing.join(", "), if missing.len() == 1 { "has" } else { "have" }),
                "measure each server with `levee probe http://SERVER/` and write its capacity_rps, e.g. { address = \"10.0.0.1:80\", capacity_rps = 800 }"));
        }
        if p.peak_rps.is_none() && missing.is_empty() {
            out.push(cx.finding(rule, Severity::Warning, format!("pools.{}.peak_rps", p.name),
                format!("pool {:?} declares its servers' capacity but no peak_rps, so headroom and N+1 cannot be reviewed", p.name),
                "set peak_rps to the highest request rate the pool has seen or expects (from your metrics), e.g. peak_rps = 1200"));
        }
    }
}

/// L102: the expected peak is above the pool's capacity.
pub fn peak_above_capacity(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        let Some(m) = pool_model(cx, &p.name) else {
            continue;
        };
        if let (Some(c), Some(pk)) = (m.capacity_rps, m.peak_rps)
            && pk > c
        {
            let mut f = cx.finding(rule, Severity::Error, format!("pools.{}.peak_rps", p.name),
                format!("pool {:?} expects a peak of {} but its servers can serve {} together ({} over)", p.name, rps(pk), rps(c), pct(pk / c - 1.0)),
                format!("add servers for at least {} more (with headroom: {} in all), or lower the load (cache, rate limits)", rps(pk - c), rps(pk / (1.0 - MIN_HEADROOM))));
            f.data = json!({ "capacity_rps": c, "peak_rps": pk });
            out.push(f);
        }
    }
}

/// L103: too little headroom at peak.
pub fn low_headroom(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        let Some(m) = pool_model(cx, &p.name) else {
            continue;
        };
        if let (Some(h), Some(c), Some(pk)) = (m.headroom, m.capacity_rps, m.peak_rps)
            && (0.0..MIN_HEADROOM).contains(&h)
        {
            let mut f = cx.finding(
                rule,
                Severity::Warning,
                format!("pools.{}.peak_rps", p.name),
                format!(
                    "pool {:?} runs at {} of its capacity at peak ({} of {}): {} headroom",
                    p.name,
                    pct(pk / c),
                    rps(pk),
                    rps(c),
                    pct(h)
                ),
                format!(
                    "add capacity to reach at least {} ({} headroom)",
                    rps(pk / (1.0 - MIN_HEADROOM)),
                    pct(MIN_HEADROOM)
                ),
            );
            f.data = json!({ "capacity_rps": c, "peak_rps": pk, "headroom": h });
            out.push(f);
        }
    }
}

/// L104: losing the largest server at peak overloads the others.
pub fn n_plus_1(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        let Some(m) = pool_model(cx, &p.name) else {
            continue;
        };
        let (Some(n1), Some(pk)) = (&m.n_plus_1, m.peak_rps) else {
            continue;
        };
        if n1.survives || m.capacity_rps.is_some_and(|c| pk > c) {
            continue;
        }
        let mut f = cx.finding(rule, Severity::Warning, format!("pools.{}.servers", p.name),
            format!("pool {:?} does not survive losing {} at peak: {} left for {} (the busiest remaining server at {} of its capacity)", p.name, n1.without, rps(n1.capacity_left_rps), rps(pk), pct(n1.worst_utilisation)),
            format!("add a server (or capacity) so that the pool minus its largest server still serves {}", rps(pk)));
        f.data = json!({ "without": n1.without, "capacity_left_rps": n1.capacity_left_rps, "peak_rps": pk, "worst_utilisation": n1.worst_utilisation });
        out.push(f);
    }
}

/// L105: retries at peak push a server over its capacity (a retry storm).
pub fn retry_storm(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        let Some(m) = pool_model(cx, &p.name) else {
            continue;
        };
        let (Some(w), Some(pk), Some(load)) =
            (&m.worst_server, m.peak_rps, m.peak_with_retries_rps)
        else {
            continue;
        };
        if p.retry.attempts <= 1 || w.utilisation <= 1.0 {
            continue;
        }
        // Already over without retries: that is L102 / L013's finding, not a retry storm.
        let share = w.load_rps / load;
        if pk * share > w.capacity_rps {
            continue;
        }
        let mut f = cx.finding(rule, Severity::Error, format!("pools.{}.retry", p.name),
            format!("with retries, pool {:?} can send {} at its peak of {}: server {} would get {} for a capacity of {}", p.name, rps(load), rps(pk), w.server, rps(w.load_rps), rps(w.capacity_rps)),
            format!("lower retry.budget_ratio (now {}) and retry.budget_min_per_second (now {}) so that peak × (1 + ratio) + min stays under capacity, or add capacity", p.retry.budget_ratio, p.retry.budget_min_per_second));
        f.data = json!({ "peak_rps": pk, "peak_with_retries_rps": load, "server": w.server, "server_load_rps": w.load_rps, "server_capacity_rps": w.capacity_rps, "attempts": p.retry.attempts, "attempts_times_peak_rps": pk * f64::from(p.retry.attempts) });
        out.push(f);
    }
}

/// L106: `max_concurrency` against Little's law.
pub fn little(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for (i, p) in cx.cfg.pools.iter().enumerate() {
        let Some(m) = cx.capacity.get(i) else {
            continue;
        };
        let Some(lat) = p.typical_latency else {
            continue;
        };
        let mut seen: Vec<String> = Vec::new();
        // Worst fit first, so one finding per key names the worst server.
        let mut order: Vec<(usize, &LittleFit)> = m.little.iter().enumerate().collect();
        order.sort_by(|a, b| b.1.ratio.ln().abs().total_cmp(&a.1.ratio.ln().abs()));
        for (j, l) in order {
            let key = if cx.written(&format!("pools.{}.servers[{j}].max_concurrency", p.name)) {
                format!("pools.{}.servers[{j}].max_concurrency", p.name)
            } else {
                format!("pools.{}.max_concurrency", p.name)
            };
            if seen.contains(&key) {
                continue;
            }
            let what = if p.adaptive.is_some() {
                "adaptive.max"
            } else {
                "max_concurrency"
            };
            let needed = l.needed.ceil().max(1.0);
            let (sev, msg) = if l.ratio > 10.0 {
                (
                    Severity::Error,
                    format!(
                        "{what} {} lets {} work on {:.0}× what it can: at {} × {} it needs about {needed:.0} in flight; the rest queue inside the server",
                        l.max_concurrency,
                        l.server,
                        l.ratio,
                        rps(l.needed / lat.as_secs_f64()),
                        crate::config::units::fmt_duration(lat)
                    ),
                )
            } else if l.ratio > 2.0 {
                (
                    Severity::Warning,
                    format!(
                        "{what} {} is {:.1}× what {} needs at full capacity (about {needed:.0} in flight by Little's law): a slow spell piles up requests inside the server instead of in levee's fair queue",
                        l.max_concurrency, l.ratio, l.server
                    ),
                )
            } else if l.ratio < 0.8 {
                (
                    Severity::Warning,
                    format!(
                        "{what} {} is below the {needed:.0} requests {} works on at full capacity (Little's law): levee will shed load at {} instead of {}",
                        l.max_concurrency,
                        l.server,
                        rps(f64::from(l.max_concurrency) / lat.as_secs_f64()),
                        rps(l.needed / lat.as_secs_f64())
                    ),
                )
            } else {
                continue;
            };
            seen.push(key.clone());
            let mut f = cx.finding(rule, sev, key, msg,
                format!("set {what} near {:.0} (capacity_rps × typical_latency, plus ~25%), or measure with `levee probe`", (needed * 1.25).ceil()));
            f.data = json!({ "server": l.server, "max_concurrency": l.max_concurrency, "needed": l.needed, "ratio": l.ratio });
            out.push(f);
        }
    }
}

/// L013: weights send a server more than its share of the capacity.
pub fn weights(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        let Some(caps): Option<Vec<f64>> = p.servers.iter().map(|s| s.capacity_rps).collect()
        else {
            continue;
        };
        if p.servers.len() < 2 {
            continue;
        }
        let total: f64 = caps.iter().sum();
        for (j, ((s, c), share)) in p.servers.iter().zip(&caps).zip(shares(p)).enumerate() {
            let cap_share = c / total;
            let load = p.peak_rps.map(|pk| pk * share);
            // Overloaded because of its share (not because the whole pool is short: L102).
            let over = share > cap_share * 1.05 && load.is_some_and(|l| l > *c);
            if share <= cap_share * 1.25 && !over {
                continue;
            }
            let key = if cx.written(&format!("pools.{}.servers[{j}].weight", p.name)) {
                format!("pools.{}.servers[{j}].weight", p.name)
            } else {
                format!("pools.{}.servers[{j}]", p.name)
            };
            let mut msg = format!(
                "{} gets {} of pool {:?}'s requests ({}) but has {} of its capacity",
                s.name,
                pct(share),
                p.name,
                if p.algorithm == Algorithm::RoundRobin {
                    "round_robin ignores weights".to_string()
                } else {
                    format!("weight {}", s.weight)
                },
                pct(cap_share)
            );
            if let Some(l) = load.filter(|_| over) {
                msg.push_str(&format!(
                    ": {} at peak for a capacity of {}",
                    rps(l),
                    rps(*c)
                ));
            }
            let fix_w = (cap_share * p.servers.iter().map(|x| f64::from(x.weight)).sum::<f64>())
                .round()
                .max(1.0);
            let mut f = cx.finding(
                rule,
                if over {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                key,
                msg,
                format!(
                    "make weights proportional to capacity_rps (here about weight = {fix_w:.0}){}",
                    if p.algorithm == Algorithm::RoundRobin {
                        " with algorithm = \"weighted_round_robin\" or \"least_request\""
                    } else {
                        ""
                    }
                ),
            );
            f.data = json!({ "server": s.name, "share": share, "capacity_share": cap_share, "peak_load_rps": load, "capacity_rps": c });
            out.push(f);
        }
    }
}
