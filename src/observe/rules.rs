//! The built-in alert rules: their defaults, their runbooks (the incident response plan as
//! code: `levee runbook` prints them, the README's "When levee alerts" repeats them) and how
//! each one reads the history. The state machine (pending, firing, resolved) is in `alerts.rs`.

use super::history::History;
use super::runbooks::defaults;
use crate::config::observe::AlertOverride;
use crate::events::Event;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Names of the built-in rules, in the order they are documented.
pub const RULE_NAMES: [&str; 10] = [
    "server_down",
    "pool_degraded",
    "pool_unavailable",
    "error_ratio",
    "latency",
    "saturation",
    "attack_suspected",
    "ban_surge",
    "config_reload_failed",
    "slo_availability",
];

/// A rule's settings: the defaults, overridden by `[[alerts]]`, scaled by `time_scale`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: &'static str,
    pub enabled: bool,
    pub severity: String,
    pub for_: Duration,
    pub keep_firing_for: Duration,
    pub threshold: f64,
    pub window: Duration,
    pub min_requests: u64,
    pub labels: BTreeMap<String, String>,
    pub runbook_url: Option<String>,
    /// What the rule watches, one line.
    pub about: &'static str,
    /// What to do, step by step.
    pub runbook: &'static str,
}

/// The rules in force: defaults, overrides, scale.
pub fn rules(overrides: &[AlertOverride], time_scale: f64) -> Vec<Rule> {
    let scale = |secs: u64| Duration::from_secs_f64(secs as f64 * time_scale);
    let scaled = |d: Duration| Duration::from_secs_f64(d.as_secs_f64() * time_scale);
    RULE_NAMES
        .iter()
        .map(|&name| {
            let d = defaults(name);
            let o = overrides.iter().find(|o| o.name == name);
            Rule {
                name,
                enabled: o.is_none_or(|o| o.enabled),
                severity: o
                    .and_then(|o| o.severity.clone())
                    .unwrap_or_else(|| d.severity.to_string()),
                for_: o.and_then(|o| o.for_).map_or(scale(d.for_), scaled),
                keep_firing_for: o
                    .and_then(|o| o.keep_firing_for)
                    .map_or(scale(d.keep), scaled),
                threshold: o.and_then(|o| o.threshold).unwrap_or(d.threshold),
                window: o.and_then(|o| o.window).map_or(scale(d.window), scaled),
                min_requests: o.and_then(|o| o.min_requests).unwrap_or(d.min_requests),
                labels: o.map(|o| o.labels.clone()).unwrap_or_default(),
                runbook_url: o.and_then(|o| o.runbook_url.clone()),
                about: d.about,
                runbook: d.runbook,
            }
        })
        .collect()
}

/// The runbook of every rule as Markdown (what `levee runbook` prints).
pub fn runbook_markdown() -> String {
    let mut out = String::new();
    for r in rules(&[], 1.0) {
        let _ = writeln!(
            out,
            "#### `{}` ({}, for {})\n\nFires when {}.\n\n{}\n",
            r.name,
            r.severity,
            humantime::format_duration(r.for_),
            r.about,
            r.runbook
        );
    }
    out
}

/// What the rules read besides the history.
#[derive(Debug, Default)]
pub struct Context {
    /// The attack in progress (its `attack_started` event), if any.
    pub attack: Option<Arc<Event>>,
    /// Unix seconds of recent `ban_added` events, with the client.
    pub bans: std::collections::VecDeque<(u64, String)>,
    /// The last reload, when it was rejected.
    pub reload_rejected: Option<Arc<Event>>,
    /// Admin address, for runbooks.
    pub admin: String,
    pub now: u64,
}

/// One instance of a rule whose condition holds now.
#[derive(Debug, Clone)]
pub struct Hit {
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub description: String,
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

fn hit(pairs: &[(&str, &str)], summary: String, description: String) -> Hit {
    Hit {
        labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        summary,
        description,
    }
}

/// Evaluates one rule: the instances whose condition holds now.
pub fn evaluate(rule: &Rule, h: &History, cx: &Context) -> Vec<Hit> {
    let Some(now) = h.latest() else {
        return Vec::new();
    };
    let w = rule.window.as_secs().max(1);
    let mut out = Vec::new();
    match rule.name {
        "server_down" => {
            for p in &now.pools {
                for s in p.servers.iter().filter(|s| !s.up) {
                    let why = if s.ejected {
                        "ejected after consecutive failures (passive health)"
                    } else {
                        "failing its health checks"
                    };
                    out.push(hit(
                        &[("pool", &p.name), ("server", &s.name)],
                        format!("server {} of pool {} is down", s.name, p.name),
                        format!(
                            "Server {} of pool {} is {why}. The pool has {} of {} servers healthy; it answered {} requests ({} 5xx) since levee started.",
                            s.name, p.name, p.healthy(), p.servers.len(), s.requests, s.errors
                        ),
                    ));
                }
            }
        }
        "pool_degraded" | "pool_unavailable" => {
            for p in &now.pools {
                let n = p.servers.len();
                let up = p.healthy();
                let frac = if n == 0 { 0.0 } else { up as f64 / n as f64 };
                let fires = if rule.name == "pool_unavailable" {
                    up == 0 && n > 0
                } else {
                    up > 0 && frac < rule.threshold
                };
                if fires {
                    let down: Vec<&str> = p
                        .servers
                        .iter()
                        .filter(|s| !s.up)
                        .map(|s| &*s.name)
                        .collect();
                    let shed = h.pool_window(&p.name, 60).shed;
                    out.push(hit(
                        &[("pool", &p.name)],
                        format!("pool {} has {up} of {n} servers healthy", p.name),
                        format!(
                            "Pool {}: {up} of {n} servers healthy ({:.0}%); down or ejected: {}. {shed} requests shed in the last minute.",
                            p.name, frac * 100.0, down.join(", ")
                        ),
                    ));
                }
            }
        }
        "error_ratio" => {
            for p in &now.pools {
                let d = h.pool_window(&p.name, w);
                let total = d.requests + d.upstream_errors;
                let failed = d.errors + d.upstream_errors;
                let ratio = if total == 0 {
                    0.0
                } else {
                    failed as f64 / total as f64
                };
                if total >= rule.min_requests.max(1) && ratio > rule.threshold {
                    let before = h.ago(w);
                    let mut by_server = Vec::new();
                    for s in &p.servers {
                        let prev = before
                            .and_then(|b| b.pools.iter().find(|x| x.name == p.name))
                            .and_then(|bp| bp.servers.iter().find(|x| x.name == s.name));
                        let (r0, e0) = prev.map_or((0, 0), |x| (x.requests, x.errors));
                        let (r, e) = (s.requests.saturating_sub(r0), s.errors.saturating_sub(e0));
                        if e > 0 {
                            by_server.push((e, format!("{}: {e} of {r}", s.name)));
                        }
                    }
                    by_server.sort_by_key(|x| std::cmp::Reverse(x.0));
                    let list: Vec<String> = by_server.into_iter().map(|x| x.1).collect();
                    out.push(hit(
                        &[("pool", &p.name)],
                        format!("{:.1}% of requests to pool {} fail with 5xx", ratio * 100.0, p.name),
                        format!(
                            "Pool {}: {failed} of {total} requests failed with 5xx in the last {}s ({:.1}%, threshold {:.1}%): {} 5xx from servers, {} 502/504 from levee (server unreachable, bad answer or timeout). By server: {}.",
                            p.name, d.secs, ratio * 100.0, rule.threshold * 100.0, d.errors, d.upstream_errors,
                            if list.is_empty() { "none".to_string() } else { list.join(", ") }
                        ),
                    ));
                }
            }
        }
        "latency" => {
            for p in &now.pools {
                let d = h.pool_window(&p.name, w);
                let Some(p99) = d.p99() else { continue };
                if d.requests >= rule.min_requests.max(1) && p99 > rule.threshold {
                    let base = h.pool_window(&p.name, 2 * w);
                    let base_b = super::latency::sub(&base.latency, &d.latency);
                    let baseline = super::latency::quantile(&base_b, 0.99)
                        .map_or("unknown".to_string(), |v| format!("{v}s"));
                    out.push(hit(
                        &[("pool", &p.name)],
                        format!("pool {} p99 is {p99}s", p.name),
                        format!(
                            "Pool {}: p99 {p99}s over the last {}s ({} requests), threshold {}s; the window before: {baseline}. Queue depth now {} of {}.",
                            p.name, d.secs, d.requests, rule.threshold, p.queue_depth, p.queue_size
                        ),
                    ));
                }
            }
        }
        "saturation" => {
            for p in &now.pools {
                let d = h.pool_window(&p.name, w);
                if d.shed as f64 > rule.threshold || p.queue_depth > 0 {
                    let in_flight: u64 = p.servers.iter().map(|s| s.in_flight).sum();
                    let cap: u64 = p.servers.iter().map(|s| s.cap).sum();
                    out.push(hit(
                        &[("pool", &p.name)],
                        format!("pool {} is saturated: {} requests shed in {}s", p.name, d.shed, d.secs),
                        format!(
                            "Pool {}: {} requests shed in the last {}s ({:.1}% of {}), queue {} of {}, in flight {in_flight} of a total cap of {cap}.",
                            p.name, d.shed, d.secs, pct(d.shed, d.requests + d.shed), d.requests + d.shed, p.queue_depth, p.queue_size
                        ),
                    ));
                }
            }
        }
        "attack_suspected" => {
            if let Some(e) = &cx.attack {
                out.push(attack_hit(e));
            }
        }
        "ban_surge" => {
            let since = cx.now.saturating_sub(w);
            let recent: Vec<&String> = cx
                .bans
                .iter()
                .filter(|b| b.0 > since)
                .map(|b| &b.1)
                .collect();
            if recent.len() as f64 > rule.threshold {
                let sample: Vec<&str> = recent.iter().take(10).map(|s| s.as_str()).collect();
                out.push(hit(
                    &[],
                    format!("{} bans added in {w}s", recent.len()),
                    format!(
                        "{} clients were banned in the last {w}s (threshold {}), e.g. {}.",
                        recent.len(),
                        rule.threshold,
                        sample.join(", ")
                    ),
                ));
            }
        }
        "config_reload_failed" => {
            if let Some(e) = &cx.reload_rejected {
                let problems: Vec<String> = e
                    .data
                    .get("problems")
                    .and_then(|p| p.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(hit(
                    &[],
                    "config reload rejected; the previous config keeps serving".into(),
                    format!("{} Problems: {}", e.message, problems.join("; ")),
                ));
            }
        }
        _ => out.extend(slo(rule, h)),
    }
    for x in &mut out {
        x.labels.insert("alertname".into(), rule.name.into());
        x.labels.insert("severity".into(), rule.severity.clone());
        for (k, v) in &rule.labels {
            x.labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    out
}

fn attack_hit(e: &Event) -> Hit {
    let d = &e.data;
    let f = |k: &str| d.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let list = |k: &str, name: &str| -> String {
        d.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .take(5)
                    .map(|x| {
                        format!(
                            "{} ({} requests)",
                            x.get(name).and_then(|v| v.as_str()).unwrap_or("?"),
                            x.get("count").and_then(|v| v.as_u64()).unwrap_or(0)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let pool = e.pool.clone().unwrap_or_default();
    let mut labels = vec![];
    if !pool.is_empty() {
        labels.push(("pool", pool.as_str()));
    }
    hit(
        &labels,
        format!(
            "attack suspected: {:.0} requests/s against a baseline of {:.0}/s from {} sources",
            f("peak_rps"),
            f("baseline_rps"),
            f("sources")
        ),
        format!(
            "{} Rate {:.0}/s vs baseline {:.0}/s; {} distinct sources. Top sources: {}. Top subnets: {}. Top paths: {}.",
            e.message,
            f("peak_rps"),
            f("baseline_rps"),
            f("sources"),
            list("top_sources", "client"),
            list("top_subnets", "subnet"),
            list("top_paths", "path")
        ),
    )
}

fn slo(rule: &Rule, h: &History) -> Option<Hit> {
    let objective = rule.threshold.clamp(0.0, 0.999_999);
    let budget = 1.0 - objective;
    // Windows are scaled like every other window: `rule.window` is the scaled 1h.
    let hour = rule.window.as_secs_f64().max(1.0);
    let burn = |secs: f64| {
        let d = h.window(secs.round().max(1.0) as u64);
        let total = d.served_or_failed();
        if total < rule.min_requests.max(1) {
            return (0.0, d);
        }
        ((d.failed() as f64 / total as f64) / budget, d)
    };
    let pairs = [
        (hour, hour / 12.0, 14.4, "1h/5m"),
        (hour * 6.0, hour / 2.0, 6.0, "6h/30m"),
    ];
    for (long, short, factor, name) in pairs {
        let (bl, dl) = burn(long);
        let (bs, _) = burn(short);
        if bl > factor && bs > factor {
            return Some(hit(
                &[("window", name)],
                format!(
                    "availability SLO {:.2}% burning {bl:.1}x too fast",
                    objective * 100.0
                ),
                format!(
                    "Over the long window ({}s) {} of {} requests failed ({:.2}%): burn rate {bl:.1}x (short window {bs:.1}x), above {factor}x. At this rate the 30-day error budget lasts {:.1} days.",
                    dl.secs,
                    dl.failed(),
                    dl.served_or_failed(),
                    pct(dl.failed(), dl.served_or_failed()),
                    30.0 / bl
                ),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::history::Sample;
    use crate::observe::latency::NB;

    fn history(per_sec: &[(u64, u64)]) -> History {
        let mut h = History::new(30_000);
        let (mut req, mut err) = (0, 0);
        for (t, (r, e)) in per_sec.iter().enumerate() {
            req += r;
            err += e;
            h.push(Sample {
                t: t as u64,
                requests: req,
                errors: err,
                upstream_errors: 0,
                shed: 0,
                blocked: 0,
                open_connections: 0,
                latency: [0; NB],
                pools: Vec::new(),
            });
        }
        h
    }

    fn slo_rule(scale: f64) -> Rule {
        rules(&[], scale)
            .into_iter()
            .find(|r| r.name == "slo_availability")
            .unwrap()
    }

    #[test]
    fn slo_fires_on_a_fast_burn_over_both_windows_only() {
        // time_scale 0.01: 1h = 36 s, 5m = 3 s, 6h = 216 s, 30m = 18 s.
        let rule = slo_rule(0.01);
        let cx = Context::default();
        // 2% failures for 60 s: burn 20x over both 36 s and 3 s.
        let h = history(&vec![(100, 2); 60]);
        let hits = evaluate(&rule, &h, &cx);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].labels["window"], "1h/5m");
        assert!(
            hits[0].description.contains("burn rate 20.0x"),
            "{}",
            hits[0].description
        );
        // The same burst, then 30 clean seconds: both short windows are clean, no alert.
        let mut v = vec![(100, 2); 60];
        v.extend(vec![(100, 0); 30]);
        assert!(evaluate(&rule, &history(&v), &cx).is_empty());
        // 0.05% failures: within budget.
        assert!(evaluate(&rule, &history(&vec![(2000, 1); 60]), &cx).is_empty());
        // 0.8% for a long time: 8x, the 6h/30m pair fires, not the 1h/5m one.
        let hits = evaluate(&rule, &history(&vec![(1000, 8); 300]), &cx);
        assert_eq!(hits[0].labels["window"], "6h/30m");
    }

    #[test]
    fn overrides_and_scale_apply() {
        let o = crate::config::observe::AlertOverride {
            name: "latency".into(),
            enabled: true,
            threshold: Some(0.25),
            for_: Some(Duration::from_secs(100)),
            ..Default::default()
        };
        let r = rules(&[o], 0.5);
        let l = r.iter().find(|r| r.name == "latency").unwrap();
        assert_eq!(l.threshold, 0.25);
        assert_eq!(l.for_, Duration::from_secs(50));
        assert_eq!(l.window, Duration::from_secs(150));
        let md = runbook_markdown();
        for n in RULE_NAMES {
            assert!(md.contains(&format!("`{n}`")));
        }
    }
}
