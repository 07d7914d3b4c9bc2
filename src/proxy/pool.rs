//! Servers and pools: per-server state that outlives reloads (in-flight counts, health,
//! ejections), and the pool's admission — the per-server cap, the fair bounded queue and
//! shedding.
//!
//! A request gets a [`Permit`] for one server before it is forwarded; the permit is held until
//! the response body has been sent, and releasing it hands the slot straight to the waiting
//! request from the lightest client. So a server never has more than its cap in flight from
//! levee, whatever the load.

use super::adaptive::Limiter;
use super::balance;
use super::retry_budget::RetryBudget;
use crate::clock::now_ms;
use crate::config;
use crate::events::{Event, EventBus, EventKind};

use crate::observe::metrics::{Metrics, PoolCounters, ServerCounters};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// One backend server's live state. Keyed by (pool, server name); survives reloads.
#[derive(Debug)]
pub struct ServerState {
    pub name: Arc<str>,
    pub pool: Arc<str>,
    pub addr: SocketAddr,
    pub authority: http::uri::Authority,
    in_flight: AtomicU32,
    cap: AtomicU32,
    weight: AtomicU32,
    active_up: AtomicBool,
    pub(crate) check_ok: AtomicU32,
    pub(crate) check_fail: AtomicU32,
    consecutive_failures: AtomicU32,
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    recovered_at: AtomicU64,
    /// The learned limit with `max_concurrency = "auto"`.
    limiter: Limiter,
    /// The cap's upper bound (the configured cap; with "auto", its maximum).
    upper: AtomicU32,
    pub counters: ServerCounters,
    events: EventBus,
    /// Idle keep-alive connections to this server.
    pub(crate) conns: super::upstream::IdleConns,
}

impl ServerState {
    fn new(
        pool: &str,
        s: &config::Server,
        adaptive: Option<&config::Adaptive>,
        metrics: &Metrics,
        events: &EventBus,
    ) -> ServerState {
        let cap = initial_cap(s, adaptive);
        let limiter = Limiter::default();
        limiter.reset_limit(cap);
        let authority = http::uri::Authority::try_from(s.addr.to_string().as_str())
            .unwrap_or_else(|_| http::uri::Authority::from_static("127.0.0.1"));
        ServerState {
            name: Arc::from(s.name.as_str()),
            pool: Arc::from(pool),
            addr: s.addr,
            authority,
            in_flight: AtomicU32::new(0),
            cap: AtomicU32::new(cap),
            weight: AtomicU32::new(s.weight),
            active_up: AtomicBool::new(true),
            check_ok: AtomicU32::new(0),
            check_fail: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            recovered_at: AtomicU64::new(0),
            limiter,
            upper: AtomicU32::new(s.max_concurrency),
            counters: metrics.server_counters(pool, &s.name),
            events: events.clone(),
            conns: super::upstream::IdleConns::default(),
        }
    }

    /// Requests in flight to this server from levee.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }
    /// The cap on in-flight requests.
    pub fn cap(&self) -> u32 {
        self.cap.load(Ordering::Relaxed)
    }
    /// Records the response time of one request (with `max_concurrency = "auto"`); may move
    /// the cap. Lock-free and allocation-free.
    pub(crate) fn record_latency(&self, cfg: &config::Adaptive, latency: Duration, now: u64) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let upper = self.upper.load(Ordering::Relaxed);
        if let Some(limit) = self
            .limiter
            .record(cfg, upper, self.cap(), us, self.in_flight(), now)
        {
            let limit = limit.clamp(cfg.min.min(upper), upper).max(1);
            if self.cap.swap(limit, Ordering::Relaxed) != limit {
                tracing::debug!(pool = %self.pool, server = %self.name, limit, baseline_ms = self.limiter.baseline_us() / 1000.0, "adaptive concurrency limit");
            }
        }
    }

    /// Relative weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }
    /// Whether active health checks consider the server up.
    pub fn checks_up(&self) -> bool {
        self.active_up.load(Ordering::Acquire)
    }

    /// Takes one in-flight slot if the cap allows.
    pub(crate) fn try_acquire(&self) -> bool {
        let cap = self.cap();
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (v < cap).then_some(v + 1)
            })
            .is_ok()
    }

    /// True while passively ejected. Notices the end of an ejection (and starts slow start).
    pub fn ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.recovered_at.store(now, Ordering::Release);
            self.events.publish(
                Event::new(
                    EventKind::ServerRestored,
                    format!(
                        "server {} of pool {} returns from outlier ejection",
                        self.name, self.pool
                    ),
                )
                .pool(&self.pool)
                .server(&self.name),
            );
        }
        false
    }

    /// Healthy by active checks and not ejected.
    pub fn available(&self, now: u64) -> bool {
        self.checks_up() && !self.ejected(now)
    }

    /// Can take one more request now.
    pub(crate) fn eligible(&self, now: u64) -> bool {
        self.in_flight() < self.cap() && self.available(now)
    }

    /// Share of traffic during slow start: 0.1 right after recovery, rising to 1.0.
    pub fn slow_start_factor(&self, now: u64, slow_start: Duration) -> f64 {
        let r = self.recovered_at.load(Ordering::Acquire);
        let ss = slow_start.as_millis() as u64;
        if r == 0 || ss == 0 || now >= r + ss {
            return 1.0;
        }
        (((now - r) as f64) / ss as f64).clamp(0.1, 1.0)
    }

    /// Marks the server up or down from active checks; returns true on a transition.
    pub(crate) fn set_checks_up(&self, up: bool) -> bool {
        let was = self.active_up.swap(up, Ordering::AcqRel);
        if up && !was {
            self.recovered_at.store(now_ms(), Ordering::Release);
        }
        was != up
    }
}

/// What admission answers instead of a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// Every server is down or ejected.
    NoHealthyServer,
    /// The queue is full (or this request was shed to make room for a lighter client).
    QueueFull,
    /// Waited `queue_timeout` without a free server.
    QueueTimeout,
}

/// The right to send one request to one server. Releasing it (drop) frees the slot and hands
/// it to the best waiting request.
#[derive(Debug)]
pub struct Permit {
    server: Arc<ServerState>,
    pool: Arc<PoolShared>,
}

impl Permit {
    pub fn server(&self) -> &Arc<ServerState> {
        &self.server
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.pool.queue_len.load(Ordering::SeqCst) > 0 {
            let leftover = match self.pool.queue.lock() {
                Ok(mut q) => self.pool.dispatch_locked(&mut q),
                Err(_) => None,
            };
            drop(leftover);
        }
    }
}

struct Waiter {
    tx: oneshot::Sender<Permit>,
    hash: u64,
}

#[derive(Default)]
struct Queue {
    /// Keyed by (client rate score, arrival order): the first entry is the lightest client.
    waiters: BTreeMap<(u32, u64), Waiter>,
    seq: u64,
}

/// The config-derived part of a pool, swapped on reload.
pub struct PoolInner {
    pub cfg: config::Pool,
    pub servers: Vec<Arc<ServerState>>,
    /// Consistent-hash ring: (point, server index), sorted.
    pub ring: Vec<(u64, u32)>,
    /// How connections to the servers are opened and kept.
    pub conn_opts: super::upstream::ConnOpts,
    /// Smooth weighted round robin current weights.
    pub(crate) wrr: Mutex<Vec<i64>>,
}

/// A pool: persistent across reloads (keyed by name), with its current config inside.
pub struct PoolShared {
    pub name: Arc<str>,
    pub inner: ArcSwap<PoolInner>,
    queue: Mutex<Queue>,
    queue_len: AtomicUsize,
    pub(crate) rr: AtomicUsize,
    pub budget: RetryBudget,
    pub counters: PoolCounters,
    pub events: EventBus,
}

impl std::fmt::Debug for PoolShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolShared")
            .field("name", &self.name)
            .finish()
    }
}

/// The cap a server starts with: its configured cap, or with "auto" the initial limit.
fn initial_cap(s: &config::Server, adaptive: Option<&config::Adaptive>) -> u32 {
    match adaptive {
        Some(a) => a
            .initial
            .clamp(a.min.min(s.max_concurrency), s.max_concurrency),
        None => s.max_concurrency,
    }
}

fn build_ring(servers: &[Arc<ServerState>]) -> Vec<(u64, u32)> {
    use std::hash::{Hash, Hasher};
    let mut ring = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        for v in 0..(160 * s.weight().min(100)) {
            let mut h = std::hash::DefaultHasher::new();
            (&*s.name, v).hash(&mut h);
            ring.push((h.finish(), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

impl PoolShared {
    /// Builds a pool, reusing the live state of servers (and the client) from `old` when the
    /// pool existed before.
    pub fn build(
        cfg: &config::Pool,
        old: Option<&Arc<PoolShared>>,
        metrics: &Metrics,
        events: &EventBus,
    ) -> Arc<PoolShared> {
        let old_inner = old.map(|o| o.inner.load_full());
        let servers: Vec<Arc<ServerState>> = cfg
            .servers
            .iter()
            .map(|s| {
                let prev = old_inner.as_ref().and_then(|oi| {
                    oi.servers
                        .iter()
                        .find(|o| *o.name == *s.name && o.addr == s.addr)
                });
                match prev {
                    Some(p) => {
                        let was_auto = old_inner
                            .as_ref()
                            .is_some_and(|oi| oi.cfg.adaptive.is_some());
                        let cap = match &cfg.adaptive {
                            // Keep what was learned, within the new bounds.
                            Some(a) if was_auto => p
                                .cap()
                                .clamp(a.min.min(s.max_concurrency), s.max_concurrency),
                            a => initial_cap(s, a.as_ref()),
                        };
                        p.limiter.reset_limit(cap);
                        p.upper.store(s.max_concurrency, Ordering::Relaxed);
                        p.cap.store(cap, Ordering::Relaxed);
                        p.weight.store(s.weight, Ordering::Relaxed);
                        p.clone()
                    }
                    None => {
                        let st =
                            ServerState::new(&cfg.name, s, cfg.adaptive.as_ref(), metrics, events);
                        if old.is_some() {
                            // A server added by a reload ramps up like a recovered one.
                            st.recovered_at.store(now_ms(), Ordering::Release);
                        }
                        Arc::new(st)
                    }
                }
            })
            .collect();
        let inner = PoolInner {
            cfg: cfg.clone(),
            ring: build_ring(&servers),
            wrr: Mutex::new(vec![0; servers.len()]),
            servers,
            conn_opts: super::upstream::ConnOpts {
                connect_timeout: cfg.connect_timeout,
                max_idle: cfg.max_idle_connections,
            },
        };
        match old {
            Some(o) => {
                o.inner.store(Arc::new(inner));
                // The new config may have freed capacity for waiters.
                let leftover = o
                    .queue
                    .lock()
                    .ok()
                    .and_then(|mut q| o.dispatch_locked(&mut q));
                drop(leftover);
                o.clone()
            }
            None => Arc::new(PoolShared {
                name: Arc::from(cfg.name.as_str()),
                inner: ArcSwap::from_pointee(inner),
                queue: Mutex::new(Queue::default()),
                queue_len: AtomicUsize::new(0),
                rr: AtomicUsize::new(0),
                budget: RetryBudget::default(),
                counters: metrics.pool_counters(&cfg.name),
                events: events.clone(),
            }),
        }
    }

    /// Requests waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.queue_len.load(Ordering::Relaxed)
    }

    /// Tries to take a slot on a server now, without queueing, avoiding `exclude`.
    pub fn try_acquire(
        self: &Arc<Self>,
        hash: u64,
        exclude: &[Arc<ServerState>],
    ) -> Option<Permit> {
        let inner = self.inner.load();
        balance::pick(&inner, &self.rr, hash, exclude, now_ms()).map(|server| Permit {
            server,
            pool: self.clone(),
        })
    }

    /// Admission: a slot on a server now, or a place in the fair bounded queue, or a refusal.
    /// `score` is the client's recent request rate (lower goes first).
    pub async fn admit(self: &Arc<Self>, score: f32, hash: u64) -> Result<Permit, AdmitError> {
        let (queue_size, queue_timeout) = {
            let inner = self.inner.load();
            let now = now_ms();
            if !inner.servers.iter().any(|s| s.available(now)) {
                return Err(AdmitError::NoHealthyServer);
            }
            (inner.cfg.queue_size, inner.cfg.queue_timeout)
        };
        if self.queue_len.load(Ordering::SeqCst) == 0
            && let Some(p) = self.try_acquire(hash, &[])
        {
            return Ok(p);
        }
        if queue_size == 0 {
            return Err(AdmitError::QueueFull);
        }
        // Fine-grained order: scores differ by fractions under load.
        let prio = (score.clamp(0.0, 1.0e6) * 16.0) as u32;
        let (tx, mut rx) = oneshot::channel();
        let (key, leftover, evicted) = {
            let Ok(mut q) = self.queue.lock() else {
                return Err(AdmitError::QueueFull);
            };
            let mut evicted = None;
            if q.waiters.len() >= queue_size {
                // Full: shed the heaviest client, if it is heavier than this one.
                match q.waiters.last_key_value().map(|(k, _)| *k) {
                    Some(k) if k.0 > prio => evicted = q.waiters.remove(&k),
                    _ => return Err(AdmitError::QueueFull),
                }
            }
            q.seq += 1;
            let key = (prio, q.seq);
            q.waiters.insert(key, Waiter { tx, hash });
            self.queue_len.store(q.waiters.len(), Ordering::SeqCst);
            let leftover = self.dispatch_locked(&mut q);
            (key, leftover, evicted)
        };
        drop(leftover);
        drop(evicted); // its receiver sees the channel closed: shed.
        match tokio::time::timeout(queue_timeout, &mut rx).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(AdmitError::QueueFull),
            Err(_) => {
                let removed = self.queue.lock().ok().map(|mut q| {
                    let r = q.waiters.remove(&key).is_some();
                    self.queue_len.store(q.waiters.len(), Ordering::SeqCst);
                    r
                });
                match removed {
                    Some(false) => rx.await.map_err(|_| AdmitError::QueueFull),
                    _ => Err(AdmitError::QueueTimeout),
                }
            }
        }
    }

    /// Hands free slots to waiters, lightest client first. Returns a permit nobody took (the
    /// caller drops it after unlocking).
    fn dispatch_locked(self: &Arc<Self>, q: &mut Queue) -> Option<Permit> {
        let mut spare: Option<Permit> = None;
        while let Some((&key, w)) = q.waiters.first_key_value() {
            let permit = match spare.take() {
                Some(p) => p,
                None => match self.try_acquire(w.hash, &[]) {
                    Some(p) => p,
                    None => break,
                },
            };
            let Some(w) = q.waiters.remove(&key) else {
                break;
            };
            if let Err(p) = w.tx.send(permit) {
                spare = Some(p);
            }
        }
        self.queue_len.store(q.waiters.len(), Ordering::SeqCst);
        spare
    }

    /// Passive health: reports the outcome of a request to `server`.
    pub fn report(&self, server: &ServerState, ok: bool) {
        if ok {
            if server.consecutive_failures.load(Ordering::Relaxed) != 0 {
                server.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let inner = self.inner.load();
        let o = &inner.cfg.outlier;
        if o.consecutive_failures == 0 {
            return;
        }
        let n = server.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let now = now_ms();
        if n < o.consecutive_failures || server.ejected(now) {
            return;
        }
        let total = inner.servers.len();
        let ejected = inner.servers.iter().filter(|s| s.ejected(now)).count();
        let max = total * o.max_ejected_percent as usize / 100;
        if ejected + 1 > max {
            return;
        }
        let k = server.ejections.fetch_add(1, Ordering::AcqRel).min(16);
        let base = o.base_ejection_time.as_millis() as u64;
        let dur = base
            .saturating_mul(1u64 << k)
            .min(o.max_ejection_time.as_millis() as u64);
        server.consecutive_failures.store(0, Ordering::Relaxed);
        server
            .ejected_until
            .store(now + dur.max(1), Ordering::Release);
        server.counters.ejections.inc();
        self.events.publish(
            Event::new(EventKind::ServerEjected, format!("server {} of pool {} ejected for {} after {n} consecutive failures (ejection #{})", server.name, self.name, crate::config::units::fmt_duration(Duration::from_millis(dur)), k + 1))
                .pool(&self.name)
                .server(&server.name)
                .data(serde_json::json!({ "consecutive_failures": n, "ejection_ms": dur, "ejection_count": k + 1 })),
        );
    }
}
