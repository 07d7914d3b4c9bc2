//! The live state of a running levee: the current config snapshot (swapped atomically on
//! reload) and the state that outlives reloads (pools, server state, metrics, client rates).

use super::fairness::ClientRates;
use super::pool::PoolShared;
use crate::config::Config;
use crate::events::EventBus;

use crate::observe::access_log::AccessLogger;
use crate::observe::metrics::{Metrics, StateSource};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// One generation of configuration, immutable.
pub struct Snapshot {
    pub cfg: Arc<Config>,
    /// Same order as `cfg.pools`.
    pub pools: Vec<Arc<PoolShared>>,
    pub access_log: Option<AccessLogger>,
    pub generation: u64,
    /// Per-route metric handles, same order as `cfg.routes`.
    pub routes: Vec<crate::observe::metrics::RouteCounters>,
}

/// Process-wide state shared by the listener, the admin API and the health checkers.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub events: EventBus,
    /// The shield (state outlives reloads).
    pub shield: Arc<crate::shield::Shield>,
    pub rates: ClientRates,
    /// History, alerts, recent events, journal handle (`crate::observe::engine`).
    pub observe: Arc<crate::observe::engine::Observer>,
    /// Health checker tasks of the current generation.
    pub(crate) health_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Serialises reloads.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
}

/// What a reload reports when it worked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    pub generation: u64,
    /// Things that did not take effect (e.g. a changed listener address needs a restart), and
    /// the config review's warnings as `file:line: warning[ID]: ...` lines.
    pub warnings: Vec<String>,
    /// The config review's findings (warnings only: errors reject the reload).
    pub findings: Vec<crate::check::Finding>,
}

impl Shared {
    /// Builds the first generation.
    pub fn new(cfg: Config) -> std::io::Result<Arc<Shared>> {
        let metrics = Metrics::new();
        let events = EventBus::default();
        let pools = cfg
            .pools
            .iter()
            .map(|p| PoolShared::build(p, None, &metrics, &events))
            .collect();
        let access_log = AccessLogger::start(&cfg.access_log, metrics.access_log_dropped.clone())?;
        let shield = crate::shield::Shield::new(
            &cfg.shield,
            &cfg.listener.trusted_proxies,
            events.clone(),
            metrics.clone(),
        );
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot {
                routes: metrics.route_counters_for(&cfg),
                cfg: Arc::new(cfg),
                pools,
                access_log,
                generation: 1,
            }),
            metrics: metrics.clone(),
            events,
            shield,
            rates: ClientRates::default(),
            observe: Arc::default(),
            health_tasks: Mutex::new(Vec::new()),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        metrics.set_state_source(Arc::new(StateView(Arc::downgrade(&shared))));
        Ok(shared)
    }

    /// Starts the health checkers of the current generation, stopping the previous ones.
    pub(crate) fn restart_health_checks(self: &Arc<Self>) {
        let snap = self.snapshot.load();
        let new: Vec<JoinHandle<()>> = snap
            .pools
            .iter()
            .map(|p| crate::health::spawn(p.clone()))
            .collect();
        if let Ok(mut tasks) = self.health_tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
            *tasks = new;
        }
    }

    /// Swaps in a new, already validated config. In-flight requests finish on the state they
    /// hold; servers present in both configs keep their health and in-flight counts.
    pub fn apply(self: &Arc<Self>, cfg: Config) -> std::io::Result<ReloadOutcome> {
        let old = self.snapshot.load_full();
        let mut warnings = Vec::new();
        if cfg.listener.bind != old.cfg.listener.bind {
            warnings.push(format!(
                "listener.bind changed from {} to {}: takes effect on restart",
                old.cfg.listener.bind, cfg.listener.bind
            ));
        }
        if cfg.admin.bind != old.cfg.admin.bind {
            warnings.push(format!(
                "admin.bind changed from {} to {}: takes effect on restart",
                old.cfg.admin.bind, cfg.admin.bind
            ));
        }
        let (new_j, old_j) = (&cfg.observe.journal, &old.cfg.observe.journal);
        if new_j.as_ref().map(|j| &j.path) != old_j.as_ref().map(|j| &j.path) {
            warnings.push("journal.path changed: takes effect on restart".to_string());
        }
        let by_name: HashMap<&str, &Arc<PoolShared>> =
            old.pools.iter().map(|p| (&*p.name, p)).collect();
        let pools = cfg
            .pools
            .iter()
            .map(|p| {
                PoolShared::build(
                    p,
                    by_name.get(p.name.as_str()).copied(),
                    &self.metrics,
                    &self.events,
                )
            })
            .collect();
        let access_log = if cfg.access_log.enabled == old.cfg.access_log.enabled
            && cfg.access_log.path == old.cfg.access_log.path
            && cfg.access_log.format == old.cfg.access_log.format
        {
            old.access_log.clone()
        } else {
            AccessLogger::start(&cfg.access_log, self.metrics.access_log_dropped.clone())?
        };
        self.shield
            .apply(&cfg.shield, &cfg.listener.trusted_proxies);
        let generation = old.generation + 1;
        self.snapshot.store(Arc::new(Snapshot {
            routes: self.metrics.route_counters_for(&cfg),
            cfg: Arc::new(cfg),
            pools,
            access_log,
            generation,
        }));
        self.restart_health_checks();
        Ok(ReloadOutcome {
            generation,
            warnings,
            findings: Vec::new(),
        })
    }
}

/// Scrape-time view for the metrics collector (weak: metrics never keep levee alive).
struct StateView(std::sync::Weak<Shared>);

impl StateSource for StateView {
    fn servers(&self) -> Vec<(String, String, u64, u64, bool)> {
        let Some(s) = self.0.upgrade() else {
            return Vec::new();
        };
        let snap = s.snapshot.load();
        let now = crate::clock::now_ms();
        snap.pools
            .iter()
            .flat_map(|p| {
                let inner = p.inner.load_full();
                inner
                    .servers
                    .iter()
                    .map(|sv| {
                        (
                            p.name.to_string(),
                            sv.name.to_string(),
                            u64::from(sv.in_flight()),
                            u64::from(sv.cap()),
                            sv.available(now),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn pools(&self) -> Vec<(String, u64)> {
        let Some(s) = self.0.upgrade() else {
            return Vec::new();
        };
        let snap = s.snapshot.load();
        snap.pools
            .iter()
            .map(|p| (p.name.to_string(), p.queue_depth() as u64))
            .collect()
    }
}
