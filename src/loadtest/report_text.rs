//! The end summary printed on stdout.

use std::fmt::Write;

use super::results::ScenarioResult;
use super::stats::LatencySummary;

/// A latency in ms, with a unit that keeps it readable (`850us`, `12.3ms`, `1.20s`).
pub fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0}us", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.2}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

/// A byte count with a binary unit.
pub fn fmt_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

fn latency_row(out: &mut String, label: &str, l: &LatencySummary) {
    let cells = [
        l.min_ms, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p99_9_ms, l.max_ms,
    ];
    let _ = write!(out, "    {label:<12}");
    for v in cells {
        let _ = write!(out, "{:>10}", fmt_ms(v));
    }
    out.push('\n');
}

/// What the scenario was asked to do, in one phrase.
fn describe(r: &ScenarioResult) -> String {
    let c = &r.config;
    let mut s = match r.model.as_str() {
        "open" => format!(
            "open model, {} req/s{} over at most {} connections",
            c.rate.unwrap_or(0.0),
            if c.stages.is_some() { " (peak)" } else { "" },
            c.connections.unwrap_or(0.0)
        ),
        "closed" => format!(
            "closed model, {} connections{}",
            c.connections.unwrap_or(0.0),
            if c.stages.is_some() { " (peak)" } else { "" }
        ),
        _ => format!("slowloris, {} connections", c.connections.unwrap_or(0.0)),
    };
    if let Some(stages) = &c.stages {
        let _ = write!(s, ", stages {stages}");
    }
    if let (Some(n), Some(net)) = (c.source_ip_count, &c.source_ips) {
        let _ = write!(s, ", from {n} addresses of {net}");
    }
    if c.keepalive == Some(false) {
        s.push_str(", no keep-alive");
    }
    s
}

/// The summary of one scenario.
pub fn scenario(r: &ScenarioResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "scenario {}: {} -> {}", r.name, describe(r), r.url);
    let _ = writeln!(
        out,
        "  requests      {} in {:.2}s, {:.1}/s ({} responses, {} errors), success rate {:.2}%",
        r.requests,
        r.duration_s,
        r.rps,
        r.responses,
        r.error_total(),
        r.success_rate
    );
    if r.model == "slowloris" {
        let _ = writeln!(
            out,
            "  (slowloris: requests are connections the server ended; latency is how long connections were held)"
        );
    }
    let _ = writeln!(
        out,
        "  latency       {:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "min", "mean", "p50", "p90", "p99", "p99.9", "max"
    );
    latency_row(&mut out, "corrected", &r.latency);
    latency_row(&mut out, "uncorrected", &r.latency_uncorrected);
    if r.model == "open" {
        let _ = writeln!(
            out,
            "                (corrected: from each request's intended send time; uncorrected: from the actual send)"
        );
    }
    let statuses = if r.statuses.is_empty() {
        "none".to_owned()
    } else {
        r.statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "  statuses      {statuses}");
    let errors = if r.errors.is_empty() {
        "none".to_owned()
    } else {
        r.errors
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "  errors        {errors}");
    let per_s = |n: u64| {
        if r.duration_s > 0.0 {
            n as f64 / r.duration_s
        } else {
            0.0
        }
    };
    let _ = writeln!(
        out,
        "  bytes         received {} ({}/s), sent {}",
        fmt_bytes(r.bytes_received as f64),
        fmt_bytes(per_s(r.bytes_received)),
        fmt_bytes(r.bytes_sent as f64)
    );
    if r.model == "slowloris" {
        let _ = writeln!(
            out,
            "  connections   {} opened, {} ended by the server, {} still held open at the end",
            r.connections_opened, r.requests, r.held_open_at_end
        );
    } else {
        let _ = writeln!(out, "  connections   {} opened", r.connections_opened);
    }
    for (i, t) in r.thresholds.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:<13} {} {} (observed {})",
            if i == 0 { "thresholds" } else { "" },
            if t.passed { "PASS" } else { "FAIL" },
            t.threshold,
            t.observed_text
        );
    }
    out
}

/// The whole summary: every scenario, then the verdict on thresholds.
pub fn summary(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for r in results {
        out.push_str(&scenario(r));
        out.push('\n');
    }
    let total: usize = results.iter().map(|r| r.thresholds.len()).sum();
    let failed: usize = results
        .iter()
        .flat_map(|r| &r.thresholds)
        .filter(|t| !t.passed)
        .count();
    if total > 0 {
        let _ = writeln!(
            out,
            "thresholds: {} passed, {failed} failed{}",
            total - failed,
            if failed > 0 { " -> exit 1" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_units() {
        assert_eq!(fmt_ms(0.25), "250us");
        assert_eq!(fmt_ms(12.345), "12.35ms");
        assert_eq!(fmt_ms(1500.0), "1.50s");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(2048.0), "2.00 KiB");
    }
}
