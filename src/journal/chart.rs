//! A self-contained SVG chart of an incident's per-second series (answered, failed, shed and
//! blocked requests), embedded in the postmortem draft.

use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 240.0;
const PAD: f64 = 40.0;

/// `series` rows are `[unix secs, answered, failed, shed, blocked]`.
pub fn svg(series: &[[i64; 5]]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"##
    );
    out.push_str(r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    if series.is_empty() {
        out.push_str(r##"<text x="20" y="120">no samples recorded</text></svg>"##);
        return out;
    }
    let t0 = series[0][0];
    let t1 = series[series.len() - 1][0].max(t0 + 1);
    let max = series
        .iter()
        .flat_map(|r| r[1..].iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let x = |t: i64| PAD + (t - t0) as f64 / (t1 - t0) as f64 * (W - 2.0 * PAD);
    let y = |v: i64| H - PAD - v as f64 / max as f64 * (H - 2.0 * PAD);
    let _ = write!(
        out,
        r##"<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#888"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="#888"/>"##,
        b = H - PAD,
        r = W - PAD
    );
    let _ = write!(
        out,
        r##"<text x="4" y="{}">{max}/s</text><text x="4" y="{}">0</text><text x="{PAD}" y="{}">+0 s</text><text x="{}" y="{}" text-anchor="end">+{} s</text>"##,
        PAD + 4.0,
        H - PAD,
        H - PAD + 16.0,
        W - PAD,
        H - PAD + 16.0,
        t1 - t0
    );
    let names = [
        ("answered", "#2b7bb9"),
        ("failed", "#d62728"),
        ("shed", "#ff7f0e"),
        ("blocked", "#7f7f7f"),
    ];
    for (i, (name, color)) in names.iter().enumerate() {
        let pts: Vec<String> = series
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r[0]), y(r[i + 1])))
            .collect();
        let _ = write!(
            out,
            r##"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/><rect x="{}" y="8" width="10" height="10" fill="{color}"/><text x="{}" y="17">{name}</text>"##,
            pts.join(" "),
            PAD + 10.0 + i as f64 * 110.0,
            PAD + 24.0 + i as f64 * 110.0
        );
    }
    out.push_str("</svg>");
    out
}
