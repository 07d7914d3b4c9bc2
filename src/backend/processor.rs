//! The simulated processor: a processor-sharing model of a server with limited capacity.
//!
//! Every request in flight shares the server. While at most `capacity` requests are in flight each
//! progresses at full speed; beyond it each progresses at `capacity / in_flight` of full speed, so
//! every extra request slows all of them (8 requests on a capacity of 2 all take 4 times longer).
//!
//! The model keeps a virtual clock that advances at the per-request speed; a request with `w` of
//! work that starts at virtual time `v` finishes when the clock reaches `v + w`. One driver task
//! per server sleeps until the next finish and wakes the finished requests, so the cost is
//! O(log n) per event rather than a timer per request per tick.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Virtual time within this distance (nanoseconds) of a target counts as reached, so rounding
/// never leaves the driver spinning on a 1 ns remainder.
const SLACK_NS: f64 = 1_000.0;

/// The shared processor of one simulated server; also the owner of its in-flight count.
pub(crate) struct Processor {
    state: Mutex<State>,
    /// Wakes the driver when something changes (a new job, the concurrency, the capacity).
    wake: Notify,
    /// Mirror of `State::in_flight` readable without the lock.
    in_flight: AtomicU64,
}

struct State {
    capacity: u32,
    in_flight: u64,
    /// Virtual nanoseconds of work done by each request in flight since the clock was reset.
    vtime: f64,
    last: Instant,
    next_id: u64,
    /// Waiting jobs by (virtual finish time, id).
    jobs: BTreeMap<(u64, u64), oneshot::Sender<()>>,
}

impl State {
    /// Speed of each request in flight, as a fraction of full speed.
    fn speed(&self) -> f64 {
        let capacity = u64::from(self.capacity.max(1));
        if self.in_flight <= capacity {
            1.0
        } else {
            capacity as f64 / self.in_flight as f64
        }
    }

    /// Advance the virtual clock to `now` at the speed that held since the last change.
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos() as f64;
        self.last = now;
        if self.jobs.is_empty() {
            // Nobody waits on the clock: restart it so it never grows large enough to lose
            // precision.
            self.vtime = 0.0;
        } else {
            self.vtime += elapsed * self.speed();
        }
    }

    /// Wake every job whose work is done.
    fn release_finished(&mut self) {
        while let Some(entry) = self.jobs.first_entry() {
            if entry.key().0 as f64 > self.vtime + SLACK_NS {
                break;
            }
            // The receiver may be gone (request cancelled); nothing to do then.
            let _ = entry.remove().send(());
        }
    }

    /// When the next job finishes if nothing changes.
    fn next_finish(&self, now: Instant) -> Option<Instant> {
        let (&(target, _), _) = self.jobs.first_key_value()?;
        let remaining = (target as f64 - self.vtime).max(0.0);
        let real = (remaining / self.speed()).ceil();
        // Saturate absurdly long waits (a huge latency) instead of overflowing.
        let real = Duration::from_nanos(real.min(u64::MAX as f64) as u64);
        Some(
            now.checked_add(real)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        )
    }
}

impl Processor {
    /// A processor with `capacity` (0 is treated as 1).
    pub(crate) fn new(capacity: u32) -> Processor {
        Processor {
            state: Mutex::new(State {
                capacity: capacity.max(1),
                in_flight: 0,
                vtime: 0.0,
                last: Instant::now(),
                next_id: 0,
                jobs: BTreeMap::new(),
            }),
            wake: Notify::new(),
            in_flight: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// A request enters; returns the number in flight including it.
    pub(crate) fn enter(&self) -> u64 {
        let count = {
            let mut state = self.lock();
            state.advance(Instant::now());
            state.in_flight += 1;
            self.in_flight.store(state.in_flight, Ordering::SeqCst);
            state.in_flight
        };
        self.wake.notify_one();
        count
    }

    /// A request leaves (completed or cancelled).
    pub(crate) fn leave(&self) {
        {
            let mut state = self.lock();
            state.advance(Instant::now());
            state.in_flight = state.in_flight.saturating_sub(1);
            self.in_flight.store(state.in_flight, Ordering::SeqCst);
        }
        self.wake.notify_one();
    }

    /// Change the capacity from now on (0 is treated as 1).
    pub(crate) fn set_capacity(&self, capacity: u32) {
        {
            let mut state = self.lock();
            state.advance(Instant::now());
            state.capacity = capacity.max(1);
        }
        self.wake.notify_one();
    }

    /// Do `work` at the shared speed; returns when it is done. The caller must be counted in
    /// flight (between [`Processor::enter`] and [`Processor::leave`]). Cancel-safe.
    pub(crate) async fn work(&self, work: Duration) {
        if work.is_zero() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let key = {
            let mut state = self.lock();
            state.advance(Instant::now());
            let target = (state.vtime + work.as_nanos() as f64).ceil();
            let key = (target.min(u64::MAX as f64) as u64, state.next_id);
            state.next_id += 1;
            state.jobs.insert(key, tx);
            key
        };
        self.wake.notify_one();
        let _job = Job {
            processor: self,
            key,
        };
        // An error means the driver is gone (server shut down): nothing left to wait for.
        let _ = rx.await;
    }

    /// The driver: wakes jobs as they finish. Runs until the server shuts it down.
    pub(crate) async fn drive(self: Arc<Self>) {
        loop {
            let next = {
                let mut state = self.lock();
                let now = Instant::now();
                state.advance(now);
                state.release_finished();
                state.next_finish(now)
            };
            match next {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

/// Removes a job from the processor when its request finishes or is cancelled.
struct Job<'a> {
    processor: &'a Processor,
    key: (u64, u64),
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        let mut state = self.processor.lock();
        state.advance(Instant::now());
        state.jobs.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time (the crate has no tokio `test-util`), so the upper bounds are loose.

    #[tokio::test]
    async fn within_capacity_runs_at_full_speed() {
        let processor = Arc::new(Processor::new(2));
        let driver = tokio::spawn(processor.clone().drive());
        let start = Instant::now();
        processor.enter();
        processor.enter();
        tokio::join!(
            processor.work(Duration::from_millis(50)),
            processor.work(Duration::from_millis(50))
        );
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(50), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(150), "{elapsed:?}");
        driver.abort();
    }

    #[tokio::test]
    async fn beyond_capacity_every_request_slows_down() {
        let processor = Arc::new(Processor::new(2));
        let driver = tokio::spawn(processor.clone().drive());
        let start = Instant::now();
        for _ in 0..8 {
            processor.enter();
        }
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let processor = processor.clone();
                tokio::spawn(async move {
                    processor.work(Duration::from_millis(50)).await;
                    let done = start.elapsed();
                    processor.leave();
                    done
                })
            })
            .collect();
        // 8 requests on a capacity of 2: each at a quarter of full speed, so about 200ms; they
        // all finish together.
        for job in jobs {
            let done = job.await.expect("job task");
            assert!(done >= Duration::from_millis(195), "{done:?}");
            assert!(done < Duration::from_millis(400), "{done:?}");
        }
        assert_eq!(processor.in_flight(), 0);
        driver.abort();
    }

    #[tokio::test]
    async fn speed_recovers_when_requests_leave() {
        let processor = Arc::new(Processor::new(1));
        let driver = tokio::spawn(processor.clone().drive());
        let start = Instant::now();
        processor.enter();
        processor.enter();
        // Two requests share a capacity of 1: the short one needs 50ms of work, done at 100ms;
        // the long one has done 50ms of its 100ms by then, and finishes alone 50ms later.
        let short = async {
            processor.work(Duration::from_millis(50)).await;
            processor.leave();
            start.elapsed()
        };
        let long = async {
            processor.work(Duration::from_millis(100)).await;
            processor.leave();
            start.elapsed()
        };
        let (short, long) = tokio::join!(short, long);
        assert!(short >= Duration::from_millis(99), "{short:?}");
        assert!(short < Duration::from_millis(140), "{short:?}");
        assert!(long >= Duration::from_millis(149), "{long:?}");
        assert!(long < Duration::from_millis(200), "{long:?}");
        driver.abort();
    }
}
