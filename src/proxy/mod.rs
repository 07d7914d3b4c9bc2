//! The proxy: listeners, the per-request pipeline, pools, admission, balancing, retries.

pub mod adaptive;
pub mod balance;
pub mod body;
pub mod conn;
pub mod fairness;
pub mod handler;
pub mod headers;
pub mod listener;
pub mod pool;
pub mod retry_budget;
pub mod runtime;
pub mod upstream;
pub mod upstream_codec;

use crate::config::{Config, ConfigError};
use listener::OpenConns;
use runtime::{ReloadOutcome, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why levee could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot open the journal: {0}")]
    Journal(crate::journal::JournalError),
}

/// Why a reload was refused. The old config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(ConfigError),
    /// The file is valid but the review (`levee check`) found errors.
    #[error("the config review found {} error(s)", .lines.len())]
    Unsafe {
        lines: Vec<String>,
        findings: Vec<crate::check::Finding>,
    },
    #[error("levee was started without a config file, so there is nothing to re-read")]
    NoFile,
    #[error("cannot apply the new config: {0}")]
    Apply(std::io::Error),
}

impl ReloadError {
    /// Detail lines (file:line:col problems for an invalid file).
    pub fn details(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(e) => e.lines(),
            ReloadError::Unsafe { lines, .. } => lines.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// A running levee: listener, admin API, health checks.
pub struct Levee {
    /// The client listener's bound address.
    pub addr: SocketAddr,
    /// The admin listener's bound address.
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    open: Arc<OpenConns>,
    tasks: Vec<JoinHandle<()>>,
}

impl Levee {
    /// Binds the listeners and starts serving on the current tokio runtime.
    pub async fn start(cfg: Config) -> Result<Levee, StartError> {
        let bind = cfg.listener.bind;
        let admin_bind = cfg.admin.bind;
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| StartError::Bind {
                what: "listener",
                addr: bind,
                source,
            })?;
        let admin = TcpListener::bind(admin_bind)
            .await
            .map_err(|source| StartError::Bind {
                what: "admin",
                addr: admin_bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            what: "listener",
            addr: bind,
            source,
        })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            what: "admin",
            addr: admin_bind,
            source,
        })?;
        let journal_cfg = cfg.observe.journal.clone();
        let quiet = cfg
            .observe
            .alerting
            .incident_quiet_period
            .mul_f64(cfg.observe.alerting.time_scale);
        let shared = Shared::new(cfg).map_err(StartError::AccessLog)?;
        if let Some(j) = journal_cfg {
            let j = crate::journal::Journal::start(
                &j,
                quiet,
                shared.metrics.journal_dropped.clone(),
                shared.metrics.journal_errors.clone(),
            )
            .map_err(StartError::Journal)?;
            let _ = shared.observe.journal.set(j);
        }
        shared.restart_health_checks();
        let (stop, stop_rx) = watch::channel(false);
        let open = Arc::new(OpenConns::default());
        crate::observe::engine::prime(&shared);
        // Subscribed before `levee_started` is published, so the journal records it.
        let observe_rx = shared.events.subscribe();
        let notify_rx = shared.events.subscribe();
        let tasks = vec![
            tokio::spawn(crate::observe::engine::run(
                shared.clone(),
                observe_rx,
                stop_rx.clone(),
            )),
            tokio::spawn(crate::observe::notify::run(
                shared.clone(),
                notify_rx,
                shared.observe.notify.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(listener::run(
                listener,
                shared.clone(),
                open.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(crate::admin::run(admin, shared.clone(), stop_rx)),
            shared.shield.spawn_background(),
        ];
        shared.events.publish(
            crate::events::Event::new(crate::events::EventKind::LeveeStarted, format!("levee started, serving on {addr}"))
                .data(serde_json::json!({ "listener": addr.to_string(), "admin": admin_addr.to_string(), "config": shared.snapshot.load().cfg.path.as_ref().map(|p| p.display().to_string()) })),
        );
        Ok(Levee {
            addr,
            admin_addr,
            shared,
            stop,
            open,
            tasks,
        })
    }

    /// Re-reads the config file and swaps it in; on any problem the old config keeps serving.
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        reload(&self.shared).await
    }

    /// Open client connections.
    pub fn open_connections(&self) -> usize {
        self.open.0.load(Ordering::Acquire)
    }

    /// Stops accepting, lets in-flight requests finish (up to `drain_timeout`), and returns
    /// whether every connection closed in time.
    pub async fn shutdown(self) -> bool {
        let _ = self.stop.send(true);
        let drain = self.shared.snapshot.load().cfg.listener.drain_timeout;
        let deadline = Instant::now() + drain;
        let mut clean = true;
        while self.open.0.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                clean = false;
                tracing::warn!(
                    open = self.open.0.load(Ordering::Acquire),
                    "drain timeout reached with connections still open"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in &self.tasks {
            t.abort();
        }
        let stopped = crate::events::Event::new(
            crate::events::EventKind::LeveeStopped,
            if clean {
                "levee stopped after draining every connection".to_string()
            } else {
                format!(
                    "levee stopped; {} connections were still open at the drain timeout",
                    self.open.0.load(Ordering::Acquire)
                )
            },
        );
        self.shared.events.publish(stopped.clone());
        // The observer has stopped: hand the last event to the journal and close it.
        if let Some(j) = self.shared.observe.journal.get() {
            j.event(Arc::new(stopped));
            j.stop();
        }
        if let Ok(mut h) = self.shared.health_tasks.lock() {
            for t in h.drain(..) {
                t.abort();
            }
        }
        clean
    }
}

/// Re-reads the config file of the running config and applies it.
pub async fn reload(shared: &Arc<Shared>) -> Result<ReloadOutcome, ReloadError> {
    let _serial = shared.reload_lock.lock().await;
    let Some(path) = shared.snapshot.load().cfg.path.clone() else {
        shared.metrics.reload(false);
        return Err(ReloadError::NoFile);
    };
    let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
    let cfg = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.metrics.reload(false);
            for l in e.lines() {
                tracing::error!(problem = %l, "config reload rejected");
            }
            shared.events.publish(
                crate::events::Event::new(
                    crate::events::EventKind::ConfigRejected,
                    format!(
                        "config reload rejected ({} problems); the previous config keeps serving",
                        e.problems.len()
                    ),
                )
                .data(serde_json::json!({ "problems": e.lines() })),
            );
            return Err(ReloadError::Invalid(e));
        }
        Err(e) => {
            shared.metrics.reload(false);
            return Err(ReloadError::Apply(std::io::Error::other(e.to_string())));
        }
    };
    let review = crate::check::review(&cfg);
    if review.has_errors() {
        shared.metrics.reload(false);
        let lines = review.lines(crate::check::Severity::Error);
        for l in &lines {
            tracing::error!(finding = %l, "config reload rejected by the review");
        }
        shared.events.publish(
            crate::events::Event::new(
                crate::events::EventKind::ConfigRejected,
                format!(
                    "config reload rejected: the review found {} error(s); the previous config keeps serving",
                    lines.len()
                ),
            )
            .data(serde_json::json!({ "findings": lines })),
        );
        return Err(ReloadError::Unsafe {
            lines,
            findings: review.findings,
        });
    }
    let review_warnings = review.lines(crate::check::Severity::Warning);
    match shared.apply(cfg).map(|mut o| {
        o.warnings.extend(review_warnings);
        o.findings = review.findings;
        o
    }) {
        Ok(o) => {
            shared.metrics.reload(true);
            for w in &o.warnings {
                tracing::warn!(warning = %w, "config reload");
            }
            shared.events.publish(
                crate::events::Event::new(
                    crate::events::EventKind::ConfigReloaded,
                    format!("config reloaded (generation {})", o.generation),
                )
                .data(serde_json::json!({ "generation": o.generation, "warnings": o.warnings })),
            );
            Ok(o)
        }
        Err(e) => {
            shared.metrics.reload(false);
            Err(ReloadError::Apply(e))
        }
    }
}
