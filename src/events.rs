//! The in-process event bus: significant events (ban, eject, alert, reload, attack start and
//! end, ...) go here; the journal, the alert engine, the dashboard and later cluster sync
//! subscribe. Publishing never waits: a subscriber that falls behind loses the oldest events
//! (and is told how many), the request path never blocks on it.

use serde::Serialize;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::broadcast;

/// What happened. The wire name (snake_case) is stable: the journal stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    LeveeStarted,
    LeveeStopped,
    ConfigReloaded,
    ConfigRejected,
    /// Active health checks marked a server down.
    ServerDown,
    /// Active health checks marked a server up again.
    ServerUp,
    /// Passive outlier ejection.
    ServerEjected,
    /// Back from an ejection.
    ServerRestored,
    BanAdded,
    BanRemoved,
    BanExpired,
    AttackStarted,
    AttackEnded,
    SheddingStarted,
    SheddingEnded,
    AlertPending,
    AlertFiring,
    AlertResolved,
}

impl EventKind {
    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::LeveeStarted => "levee_started",
            EventKind::LeveeStopped => "levee_stopped",
            EventKind::ConfigReloaded => "config_reloaded",
            EventKind::ConfigRejected => "config_rejected",
            EventKind::ServerDown => "server_down",
            EventKind::ServerUp => "server_up",
            EventKind::ServerEjected => "server_ejected",
            EventKind::ServerRestored => "server_restored",
            EventKind::BanAdded => "ban_added",
            EventKind::BanRemoved => "ban_removed",
            EventKind::BanExpired => "ban_expired",
            EventKind::AttackStarted => "attack_started",
            EventKind::AttackEnded => "attack_ended",
            EventKind::SheddingStarted => "shedding_started",
            EventKind::SheddingEnded => "shedding_ended",
            EventKind::AlertPending => "alert_pending",
            EventKind::AlertFiring => "alert_firing",
            EventKind::AlertResolved => "alert_resolved",
        }
    }
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    pub kind: EventKind,
    /// Pool name, when the event concerns a pool or one of its servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Server name (its address as configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// A client address or CIDR (bans).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// One human sentence: what happened and why.
    pub message: String,
    /// Evidence and figures, free-form JSON.
    pub data: serde_json::Value,
}

impl Event {
    /// A new event now, with no subject and no data.
    pub fn new(kind: EventKind, message: impl Into<String>) -> Event {
        Event {
            time: SystemTime::now(),
            kind,
            pool: None,
            server: None,
            client: None,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }
    pub fn pool(mut self, p: &str) -> Event {
        self.pool = Some(p.to_string());
        self
    }
    pub fn server(mut self, s: &str) -> Event {
        self.server = Some(s.to_string());
        self
    }
    pub fn client(mut self, c: impl Into<String>) -> Event {
        self.client = Some(c.into());
        self
    }
    pub fn data(mut self, d: serde_json::Value) -> Event {
        self.data = d;
        self
    }
}

mod rfc3339 {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
    }
}

/// The bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl EventBus {
    /// Publishes an event (never blocks) and logs it.
    pub fn publish(&self, e: Event) {
        tracing::info!(target: "levee::events", kind = e.kind.as_str(), pool = e.pool.as_deref(), server = e.server.as_deref(), client = e.client.as_deref(), data = %e.data, "{}", e.message);
        let _ = self.tx.send(Arc::new(e));
    }

    /// A new subscription, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}
