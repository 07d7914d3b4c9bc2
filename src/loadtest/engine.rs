//! The load models: closed (a number of connections, each sending its next request when the
//! previous one is answered) and open (requests sent at a rate, whatever the answers).
//!
//! The open model never hides queueing: request `n`'s intended send time comes from the rate
//! alone. At that time a dispatcher hands it to the idle connection worker that finished last (at
//! most `max_connections` of them). When none is free the request waits, and its latency is
//! counted from the intended time, as wrk2 does (coordinated omission corrected); the uncorrected
//! latency, from the actual send, is recorded beside it. A worker that finishes when the next
//! request is already due (the schedule is behind, or requests come faster than answers) claims
//! it itself, without the dispatcher. No channel per request: an atomic claim, at most a wake-up
//! per request, and one timer per batch of requests due at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::conn::{Connector, RequestTemplate, Slot};
use super::plan::{HttpPlan, Load, Model, Plan};
use super::stats::Recorder;

/// Tells every part of a run to stop (end of the run, or Ctrl-C), and when it was told.
pub struct StopSignal {
    flag: AtomicBool,
    tx: watch::Sender<Option<Instant>>,
}

impl StopSignal {
    pub fn new() -> Arc<StopSignal> {
        Arc::new(StopSignal {
            flag: AtomicBool::new(false),
            tx: watch::channel(None).0,
        })
    }

    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.tx.send_if_modified(|at| {
            let first = at.is_none();
            if first {
                *at = Some(Instant::now());
            }
            first
        });
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// When [`StopSignal::stop`] was first called.
    pub fn stopped_at(&self) -> Option<Instant> {
        *self.tx.borrow()
    }

    /// Resolves once [`StopSignal::stop`] was called.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        while rx.borrow_and_update().is_none() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// When a scenario's load really started and ended.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub start: Instant,
    pub end: Instant,
}

/// Everything a worker of an HTTP scenario needs.
struct Shared {
    plan: Arc<Plan>,
    connector: Arc<Connector>,
    template: RequestTemplate,
    recorder: Arc<Recorder>,
    stop: Arc<StopSignal>,
}

/// Runs an HTTP scenario to its end (duration, request count, or stop).
pub async fn run_http(
    plan: Arc<Plan>,
    http: &HttpPlan,
    recorder: Arc<Recorder>,
    stop: Arc<StopSignal>,
) -> Span {
    let shared = Arc::new(Shared {
        connector: Connector::new(&plan),
        template: RequestTemplate::new(&plan, http),
        plan: plan.clone(),
        recorder,
        stop,
    });
    let (mut workers, open_run, start) = match &http.model {
        Model::Closed { connections } => {
            let start = Instant::now();
            let workers = closed(shared.clone(), connections.clone(), start).await;
            (workers, None, start)
        }
        Model::Open {
            rate,
            max_connections,
        } => {
            let (workers, run, start) = open(shared.clone(), rate, *max_connections as usize).await;
            (workers, Some(run), start)
        }
    };
    let grace = match open_run {
        Some(_) => plan.timeout + LATE_SEND_GRACE + Duration::from_millis(500),
        None => plan.timeout + Duration::from_millis(500),
    };
    drain(&mut workers, grace).await;
    if let Some((schedule, cutoff)) = open_run {
        // Requests due before the end (or the stop) that no connection could send.
        let due = schedule.due_before(cutoff);
        let sent = schedule.next.load(Ordering::SeqCst);
        if due != u64::MAX && due > sent {
            shared.recorder.record_unsent(due - sent);
        }
    }
    Span {
        start,
        end: Instant::now(),
    }
}

/// Waits for the workers to finish their last request, at most `grace`; aborts the rest.
pub async fn drain(workers: &mut JoinSet<()>, grace: Duration) {
    let deadline = Instant::now() + grace;
    while !workers.is_empty() {
        match tokio::time::timeout_at(deadline, workers.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                workers.abort_all();
                while workers.join_next().await.is_some() {}
                break;
            }
        }
    }
}

/// The closed model: `connections` workers (following the stages if any), each sending a request
/// as soon as the previous one is answered. Returns when the load phase is over.
async fn closed(shared: Arc<Shared>, connections: Load, start: Instant) -> JoinSet<()> {
    let plan = &shared.plan;
    let deadline = plan.duration.map(|d| start + d);
    let budget = plan.requests.map(|n| Arc::new(AtomicU64::new(n)));
    let max = connections.max().ceil().max(0.0) as usize;
    let active = Arc::new(AtomicUsize::new(connections.at(0.0).round() as usize));
    let (active_tx, active_rx) = watch::channel(());
    let mut workers = JoinSet::new();
    for id in 0..max {
        workers.spawn(closed_worker(
            id,
            shared.clone(),
            deadline,
            budget.clone(),
            active.clone(),
            active_rx.clone(),
        ));
    }
    if matches!(connections, Load::Stages { .. }) {
        // Follow the stages until the end of the run.
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shared.stop.wait() => break,
            }
            if deadline.is_some_and(|d| Instant::now() >= d) || active_tx.is_closed() {
                break;
            }
            let target = connections.at(start.elapsed().as_secs_f64()).round() as usize;
            if active.swap(target, Ordering::SeqCst) != target {
                active_tx.send_replace(());
            }
        }
    }
    // Wait for the load phase to end: the deadline, the request budget, or a stop.
    let end = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let mut finished = JoinSet::new();
    tokio::select! {
        _ = end => {}
        _ = shared.stop.wait() => {}
        _ = async { while workers.join_next().await.is_some() {} } => {}
    }
    std::mem::swap(&mut finished, &mut workers);
    finished
}

async fn closed_worker(
    id: usize,
    shared: Arc<Shared>,
    deadline: Option<Instant>,
    budget: Option<Arc<AtomicU64>>,
    active: Arc<AtomicUsize>,
    mut active_rx: watch::Receiver<()>,
) {
    let mut slot = Slot::new();
    let body_len = shared.template.body_len();
    // One clock reading per request: the end of one request is the start of the next.
    let mut now = Instant::now();
    loop {
        if shared.stop.is_stopped() || deadline.is_some_and(|d| now >= d) {
            return;
        }
        if id >= active.load(Ordering::Relaxed) {
            // Not needed at this stage: close the connection and wait for the level to change.
            slot.close();
            let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                changed = active_rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(until) => return,
                _ = shared.stop.wait() => return,
            }
            now = Instant::now();
            continue;
        }
        if let Some(budget) = &budget
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        {
            return;
        }
        let sent = now;
        let recorder = &shared.recorder;
        let outcome = slot
            .send(
                &shared.connector,
                &shared.template,
                shared.plan.timeout,
                sent,
                || recorder.connection_opened(id),
            )
            .await;
        now = Instant::now();
        let latency = now.saturating_duration_since(sent);
        recorder.record(id, latency, latency, outcome, body_len);
    }
}

/// How late a request may be sent (every connection busy at its intended time) before the
/// pool of connections grows by one.
const LATE: Duration = Duration::from_millis(2);

/// Open model: when the next request is due within this, the dispatcher polls instead of
/// sleeping until then. At rates of tens of thousands per second the gaps are a few
/// microseconds: a sleep and wake-up of the thread (about 1.1 µs of CPU per request measured on
/// a 2-core VM at 55k/s) costs a generator running near its limit more than the gap, and the
/// thread is busy anyway. At lower rates (gaps above this) it sleeps as before.
const SPIN: Duration = Duration::from_micros(50);

/// Open model: requests due before the end of the run may still be sent this long after it
/// (they are late, and their latency says so); those still waiting then count as unsent.
const LATE_SEND_GRACE: Duration = Duration::from_secs(1);

/// The open model's schedule: request `n` is due at a time fixed by the rate alone.
struct Schedule {
    rate: Load,
    /// A constant rate: request `n` is due at exactly `n / rate` (no drift).
    constant: Option<f64>,
    /// End of the run in seconds, if it has one.
    end: Option<f64>,
    limit: Option<u64>,
    /// The next request to send: requests `0..next` were claimed, each by the dispatcher for an
    /// idle worker or by a worker that finished when it was already due, and sent.
    next: AtomicU64,
    /// Set when the dispatch is over: no worker claims another request.
    over: AtomicBool,
}

impl Schedule {
    /// When request `n` is due (seconds from the start); `None` past the end of the run.
    fn time_of(&self, n: u64) -> Option<f64> {
        if self.limit.is_some_and(|l| n >= l) {
            return None;
        }
        let t = match self.constant {
            Some(r) => n as f64 / r,
            None => self.rate.time_of(n)?,
        };
        (!self.end.is_some_and(|e| t >= e)).then_some(t)
    }

    /// Claims the next request if it is due by `now` (from a worker that just finished: when
    /// the schedule is behind or the next request is due at once, it goes out without the
    /// dispatcher and two wake-ups). `None` when it is not due yet, or there is none.
    fn claim_due(&self, start: Instant, now: Instant) -> Option<u64> {
        if self.over.load(Ordering::Relaxed) {
            return None;
        }
        let elapsed = now.saturating_duration_since(start).as_secs_f64();
        let mut n = self.next.load(Ordering::SeqCst);
        loop {
            if self.time_of(n)? > elapsed {
                return None;
            }
            match self
                .next
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(n),
                Err(current) => n = current,
            }
        }
    }

    /// Requests due in the first `t` seconds (within the limit).
    fn due_before(&self, t: f64) -> u64 {
        let t = self.end.map_or(t, |e| t.min(e));
        let due = if t.is_finite() {
            self.rate.integral(t).ceil() as u64
        } else {
            u64::MAX
        };
        self.limit.map_or(due, |l| due.min(l))
    }
}

/// No request handed to an open-model worker.
const NO_REQUEST: u64 = u64::MAX;
/// Handed to an open-model worker: nothing more to send, end.
const END: u64 = u64::MAX - 1;

/// An open-model worker as the dispatcher sees it: where its next request is handed over.
struct Hand {
    /// The request handed over (its number in the schedule), [`NO_REQUEST`] or [`END`].
    request: AtomicU64,
    wake: Notify,
}

/// The open model's idle workers, the one that finished last on top: each request goes to the
/// connection used last, so only as many connections as the load needs stay busy and the rest
/// sit idle (a server spends more per request when the same load is spread thin over many
/// connections).
#[derive(Default)]
struct Idle {
    /// The idle workers, and whether the dispatch is over (then none may wait any more).
    stack: Mutex<(Vec<Arc<Hand>>, bool)>,
    /// Set while the dispatcher waits for an idle worker.
    awaited: AtomicBool,
    freed: Notify,
}

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Arc<Hand>>, bool)> {
        self.stack
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A worker is idle; `false` once the dispatch is over (the worker ends).
    fn push(&self, hand: &Arc<Hand>) -> bool {
        {
            let mut idle = self.lock();
            if idle.1 {
                return false;
            }
            idle.0.push(hand.clone());
        }
        if self.awaited.load(Ordering::SeqCst) {
            self.freed.notify_one();
        }
        true
    }

    fn pop(&self) -> Option<Arc<Hand>> {
        self.lock().0.pop()
    }

    /// The dispatch is over: every idle worker ends, and the busy ones when done.
    fn end_all(&self) {
        let idle = {
            let mut idle = self.lock();
            idle.1 = true;
            std::mem::take(&mut idle.0)
        };
        for hand in idle {
            hand.request.store(END, Ordering::SeqCst);
            hand.wake.notify_one();
        }
    }
}

/// The open model: request `n` is due at its intended time, computed from the rate alone. This
/// task is the dispatcher: at each request's time it hands it to the idle worker that finished
/// last, which sends it at once and records its latency from the intended time; a worker that
/// finishes after the next request's time takes it directly ([`Schedule::claim_due`]), so a
/// schedule that fell behind catches up as fast as the connections answer. When no worker
/// is idle the request waits (and its latency says so); when it waited more than [`LATE`], one
/// more worker (a connection) is started, up to `max_connections`. Requests still unsent when
/// the run ends count as `unsent` errors.
async fn open(
    shared: Arc<Shared>,
    rate: &Load,
    max_connections: usize,
) -> (JoinSet<()>, (Arc<Schedule>, f64), Instant) {
    let plan = shared.plan.clone();
    let max = max_connections.max(1);
    // Enough connections for 10ms answers at the peak rate; more are added when needed.
    let initial = ((rate.max() * 0.01).ceil() as usize).clamp(1, max);
    // Those needed at the start are opened before the schedule starts; without keep-alive
    // each request opens its own, and one opened ahead might never carry any.
    let ready = if shared.template.keepalive() {
        ((rate.at(0.0) * 0.01).ceil() as usize).min(initial)
    } else {
        0
    };
    let mut slots = preconnect(&shared, ready).await;
    let start = Instant::now();
    let schedule = Arc::new(Schedule {
        rate: rate.clone(),
        constant: match rate {
            Load::Constant(r) => Some(*r),
            Load::Stages { .. } => None,
        },
        end: plan.duration.map(|d| d.as_secs_f64()),
        limit: plan.requests,
        next: AtomicU64::new(0),
        over: AtomicBool::new(false),
    });
    let deadline = plan.duration.map(|d| start + d);
    let idle = Arc::new(Idle::default());
    let mut workers = JoinSet::new();
    let mut count = 0;
    let spawn = |workers: &mut JoinSet<()>, count: &mut usize, slot: Slot| {
        let hand = Arc::new(Hand {
            request: AtomicU64::new(NO_REQUEST),
            wake: Notify::new(),
        });
        workers.spawn(open_worker(
            *count,
            shared.clone(),
            schedule.clone(),
            start,
            idle.clone(),
            hand,
            slot,
        ));
        *count += 1;
    };
    for _ in 0..initial {
        spawn(&mut workers, &mut count, slots.pop().unwrap_or_default());
    }
    let pace = tokio::time::sleep_until(start);
    tokio::pin!(pace);
    let stopped = shared.stop.wait();
    tokio::pin!(stopped);
    let mut grown_at: Option<Instant> = None;
    'dispatch: loop {
        // Workers that finish after a request is due claim it themselves: the next one to
        // hand over is whatever is left.
        let n = schedule.next.load(Ordering::SeqCst);
        let Some(t) = schedule.time_of(n) else {
            break;
        };
        let intended = start + Duration::from_secs_f64(t);
        let mut now = Instant::now();
        if intended > now {
            // The timer wakes on whole milliseconds: alone, it would send a millisecond's worth
            // of requests at once (71 at 71k/s, more than 64 connections can take). A worker
            // freed meanwhile also wakes the dispatcher, which then sends what has come due: at
            // high rates answers come back every few microseconds, so requests go out close to
            // their times, spread as the schedule spreads them.
            if pace.deadline() != intended {
                pace.as_mut().reset(intended);
            }
            while intended > now {
                if schedule.next.load(Ordering::SeqCst) != n {
                    continue 'dispatch;
                }
                if intended - now <= SPIN {
                    // Due in a few microseconds: poll (the runtime checks its sockets on each
                    // yield) rather than sleep; see [`SPIN`].
                    tokio::task::yield_now().await;
                    if shared.stop.is_stopped() {
                        break 'dispatch;
                    }
                    now = Instant::now();
                    continue;
                }
                idle.awaited.store(true, Ordering::SeqCst);
                tokio::select! {
                    biased;
                    _ = &mut stopped => break 'dispatch,
                    _ = pace.as_mut() => {}
                    _ = idle.freed.notified() => {}
                }
                idle.awaited.store(false, Ordering::SeqCst);
                now = Instant::now();
            }
        }
        let hand = loop {
            if schedule.next.load(Ordering::SeqCst) != n {
                continue 'dispatch;
            }
            if let Some(hand) = idle.pop() {
                break hand;
            }
            // Every worker is busy: the request waits, and the pool grows once it is late, by
            // one connection per LATE at most (the dispatcher also wakes for other reasons, and
            // a new worker goes on top of the idle stack, where it would spread the load).
            if now.saturating_duration_since(intended) > LATE
                && count < max
                && grown_at.is_none_or(|at| now.saturating_duration_since(at) >= LATE)
            {
                spawn(&mut workers, &mut count, Slot::new());
                grown_at = Some(now);
            }
            idle.awaited.store(true, Ordering::SeqCst);
            if let Some(hand) = idle.pop() {
                idle.awaited.store(false, Ordering::SeqCst);
                break hand;
            }
            let give_up = deadline.map(|d| d + LATE_SEND_GRACE);
            let wait_late = async {
                match give_up {
                    // A late request waits until the pool grows again, or the end of the grace.
                    Some(g) => tokio::time::sleep_until(g.min(now + LATE)).await,
                    None => tokio::time::sleep_until(now + LATE).await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut stopped => break 'dispatch,
                _ = idle.freed.notified() => {}
                _ = wait_late => {}
            }
            idle.awaited.store(false, Ordering::SeqCst);
            now = Instant::now();
            if give_up.is_some_and(|g| now >= g) {
                // Long past the end of the run: the rest were never sent (counted as unsent).
                break 'dispatch;
            }
        };
        if schedule
            .next
            .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // A worker that just finished took it: this one stays idle, on top.
            idle.push(&hand);
            continue;
        }
        hand.request.store(n, Ordering::SeqCst);
        hand.wake.notify_one();
    }
    // Nothing more to hand over: idle workers end now, busy ones after their request.
    schedule.over.store(true, Ordering::SeqCst);
    idle.end_all();
    // Requests due before the stop (or the end) and never sent are counted once the workers
    // are done; those due after the stop was asked for are not missing.
    let cutoff = match shared.stop.stopped_at() {
        Some(at) => at.saturating_duration_since(start).as_secs_f64(),
        None => f64::INFINITY,
    };
    (workers, (schedule, cutoff), start)
}

/// How long the open model waits for its first connections before starting anyway (those not
/// open by then are opened by their first request, as usual).
const PRECONNECT_WAIT: Duration = Duration::from_secs(1);

/// Opens `n` connections at once before the open model's schedule starts, so that the first
/// requests do not queue behind the whole pool's handshakes (their latency would show the
/// generator's start-up, not the server). Connections that fail or take longer than
/// [`PRECONNECT_WAIT`] are left to the first request, which then counts the error.
async fn preconnect(shared: &Arc<Shared>, n: usize) -> Vec<Slot> {
    let mut tasks = JoinSet::new();
    for id in 0..n {
        let shared = shared.clone();
        tasks.spawn(async move {
            let mut slot = Slot::new();
            if slot.connect(&shared.connector, PRECONNECT_WAIT).await {
                shared.recorder.connection_opened(id);
            }
            slot
        });
    }
    let mut slots = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        if let Ok(slot) = done {
            slots.push(slot);
        }
    }
    slots
}

async fn open_worker(
    id: usize,
    shared: Arc<Shared>,
    schedule: Arc<Schedule>,
    start: Instant,
    idle: Arc<Idle>,
    hand: Arc<Hand>,
    mut slot: Slot,
) {
    let body_len = shared.template.body_len();
    let recorder = &shared.recorder;
    let mut now = Instant::now();
    loop {
        if shared.stop.is_stopped() {
            return;
        }
        let n = match schedule.claim_due(start, now) {
            Some(n) => n,
            None => {
                if !idle.push(&hand) {
                    return;
                }
                // The dispatcher ends every idle worker when it stops, for whatever reason (the
                // end of the schedule, a stop, giving up), so the wake-up is the only thing to
                // wait for.
                loop {
                    hand.wake.notified().await;
                    match hand.request.swap(NO_REQUEST, Ordering::SeqCst) {
                        NO_REQUEST => continue,
                        END => return,
                        n => break n,
                    }
                }
            }
        };
        let Some(t) = schedule.time_of(n) else {
            return;
        };
        let intended = start + Duration::from_secs_f64(t);
        let sent = Instant::now();
        let outcome = slot
            .send(
                &shared.connector,
                &shared.template,
                shared.plan.timeout,
                sent,
                || recorder.connection_opened(id),
            )
            .await;
        now = Instant::now();
        recorder.record(
            id,
            now.saturating_duration_since(intended),
            now.saturating_duration_since(sent),
            outcome,
            body_len,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(rate: f64, limit: Option<u64>) -> Schedule {
        Schedule {
            rate: Load::Constant(rate),
            constant: Some(rate),
            end: Some(10.0),
            limit,
            next: AtomicU64::new(0),
            over: AtomicBool::new(false),
        }
    }

    #[test]
    fn a_finished_worker_claims_only_requests_already_due_and_each_once() {
        // 1,000 requests/s: request n is due at n ms.
        let s = schedule(1000.0, None);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(s.claim_due(start, at(0)), Some(0));
        // 2.5 ms in: requests 1 and 2 are due, 3 is not.
        assert_eq!(
            s.claim_due(start, at(2) + Duration::from_micros(500)),
            Some(1)
        );
        assert_eq!(
            s.claim_due(start, at(2) + Duration::from_micros(500)),
            Some(2)
        );
        assert_eq!(s.claim_due(start, at(2) + Duration::from_micros(500)), None);
        assert_eq!(s.next.load(Ordering::SeqCst), 3, "nothing claimed ahead");
        // The schedule is behind: requests 3..=9 are all due at 9 ms, claimed in order.
        let got: Vec<u64> = std::iter::from_fn(|| s.claim_due(start, at(9))).collect();
        assert_eq!(got, (3..=9).collect::<Vec<_>>());
        // Once the dispatch is over, nothing more is claimed.
        s.over.store(true, Ordering::SeqCst);
        assert_eq!(s.claim_due(start, at(100)), None);
    }

    #[test]
    fn claims_stop_at_the_request_limit_and_never_repeat_across_threads() {
        let s = Arc::new(schedule(1_000_000.0, Some(20_000)));
        let start = Instant::now();
        let late = start + Duration::from_secs(1);
        let claimers: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    std::iter::from_fn(|| s.claim_due(start, late)).collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = claimers
            .into_iter()
            .flat_map(|c| c.join().unwrap_or_default())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..20_000).collect::<Vec<_>>(), "each request once");
    }
}
