//! What the drill writes: the verdict (text, Markdown, JSON), the timeline of events, a
//! postmortem draft in the sections of the outage's postmortem, and a self-contained HTML
//! report with an inline SVG chart.

use super::{Second, TimedEvent, Verdict};
use crate::events::EventKind;
use std::fmt::Write as _;
use std::path::Path;

/// The verdict as a plain-text table.
pub fn verdict_table(v: &Verdict) -> String {
    let mut s = format!(
        "VERDICT ({}): {}\n",
        if v.protected {
            "protected"
        } else {
            "unprotected"
        },
        if v.passed { "PASS" } else { "FAIL" }
    );
    for c in &v.checks {
        let _ = writeln!(
            s,
            "  [{}] {:<42} {:<40} required {}",
            if c.passed { "pass" } else { "FAIL" },
            c.what,
            c.observed,
            c.required
        );
    }
    if v.alerts.is_empty() {
        s.push_str("  alerts raised: none\n");
    }
    for (t, a) in &v.alerts {
        let _ = writeln!(s, "  alert at t={t:.1}s: {a}");
    }
    s
}

fn md_table(v: &Verdict) -> String {
    let mut s = String::from("| check | observed | required | result |\n|---|---|---|---|\n");
    for c in &v.checks {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            c.what,
            c.observed.replace('|', "/"),
            c.required,
            if c.passed { "pass" } else { "**FAIL**" }
        );
    }
    s
}

/// Collapses runs of the same kind of event ("ban_added x 812 between ...").
fn timeline(events: &[TimedEvent]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let e = &events[i];
        let mut j = i + 1;
        while j < events.len()
            && events[j].event.kind == e.event.kind
            && e.event.kind == EventKind::BanAdded
        {
            j += 1;
        }
        let when = humantime::format_rfc3339_seconds(e.event.time);
        if j - i > 3 {
            let last = &events[j - 1];
            out.push(format!(
                "{when} (t={:.1}s to {:.1}s) {} x {}: {} ... {}",
                e.t,
                last.t,
                e.event.kind.as_str(),
                j - i,
                e.event.message,
                last.event.message
            ));
        } else {
            for k in &events[i..j] {
                out.push(format!(
                    "{} (t={:.1}s) {}: {}",
                    humantime::format_rfc3339_seconds(k.event.time),
                    k.t,
                    k.event.kind.as_str(),
                    k.event.message
                ));
            }
        }
        i = j;
    }
    out
}

fn postmortem(v: &Verdict, seconds: &[Second], events: &[TimedEvent]) -> String {
    let first = events
        .first()
        .map(|e| humantime::format_rfc3339_seconds(e.event.time).to_string())
        .unwrap_or_default();
    let last = events
        .last()
        .map(|e| humantime::format_rfc3339_seconds(e.event.time).to_string())
        .unwrap_or_default();
    let bans = events
        .iter()
        .filter(|e| e.event.kind == EventKind::BanAdded)
        .count();
    let legit_total: u64 = seconds.iter().map(|s| s.legit_ok + s.legit_failed).sum();
    let legit_failed: u64 = seconds.iter().map(|s| s.legit_failed).sum();
    let flood_total: u64 = seconds.iter().map(|s| s.flood_attempts).sum();
    let flood_refused: u64 = seconds.iter().map(|s| s.flood_refused).sum();
    let attack = events
        .iter()
        .find(|e| e.event.kind == EventKind::AttackStarted);
    let mut s = String::from("# Postmortem (draft written by levee drill)\n\n## Issue Summary\n\n");
    let _ = writeln!(
        s,
        "- Duration: {first} to {last} (UTC), a drill of {} s.",
        seconds.len()
    );
    let _ = writeln!(
        s,
        "- Impact: {legit_failed} of {legit_total} legitimate requests failed ({:.2}% served); legitimate p50 {:.0} ms, p99 {:.0} ms.",
        v.legit_success_rate * 100.0,
        v.legit_p50_ms,
        v.legit_p99_ms
    );
    let _ = writeln!(
        s,
        "- Root cause as levee observed it: a flood from {} addresses offering {:.0} requests/s against a pool that serves {:.0} requests/s ({:.0}x).",
        v.flood_sources,
        v.flood_offered_rps,
        v.pool_capacity_rps,
        v.flood_offered_rps / v.pool_capacity_rps.max(1.0)
    );
    s.push_str("\n## Timeline\n\n");
    for l in timeline(events) {
        let _ = writeln!(s, "- {l}");
    }
    s.push_str("\n## Root Cause and Resolution\n\n");
    if let Some(a) = attack {
        let top = a.event.data["top_subnets"]
            .as_array()
            .and_then(|v| v.first())
            .map(|t| {
                format!(
                    "{} ({} requests)",
                    t["subnet"].as_str().unwrap_or("?"),
                    t["count"]
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "levee saw an attack {:.1} s after the flood started: {} (top subnet {top}).",
            v.time_to_detect_s.unwrap_or(0.0),
            a.event.message
        );
    } else {
        s.push_str("levee raised no attack event.\n");
    }
    let _ = writeln!(
        s,
        "{bans} sources were banned automatically{}; of {flood_total} flood requests, {flood_refused} were refused before reaching a server. The servers saw at most {:?} requests in flight (capacity {}), with {} crash(es).",
        v.time_to_block_s
            .map_or(String::new(), |t| format!(", 95% of them within {t:.1} s")),
        v.backend_max_in_flight,
        v.backend_capacity,
        v.backend_crashes
    );
    let _ = writeln!(
        s,
        "A reload with a dangerous config during the flood was {}.",
        if v.dangerous_reload.starts_with("rejected") {
            "rejected by levee's review"
        } else {
            "ACCEPTED"
        }
    );
    s.push_str("\n## Corrective and Preventative Measures\n\n");
    for c in v.checks.iter().filter(|c| !c.passed) {
        let _ = writeln!(
            s,
            "- {} was {} (required {}): fix this before the next drill.",
            c.what, c.observed, c.required
        );
    }
    if v.backend_crashes > 0 {
        s.push_str("- Set `max_concurrency` on every pool to what one server can take (`levee probe`), and review the config with `levee check` before it ships.\n");
    }
    if bans > 0 {
        s.push_str("- Review the banned ranges (`levee ban list`); ranges that recur are worth a permanent `shield.deny` entry.\n");
    }
    s.push_str("- Run this drill regularly (`levee drill --quick` in CI).\n");
    s
}

fn svg(seconds: &[Second]) -> String {
    let (w, h, pad) = (760.0, 240.0, 40.0);
    let max = seconds
        .iter()
        .map(|s| s.flood_attempts.max(s.legit_ok + s.legit_failed))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let n = seconds.len().max(2) as f64;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1.0);
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / max;
    let line = |f: &dyn Fn(&Second) -> u64| {
        seconds
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{:.1},{:.1}", x(i), y(f(s) as f64)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="requests per second during the drill">"#
    );
    let _ = write!(
        out,
        r#"<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="gray"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="gray"/>"#,
        b = h - pad,
        r = w - pad
    );
    let _ = write!(
        out,
        r#"<text x="4" y="{pad}" font-size="11">{max:.0}/s</text><text x="{pad}" y="{}" font-size="11">t (s)</text>"#,
        h - 8.0
    );
    for (name, color, pts) in [
        ("flood requests/s", "crimson", line(&|s| s.flood_attempts)),
        ("flood refused/s", "orange", line(&|s| s.flood_refused)),
        ("users served/s", "green", line(&|s| s.legit_ok)),
        ("users failed/s", "black", line(&|s| s.legit_failed)),
    ] {
        let _ = write!(
            out,
            r#"<polyline class="series" data-name="{name}" fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>"#
        );
    }
    for (i, (name, color)) in [
        ("flood requests/s", "crimson"),
        ("flood refused/s", "orange"),
        ("users served/s", "green"),
        ("users failed/s", "black"),
    ]
    .iter()
    .enumerate()
    {
        let _ = write!(
            out,
            r#"<rect x="{}" y="8" width="10" height="10" fill="{color}"/><text x="{}" y="17" font-size="11">{name}</text>"#,
            pad + i as f64 * 170.0,
            pad + 14.0 + i as f64 * 170.0
        );
    }
    out.push_str("</svg>");
    out
}

fn html(v: &Verdict, seconds: &[Second], events: &[TimedEvent]) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut rows = String::new();
    for c in &v.checks {
        let _ = write!(
            rows,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if c.passed { "pass" } else { "fail" },
            esc(&c.what),
            esc(&c.observed),
            esc(&c.required),
            if c.passed { "pass" } else { "FAIL" }
        );
    }
    let mut tl = String::new();
    for l in timeline(events) {
        let _ = write!(tl, "<li>{}</li>", esc(&l));
    }
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>levee drill: {verdict}</title><style>body{{font-family:sans-serif;margin:2em;max-width:60em}}td,th{{border:1px solid silver;padding:4px 8px}}table{{border-collapse:collapse}}.fail td{{background:mistyrose}}.pass td{{background:honeydew}}</style></head><body><h1>levee drill ({mode}): <span id="verdict">{verdict}</span></h1><table><tr><th>check</th><th>observed</th><th>required</th><th>result</th></tr>{rows}</table><h2>Requests per second</h2>{chart}<h2>Timeline</h2><ul>{tl}</ul></body></html>"#,
        verdict = if v.passed { "PASS" } else { "FAIL" },
        mode = if v.protected {
            "protected"
        } else {
            "unprotected"
        },
        chart = svg(seconds),
    )
}

/// Writes every output file.
pub fn write_all(
    out: &Path,
    v: &Verdict,
    seconds: &[Second],
    events: &[TimedEvent],
    journal_draft: Option<&str>,
) -> std::io::Result<()> {
    std::fs::write(
        out.join("verdict.md"),
        format!(
            "# levee drill verdict: {}\n\n{}",
            if v.passed { "PASS" } else { "FAIL" },
            md_table(v)
        ),
    )?;
    let json = serde_json::json!({ "verdict": v, "seconds": seconds });
    std::fs::write(
        out.join("verdict.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    let mut jl = String::new();
    for e in events {
        jl.push_str(&serde_json::to_string(e).unwrap_or_default());
        jl.push('\n');
    }
    std::fs::write(out.join("timeline.jsonl"), jl)?;
    // The incident's draft from the journal (as `levee postmortem` writes it), followed by the
    // drill's own account; only the latter when no alert opened an incident.
    let mut pm = String::new();
    if let Some(d) = journal_draft {
        pm.push_str(d);
        pm.push_str("\n\n---\n\n");
    }
    pm.push_str(&postmortem(v, seconds, events));
    std::fs::write(out.join("postmortem.md"), pm)?;
    std::fs::write(out.join("report.html"), html(v, seconds, events))?;
    Ok(())
}
