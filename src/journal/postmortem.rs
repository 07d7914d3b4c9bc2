//! The postmortem draft: Markdown with the sections of a good postmortem (Issue Summary,
//! Timeline, Root Cause and Resolution, Corrective and Preventative Measures) and an embedded
//! SVG chart, or the same report as JSON.

use super::analysis::thousands;
use super::report::Report;
use std::fmt::Write as _;

/// `ms` since the epoch as `2026-11-24 02:10:03 UTC`.
pub fn when(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", s.trim_end_matches('Z').replace('T', " "))
}

fn clock(ms: i64) -> String {
    let w = when(ms);
    w.split(' ').nth(1).unwrap_or("").to_string()
}

fn dur(secs: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(
        u64::try_from(secs).unwrap_or(0),
    ))
    .to_string()
}

fn p99(v: Option<f64>) -> String {
    // Histogram buckets give an upper bound, never an optimistic figure.
    v.map_or("n/a (no requests)".into(), |s| {
        format!("≤ {:.0} ms", s * 1000.0)
    })
}

/// The Markdown draft.
pub fn markdown(r: &Report) -> String {
    let i = &r.impact;
    let mut o = String::new();
    let _ = writeln!(o, "# Postmortem draft: incident {} — {}\n", r.id, r.title);
    let _ = writeln!(
        o,
        "_Drafted by levee from its journal; every figure below was counted by levee. Edit freely._\n"
    );
    let _ = writeln!(o, "## Issue Summary\n");
    let _ = writeln!(
        o,
        "**Duration:** {} ({} – {}){}\n",
        dur(r.duration_secs),
        when(r.start_ms),
        when(r.end_ms),
        if r.open { ", still open" } else { "" }
    );
    let _ = writeln!(
        o,
        "**Impact:** {} requests during the incident: {} answered by servers, {} failed ({} 5xx from servers, {} upstream errors), {} shed, {} blocked. Peak {} requests/s at {}. p99 {} during vs {} before.{}{}\n",
        thousands(i.requests_total),
        thousands(i.answered),
        thousands(i.failed),
        thousands(i.server_5xx),
        thousands(i.upstream_errors),
        thousands(i.shed),
        thousands(i.blocked),
        thousands(i.peak_rps),
        clock(i.peak_at_ms),
        p99(i.p99_during_secs),
        p99(i.p99_before_secs),
        if r.pools.is_empty() {
            String::new()
        } else {
            format!(" Pools affected: {}.", r.pools.join(", "))
        },
        if r.servers.is_empty() {
            String::new()
        } else {
            format!(" Servers: {}.", r.servers.join(", "))
        },
    );
    if r.shield.sources > 0 || r.shield.banned > 0 {
        let _ = writeln!(
            o,
            "**Attacking sources:** {} reported by the shield; {} distinct clients or ranges banned.\n",
            thousands(r.shield.sources),
            thousands(r.shield.banned)
        );
    }
    let _ = writeln!(
        o,
        "**Root cause (as levee observed it):** {}\n",
        r.root_cause
    );
    let _ = writeln!(o, "## Timeline\n");
    let _ = writeln!(o, "All times UTC.\n");
    for t in &r.timeline {
        let at = if t.count > 1 && t.until_ms / 1000 != t.t_ms / 1000 {
            format!("{} – {}", clock(t.t_ms), clock(t.until_ms))
        } else {
            clock(t.t_ms)
        };
        let what = if t.count > 1 {
            format!(
                "{} ×{}: {}{}",
                t.kind,
                thousands(t.count),
                t.subjects.join(", "),
                if t.count as usize > t.subjects.len() {
                    ", …"
                } else {
                    ""
                }
            )
        } else {
            format!("{}: {}", t.kind, t.message)
        };
        let _ = writeln!(o, "- **{at}** — {what}");
    }
    let _ = writeln!(o, "\n## Root Cause and Resolution\n");
    let _ = writeln!(o, "{}\n", r.root_cause);
    for x in &r.resolution {
        let _ = writeln!(o, "- {x}");
    }
    if !r.alerts.is_empty() {
        let _ = writeln!(o, "\nAlerts:\n");
        let _ = writeln!(
            o,
            "| alert | severity | fired | resolved | summary |\n|---|---|---|---|---|"
        );
        for a in &r.alerts {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                a.name,
                a.severity,
                clock(a.fired_ms),
                a.resolved_ms.map_or("—".into(), clock),
                a.summary.replace('|', "/")
            );
        }
    }
    if !r.shield.top_subnets.is_empty() || !r.shield.top_sources.is_empty() {
        let _ = writeln!(o, "\nTop sources as counted by the shield:\n");
        for (n, c) in r.shield.top_subnets.iter().take(5) {
            let _ = writeln!(o, "- subnet {n}: {} requests", thousands(*c));
        }
        for (n, c) in r.shield.top_sources.iter().take(5) {
            let _ = writeln!(o, "- client {n}: {} requests", thousands(*c));
        }
    }
    let _ = writeln!(o, "\n## Corrective and Preventative Measures\n");
    for (n, m) in r.measures.iter().enumerate() {
        let _ = writeln!(o, "{}. {m}", n + 1);
    }
    let _ = writeln!(o, "\n## Traffic during the incident\n");
    let _ = writeln!(o, "{}\n", super::chart::svg(&r.series));
    o
}
