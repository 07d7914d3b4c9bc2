//! Recording results cheaply while the load runs, and merging them into figures afterwards.
//!
//! Every worker records into one of a few shards (a mutex held for a few nanoseconds, never
//! across an await): HDR histograms of the corrected and uncorrected latency, counters by status
//! and by error kind. A collector takes the per-second figures every second (the timeline).
//! Nothing is allocated per request.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

pub use super::outcome::{ErrorKind, Outcome};

/// Latencies are recorded in microseconds, up to this bound (larger values are clamped).
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Statuses are counted in an array indexed by code; anything outside 100..=599 lands in 0.
const STATUS_SLOTS: usize = 600;

/// Cumulative counters of one shard (or of a merge of shards).
#[derive(Debug, Clone)]
pub struct Counters {
    /// Requests finished (responses + errors).
    pub requests: u64,
    /// Responses counted as successes (2xx, 3xx, or an expected status).
    pub success: u64,
    /// Responses by status code.
    pub statuses: Vec<u64>,
    /// Errors by kind (index: `ErrorKind as usize`).
    pub errors: [u64; ErrorKind::ALL.len()],
    /// Response body bytes received.
    pub bytes_received: u64,
    /// Request bytes sent (request bodies, or slowloris bytes).
    pub bytes_sent: u64,
    /// Connections opened.
    pub connections: u64,
    /// Slowloris: connections still held open when the run ended.
    pub held_at_end: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            requests: 0,
            success: 0,
            statuses: vec![0; STATUS_SLOTS],
            errors: [0; ErrorKind::ALL.len()],
            bytes_received: 0,
            bytes_sent: 0,
            connections: 0,
            held_at_end: 0,
        }
    }
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.success += other.success;
        for (a, b) in self.statuses.iter_mut().zip(&other.statuses) {
            *a += b;
        }
        for (a, b) in self.errors.iter_mut().zip(&other.errors) {
            *a += b;
        }
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.connections += other.connections;
        self.held_at_end += other.held_at_end;
    }

    /// `self - earlier`, counter by counter (for the per-second timeline).
    fn since(&self, earlier: &Counters) -> Counters {
        let mut d = self.clone();
        d.requests -= earlier.requests.min(d.requests);
        d.success -= earlier.success.min(d.success);
        for (a, b) in d.statuses.iter_mut().zip(&earlier.statuses) {
            *a -= (*b).min(*a);
        }
        for (a, b) in d.errors.iter_mut().zip(&earlier.errors) {
            *a -= (*b).min(*a);
        }
        d.bytes_received -= earlier.bytes_received.min(d.bytes_received);
        d.bytes_sent -= earlier.bytes_sent.min(d.bytes_sent);
        d.connections -= earlier.connections.min(d.connections);
        d
    }

    /// Errors of every kind.
    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Errors of one kind.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }

    /// `(status, count)` for every status seen, ascending.
    pub fn status_counts(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.statuses
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (u16::try_from(s).unwrap_or(0), *n))
    }

    /// Responses whose status is in `class` (2 for 2xx...).
    pub fn class_count(&self, class: u16) -> u64 {
        self.status_counts()
            .filter(|(s, _)| s / 100 == class)
            .map(|(_, n)| n)
            .sum()
    }
}

fn new_histogram(sigfig: u8) -> Histogram<u64> {
    // Constant bounds (1 µs to 1 h) and 2 or 3 significant figures: always accepted.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("constant histogram bounds")
}

/// One shard: where a group of workers record.
struct Shard {
    corrected: Histogram<u64>,
    uncorrected: Histogram<u64>,
    /// Corrected latencies since the last timeline tick (lower precision).
    interval: Histogram<u64>,
    counters: Counters,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            corrected: new_histogram(3),
            uncorrected: new_histogram(3),
            interval: new_histogram(2),
            counters: Counters::default(),
        }
    }
}

/// One point of the timeline: what happened during one interval (normally one second).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TimelinePoint {
    /// Seconds since the start of the run at the end of the interval.
    pub t: f64,
    /// The interval's length in seconds (1, except maybe the last).
    pub interval: f64,
    /// Requests finished in the interval.
    pub requests: u64,
    /// Requests finished per second.
    pub rps: f64,
    /// Errors (no response) in the interval.
    pub errors: u64,
    /// Responses by status class (`"2xx"`...) in the interval.
    pub status_classes: std::collections::BTreeMap<String, u64>,
    /// Responses by status code in the interval.
    pub statuses: std::collections::BTreeMap<String, u64>,
    /// Corrected latency percentiles in the interval, in ms (0 without responses).
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Where the workers of one scenario record.
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
    expected: Vec<u16>,
    /// Timeline state: the counters at the previous tick, and the points so far.
    timeline: Mutex<(Counters, Vec<TimelinePoint>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(MAX_LATENCY_US)
        .clamp(1, MAX_LATENCY_US)
}

impl Recorder {
    /// `shards` shards; `expected` statuses count as successes beside 2xx and 3xx.
    pub fn new(shards: usize, expected: Vec<u16>) -> Recorder {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::new()))
                .collect(),
            expected,
            timeline: Mutex::new((Counters::default(), Vec::new())),
        }
    }

    /// Whether a status counts as a success.
    pub fn is_success(&self, status: u16) -> bool {
        (200..400).contains(&status) || self.expected.contains(&status)
    }

    /// Records one finished request. `corrected` is measured from the intended send time,
    /// `uncorrected` from the actual one (the same in the closed model).
    pub fn record(
        &self,
        worker: usize,
        corrected: Duration,
        uncorrected: Duration,
        outcome: Outcome,
        bytes_sent: u64,
    ) {
        let success =
            matches!(outcome, Outcome::Response { status, .. } if self.is_success(status));
        let mut shard = lock(&self.shards[worker % self.shards.len()]);
        let c = &mut shard.counters;
        c.requests += 1;
        c.bytes_sent += bytes_sent;
        match outcome {
            Outcome::Response { status, bytes } => {
                let slot = usize::from(status);
                let slot = if (100..STATUS_SLOTS).contains(&slot) {
                    slot
                } else {
                    0
                };
                c.statuses[slot] += 1;
                c.bytes_received += bytes;
                if success {
                    c.success += 1;
                }
                let (cor, unc) = (us(corrected), us(uncorrected));
                shard.corrected.saturating_record(cor);
                shard.uncorrected.saturating_record(unc);
                shard.interval.saturating_record(cor);
            }
            Outcome::Error(kind) => c.errors[kind.index()] += 1,
        }
    }

    /// Records a slowloris connection that ended: how long it was held goes into the latency
    /// histograms whatever the outcome.
    pub fn record_held(&self, worker: usize, held: Duration, outcome: Outcome) {
        self.record(worker, held, held, outcome, 0);
        if let Outcome::Error(_) = outcome {
            let mut shard = lock(&self.shards[worker % self.shards.len()]);
            let v = us(held);
            shard.corrected.saturating_record(v);
            shard.uncorrected.saturating_record(v);
            shard.interval.saturating_record(v);
        }
    }

    /// A slowloris connection still held when the run ended: its hold time goes into the
    /// latency histograms (not into the requests).
    pub fn record_held_at_end(&self, worker: usize, held: Duration) {
        let mut shard = lock(&self.shards[worker % self.shards.len()]);
        shard.counters.held_at_end += 1;
        let v = us(held);
        shard.corrected.saturating_record(v);
        shard.uncorrected.saturating_record(v);
    }

    /// Counts requests that were due but never sent (see [`ErrorKind::Unsent`]).
    pub fn record_unsent(&self, n: u64) {
        let mut shard = lock(&self.shards[0]);
        shard.counters.requests += n;
        shard.counters.errors[ErrorKind::Unsent.index()] += n;
    }

    /// Counts a connection opened (and bytes sent outside a request, for slowloris).
    pub fn connection_opened(&self, worker: usize) {
        lock(&self.shards[worker % self.shards.len()])
            .counters
            .connections += 1;
    }

    /// Counts bytes sent outside a recorded request (slowloris).
    pub fn sent(&self, worker: usize, bytes: u64) {
        lock(&self.shards[worker % self.shards.len()])
            .counters
            .bytes_sent += bytes;
    }

    /// The cumulative counters now (for progress lines).
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for shard in &self.shards {
            total.add(&lock(shard).counters);
        }
        total
    }

    /// Closes the current timeline interval, ending `t` seconds after the run's start.
    /// Returns the new point.
    pub fn tick(&self, t: f64) -> TimelinePoint {
        let mut interval = new_histogram(2);
        let mut total = Counters::default();
        for shard in &self.shards {
            let mut shard = lock(shard);
            let _ = interval.add(&shard.interval);
            shard.interval.reset();
            total.add(&shard.counters);
        }
        let mut timeline = lock(&self.timeline);
        let (previous, points) = &mut *timeline;
        let delta = total.since(previous);
        let start = points.last().map_or(0.0, |p| p.t);
        let length = (t - start).max(1e-3);
        let ms = |q: f64| {
            if interval.is_empty() {
                0.0
            } else {
                interval.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let mut classes = std::collections::BTreeMap::new();
        let mut statuses = std::collections::BTreeMap::new();
        for (status, n) in delta.status_counts() {
            *classes.entry(format!("{}xx", status / 100)).or_insert(0) += n;
            statuses.insert(status.to_string(), n);
        }
        let point = TimelinePoint {
            t,
            interval: length,
            requests: delta.requests,
            rps: delta.requests as f64 / length,
            errors: delta.error_total(),
            status_classes: classes,
            statuses,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: if interval.is_empty() {
                0.0
            } else {
                interval.max() as f64 / 1000.0
            },
        };
        *previous = total;
        // A short last interval (the end of the run) joins the one before, so that a few
        // requests in a few milliseconds do not show as a spike of requests per second.
        if point.interval < 0.25
            && let Some(last) = points.last_mut()
        {
            let interval = last.interval + point.interval;
            last.t = point.t;
            last.requests += point.requests;
            last.rps = last.requests as f64 / interval;
            last.interval = interval;
            last.errors += point.errors;
            for (k, v) in &point.status_classes {
                *last.status_classes.entry(k.clone()).or_insert(0) += v;
            }
            for (k, v) in &point.statuses {
                *last.statuses.entry(k.clone()).or_insert(0) += v;
            }
            last.p50_ms = last.p50_ms.max(point.p50_ms);
            last.p90_ms = last.p90_ms.max(point.p90_ms);
            last.p99_ms = last.p99_ms.max(point.p99_ms);
            last.max_ms = last.max_ms.max(point.max_ms);
            return last.clone();
        }
        points.push(point.clone());
        point
    }

    /// The end of the last timeline interval, in seconds since the run's start.
    pub fn timeline_end(&self) -> f64 {
        lock(&self.timeline).1.last().map_or(0.0, |p| p.t)
    }

    /// Merges every shard into the final figures.
    pub fn finish(&self) -> Merged {
        let mut corrected = new_histogram(3);
        let mut uncorrected = new_histogram(3);
        let mut counters = Counters::default();
        for shard in &self.shards {
            let shard = lock(shard);
            let _ = corrected.add(&shard.corrected);
            let _ = uncorrected.add(&shard.uncorrected);
            counters.add(&shard.counters);
        }
        let timeline = lock(&self.timeline).1.clone();
        Merged {
            corrected,
            uncorrected,
            counters,
            timeline,
        }
    }
}

/// Everything a scenario recorded, merged.
pub struct Merged {
    pub corrected: Histogram<u64>,
    pub uncorrected: Histogram<u64>,
    pub counters: Counters,
    pub timeline: Vec<TimelinePoint>,
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct LatencySummary {
    pub min_ms: f64,
    pub mean_ms: f64,
    pub stdev_ms: f64,
    pub p50_ms: f64,
    pub p75_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub p99_99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// The summary of a histogram of microseconds (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        let q = |q: f64| ms(h.value_at_quantile(q));
        LatencySummary {
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            stdev_ms: h.stdev() / 1000.0,
            p50_ms: q(0.5),
            p75_ms: q(0.75),
            p90_ms: q(0.9),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            p99_9_ms: q(0.999),
            p99_99_ms: q(0.9999),
            max_ms: ms(h.max()),
        }
    }
}

/// The latency value (ms) at a quantile (0..=1) of a histogram of microseconds; 0 when empty.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q.clamp(0.0, 1.0)) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_merge_and_tick() {
        let r = Recorder::new(4, vec![429]);
        for i in 0..100u64 {
            r.record(
                i as usize,
                Duration::from_millis(i + 1),
                Duration::from_millis(1),
                Outcome::Response {
                    status: if i < 90 { 200 } else { 429 },
                    bytes: 10,
                },
                0,
            );
        }
        r.record(
            0,
            Duration::ZERO,
            Duration::ZERO,
            Outcome::Error(ErrorKind::Timeout),
            0,
        );
        let p = r.tick(1.0);
        assert_eq!(p.requests, 101);
        assert_eq!(p.errors, 1);
        assert_eq!(p.statuses.get("429"), Some(&10));
        let m = r.finish();
        assert_eq!(m.counters.requests, 101);
        assert_eq!(m.counters.success, 100);
        assert_eq!(m.counters.bytes_received, 1000);
        assert_eq!(m.counters.errors_of(ErrorKind::Timeout), 1);
        let s = LatencySummary::of(&m.corrected);
        assert!((s.p50_ms - 50.0).abs() < 1.0, "{s:?}");
        assert!((LatencySummary::of(&m.uncorrected).max_ms - 1.0).abs() < 0.01);
        let p2 = r.tick(2.0);
        assert_eq!(p2.requests, 0);
    }
}
