//! An incident's report, computed from the journal alone (so `levee postmortem` works
//! offline): its impact from the per-second samples, what the alerts, the health checks and
//! the shield saw from the events, and the corrective measures that follow from them.

use super::store::{self, EventRow, IncidentRow, JournalError, SampleRow};
use crate::observe::latency;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The incident's impact. Every count is over the samples from the start second to the end
/// second (both included).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Impact {
    /// Every request levee answered: `answered + upstream_errors + shed + blocked`.
    pub requests_total: u64,
    /// Answered by a server (any status).
    pub answered: u64,
    /// Failed: 5xx from a server plus levee's 502/504 for a failed upstream.
    pub failed: u64,
    pub server_5xx: u64,
    pub upstream_errors: u64,
    /// Shed by levee (503 queue_full, queue_timeout, no_healthy_server).
    pub shed: u64,
    /// Refused by levee or its shield (bans, limits, malformed requests, ...).
    pub blocked: u64,
    /// Highest one-second request count and when.
    pub peak_rps: u64,
    pub peak_at_ms: i64,
    /// p99 of server answers during the incident and over the same length of time before it.
    pub p99_during_secs: Option<f64>,
    pub p99_before_secs: Option<f64>,
    /// Highest in-flight / cap of any server at any second.
    pub max_server_load: f64,
}

/// One alert that fired.
#[derive(Debug, Clone, Serialize)]
pub struct AlertLine {
    pub name: String,
    pub severity: String,
    pub labels: BTreeMap<String, String>,
    pub pending_ms: Option<i64>,
    pub fired_ms: i64,
    pub resolved_ms: Option<i64>,
    pub summary: String,
}

/// What the shield saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Shield {
    pub attack_start_ms: Option<i64>,
    pub attack_end_ms: Option<i64>,
    /// Largest `sources` any attack event reported.
    pub sources: u64,
    pub peak_rps: f64,
    pub baseline_rps: f64,
    pub top_subnets: Vec<(String, u64)>,
    pub top_sources: Vec<(String, u64)>,
    pub top_paths: Vec<(String, u64)>,
    pub bans_automatic: u64,
    pub bans_manual: u64,
    /// Distinct banned clients or ranges.
    pub banned: u64,
    /// Time from the attack's start (or the first automatic ban, when earlier) to the last
    /// automatic ban, in ms.
    pub bans_within_ms: Option<i64>,
    pub ban_reasons: BTreeMap<String, u64>,
}

/// A timeline line; runs of the same kind of event are collapsed into one.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineLine {
    pub t_ms: i64,
    pub until_ms: i64,
    pub kind: String,
    pub count: u64,
    pub message: String,
    /// Clients or servers of a collapsed run (the first few).
    pub subjects: Vec<String>,
}

/// Everything a postmortem draft says.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub id: i64,
    pub title: String,
    pub open: bool,
    pub start_ms: i64,
    pub end_ms: i64,
    pub duration_secs: i64,
    pub impact: Impact,
    pub pools: Vec<String>,
    pub servers: Vec<String>,
    pub alerts: Vec<AlertLine>,
    pub shield: Shield,
    pub timeline: Vec<TimelineLine>,
    pub root_cause: String,
    pub resolution: Vec<String>,
    pub measures: Vec<String>,
    /// Per second: `[unix secs, answered, failed, shed, blocked]`.
    pub series: Vec<[i64; 5]>,
}

fn s(v: &serde_json::Value, p: &str) -> String {
    v.pointer(p)
        .and_then(|x| x.as_str())
        .unwrap_or("")
        .to_string()
}

fn pairs(v: &serde_json::Value, key: &str, name: &str) -> Vec<(String, u64)> {
    v.get(key)
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        s(x, &format!("/{name}")),
                        x.get("count").and_then(|c| c.as_u64()).unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The incident to report: `id`, or the latest.
pub fn pick(c: &Connection, id: Option<i64>) -> Result<IncidentRow, JournalError> {
    let e = |x| JournalError::Sqlite {
        path: String::new(),
        source: x,
    };
    match id {
        Some(i) => store::incident(c, i)
            .map_err(e)?
            .ok_or(JournalError::NoIncident(i)),
        None => store::incidents(c)
            .map_err(e)?
            .into_iter()
            .next()
            .ok_or(JournalError::Empty),
    }
}

/// Builds the report of an incident.
pub fn build(c: &Connection, inc: &IncidentRow) -> rusqlite::Result<Report> {
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    )
    .unwrap_or(0);
    let end_ms = inc.end_ms.unwrap_or(now_ms);
    let events = store::incident_events(c, inc.id)?;
    let (from, to) = (inc.start_ms / 1000, (end_ms + 999) / 1000);
    let samples = store::samples(c, from, to)?;
    let len = (to - from).max(1);
    let before = store::samples(c, from - len.max(60), from - 1)?;
    let impact = impact(&samples, &before);
    let mut pools = BTreeSet::new();
    let mut servers = BTreeSet::new();
    for e in &events {
        if let Some(p) = &e.pool {
            pools.insert(p.clone());
            if let Some(sv) = &e.server {
                servers.insert(format!("{p}/{sv}"));
            }
        }
    }
    let alerts = alerts(&events);
    let shield = shield(&events);
    let mut r = Report {
        id: inc.id,
        title: inc.title.clone(),
        open: inc.end_ms.is_none(),
        start_ms: inc.start_ms,
        end_ms,
        duration_secs: (end_ms - inc.start_ms).max(0) / 1000,
        impact,
        pools: pools.into_iter().collect(),
        servers: servers.into_iter().collect(),
        alerts,
        shield,
        timeline: timeline(&events),
        root_cause: String::new(),
        resolution: Vec::new(),
        measures: Vec::new(),
        series: samples
            .iter()
            .map(|x| {
                [
                    x.t,
                    x.answered as i64,
                    (x.errors + x.upstream_errors) as i64,
                    x.shed as i64,
                    x.blocked as i64,
                ]
            })
            .collect(),
    };
    super::analysis::conclude(&mut r, &events);
    Ok(r)
}

fn impact(samples: &[SampleRow], before: &[SampleRow]) -> Impact {
    let mut i = Impact::default();
    let mut during = [0u64; latency::NB];
    for x in samples {
        i.answered += x.answered;
        i.server_5xx += x.errors;
        i.upstream_errors += x.upstream_errors;
        i.shed += x.shed;
        i.blocked += x.blocked;
        let total = x.answered + x.upstream_errors + x.shed + x.blocked;
        if total > i.peak_rps {
            i.peak_rps = total;
            i.peak_at_ms = x.t * 1000;
        }
        i.max_server_load = i.max_server_load.max(x.max_load);
        latency::add(&mut during, &x.latency);
    }
    let mut pre = [0u64; latency::NB];
    for x in before {
        latency::add(&mut pre, &x.latency);
    }
    i.failed = i.server_5xx + i.upstream_errors;
    i.requests_total = i.answered + i.upstream_errors + i.shed + i.blocked;
    i.p99_during_secs = latency::quantile(&during, 0.99);
    i.p99_before_secs = latency::quantile(&pre, 0.99);
    i
}

fn alerts(events: &[EventRow]) -> Vec<AlertLine> {
    let mut out: Vec<AlertLine> = Vec::new();
    let mut pending: BTreeMap<String, i64> = BTreeMap::new();
    for e in events {
        let fp = s(&e.data, "/fingerprint");
        match e.kind.as_str() {
            "alert_pending" => {
                pending.insert(fp, e.t_ms);
            }
            "alert_firing" => {
                let labels: BTreeMap<String, String> = e
                    .data
                    .get("labels")
                    .and_then(|l| serde_json::from_value(l.clone()).ok())
                    .unwrap_or_default();
                out.push(AlertLine {
                    name: labels.get("alertname").cloned().unwrap_or_default(),
                    severity: labels.get("severity").cloned().unwrap_or_default(),
                    labels,
                    pending_ms: pending.remove(&fp),
                    fired_ms: e.t_ms,
                    resolved_ms: None,
                    summary: s(&e.data, "/annotations/summary"),
                });
            }
            "alert_resolved" => {
                let labels: BTreeMap<String, String> = e
                    .data
                    .get("labels")
                    .and_then(|l| serde_json::from_value(l.clone()).ok())
                    .unwrap_or_default();
                if let Some(a) = out
                    .iter_mut()
                    .rev()
                    .find(|a| a.labels == labels && a.resolved_ms.is_none())
                {
                    a.resolved_ms = Some(e.t_ms);
                }
            }
            _ => {}
        }
    }
    out
}

fn shield(events: &[EventRow]) -> Shield {
    let mut sh = Shield::default();
    let mut banned = BTreeSet::new();
    let mut last_auto = None;
    let mut first_auto: Option<i64> = None;
    for e in events {
        match e.kind.as_str() {
            "attack_started" | "attack_ended" => {
                if e.kind == "attack_started" && sh.attack_start_ms.is_none() {
                    sh.attack_start_ms = Some(e.t_ms);
                }
                if e.kind == "attack_ended" {
                    sh.attack_end_ms = Some(e.t_ms);
                }
                let d = &e.data;
                sh.sources = sh
                    .sources
                    .max(d.get("sources").and_then(|v| v.as_u64()).unwrap_or(0));
                sh.peak_rps = sh
                    .peak_rps
                    .max(d.get("peak_rps").and_then(|v| v.as_f64()).unwrap_or(0.0));
                if sh.baseline_rps == 0.0 {
                    sh.baseline_rps = d
                        .get("baseline_rps")
                        .and_then(|v| v.as_f64())
                        .unwrap_or(0.0);
                }
                for (dst, key, name) in [
                    (&mut sh.top_subnets, "top_subnets", "subnet"),
                    (&mut sh.top_sources, "top_sources", "client"),
                    (&mut sh.top_paths, "top_paths", "path"),
                ] {
                    let p = pairs(d, key, name);
                    if p.iter().map(|x| x.1).sum::<u64>() > dst.iter().map(|x| x.1).sum::<u64>() {
                        *dst = p;
                    }
                }
            }
            "ban_added" => {
                let manual = e
                    .data
                    .get("manual")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                if manual {
                    sh.bans_manual += 1;
                } else {
                    sh.bans_automatic += 1;
                    last_auto = Some(e.t_ms);
                    first_auto = first_auto.or(Some(e.t_ms));
                }
                let reason = s(&e.data, "/reason");
                *sh.ban_reasons
                    .entry(if reason.is_empty() {
                        "unknown".into()
                    } else {
                        reason
                    })
                    .or_insert(0) += 1;
                if let Some(c) = &e.client {
                    banned.insert(c.clone());
                }
            }
            _ => {}
        }
    }
    sh.banned = banned.len() as u64;
    if let (Some(f), Some(l)) = (first_auto, last_auto) {
        let from = sh.attack_start_ms.map_or(f, |a| a.min(f));
        sh.bans_within_ms = Some((l - from).max(0));
    }
    sh
}

fn timeline(events: &[EventRow]) -> Vec<TimelineLine> {
    const RUNS: [&str; 7] = [
        "ban_added",
        "ban_removed",
        "ban_expired",
        "server_down",
        "server_up",
        "server_ejected",
        "server_restored",
    ];
    let mut out: Vec<TimelineLine> = Vec::new();
    for e in events {
        let subject = e.client.clone().or_else(|| e.server.clone());
        if let Some(last) = out.last_mut()
            && last.kind == e.kind
            && RUNS.contains(&e.kind.as_str())
        {
            last.count += 1;
            last.until_ms = e.t_ms;
            if last.subjects.len() < 5
                && let Some(c) = subject
            {
                last.subjects.push(c);
            }
            continue;
        }
        out.push(TimelineLine {
            t_ms: e.t_ms,
            until_ms: e.t_ms,
            kind: e.kind.clone(),
            count: 1,
            message: e.message.clone(),
            subjects: subject.into_iter().collect(),
        });
    }
    out
}
