//! The figures of a finished scenario, as every report shows them (text, JSON, HTML) and as the
//! thresholds read them.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::engine::Span;
use super::plan::{Kind, Load, Model, Plan};
use super::stats::{ErrorKind, LatencySummary, Merged, TimelinePoint};

/// The results of one scenario. Field meanings: docs/loadtest-json.md.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    /// `"closed"`, `"open"` or `"slowloris"`.
    pub model: String,
    pub url: String,
    /// What was asked for.
    pub config: ScenarioConfig,
    /// Seconds after the run's start when the scenario's load started.
    pub started_at_s: f64,
    /// Seconds the load lasted (from its start to its last response).
    pub duration_s: f64,
    /// Requests finished (responses + errors).
    pub requests: u64,
    pub responses: u64,
    /// Responses with 2xx, 3xx or an expected status.
    pub successes: u64,
    /// Requests that are not successes (other statuses and errors).
    pub failures: u64,
    /// `successes / requests` in percent (100 without requests).
    pub success_rate: f64,
    /// Requests finished per second over `duration_s`.
    pub rps: f64,
    /// Latency from the intended send time (open model), or from the send (closed model).
    pub latency: LatencySummary,
    /// Latency from the actual send time.
    pub latency_uncorrected: LatencySummary,
    /// Responses by status code.
    pub statuses: BTreeMap<String, u64>,
    /// Errors by kind: connect, timeout, reset, closed, protocol, other.
    pub errors: BTreeMap<String, u64>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub connections_opened: u64,
    /// Slowloris: connections still held open when the run ended (0 otherwise).
    pub held_open_at_end: u64,
    /// Per-second figures.
    pub timeline: Vec<TimelinePoint>,
    /// The corrected latency histogram: recorded values (µs, bucket upper bound) and counts.
    pub histogram: Vec<HistogramBucket>,
    pub thresholds: Vec<ThresholdResult>,
}

/// The parameters a scenario ran with.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ScenarioConfig {
    /// Requests per second asked for (open model; the highest stage target with stages).
    pub rate: Option<f64>,
    /// Connections (closed model), maximum connections (open model), or slowloris connections.
    pub connections: Option<f64>,
    pub duration_s: Option<f64>,
    pub requests: Option<u64>,
    pub stages: Option<String>,
    pub method: Option<String>,
    pub keepalive: Option<bool>,
    pub timeout_s: f64,
    pub source_ips: Option<String>,
    pub source_ip_count: Option<u64>,
    pub expect_status: Vec<u16>,
}

/// One bucket of a latency histogram.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistogramBucket {
    /// Upper bound of the bucket in microseconds.
    pub le_us: u64,
    pub count: u64,
}

/// One threshold and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ThresholdResult {
    /// As written, e.g. `p99 < 250ms`.
    pub threshold: String,
    pub passed: bool,
    /// The observed value in the threshold's unit (ms for latencies, % for rates).
    pub observed: f64,
    /// The observed value as shown in the text summary.
    pub observed_text: String,
}

fn stages_text(load: &Load) -> Option<String> {
    match load {
        Load::Constant(_) => None,
        Load::Stages { stages, .. } => Some(
            stages
                .iter()
                .map(|s| {
                    format!(
                        "{}:{}",
                        crate::config::units::fmt_duration(s.duration),
                        s.target
                    )
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

impl ScenarioResult {
    /// The figures of a scenario from what it recorded. `run_start` is the run's start.
    pub fn build(
        plan: &Plan,
        merged: &Merged,
        span: Span,
        run_start: tokio::time::Instant,
    ) -> Self {
        let c = &merged.counters;
        let duration_s = span.end.saturating_duration_since(span.start).as_secs_f64();
        let responses = c.requests - c.error_total().min(c.requests);
        let mut config = ScenarioConfig {
            duration_s: plan.duration.map(|d| d.as_secs_f64()),
            requests: plan.requests,
            timeout_s: plan.timeout.as_secs_f64(),
            source_ips: plan.source_ips.as_ref().map(|s| s.net.to_string()),
            source_ip_count: plan.source_ips.as_ref().map(|s| s.count),
            expect_status: plan.expect_status.clone(),
            ..Default::default()
        };
        let model = match &plan.kind {
            Kind::Http(h) => {
                config.method = Some(h.method.to_string());
                config.keepalive = Some(h.keepalive);
                match &h.model {
                    Model::Closed { connections } => {
                        config.connections = Some(connections.max());
                        config.stages = stages_text(connections);
                    }
                    Model::Open {
                        rate,
                        max_connections,
                    } => {
                        config.rate = Some(rate.max());
                        config.connections = Some(f64::from(*max_connections));
                        config.stages = stages_text(rate);
                    }
                }
                h.model.name()
            }
            Kind::Slowloris { connections, .. } => {
                config.connections = Some(f64::from(*connections));
                "slowloris"
            }
        };
        let errors = ErrorKind::ALL
            .iter()
            .filter(|k| c.errors_of(**k) > 0)
            .map(|k| (k.name().to_owned(), c.errors_of(*k)))
            .collect();
        ScenarioResult {
            name: plan.name.clone(),
            model: model.to_owned(),
            url: plan.target.url.clone(),
            config,
            started_at_s: span
                .start
                .saturating_duration_since(run_start)
                .as_secs_f64(),
            duration_s,
            requests: c.requests,
            responses,
            successes: c.success,
            failures: c.requests - c.success.min(c.requests),
            success_rate: if c.requests == 0 {
                100.0
            } else {
                c.success as f64 * 100.0 / c.requests as f64
            },
            rps: if duration_s > 0.0 {
                c.requests as f64 / duration_s
            } else {
                0.0
            },
            latency: LatencySummary::of(&merged.corrected),
            latency_uncorrected: LatencySummary::of(&merged.uncorrected),
            statuses: c.status_counts().map(|(s, n)| (s.to_string(), n)).collect(),
            errors,
            bytes_received: c.bytes_received,
            bytes_sent: c.bytes_sent,
            connections_opened: c.connections,
            held_open_at_end: c.held_at_end,
            timeline: merged.timeline.clone(),
            histogram: buckets(&merged.corrected),
            thresholds: Vec::new(),
        }
    }

    /// Responses with this status.
    pub fn status(&self, status: u16) -> u64 {
        self.statuses.get(&status.to_string()).copied().unwrap_or(0)
    }

    /// Responses whose status is in this class (2 for 2xx).
    pub fn status_class(&self, class: u16) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| s.parse::<u16>().is_ok_and(|s| s / 100 == class))
            .map(|(_, n)| n)
            .sum()
    }

    /// Errors of every kind.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Whether every threshold passed.
    pub fn passed(&self) -> bool {
        self.thresholds.iter().all(|t| t.passed)
    }
}

/// The recorded buckets of a histogram (non-empty ones), for the JSON and the HTML chart.
fn buckets(h: &Histogram<u64>) -> Vec<HistogramBucket> {
    h.iter_recorded()
        .map(|v| HistogramBucket {
            le_us: h.highest_equivalent(v.value_iterated_to()),
            count: v.count_at_value(),
        })
        .collect()
}
