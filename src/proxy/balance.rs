//! Balancing: pick a healthy server with free capacity, and take its slot.
//!
//! - `round_robin`: the next eligible server in turn.
//! - `weighted_round_robin`: smooth weighted round robin (as nginx does): the weights shape
//!   the sequence evenly instead of in bursts.
//! - `least_request`: power of two random choices, the one with fewer in-flight requests per
//!   unit of weight.
//! - `consistent_hash`: a ring of virtual nodes; with bounded load (no server takes more than
//!   `hash_balance_factor` times the mean in-flight load), so one hot key cannot overload one
//!   server.
//!
//! A server in slow start gets a share that ramps from 10% to 100% of its normal one.

use super::pool::{PoolInner, ServerState};
use crate::config::Algorithm;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn excluded(s: &Arc<ServerState>, exclude: &[Arc<ServerState>]) -> bool {
    exclude.iter().any(|e| Arc::ptr_eq(e, s))
}

/// Picks a server and takes one of its slots. `None`: no eligible server has a free slot.
pub fn pick(
    inner: &PoolInner,
    rr: &AtomicUsize,
    hash: u64,
    exclude: &[Arc<ServerState>],
    now: u64,
) -> Option<Arc<ServerState>> {
    let ok = |s: &Arc<ServerState>| s.eligible(now) && !excluded(s, exclude);
    for _ in 0..3 {
        let cand = match inner.cfg.algorithm {
            Algorithm::RoundRobin => round_robin(inner, rr, now, &ok),
            Algorithm::WeightedRoundRobin => weighted(inner, now, &ok),
            Algorithm::LeastRequest => least_request(inner, now, &ok),
            Algorithm::ConsistentHash => consistent_hash(inner, hash, now, &ok),
        }?;
        if cand.try_acquire() {
            return Some(cand.clone());
        }
    }
    // Lost races for slots: take any eligible server.
    inner
        .servers
        .iter()
        .find(|s| ok(s) && s.try_acquire())
        .cloned()
}

fn slow_start_admits(s: &ServerState, inner: &PoolInner, now: u64) -> bool {
    let f = s.slow_start_factor(now, inner.cfg.slow_start);
    f >= 1.0 || fastrand::f64() < f
}

fn round_robin<'a>(
    inner: &'a PoolInner,
    rr: &AtomicUsize,
    now: u64,
    ok: &dyn Fn(&Arc<ServerState>) -> bool,
) -> Option<&'a Arc<ServerState>> {
    let n = inner.servers.len();
    if n == 0 {
        return None;
    }
    let start = rr.fetch_add(1, Ordering::Relaxed);
    for pass in 0..2 {
        for i in 0..n {
            let s = &inner.servers[(start + i) % n];
            if ok(s) && (pass == 1 || slow_start_admits(s, inner, now)) {
                return Some(s);
            }
        }
    }
    None
}

fn weighted<'a>(
    inner: &'a PoolInner,
    now: u64,
    ok: &dyn Fn(&Arc<ServerState>) -> bool,
) -> Option<&'a Arc<ServerState>> {
    let mut cw = inner.wrr.lock().ok()?;
    if cw.len() != inner.servers.len() {
        *cw = vec![0; inner.servers.len()];
    }
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, s) in inner.servers.iter().enumerate() {
        if !ok(s) {
            continue;
        }
        let w = ((f64::from(s.weight()) * 100.0 * s.slow_start_factor(now, inner.cfg.slow_start))
            as i64)
            .max(1);
        cw[i] += w;
        total += w;
        if best.is_none_or(|b| cw[i] > cw[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    cw[b] -= total;
    inner.servers.get(b)
}

fn load(s: &ServerState, inner: &PoolInner, now: u64) -> f64 {
    f64::from(s.in_flight() + 1)
        / (f64::from(s.weight()) * s.slow_start_factor(now, inner.cfg.slow_start))
}

fn least_request<'a>(
    inner: &'a PoolInner,
    now: u64,
    ok: &dyn Fn(&Arc<ServerState>) -> bool,
) -> Option<&'a Arc<ServerState>> {
    let n = inner.servers.len();
    if n > 2 {
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let (sa, sb) = (&inner.servers[a], &inner.servers[b]);
        match (ok(sa), ok(sb)) {
            (true, true) => {
                return Some(if load(sb, inner, now) < load(sa, inner, now) {
                    sb
                } else {
                    sa
                });
            }
            (true, false) => return Some(sa),
            (false, true) => return Some(sb),
            (false, false) => {}
        }
    }
    inner
        .servers
        .iter()
        .filter(|s| ok(s))
        .min_by(|x, y| load(x, inner, now).total_cmp(&load(y, inner, now)))
}

fn consistent_hash<'a>(
    inner: &'a PoolInner,
    hash: u64,
    now: u64,
    ok: &dyn Fn(&Arc<ServerState>) -> bool,
) -> Option<&'a Arc<ServerState>> {
    let len = inner.ring.len();
    if len == 0 {
        return None;
    }
    let (mut total, mut avail) = (0u64, 0u64);
    for s in &inner.servers {
        if s.available(now) {
            total += u64::from(s.in_flight());
            avail += 1;
        }
    }
    let bound =
        ((inner.cfg.hash_balance_factor * (total + 1) as f64) / avail.max(1) as f64).ceil() as u32;
    let start = inner.ring.partition_point(|(h, _)| *h < hash);
    let mut fallback = None;
    for k in 0..len {
        let (_, si) = inner.ring[(start + k) % len];
        let s = &inner.servers[si as usize];
        if !ok(s) {
            continue;
        }
        if s.in_flight() < bound.max(1) {
            return Some(s);
        }
        fallback.get_or_insert(s);
    }
    fallback
}
