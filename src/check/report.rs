//! Output of `levee check`: text that reads like a reviewer's comments, and JSON for CI.
//!
//! The JSON document (schema version 1, documented in the README):
//! `{"schema": 1, "file", "ok", "fail_on", "errors", "warnings", "findings": [...],
//! "capacity": [...]}`, findings and capacity entries as serialised from
//! [`super::Finding`] and [`super::PoolCapacity`].

use super::{Review, Severity};
use crate::config::units::fmt_duration;
use serde_json::json;
use std::fmt::Write;

/// The JSON report.
pub fn json(review: &Review, fail_on: Severity) -> serde_json::Value {
    json!({
        "schema": 1,
        "file": review.file,
        "ok": review.at_or_above(fail_on).next().is_none(),
        "fail_on": fail_on.as_str(),
        "errors": review.count(Severity::Error),
        "warnings": review.count(Severity::Warning),
        "findings": review.findings,
        "capacity": review.capacity,
    })
}

fn plural(n: usize, one: &str) -> String {
    format!("{n} {one}{}", if n == 1 { "" } else { "s" })
}

fn rps(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.0}/s"))
}

/// The text report.
pub fn text(review: &Review, fail_on: Severity, pools: usize) -> String {
    let mut s = String::new();
    let (e, w) = (
        review.count(Severity::Error),
        review.count(Severity::Warning),
    );
    let _ = writeln!(
        s,
        "{}: {}, {} ({}, {} rules)",
        review.file,
        plural(e, "error"),
        plural(w, "warning"),
        plural(pools, "pool"),
        super::RULES.len()
    );
    for f in &review.findings {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{}:{}: {}[{}] {}: {}",
            review.file,
            f.line,
            f.severity.as_str(),
            f.id,
            f.key,
            f.message
        );
        if !f.key_written {
            let _ = writeln!(s, "    (the key is not in the file: its default applies)");
        }
        let _ = writeln!(s, "    why: {}", capitalise(f.why));
        let _ = writeln!(s, "    fix: {}", capitalise(&f.fix));
    }
    if review
        .capacity
        .iter()
        .any(|c| c.capacity_rps.is_some() || c.peak_rps.is_some())
    {
        let _ = writeln!(s);
        let _ = write!(s, "{}", capacity_table(review));
    }
    let _ = writeln!(s);
    let failing = review.at_or_above(fail_on).count();
    if failing == 0 {
        let _ = writeln!(s, "ok: nothing at or above {} (exit 0)", fail_on.as_str());
    } else {
        let _ = writeln!(
            s,
            "not ok: {} at or above {} (exit 1)",
            plural(failing, "finding"),
            fail_on.as_str()
        );
    }
    s
}

fn capitalise(t: &str) -> String {
    let mut c = t.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The per-pool capacity table.
pub fn capacity_table(review: &Review) -> String {
    let mut rows = vec![[
        "pool".to_string(),
        "servers".into(),
        "capacity".into(),
        "peak".into(),
        "headroom".into(),
        "N+1 (lose largest)".into(),
        "worst server w/ retries".into(),
        "max_conc / Little".into(),
    ]];
    for c in &review.capacity {
        let n1 = match &c.n_plus_1 {
            Some(n) => format!(
                "{} ({:.0}/s left)",
                if n.survives { "ok" } else { "FAILS" },
                n.capacity_left_rps
            ),
            None if c.servers == 1 => "FAILS (1 server)".into(),
            None => "-".into(),
        };
        let worst = c.worst_server.as_ref().map_or("-".into(), |w| {
            format!(
                "{} {:.0}/s ({:.0}%)",
                w.server,
                w.load_rps,
                w.utilisation * 100.0
            )
        });
        let little = c
            .little
            .iter()
            .max_by(|a, b| (a.ratio - 1.0).abs().total_cmp(&(b.ratio - 1.0).abs()))
            .map_or("-".into(), |l| {
                format!("{} / {:.0} ({:.1}x)", l.max_concurrency, l.needed, l.ratio)
            });
        rows.push([
            c.pool.clone(),
            c.servers.to_string(),
            rps(c.capacity_rps),
            rps(c.peak_rps),
            c.headroom
                .map_or("-".into(), |h| format!("{:.0}%", h * 100.0)),
            n1,
            worst,
            little,
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::from("capacity at peak:\n");
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(s, "  {}", line.join("  ").trim_end());
    }
    s
}

/// The rule list (`levee check --list-rules`).
pub fn rule_list() -> String {
    let mut s = String::new();
    for r in super::RULES {
        let _ = writeln!(
            s,
            "{}  {:<7}  {:<38} {}",
            r.id,
            r.severity.as_str(),
            r.name,
            r.why
        );
    }
    for (id, what) in super::rules::NOT_APPLICABLE {
        let _ = writeln!(s, "{id}  n/a      {:<38} {what}", "retry-non-idempotent");
    }
    for (name, what) in super::PLANNED {
        let _ = writeln!(s, "--    planned  {name:<38} {what}");
    }
    s
}

/// Log-friendly: a duration as the config writes it (re-exported for probe's snippet).
pub fn dur(d: std::time::Duration) -> String {
    fmt_duration(d)
}
