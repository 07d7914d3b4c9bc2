//! The observer: once a second it samples the history, writes the sample to the journal,
//! publishes `shedding_started`/`shedding_ended`, evaluates the alert rules and updates the
//! alert gauges; between ticks it reads the event bus (the recent-event feed, the shield's
//! attack and bans, reload failures) and forwards every event to the journal. It runs on its
//! own task: nothing on the request path waits for it.

use super::alerts::{Alerts, Instance};
use super::history::{self, History, Sample};
use super::rules::{self, Context};
use crate::events::{Event, EventKind};
use crate::journal::Journal;
use crate::journal::store::SampleRow;
use crate::proxy::runtime::Shared;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// Events kept for `/api/events` and the dashboard.
pub const RECENT: usize = 500;
/// Seconds of history kept: the longest SLO window (6 h).
pub const HISTORY_SECS: usize = 6 * 3600 + 60;
/// A pool stops "shedding" after this long without a shed request.
const SHED_QUIET: Duration = Duration::from_secs(5);

/// What the shield told the bus, for the dashboard and the rules.
#[derive(Debug, Default, Clone)]
pub struct ShieldView {
    pub attack: Option<Arc<Event>>,
    pub last_attack: Option<Arc<Event>>,
    /// Active bans by client.
    pub bans: HashMap<String, Arc<Event>>,
}

/// The observer's shared state.
#[derive(Debug)]
pub struct Observer {
    pub history: Mutex<History>,
    pub alerts: Mutex<Alerts>,
    pub recent: Mutex<VecDeque<Arc<Event>>>,
    pub shield: Mutex<ShieldView>,
    cx: Mutex<Context>,
    pub journal: OnceLock<Journal>,
    pub notify: Arc<super::notify::NotifyStats>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            history: Mutex::new(History::new(HISTORY_SECS)),
            alerts: Mutex::new(Alerts::default()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            shield: Mutex::new(ShieldView::default()),
            cx: Mutex::new(Context::default()),
            journal: OnceLock::new(),
            notify: Arc::default(),
        }
    }
}

impl Observer {
    /// Live alert instances.
    pub fn alert_list(&self) -> Vec<Instance> {
        self.alerts.lock().map(|a| a.list()).unwrap_or_default()
    }

    /// The last `n` events, oldest first.
    pub fn recent_events(&self, n: usize) -> Vec<Arc<Event>> {
        self.recent
            .lock()
            .map(|r| r.iter().skip(r.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }

    /// Records an event (feed, shield view, rule context, journal).
    pub fn on_event(&self, e: Arc<Event>) {
        if let Ok(mut r) = self.recent.lock() {
            if r.len() >= RECENT {
                r.pop_front();
            }
            r.push_back(e.clone());
        }
        if let (Ok(mut sh), Ok(mut cx)) = (self.shield.lock(), self.cx.lock()) {
            match e.kind {
                EventKind::AttackStarted => {
                    sh.attack = Some(e.clone());
                    sh.last_attack = Some(e.clone());
                    cx.attack = Some(e.clone());
                }
                EventKind::AttackEnded => {
                    sh.attack = None;
                    sh.last_attack = Some(e.clone());
                    cx.attack = None;
                }
                EventKind::BanAdded => {
                    if let Some(c) = &e.client {
                        sh.bans.insert(c.clone(), e.clone());
                        cx.bans.push_back((unix(e.time), c.clone()));
                        while cx.bans.len() > 100_000 {
                            cx.bans.pop_front();
                        }
                    }
                }
                EventKind::BanRemoved | EventKind::BanExpired => {
                    if let Some(c) = &e.client {
                        sh.bans.remove(c);
                    }
                }
                EventKind::ConfigRejected => cx.reload_rejected = Some(e.clone()),
                EventKind::ConfigReloaded => cx.reload_rejected = None,
                _ => {}
            }
        }
        if let Some(j) = self.journal.get() {
            j.event(e);
        }
    }
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Per-pool shedding state, for `shedding_started`/`shedding_ended`.
#[derive(Debug, Default)]
struct Shedding {
    since: Option<(Instant, u64)>,
    last_shed: Option<Instant>,
}

/// Takes the first sample before levee accepts a connection, so windows count every request
/// from the start even if the observer task is scheduled late.
pub fn prime(shared: &Shared) {
    let s = history::sample(shared);
    if let Ok(mut h) = shared.observe.history.lock() {
        h.push(s);
    }
}

/// Runs the observer until `stop`. `rx` is subscribed before levee publishes `levee_started`.
pub async fn run(
    shared: Arc<Shared>,
    mut rx: broadcast::Receiver<Arc<Event>>,
    mut stop: watch::Receiver<bool>,
) {
    let obs = shared.observe.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shedding: HashMap<Arc<str>, Shedding> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => step(&shared, &obs, &mut shedding),
            r = rx.recv() => match r {
                Ok(e) => obs.on_event(e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "observer fell behind the event bus; events lost for the journal");
                }
                Err(_) => return,
            },
            _ = stop.changed() => return,
        }
    }
}

fn step(shared: &Arc<Shared>, obs: &Observer, shedding: &mut HashMap<Arc<str>, Shedding>) {
    let s = history::sample(shared);
    let now = Instant::now();
    let prev = obs.history.lock().ok().and_then(|h| h.latest().cloned());
    if let Some(p) = &prev {
        if let Some(j) = obs.journal.get() {
            j.sample(row(p, &s));
        }
        shedding_events(shared, p, &s, now, shedding);
    }
    if let Ok(mut h) = obs.history.lock() {
        h.push(s);
    }
    evaluate(shared, obs, now);
}

fn row(p: &Sample, s: &Sample) -> SampleRow {
    let d = history::delta(p, s);
    let max_load = s
        .pools
        .iter()
        .flat_map(|p| p.servers.iter())
        .filter(|x| x.cap > 0)
        .map(|x| x.in_flight as f64 / x.cap as f64)
        .fold(0.0, f64::max);
    SampleRow {
        t: i64::try_from(s.t).unwrap_or(0),
        answered: d.requests,
        errors: d.errors,
        upstream_errors: d.upstream_errors,
        shed: d.shed,
        blocked: d.blocked,
        max_load,
        latency: d.latency,
    }
}

fn shedding_events(
    shared: &Shared,
    p: &Sample,
    s: &Sample,
    now: Instant,
    state: &mut HashMap<Arc<str>, Shedding>,
) {
    for pool in &s.pools {
        let before = p
            .pools
            .iter()
            .find(|x| x.name == pool.name)
            .map_or(0, |x| x.shed);
        let shed_now = pool.shed.saturating_sub(before);
        let st = state.entry(pool.name.clone()).or_default();
        if shed_now > 0 {
            st.last_shed = Some(now);
            if st.since.is_none() {
                st.since = Some((now, pool.shed.saturating_sub(shed_now)));
                shared.events.publish(
                    Event::new(
                        EventKind::SheddingStarted,
                        format!("pool {} started shedding: {shed_now} requests shed in the last second (queue {} of {})", pool.name, pool.queue_depth, pool.queue_size),
                    )
                    .pool(&pool.name)
                    .data(serde_json::json!({ "shed_last_second": shed_now, "queue_depth": pool.queue_depth, "queue_size": pool.queue_size })),
                );
            }
        } else if let (Some((start, base)), Some(last)) = (st.since, st.last_shed)
            && now.duration_since(last) >= SHED_QUIET
        {
            let total = pool.shed.saturating_sub(base);
            shared.events.publish(
                Event::new(
                    EventKind::SheddingEnded,
                    format!(
                        "pool {} stopped shedding after {}s: {total} requests shed",
                        pool.name,
                        last.duration_since(start).as_secs()
                    ),
                )
                .pool(&pool.name)
                .data(serde_json::json!({ "shed": total, "duration_secs": last.duration_since(start).as_secs() })),
            );
            st.since = None;
        }
    }
}

fn evaluate(shared: &Arc<Shared>, obs: &Observer, now: Instant) {
    let snap = shared.snapshot.load();
    let o = &snap.cfg.observe;
    let rules = rules::rules(&o.alerts, o.alerting.time_scale);
    let external = super::notify::external_url(shared);
    let admin = snap.cfg.admin.bind.to_string();
    let (Ok(h), Ok(mut cx), Ok(mut alerts)) =
        (obs.history.lock(), obs.cx.lock(), obs.alerts.lock())
    else {
        return;
    };
    cx.now = h.latest().map_or(0, |s| s.t);
    cx.admin = admin.clone();
    let horizon = cx.now.saturating_sub(24 * 3600);
    while cx.bans.front().is_some_and(|b| b.0 < horizon) {
        cx.bans.pop_front();
    }
    let enabled: Vec<&str> = if o.alerting.enabled {
        rules.iter().filter(|r| r.enabled).map(|r| r.name).collect()
    } else {
        Vec::new()
    };
    alerts.retain_rules(&enabled, &shared.events, &external);
    for r in rules.iter().filter(|r| enabled.contains(&r.name)) {
        let hits = rules::evaluate(r, &h, &cx);
        alerts.update(r, hits, now, &shared.events, &external, &admin);
    }
    let counts = alerts.firing_counts();
    for r in &rules {
        for sev in ["critical", "warning", "info"] {
            let n = counts.get(&(r.name, sev.to_string())).copied().unwrap_or(0);
            let g = shared.metrics.alerts_firing(r.name, sev);
            if n != 0 || g.get() != 0 || sev == r.severity {
                g.set(n);
            }
        }
    }
}
