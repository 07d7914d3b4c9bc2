//! The metrics registry. Counters on the request path are pre-resolved handles (atomics), so
//! recording a request takes no lock and allocates nothing; state gauges (in-flight, caps,
//! health, queue depth) are read at scrape time by a collector.

use super::latency::Latency;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

/// Labels: pairs of a fixed name and a value from config names or a small fixed set.
pub type Labels = Vec<(&'static str, String)>;

/// Why levee answered a request itself instead of forwarding it. A small fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    QueueFull,
    QueueTimeout,
    NoHealthyServer,
    NoRoute,
    HeaderTooLarge,
    UriTooLong,
    BodyTooLarge,
    HeaderTimeout,
    BadRequest,
    RequestTimeout,
    UpstreamTimeout,
    UpstreamConnect,
    UpstreamError,
    MaxConnections,
    Denied,
    Banned,
    RateLimited,
    TooManyConnections,
    TooManyRequests,
    SlowBody,
    SlowRead,
    IdleCap,
}

impl Reason {
    pub const ALL: [Reason; 22] = [
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::NoHealthyServer,
        Reason::NoRoute,
        Reason::HeaderTooLarge,
        Reason::UriTooLong,
        Reason::BodyTooLarge,
        Reason::HeaderTimeout,
        Reason::BadRequest,
        Reason::RequestTimeout,
        Reason::UpstreamTimeout,
        Reason::UpstreamConnect,
        Reason::UpstreamError,
        Reason::MaxConnections,
        Reason::Denied,
        Reason::Banned,
        Reason::RateLimited,
        Reason::TooManyConnections,
        Reason::TooManyRequests,
        Reason::SlowBody,
        Reason::SlowRead,
        Reason::IdleCap,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::NoHealthyServer => "no_healthy_server",
            Reason::NoRoute => "no_route",
            Reason::HeaderTooLarge => "header_too_large",
            Reason::UriTooLong => "uri_too_long",
            Reason::BodyTooLarge => "body_too_large",
            Reason::HeaderTimeout => "header_timeout",
            Reason::BadRequest => "bad_request",
            Reason::RequestTimeout => "request_timeout",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamConnect => "upstream_connect_error",
            Reason::UpstreamError => "upstream_bad_response",
            Reason::MaxConnections => "max_connections",
            Reason::Denied => "denied",
            Reason::Banned => "banned",
            Reason::RateLimited => "rate_limited",
            Reason::TooManyConnections => "too_many_connections",
            Reason::TooManyRequests => "too_many_requests",
            Reason::SlowBody => "slow_body",
            Reason::SlowRead => "slow_read",
            Reason::IdleCap => "idle_cap",
        }
    }

    /// Load shedding: the pool could not take the request (`queue_full`, `queue_timeout`,
    /// `no_healthy_server`). Counted as "shed" in the history, incidents and the dashboard.
    pub fn is_shed(self) -> bool {
        matches!(
            self,
            Reason::QueueFull | Reason::QueueTimeout | Reason::NoHealthyServer
        )
    }

    /// A 5xx levee wrote because the upstream failed (connect, bad answer, timeouts).
    pub fn is_upstream_error(self) -> bool {
        matches!(
            self,
            Reason::UpstreamConnect
                | Reason::UpstreamError
                | Reason::UpstreamTimeout
                | Reason::RequestTimeout
        )
    }

    /// Neither shed nor an upstream error: levee (or its shield) refused the client.
    pub fn is_blocked(self) -> bool {
        !self.is_shed() && !self.is_upstream_error()
    }

    fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Point-in-time state read at scrape time.
pub trait StateSource: Send + Sync + 'static {
    /// One entry per server: (pool, server, in_flight, cap, up).
    fn servers(&self) -> Vec<(String, String, u64, u64, bool)>;
    /// One entry per pool: (pool, queue depth).
    fn pools(&self) -> Vec<(String, u64)>;
}

/// All of levee's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Latency>,
    server_duration: Family<Labels, Latency>,
    queue_wait: Family<Labels, Latency>,
    pool_rejections: Family<Labels, Counter>,
    pool_upstream_errors: Family<Labels, Counter>,
    alerts_firing: Family<Labels, Gauge>,
    route_requests: Family<Labels, Counter>,
    notifications: Family<Labels, Counter>,
    /// Journal messages (events, samples) dropped because the journal thread fell behind.
    pub journal_dropped: Counter,
    /// Journal batches that could not be written.
    pub journal_errors: Counter,
    route_duration: Family<Labels, Latency>,
    rejections: Vec<Counter>,
    retries: Family<Labels, Counter>,
    retry_budget_exhausted: Family<Labels, Counter>,
    ejections: Family<Labels, Counter>,
    health_transitions: Family<Labels, Counter>,
    reloads_ok: Counter,
    reloads_failed: Counter,
    /// Open client connections.
    pub open_connections: Gauge,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    would_block: Vec<Counter>,
    bans: Family<Labels, Counter>,
    bans_active: Gauge,
    tracked_clients: Gauge,
    attack_active: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Per-server counter handles, resolved once.
#[derive(Debug, Clone)]
pub struct ServerCounters {
    /// Index 0..5 = 1xx..5xx.
    pub by_class: [Counter; 5],
    pub ejections: Counter,
    /// Request head to response head for requests this server answered.
    pub duration: Latency,
}

impl ServerCounters {
    /// Requests this server answered so far, and how many of them were 5xx.
    pub fn totals(&self) -> (u64, u64) {
        let all = self.by_class.iter().map(Counter::get).sum();
        (all, self.by_class[4].get())
    }
}

/// Per-route handles, resolved when a config is applied (`Snapshot::routes`).
#[derive(Debug, Clone)]
pub struct RouteCounters {
    /// Index 0..5 = 1xx..5xx.
    pub by_class: [Counter; 5],
    pub duration: Latency,
}

impl RouteCounters {
    /// Counts one answer (no allocation).
    pub fn record(&self, status: u16, secs: f64) {
        if let Some(c) = self
            .by_class
            .get(usize::from(status / 100).saturating_sub(1))
        {
            c.inc();
        }
        self.duration.observe(secs);
    }
}

/// Per-pool handles, resolved once.
#[derive(Debug, Clone)]
pub struct PoolCounters {
    pub duration: Latency,
    /// Time spent waiting for admission (0 when a slot was free at once).
    pub queue_wait: Latency,
    /// Requests of this pool that levee shed, by reason: `queue_full`, `queue_timeout`,
    /// `no_healthy_server` (the same answers are also in the global `levee_rejections_total`).
    pub shed_by_reason: [Counter; 3],
    /// levee's own 502/504 for this pool: connect errors, bad answers, timeouts.
    pub upstream_errors: Counter,
    pub retries: Counter,
    pub retry_budget_exhausted: Counter,
    pub health_down: Counter,
    pub health_up: Counter,
}

impl PoolCounters {
    /// Counts one shed request of this pool (other reasons are ignored).
    pub fn shed(&self, r: Reason) {
        let i = match r {
            Reason::QueueFull => 0,
            Reason::QueueTimeout => 1,
            Reason::NoHealthyServer => 2,
            _ => return,
        };
        self.shed_by_reason[i].inc();
    }

    /// Requests of this pool shed so far.
    pub fn shed_total(&self) -> u64 {
        self.shed_by_reason.iter().map(Counter::get).sum()
    }
}

/// A counter family labelled by [`Reason`], with every reason's handle resolved up front (so
/// the series exist from the start and counting allocates nothing).
fn per_reason(reg: &mut Registry, name: &str, help: &str) -> Vec<Counter> {
    let family = Family::<Labels, Counter>::default();
    reg.register(name, help, family.clone());
    Reason::ALL
        .iter()
        .map(|r| {
            family
                .get_or_create(&vec![("reason", r.as_str().to_string())])
                .clone()
        })
        .collect()
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Arc<Metrics> {
        let mut reg = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        reg.register(
            "levee_requests",
            "Requests answered by a backend server, by pool, server and status class",
            requests.clone(),
        );
        let duration = Family::<Labels, Latency>::default();
        reg.register(
            "levee_request_duration_seconds",
            "Time from request head to response head, per pool (including queue wait)",
            duration.clone(),
        );
        let server_duration = Family::<Labels, Latency>::default();
        reg.register(
            "levee_server_request_duration_seconds",
            "Time from request head to response head, per server that answered",
            server_duration.clone(),
        );
        let queue_wait = Family::<Labels, Latency>::default();
        reg.register(
            "levee_pool_queue_wait_seconds",
            "Time a request waited for admission to the pool (0 when a server was free)",
            queue_wait.clone(),
        );
        let pool_rejections = Family::<Labels, Counter>::default();
        reg.register(
            "levee_pool_shed",
            "Requests of a pool shed by levee, by reason (queue_full, queue_timeout, no_healthy_server)",
            pool_rejections.clone(),
        );
        let pool_upstream_errors = Family::<Labels, Counter>::default();
        reg.register(
            "levee_pool_upstream_errors",
            "levee's own 502/504 answers per pool: the server could not be reached, answered garbage or timed out",
            pool_upstream_errors.clone(),
        );
        let alerts_firing = Family::<Labels, Gauge>::default();
        reg.register(
            "levee_alerts_firing",
            "Alert instances firing now, by alert rule and severity",
            alerts_firing.clone(),
        );
        let route_requests = Family::<Labels, Counter>::default();
        reg.register(
            "levee_route_requests",
            "Requests per route (host and path prefix as configured) by status class, levee's own answers included",
            route_requests.clone(),
        );
        let route_duration = Family::<Labels, Latency>::default();
        reg.register(
            "levee_route_request_duration_seconds",
            "Time from request head to response head, per route",
            route_duration.clone(),
        );
        let notifications = Family::<Labels, Counter>::default();
        reg.register(
            "levee_notifications",
            "Alert notifications per receiver by result (delivered, failed after retries, dropped on a full queue)",
            notifications.clone(),
        );
        let journal_dropped = Counter::default();
        reg.register(
            "levee_journal_dropped",
            "Journal events and samples dropped because the journal thread fell behind",
            journal_dropped.clone(),
        );
        let journal_errors = Counter::default();
        reg.register(
            "levee_journal_write_errors",
            "Journal batches that could not be written",
            journal_errors.clone(),
        );
        reg.register_collector(Box::new(super::process::ProcessCollector::default()));
        let rejections = per_reason(
            &mut reg,
            "levee_rejections",
            "Requests or connections levee answered or refused itself, by reason",
        );
        let retries = Family::<Labels, Counter>::default();
        reg.register(
            "levee_retries",
            "Retries sent to another server, per pool",
            retries.clone(),
        );
        let retry_budget_exhausted = Family::<Labels, Counter>::default();
        reg.register(
            "levee_retry_budget_exhausted",
            "Retries not sent because the pool's retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        let ejections = Family::<Labels, Counter>::default();
        reg.register(
            "levee_outlier_ejections",
            "Passive outlier ejections, per server",
            ejections.clone(),
        );
        let health_transitions = Family::<Labels, Counter>::default();
        reg.register(
            "levee_health_transitions",
            "Active health check transitions, per pool and direction",
            health_transitions.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        reg.register(
            "levee_config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let reloads_ok = reloads
            .get_or_create(&vec![("result", "ok".to_string())])
            .clone();
        let reloads_failed = reloads
            .get_or_create(&vec![("result", "failed".to_string())])
            .clone();
        let open_connections = Gauge::default();
        reg.register(
            "levee_open_connections",
            "Open client connections",
            open_connections.clone(),
        );
        let access_log_dropped = Counter::default();
        reg.register(
            "levee_access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let would_block = per_reason(
            &mut reg,
            "levee_shield_would_block",
            "What the shield would have blocked in detect mode or a dry-run rule, by reason",
        );
        let bans = Family::<Labels, Counter>::default();
        reg.register("levee_shield_bans", "Bans added, by reason", bans.clone());
        let bans_active = Gauge::default();
        reg.register(
            "levee_shield_bans_active",
            "Bans in force now",
            bans_active.clone(),
        );
        let tracked_clients = Gauge::default();
        reg.register(
            "levee_shield_tracked_clients",
            "Clients whose state the shield tracks now",
            tracked_clients.clone(),
        );
        let attack_active = Gauge::default();
        reg.register(
            "levee_shield_attack_active",
            "1 while an attack is suspected",
            attack_active.clone(),
        );
        Arc::new(Metrics {
            would_block,
            bans,
            bans_active,
            tracked_clients,
            attack_active,
            registry: Mutex::new(reg),
            requests,
            duration,
            server_duration,
            queue_wait,
            pool_rejections,
            pool_upstream_errors,
            alerts_firing,
            route_requests,
            route_duration,
            notifications,
            journal_dropped,
            journal_errors,
            rejections,
            retries,
            retry_budget_exhausted,
            ejections,
            health_transitions,
            reloads_ok,
            reloads_failed,
            open_connections,
            access_log_dropped,
        })
    }

    /// Registers the scrape-time state collector (called once at start).
    pub fn set_state_source(&self, src: Arc<dyn StateSource>) {
        if let Ok(mut reg) = self.registry.lock() {
            reg.register_collector(Box::new(StateCollector(src)));
        }
    }

    /// Counts one rejection.
    pub fn reject(&self, r: Reason) {
        if let Some(c) = self.rejections.get(r.index()) {
            c.inc();
        }
    }

    /// Counts what the shield would have blocked (detect mode, dry-run rules).
    pub fn would_block(&self, r: Reason) {
        if let Some(c) = self.would_block.get(r.index()) {
            c.inc();
        }
    }

    /// How many would-be blocks of this reason were counted.
    pub fn would_blocks(&self, r: Reason) -> u64 {
        self.would_block.get(r.index()).map_or(0, Counter::get)
    }

    /// Counts a ban.
    pub fn ban(&self, reason: &str) {
        self.bans
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// The shield's gauges, set once a second.
    pub fn shield_gauges(&self, bans_active: i64, tracked: i64, attack: bool) {
        self.bans_active.set(bans_active);
        self.tracked_clients.set(tracked);
        self.attack_active.set(i64::from(attack));
    }

    /// The current count of a rejection reason.
    pub fn rejections(&self, r: Reason) -> u64 {
        self.rejections.get(r.index()).map_or(0, Counter::get)
    }

    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.inc();
    }

    /// Handles for a server.
    pub fn server_counters(&self, pool: &str, server: &str) -> ServerCounters {
        let class = |c: &str| {
            self.requests
                .get_or_create(&vec![
                    ("pool", pool.to_string()),
                    ("server", server.to_string()),
                    ("class", c.to_string()),
                ])
                .clone()
        };
        ServerCounters {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            ejections: self
                .ejections
                .get_or_create(&vec![
                    ("pool", pool.to_string()),
                    ("server", server.to_string()),
                ])
                .clone(),
            duration: self
                .server_duration
                .get_or_create(&vec![
                    ("pool", pool.to_string()),
                    ("server", server.to_string()),
                ])
                .clone(),
        }
    }

    /// Counts one notification outcome (`delivered`, `failed`, `dropped`) for a receiver.
    pub fn notification(&self, receiver: &str, result: &'static str) {
        self.notifications
            .get_or_create(&vec![
                ("receiver", receiver.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    /// The gauge of firing instances of an alert rule.
    pub fn alerts_firing(&self, alert: &str, severity: &str) -> Gauge {
        self.alerts_firing
            .get_or_create(&vec![
                ("alert", alert.to_string()),
                ("severity", severity.to_string()),
            ])
            .clone()
    }

    /// Handles for every route of a config, in its order.
    pub fn route_counters_for(&self, cfg: &crate::config::Config) -> Vec<RouteCounters> {
        cfg.routes
            .iter()
            .map(|r| {
                let name = format!("{}{}", r.host.as_deref().unwrap_or(""), r.path_prefix);
                let class = |c: &str| {
                    self.route_requests
                        .get_or_create(&vec![("route", name.clone()), ("class", c.to_string())])
                        .clone()
                };
                RouteCounters {
                    by_class: [
                        class("1xx"),
                        class("2xx"),
                        class("3xx"),
                        class("4xx"),
                        class("5xx"),
                    ],
                    duration: self
                        .route_duration
                        .get_or_create(&vec![("route", name.clone())])
                        .clone(),
                }
            })
            .collect()
    }

    /// Handles for a pool.
    pub fn pool_counters(&self, pool: &str) -> PoolCounters {
        let l = vec![("pool", pool.to_string())];
        let dir = |d: &str| {
            self.health_transitions
                .get_or_create(&vec![("pool", pool.to_string()), ("to", d.to_string())])
                .clone()
        };
        let shed = |r: Reason| {
            self.pool_rejections
                .get_or_create(&vec![
                    ("pool", pool.to_string()),
                    ("reason", r.as_str().to_string()),
                ])
                .clone()
        };
        PoolCounters {
            duration: self.duration.get_or_create(&l).clone(),
            queue_wait: self.queue_wait.get_or_create(&l).clone(),
            upstream_errors: self.pool_upstream_errors.get_or_create(&l).clone(),
            shed_by_reason: [
                shed(Reason::QueueFull),
                shed(Reason::QueueTimeout),
                shed(Reason::NoHealthyServer),
            ],
            retries: self.retries.get_or_create(&l).clone(),
            retry_budget_exhausted: self.retry_budget_exhausted.get_or_create(&l).clone(),
            health_down: dir("down"),
            health_up: dir("up"),
        }
    }

    /// Prometheus text exposition (or OpenMetrics, which the text format also is).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock()
            && prometheus_client::encoding::text::encode(&mut out, &reg).is_err()
        {
            out.clear();
        }
        out
    }
}

#[derive(Clone)]
struct StateCollector(Arc<dyn StateSource>);

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let servers = self.0.servers();
        type Pick = fn(&(String, String, u64, u64, bool)) -> i64;
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "levee_server_in_flight",
                "Requests in flight to a server from levee",
                |s| s.2 as i64,
            ),
            (
                "levee_server_max_concurrency",
                "The server's cap on in-flight requests",
                |s| s.3 as i64,
            ),
            (
                "levee_server_up",
                "1 when the server is healthy and not ejected, else 0",
                |s| i64::from(s.4),
            ),
        ];
        for (name, help, pick) in gauges {
            let g = ConstGauge::new(0i64);
            let mut me = enc.encode_descriptor(name, help, None, g.metric_type())?;
            for s in &servers {
                let labels = [("pool", s.0.as_str()), ("server", s.1.as_str())];
                ConstGauge::new(pick(s)).encode(me.encode_family(&labels)?)?;
            }
        }
        let pools = self.0.pools();
        let g = ConstGauge::new(0i64);
        let mut me = enc.encode_descriptor(
            "levee_pool_queue_depth",
            "Requests waiting for a free server, per pool",
            None,
            g.metric_type(),
        )?;
        for (pool, depth) in &pools {
            ConstGauge::new(*depth as i64).encode(me.encode_family(&[("pool", pool.as_str())])?)?;
        }
        Ok(())
    }
}
