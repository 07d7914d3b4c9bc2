//! Metrics and logs: the Prometheus registry and the access log.

pub mod access_log;
pub mod metrics;
