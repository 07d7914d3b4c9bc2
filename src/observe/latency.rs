//! A lock-free latency histogram: atomics only, so recording a request takes no lock and
//! allocates nothing, and the per-second history can read the bucket counts (to compute p99
//! over any window) without going through the exposition format.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the buckets; a last, implicit `+Inf` bucket follows.
pub const BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets including `+Inf`.
pub const NB: usize = BOUNDS.len() + 1;

/// Per-bucket (not cumulative) counts.
pub type Buckets = [u64; NB];

#[derive(Debug, Default)]
struct Inner {
    buckets: [AtomicU64; NB],
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

/// A cheap-to-clone handle.
#[derive(Debug, Clone, Default)]
pub struct Latency(Arc<Inner>);

impl Latency {
    /// Records one duration in seconds.
    pub fn observe(&self, secs: f64) {
        let i = BOUNDS.iter().position(|b| secs <= *b).unwrap_or(NB - 1);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        let us = (secs.max(0.0) * 1e6) as u64;
        self.0.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The current per-bucket counts.
    pub fn buckets(&self) -> Buckets {
        std::array::from_fn(|i| self.0.buckets[i].load(Ordering::Relaxed))
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets().iter().sum()
    }
}

/// Adds `b` into `a`.
pub fn add(a: &mut Buckets, b: &Buckets) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// `a - b`, saturating.
pub fn sub(a: &Buckets, b: &Buckets) -> Buckets {
    std::array::from_fn(|i| a[i].saturating_sub(b[i]))
}

/// The `q` quantile (0..1) in seconds, as the upper bound of the bucket it falls in (what
/// Prometheus' `histogram_quantile` would say, without interpolation, so never optimistic).
/// `None` without observations. The `+Inf` bucket reports the largest finite bound.
pub fn quantile(b: &Buckets, q: f64) -> Option<f64> {
    let total: u64 = b.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in b.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(BOUNDS.get(i).copied().unwrap_or(BOUNDS[BOUNDS.len() - 1]));
        }
    }
    Some(BOUNDS[BOUNDS.len() - 1])
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let b = self.buckets();
        let buckets: Vec<(f64, u64)> = b
            .iter()
            .enumerate()
            .map(|(i, n)| (BOUNDS.get(i).copied().unwrap_or(f64::MAX), *n))
            .collect();
        let count = b.iter().sum();
        let sum = self.0.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<()>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_bucket_bound() {
        let l = Latency::default();
        for _ in 0..99 {
            l.observe(0.004);
        }
        l.observe(2.0);
        let b = l.buckets();
        assert_eq!(quantile(&b, 0.99), Some(0.005));
        assert_eq!(quantile(&b, 1.0), Some(2.5));
        assert_eq!(quantile(&[0; NB], 0.99), None);
    }
}
