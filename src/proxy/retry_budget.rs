//! The retry budget of a pool: retries may be at most `ratio` of the requests seen over a
//! sliding window (plus a small floor per second), so retries can never multiply the load on
//! a struggling pool. Per-second buckets of atomics; no lock on the request path.

use crate::clock::now_ms;
use std::sync::atomic::{AtomicU64, Ordering};

const MAX_BUCKETS: usize = 60;

#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A sliding-window retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    buckets: Box<[Bucket]>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            buckets: (0..MAX_BUCKETS).map(|_| Bucket::default()).collect(),
        }
    }
}

impl RetryBudget {
    fn bucket(&self, sec: u64) -> &Bucket {
        let b = &self.buckets[(sec as usize) % MAX_BUCKETS];
        let seen = b.second.load(Ordering::Acquire);
        if seen != sec
            && b.second
                .compare_exchange(seen, sec, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Release);
            b.retries.store(0, Ordering::Release);
        }
        b
    }

    /// Counts an original request.
    pub fn record_request(&self) {
        self.bucket(now_ms() / 1000)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget if there is one left.
    pub fn try_retry(&self, ratio: f64, window_secs: u64, min_per_second: u32) -> bool {
        let now = now_ms() / 1000;
        let window = window_secs.clamp(1, MAX_BUCKETS as u64 - 1);
        let (mut reqs, mut retries) = (0u64, 0u64);
        for sec in now.saturating_sub(window - 1)..=now {
            let b = &self.buckets[(sec as usize) % MAX_BUCKETS];
            if b.second.load(Ordering::Acquire) == sec {
                reqs += b.requests.load(Ordering::Relaxed);
                retries += b.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = ratio * reqs as f64 + f64::from(min_per_second) * window as f64;
        if (retries as f64) < allowed.floor() {
            self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_caps_retries_at_the_ratio() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request();
        }
        let granted = (0..100).filter(|_| b.try_retry(0.2, 10, 0)).count();
        assert_eq!(granted, 20);
    }
}
