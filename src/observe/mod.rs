//! Observing levee: metrics, the access log, the per-second history, alert rules and their
//! state machine, notifiers, and the recent-event feed the dashboard reads.

pub mod access_log;
pub mod alerts;
pub mod engine;
pub mod history;
pub mod latency;
pub mod metrics;
pub mod notify;
pub mod process;
pub mod rules;
pub mod runbooks;
