//! The per-second history: a ring buffer of cumulative counters and state, sampled once a
//! second from the metrics handles and pool state. Alert rules, the dashboard and incidents
//! read windows from it (a window is the difference of two samples, so any window is O(1)).

use super::latency::{self, Buckets, NB};
use super::metrics::Reason;
use crate::proxy::runtime::Shared;
use std::collections::VecDeque;
use std::sync::Arc;

/// One server at one second. Counters are cumulative since start.
#[derive(Debug, Clone)]
pub struct ServerSample {
    pub name: Arc<str>,
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub cap: u64,
    /// Healthy and not ejected.
    pub up: bool,
    pub ejected: bool,
    pub latency: Buckets,
}

/// One pool at one second. Counters are cumulative since start.
#[derive(Debug, Clone)]
pub struct PoolSample {
    pub name: Arc<str>,
    /// Requests answered by a server.
    pub requests: u64,
    /// 5xx answered by a server.
    pub errors: u64,
    /// levee's own 502/504 for this pool (upstream unreachable, garbage, timeouts).
    pub upstream_errors: u64,
    /// Shed by levee (queue full, queue timeout, no healthy server).
    pub shed: u64,
    pub queue_depth: u64,
    pub queue_size: u64,
    pub servers: Vec<ServerSample>,
    pub latency: Buckets,
}

impl PoolSample {
    /// Servers that are up.
    pub fn healthy(&self) -> usize {
        self.servers.iter().filter(|s| s.up).count()
    }
}

/// Everything at one second.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: u64,
    /// Requests answered by a server (all pools).
    pub requests: u64,
    /// 5xx answered by a server.
    pub errors: u64,
    /// 5xx levee wrote because an upstream failed (connect, bad answer, timeouts).
    pub upstream_errors: u64,
    /// Shed by levee (all pools).
    pub shed: u64,
    /// Refused by levee or its shield (every other rejection reason).
    pub blocked: u64,
    pub open_connections: u64,
    pub latency: Buckets,
    pub pools: Vec<PoolSample>,
}

/// Differences over a window (later minus earlier), with both ends' times.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    pub secs: u64,
    pub requests: u64,
    pub errors: u64,
    pub upstream_errors: u64,
    pub shed: u64,
    pub blocked: u64,
    pub latency: Buckets,
}

impl Delta {
    /// All requests that reached levee's pipeline and were not blocked.
    pub fn served_or_failed(&self) -> u64 {
        self.requests + self.upstream_errors + self.shed
    }
    /// Requests that failed from a user's point of view: 5xx from a server, levee's 5xx for a
    /// failed upstream, and shed requests.
    pub fn failed(&self) -> u64 {
        self.errors + self.upstream_errors + self.shed
    }
    pub fn p99(&self) -> Option<f64> {
        latency::quantile(&self.latency, 0.99)
    }
}

/// Reads one sample from the running levee.
pub fn sample(shared: &Shared) -> Sample {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let snap = shared.snapshot.load();
    let now = crate::clock::now_ms();
    let mut total_latency = [0u64; NB];
    let mut requests = 0;
    let mut errors = 0;
    let pools: Vec<PoolSample> = snap
        .pools
        .iter()
        .map(|p| {
            let inner = p.inner.load();
            let servers: Vec<ServerSample> = inner
                .servers
                .iter()
                .map(|s| {
                    let (r, e) = s.counters.totals();
                    ServerSample {
                        name: s.name.clone(),
                        requests: r,
                        errors: e,
                        in_flight: u64::from(s.in_flight()),
                        cap: u64::from(s.cap()),
                        up: s.available(now),
                        ejected: s.ejected(now),
                        latency: s.counters.duration.buckets(),
                    }
                })
                .collect();
            let r: u64 = servers.iter().map(|s| s.requests).sum();
            let e: u64 = servers.iter().map(|s| s.errors).sum();
            requests += r;
            errors += e;
            let lat = p.counters.duration.buckets();
            latency::add(&mut total_latency, &lat);
            PoolSample {
                name: p.name.clone(),
                requests: r,
                errors: e,
                upstream_errors: p.counters.upstream_errors.get(),
                shed: p.counters.shed_total(),
                queue_depth: p.queue_depth() as u64,
                queue_size: inner.cfg.queue_size as u64,
                servers,
                latency: lat,
            }
        })
        .collect();
    let (mut shed, mut upstream_errors, mut blocked) = (0, 0, 0);
    for r in Reason::ALL {
        let n = shared.metrics.rejections(r);
        if r.is_shed() {
            shed += n;
        } else if r.is_upstream_error() {
            upstream_errors += n;
        } else {
            blocked += n;
        }
    }
    Sample {
        t,
        requests,
        errors,
        upstream_errors,
        shed,
        blocked,
        open_connections: u64::try_from(shared.metrics.open_connections.get()).unwrap_or(0),
        latency: total_latency,
        pools,
    }
}

/// Seconds for which per-pool and per-server detail is kept; older samples keep the totals
/// only, so six hours of history cost little memory however many servers there are. Pool and
/// server windows are capped at this length.
pub const DETAIL_SECS: usize = 900;

/// The ring buffer.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<Arc<Sample>>,
    cap: usize,
}

impl History {
    /// Keeps at most `cap` seconds.
    pub fn new(cap: usize) -> History {
        History {
            samples: VecDeque::with_capacity(cap.min(4096)),
            cap: cap.max(2),
        }
    }

    pub fn push(&mut self, s: Sample) {
        if self.samples.len() >= self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(Arc::new(s));
        let n = self.samples.len();
        if n > DETAIL_SECS
            && let Some(old) = self.samples.get_mut(n - 1 - DETAIL_SECS)
            && !old.pools.is_empty()
        {
            let mut stripped = Sample::clone(old);
            stripped.pools = Vec::new();
            *old = Arc::new(stripped);
        }
    }

    pub fn latest(&self) -> Option<&Arc<Sample>> {
        self.samples.back()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The sample `secs` seconds before the latest (or the oldest one kept).
    pub fn ago(&self, secs: u64) -> Option<&Arc<Sample>> {
        let n = self.samples.len();
        let back = usize::try_from(secs)
            .unwrap_or(usize::MAX)
            .min(n.saturating_sub(1));
        self.samples.get(n.checked_sub(1 + back)?)
    }

    /// Totals over the last `secs` seconds (shorter when the history is younger).
    pub fn window(&self, secs: u64) -> Delta {
        match (self.latest(), self.ago(secs)) {
            (Some(a), Some(b)) => delta(b, a),
            _ => Delta::default(),
        }
    }

    /// Totals of one pool over the last `secs` seconds (at most [`DETAIL_SECS`]).
    pub fn pool_window(&self, pool: &str, secs: u64) -> Delta {
        let secs = secs.min(DETAIL_SECS as u64 - 1);
        let (Some(a), Some(b)) = (self.latest(), self.ago(secs)) else {
            return Delta::default();
        };
        let find = |s: &Sample| s.pools.iter().find(|p| &*p.name == pool).cloned();
        match (find(b), find(a)) {
            (Some(x), Some(y)) => Delta {
                secs: a.t.saturating_sub(b.t),
                requests: y.requests.saturating_sub(x.requests),
                errors: y.errors.saturating_sub(x.errors),
                upstream_errors: y.upstream_errors.saturating_sub(x.upstream_errors),
                shed: y.shed.saturating_sub(x.shed),
                blocked: 0,
                latency: latency::sub(&y.latency, &x.latency),
            },
            (None, Some(y)) => Delta {
                secs: 0,
                requests: y.requests,
                errors: y.errors,
                upstream_errors: y.upstream_errors,
                shed: y.shed,
                latency: y.latency,
                ..Delta::default()
            },
            _ => Delta::default(),
        }
    }

    /// The last `n` samples, oldest first.
    pub fn last(&self, n: usize) -> Vec<Arc<Sample>> {
        let skip = self.samples.len().saturating_sub(n);
        self.samples.iter().skip(skip).cloned().collect()
    }
}

/// `b - a`.
pub fn delta(a: &Sample, b: &Sample) -> Delta {
    Delta {
        secs: b.t.saturating_sub(a.t),
        requests: b.requests.saturating_sub(a.requests),
        errors: b.errors.saturating_sub(a.errors),
        upstream_errors: b.upstream_errors.saturating_sub(a.upstream_errors),
        shed: b.shed.saturating_sub(a.shed),
        blocked: b.blocked.saturating_sub(a.blocked),
        latency: latency::sub(&b.latency, &a.latency),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: u64, requests: u64) -> Sample {
        Sample {
            t,
            requests,
            errors: 0,
            upstream_errors: 0,
            shed: 0,
            blocked: 0,
            open_connections: 0,
            latency: [0; NB],
            pools: vec![PoolSample {
                name: "web".into(),
                requests,
                errors: 0,
                upstream_errors: 0,
                shed: 0,
                queue_depth: 0,
                queue_size: 0,
                servers: Vec::new(),
                latency: [0; NB],
            }],
        }
    }

    #[test]
    fn windows_are_differences_and_old_detail_is_dropped() {
        let mut h = History::new(DETAIL_SECS + 100);
        for t in 0..(DETAIL_SECS as u64 + 50) {
            h.push(sample(t, t * 10));
        }
        assert_eq!(h.window(10).requests, 100);
        assert_eq!(h.window(10).secs, 10);
        assert_eq!(h.pool_window("web", 10).requests, 100);
        // A pool window longer than the detail kept is capped, never "since start".
        let long = h.pool_window("web", 5000);
        assert_eq!(long.requests, (DETAIL_SECS as u64 - 1) * 10);
        assert!(h.ago(DETAIL_SECS as u64 + 10).unwrap().pools.is_empty());
        assert_eq!(h.window(5000).requests, (DETAIL_SECS as u64 + 49) * 10);
    }
}
