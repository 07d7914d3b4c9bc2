//! The load models: closed (a number of connections, each sending its next request when the
//! previous one is answered) and open (requests sent at a rate, whatever the answers).
//!
//! The open model never hides queueing: a dispatcher computes each request's intended send time
//! from the rate alone and hands it to an idle connection worker (at most `max_connections`). When
//! none is free the request waits, and its latency is counted from the intended time, as wrk2 does
//! (coordinated omission corrected); the uncorrected latency, from the actual send, is recorded
//! beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::conn::{Connector, RequestTemplate, Slot};
use super::plan::{HttpPlan, Load, Model, Plan};
use super::stats::Recorder;

/// Tells every part of a run to stop (end of the run, or Ctrl-C).
pub struct StopSignal {
    flag: AtomicBool,
    tx: watch::Sender<bool>,
}

impl StopSignal {
    pub fn new() -> Arc<StopSignal> {
        Arc::new(StopSignal {
            flag: AtomicBool::new(false),
            tx: watch::channel(false).0,
        })
    }

    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.tx.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Resolves once [`StopSignal::stop`] was called.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        while !*rx.borrow_and_update() {
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
    let start = Instant::now();
    let mut workers = match &http.model {
        Model::Closed { connections } => closed(shared.clone(), connections.clone(), start).await,
        Model::Open {
            rate,
            max_connections,
        } => open(shared.clone(), rate, *max_connections as usize, start).await,
    };
    drain(&mut workers, plan.timeout + Duration::from_millis(500)).await;
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
    loop {
        if shared.stop.is_stopped() || deadline.is_some_and(|d| Instant::now() >= d) {
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
            continue;
        }
        if let Some(budget) = &budget
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        {
            return;
        }
        let sent = Instant::now();
        let recorder = &shared.recorder;
        let outcome = slot
            .send(
                &shared.connector,
                &shared.template,
                shared.plan.timeout,
                || recorder.connection_opened(id),
            )
            .await;
        let latency = sent.elapsed();
        recorder.record(id, latency, latency, outcome, body_len);
    }
}

/// The open model: requests at their intended times (the rate, following the stages if any),
/// each handed to an idle connection worker; at most `max_connections` workers.
async fn open(
    shared: Arc<Shared>,
    rate: &Load,
    max_connections: usize,
    start: Instant,
) -> JoinSet<()> {
    let plan = shared.plan.clone();
    let end = plan.duration.map(|d| d.as_secs_f64());
    let deadline = plan.duration.map(|d| start + d);
    let max_connections = max_connections.max(1);
    let (idle_tx, mut idle_rx) = mpsc::channel::<usize>(max_connections);
    let mut jobs: Vec<mpsc::Sender<Instant>> = Vec::new();
    let mut workers = JoinSet::new();
    let mut sent = 0u64;
    // Seconds since the start at which the next request is intended: at a constant rate the
    // n-th one is due at n / rate exactly (no drift), with stages where the integral of the
    // rate reaches the next whole request.
    let constant = match rate {
        Load::Constant(r) => Some(*r),
        Load::Stages { .. } => None,
    };
    let mut next_t = match constant {
        Some(_) => Some(0.0),
        None => rate.next_arrival(0.0),
    };
    loop {
        if shared.stop.is_stopped() || plan.requests.is_some_and(|n| sent >= n) {
            break;
        }
        let Some(t) = next_t else { break };
        if end.is_some_and(|e| t >= e) {
            break;
        }
        let intended = start + Duration::from_secs_f64(t);
        next_t = match constant {
            Some(r) => Some((sent + 1) as f64 / r),
            None => rate.next_arrival(t),
        };
        if intended > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(intended) => {}
                _ = shared.stop.wait() => break,
            }
        }
        let id = match idle_rx.try_recv() {
            Ok(id) => id,
            Err(_) if jobs.len() < max_connections => {
                let id = jobs.len();
                let (tx, rx) = mpsc::channel(1);
                jobs.push(tx);
                workers.spawn(open_worker(id, shared.clone(), rx, idle_tx.clone()));
                id
            }
            Err(_) => tokio::select! {
                id = idle_rx.recv() => match id { Some(id) => id, None => break },
                _ = shared.stop.wait() => break,
                _ = sleep_until_opt(deadline) => {
                    // The run is over and every connection is still busy: this request and every
                    // later one due before the end were never sent. They count as failures.
                    let mut unsent = 1u64;
                    let mut at = next_t;
                    while let Some(u) = at {
                        if end.is_some_and(|e| u >= e)
                            || plan.requests.is_some_and(|n| sent + unsent >= n)
                        {
                            break;
                        }
                        unsent += 1;
                        at = match constant {
                            Some(r) => Some((sent + unsent) as f64 / r),
                            None => rate.next_arrival(u),
                        };
                    }
                    shared.recorder.record_unsent(unsent);
                    break;
                }
            },
        };
        if let Some(job) = jobs.get(id)
            && job.try_send(intended).is_ok()
        {
            sent += 1;
        }
    }
    // Closing the job channels lets each worker finish its request and exit.
    drop(jobs);
    workers
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn open_worker(
    id: usize,
    shared: Arc<Shared>,
    mut jobs: mpsc::Receiver<Instant>,
    idle: mpsc::Sender<usize>,
) {
    let mut slot = Slot::new();
    let body_len = shared.template.body_len();
    let recorder = &shared.recorder;
    while let Some(intended) = jobs.recv().await {
        let sent = Instant::now();
        let outcome = slot
            .send(
                &shared.connector,
                &shared.template,
                shared.plan.timeout,
                || recorder.connection_opened(id),
            )
            .await;
        let done = Instant::now();
        recorder.record(
            id,
            done.saturating_duration_since(intended),
            done.saturating_duration_since(sent),
            outcome,
            body_len,
        );
        if idle.send(id).await.is_err() {
            return;
        }
    }
}
