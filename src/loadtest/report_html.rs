//! `--html FILE`: a self-contained report (one file, inline CSS and SVG, nothing fetched):
//! per scenario, the summary tables and four charts — requests/s, latency percentiles and
//! status codes over time, and the latency distribution.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::report_text::{fmt_bytes, fmt_ms};
use super::results::ScenarioResult;
use super::stats::LatencySummary;
use super::svg::{self, PALETTE, Series, escape};

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#111;background:#f9fafb}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px}\
table{border-collapse:collapse;margin:8px 0 16px;background:#fff}\
td,th{border:1px solid #d1d5db;padding:4px 10px;text-align:right;font-variant-numeric:tabular-nums}\
th{background:#f3f4f6}td.l,th.l{text-align:left}\
.pass{color:#15803d;font-weight:bold}.fail{color:#b91c1c;font-weight:bold}\
.charts{display:flex;flex-wrap:wrap;gap:12px}svg.chart{border:1px solid #e5e7eb;background:#fff}\
.muted{color:#6b7280}";

/// The HTML document of a run.
pub fn render(results: &[ScenarioResult], started_at_unix_ms: u128) -> String {
    let mut out = String::new();
    let passed = results.iter().all(ScenarioResult::passed);
    let any_thresholds = results.iter().any(|r| !r.thresholds.is_empty());
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>levee loadtest report</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(
        out,
        "<h1>levee loadtest report</h1><p class=\"muted\" id=\"started\" data-unix-ms=\"{started_at_unix_ms}\">Started at Unix time {:.3}s. {} scenario{}.</p>",
        started_at_unix_ms as f64 / 1000.0,
        results.len(),
        if results.len() == 1 { "" } else { "s" }
    );
    if any_thresholds {
        let _ = write!(
            out,
            "<p id=\"verdict\" class=\"{}\">Thresholds: {}</p>",
            if passed { "pass" } else { "fail" },
            if passed { "all passed" } else { "some failed" }
        );
    }
    for r in results {
        scenario(&mut out, r);
    }
    out.push_str("</body></html>\n");
    out
}

fn scenario(out: &mut String, r: &ScenarioResult) {
    let id = slug(&r.name);
    let _ = write!(
        out,
        "<section class=\"scenario\" id=\"scenario-{id}\" data-requests=\"{}\"><h2>Scenario {} <span class=\"muted\">({} model, {})</span></h2>",
        r.requests,
        escape(&r.name),
        escape(&r.model),
        escape(&r.url)
    );
    let _ = write!(
        out,
        "<table class=\"summary\"><tr><th class=\"l\">requests</th><th>duration</th><th>requests/s</th><th>responses</th><th>errors</th><th>success rate</th><th>received</th><th>sent</th><th>connections</th></tr>\
<tr><td class=\"requests\">{}</td><td>{:.2}s</td><td class=\"rps\">{:.1}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        r.requests,
        r.duration_s,
        r.rps,
        r.responses,
        r.error_total(),
        r.success_rate,
        fmt_bytes(r.bytes_received as f64),
        fmt_bytes(r.bytes_sent as f64),
        r.connections_opened
    );
    if r.model == "slowloris" {
        let _ = write!(
            out,
            "<p class=\"slowloris\">Slowloris: {} connections ended by the server, {} still held open at the end; latency is how long connections were held.</p>",
            r.requests, r.held_open_at_end
        );
    }
    out.push_str("<table class=\"latency\"><tr><th class=\"l\">latency</th><th>min</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    latency_row(out, "corrected", &r.latency);
    latency_row(out, "uncorrected", &r.latency_uncorrected);
    out.push_str("</table>");
    out.push_str(
        "<table class=\"statuses\"><tr><th class=\"l\">status / error</th><th>count</th></tr>",
    );
    for (s, n) in &r.statuses {
        let _ = write!(out, "<tr><td class=\"l\">{s}</td><td>{n}</td></tr>");
    }
    for (k, n) in &r.errors {
        let _ = write!(out, "<tr><td class=\"l\">error: {k}</td><td>{n}</td></tr>");
    }
    out.push_str("</table>");
    if !r.thresholds.is_empty() {
        out.push_str("<table class=\"thresholds\"><tr><th class=\"l\">threshold</th><th>observed</th><th>verdict</th></tr>");
        for t in &r.thresholds {
            let _ = write!(
                out,
                "<tr><td class=\"l\">{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                escape(&t.threshold),
                escape(&t.observed_text),
                if t.passed { "pass" } else { "fail" },
                if t.passed { "PASS" } else { "FAIL" }
            );
        }
        out.push_str("</table>");
    }
    out.push_str("<div class=\"charts\">");
    out.push_str(&rps_chart(&id, r));
    out.push_str(&latency_chart(&id, r));
    out.push_str(&status_chart(&id, r));
    out.push_str(&distribution_chart(&id, r));
    out.push_str("</div></section>");
}

fn latency_row(out: &mut String, label: &str, l: &LatencySummary) {
    let _ = write!(out, "<tr class=\"{label}\"><td class=\"l\">{label}</td>");
    for v in [
        l.min_ms, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p99_9_ms, l.max_ms,
    ] {
        let _ = write!(out, "<td>{}</td>", fmt_ms(v));
    }
    out.push_str("</tr>");
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}/s")
    } else {
        format!("{v:.1}/s")
    }
}

fn rps_chart(id: &str, r: &ScenarioResult) -> String {
    let t = &r.timeline;
    let series = vec![
        Series {
            name: "requests/s".into(),
            color: PALETTE[0],
            points: t.iter().map(|p| (p.t, p.rps)).collect(),
        },
        Series {
            name: "errors/s".into(),
            color: PALETTE[1],
            points: t
                .iter()
                .map(|p| (p.t, p.errors as f64 / p.interval))
                .collect(),
        },
    ];
    svg::line_chart(
        &format!("chart-rps-{id}"),
        "Requests per second",
        &series,
        &rate,
    )
}

/// Reads one figure of a timeline point.
type Pick = fn(&super::stats::TimelinePoint) -> f64;

fn latency_chart(id: &str, r: &ScenarioResult) -> String {
    let t = &r.timeline;
    let pick: [(&str, Pick); 4] = [
        ("p50", |p| p.p50_ms),
        ("p90", |p| p.p90_ms),
        ("p99", |p| p.p99_ms),
        ("max", |p| p.max_ms),
    ];
    let series: Vec<Series> = pick
        .iter()
        .enumerate()
        .map(|(i, (name, f))| Series {
            name: (*name).into(),
            color: PALETTE[i % PALETTE.len()],
            points: t.iter().map(|p| (p.t, f(p))).collect(),
        })
        .collect();
    svg::line_chart(
        &format!("chart-latency-{id}"),
        "Latency percentiles per second (corrected)",
        &series,
        &|v| fmt_ms(v),
    )
}

fn status_chart(id: &str, r: &ScenarioResult) -> String {
    let t = &r.timeline;
    let codes: BTreeSet<&String> = t.iter().flat_map(|p| p.statuses.keys()).collect();
    let mut series: Vec<Series> = codes
        .iter()
        .enumerate()
        .map(|(i, code)| Series {
            name: (*code).clone(),
            color: PALETTE[(i + 2) % PALETTE.len()],
            points: t
                .iter()
                .map(|p| {
                    let n = p.statuses.get(*code).copied().unwrap_or(0);
                    (p.t, n as f64 / p.interval)
                })
                .collect(),
        })
        .collect();
    series.push(Series {
        name: "errors".into(),
        color: PALETTE[1],
        points: t
            .iter()
            .map(|p| (p.t, p.errors as f64 / p.interval))
            .collect(),
    });
    svg::line_chart(
        &format!("chart-status-{id}"),
        "Status codes per second",
        &series,
        &rate,
    )
}

/// The corrected latency histogram regrouped into logarithmic bins (4 per power of ten).
fn distribution_chart(id: &str, r: &ScenarioResult) -> String {
    let mut bins: Vec<(String, f64)> = Vec::new();
    if let (Some(first), Some(last)) = (r.histogram.first(), r.histogram.last()) {
        let lo = (first.le_us.max(1) as f64).log10();
        let hi = (last.le_us.max(1) as f64).log10();
        let start = (lo * 4.0).floor() as i32;
        let end = (hi * 4.0).ceil() as i32;
        let mut it = r.histogram.iter().peekable();
        for k in start..=end.max(start) {
            let upper = 10f64.powf(f64::from(k + 1) / 4.0);
            let mut count = 0u64;
            while let Some(b) = it.peek() {
                if (b.le_us as f64) < upper || k == end.max(start) {
                    count += b.count;
                    it.next();
                } else {
                    break;
                }
            }
            bins.push((format!("≤{}", fmt_ms(upper / 1000.0)), count as f64));
        }
    }
    svg::bar_chart(
        &format!("chart-distribution-{id}"),
        "Latency distribution (corrected, requests per bin)",
        &bins,
        &|v| format!("{v:.0}"),
    )
}
