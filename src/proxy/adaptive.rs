//! Adaptive concurrency (`max_concurrency = "auto"`): learn each server's limit from its
//! response times by a gradient method.
//!
//! The idea is the one of Netflix's concurrency-limits (Gradient2) and Envoy's adaptive
//! concurrency filter: while a server works on no more than it can, its response time stays near
//! its minimum; past that point requests queue inside the server and the response time grows in
//! proportion. So every sampling window levee compares the window's mean response time with a
//! baseline (the no-queueing response time) and sets
//!
//! ```text
//! gradient = clamp(tolerance × baseline / latency, 0.5, 1.0)
//! estimate = limit × gradient + √limit        (√limit, to probe upwards: only when gradient = 1)
//! limit    = limit × (1 − smoothing) + estimate × smoothing, within [min, max]
//! ```
//!
//! A server that slows down sees its limit cut by up to 10% per window (with the default
//! smoothing) until its latency is back within the tolerance; a healthy server's limit grows by
//! about `smoothing × √limit` per window while levee actually uses it (a limit that is not used
//! is not raised). The baseline follows lower latencies at once and higher ones only slowly
//! (over about `BASELINE_WINDOWS` windows), so a server whose normal speed changes is
//! eventually re-learned while a sustained overload cannot pass for normal within minutes.
//!
//! Hot path: one sample is three relaxed atomic adds and one `fetch_max`; the window close is
//! done by whichever response ends it, under a try-lock flag (never waited on), with no lock and
//! no allocation.

use crate::config::Adaptive;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// The baseline rises by 1/this of the difference per window when latency is above it.
const BASELINE_WINDOWS: f64 = 600.0;

/// Per-server limiter state (lives in `ServerState`, survives reloads).
#[derive(Debug, Default)]
pub struct Limiter {
    window_start_ms: AtomicU64,
    sum_us: AtomicU64,
    samples: AtomicU32,
    max_in_flight: AtomicU32,
    closing: AtomicBool,
    /// The limit as an f64 (bits); 0 until the first window.
    limit: AtomicU64,
    /// Baseline response time in microseconds (f64 bits); 0 when unknown.
    baseline_us: AtomicU64,
}

fn load_f(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}
fn store_f(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed);
}

/// What one closed window decided (for tests and tracing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub latency_us: f64,
    pub baseline_us: f64,
    pub gradient: f64,
    pub limit: f64,
}

impl Limiter {
    /// The learned baseline response time (µs), 0 when unknown.
    pub fn baseline_us(&self) -> f64 {
        load_f(&self.baseline_us)
    }

    /// Records one response time. Returns the new limit when this sample closed a window.
    /// `cap` is the current cap, `upper` the server's upper bound, `in_flight` the requests in
    /// flight when the response arrived (this one included).
    pub fn record(
        &self,
        cfg: &Adaptive,
        upper: u32,
        cap: u32,
        latency_us: u64,
        in_flight: u32,
        now_ms: u64,
    ) -> Option<u32> {
        self.sum_us.fetch_add(latency_us, Ordering::Relaxed);
        let n = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(in_flight, Ordering::Relaxed);
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if start == 0 {
            let _ = self.window_start_ms.compare_exchange(
                0,
                now_ms,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return None;
        }
        let window_ms = u64::try_from(cfg.window.as_millis()).unwrap_or(u64::MAX);
        if n < cfg.min_samples || now_ms.saturating_sub(start) < window_ms {
            return None;
        }
        if self
            .closing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let sum = self.sum_us.swap(0, Ordering::Relaxed);
        let n = self.samples.swap(0, Ordering::Relaxed);
        let peak = self.max_in_flight.swap(0, Ordering::Relaxed);
        self.window_start_ms.store(now_ms, Ordering::Relaxed);
        let step = (n > 0).then(|| self.step(cfg, upper, cap, sum as f64 / f64::from(n), peak));
        self.closing.store(false, Ordering::Release);
        step.map(|s| s.limit.round() as u32)
    }

    /// Closes one window with mean response time `latency_us` and peak in-flight `peak`.
    pub fn step(&self, cfg: &Adaptive, upper: u32, cap: u32, latency_us: f64, peak: u32) -> Step {
        let lo = f64::from(cfg.min.min(upper));
        let hi = f64::from(upper.max(cfg.min));
        let mut limit = load_f(&self.limit);
        if limit <= 0.0 {
            limit = f64::from(cap);
        }
        let latency = latency_us.max(1.0);
        let mut baseline = load_f(&self.baseline_us);
        if baseline <= 0.0 || latency < baseline {
            baseline = if baseline <= 0.0 {
                latency
            } else {
                // Follow lower latencies quickly (half way per window): it is the best news.
                (baseline + latency) / 2.0
            };
        } else {
            baseline += (latency - baseline) / BASELINE_WINDOWS;
        }
        store_f(&self.baseline_us, baseline);
        let gradient = (cfg.tolerance * baseline / latency).clamp(0.5, 1.0);
        // Not using the limit (fewer than half of it in flight at the busiest moment): no
        // evidence that more would be fine, so do not raise it.
        let app_limited = f64::from(peak) < limit / 2.0;
        // Probe upwards (by √limit) only while latency is within the tolerance; when it is
        // not, the gradient alone sets the limit, so a very slow server goes down to `min`.
        let headroom = if gradient >= 1.0 { limit.sqrt() } else { 0.0 };
        let estimate = limit * gradient + headroom;
        let mut next = limit * (1.0 - cfg.smoothing) + estimate * cfg.smoothing;
        if app_limited && next > limit {
            next = limit;
        }
        let next = next.clamp(lo, hi);
        store_f(&self.limit, next);
        Step {
            latency_us: latency,
            baseline_us: baseline,
            gradient,
            limit: next,
        }
    }

    /// Sets the limit (a reload that changed the bounds, a new server).
    pub fn reset_limit(&self, limit: u32) {
        store_f(&self.limit, f64::from(limit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> Adaptive {
        Adaptive {
            min: 2,
            max: 200,
            initial: 16,
            tolerance: 1.25,
            smoothing: 0.2,
            window: Duration::from_millis(100),
            min_samples: 10,
        }
    }

    /// A processor-sharing server: latency grows with in-flight beyond capacity.
    fn latency(base_us: f64, capacity: f64, in_flight: f64) -> f64 {
        base_us * (in_flight / capacity).max(1.0)
    }

    fn run(l: &Limiter, c: &Adaptive, capacity: f64, windows: usize, mut limit: f64) -> f64 {
        for _ in 0..windows {
            let in_flight = limit; // saturated: always as many in flight as allowed
            let s = l.step(
                c,
                c.max,
                limit as u32,
                latency(20_000.0, capacity, in_flight),
                limit as u32,
            );
            limit = s.limit;
        }
        limit
    }

    #[test]
    fn learns_a_capacity_and_follows_it_down() {
        let c = cfg();
        let l = Limiter::default();
        l.reset_limit(16);
        let up = run(&l, &c, 40.0, 200, 16.0);
        assert!((40.0..70.0).contains(&up), "learned {up}");
        let down = run(&l, &c, 10.0, 30, up);
        assert!((10.0..22.0).contains(&down), "after the drop {down}");
        let back = run(&l, &c, 40.0, 300, down);
        assert!(back > 35.0, "recovered {back}");
    }

    #[test]
    fn stays_within_bounds_and_does_not_grow_unused() {
        let c = Adaptive { max: 30, ..cfg() };
        let l = Limiter::default();
        let top = run(&l, &c, 1000.0, 200, 16.0);
        assert_eq!(top, 30.0);
        let l = Limiter::default();
        l.reset_limit(16);
        // Only 3 in flight: fast, but unused, so not raised.
        let s = l.step(&c, c.max, 16, 20_000.0, 3);
        assert_eq!(s.limit, 16.0);
        // A very slow server bottoms out at min.
        let low = (0..100).fold(16.0, |lim, i| {
            l.step(
                &c,
                c.max,
                lim as u32,
                20_000.0 * (1.0 + i as f64),
                lim as u32,
            )
            .limit
        });
        assert_eq!(low, 2.0);
    }

    #[test]
    fn window_closes_after_enough_samples_and_time() {
        let c = cfg();
        let l = Limiter::default();
        assert_eq!(l.record(&c, 200, 16, 20_000, 10, 1_000), None);
        for i in 0..20 {
            assert_eq!(l.record(&c, 200, 16, 20_000, 16, 1_050 + i), None);
        }
        assert!(l.record(&c, 200, 16, 20_000, 16, 1_100).is_some());
        assert_eq!(l.record(&c, 200, 16, 20_000, 16, 1_101), None);
    }
}
