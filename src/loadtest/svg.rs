//! Plain SVG charts (line charts over time, bar charts), written as text: no scripts, no
//! external resources, so a report opens anywhere and stays readable in ten years.

use std::fmt::Write;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 40.0;

/// Colours of successive series.
pub const PALETTE: [&str; 8] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04",
];

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    /// (x, y) points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// Escapes text for XML content and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A round number at or above `v` (1, 2, 2.5 or 5 times a power of ten), for axis tops.
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * magnitude * (1.0 + 1e-9) {
            return m * magnitude;
        }
    }
    10.0 * magnitude
}

fn open(out: &mut String, id: &str, title: &str, kind: &str) {
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{id}" data-kind="{kind}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}"><title>{t}</title><rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fff"/><text x="{LEFT}" y="20" class="chart-title" font-size="14" font-weight="bold" fill="#111">{t}</text>"##,
        id = escape(id),
        t = escape(title),
    );
}

/// Horizontal grid lines and y labels from 0 to `y_max`.
fn y_axis(out: &mut String, y_max: f64, fmt_y: &dyn Fn(f64) -> String) {
    let plot_h = HEIGHT - TOP - BOTTOM;
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e7eb"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#374151" class="y-label">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            escape(&fmt_y(v))
        );
    }
}

/// A line chart over time (x in seconds). The legend shows each series' peak.
pub fn line_chart(
    id: &str,
    title: &str,
    series: &[Series],
    fmt_y: &dyn Fn(f64) -> String,
) -> String {
    let mut out = String::new();
    open(&mut out, id, title, "line");
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(1.0);
    let peak = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let y_max = nice_max(peak);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + plot_w * x / x_max;
    let sy = |y: f64| TOP + plot_h - plot_h * (y / y_max).clamp(0.0, 1.0);
    y_axis(&mut out, y_max, fmt_y);
    let x_step = nice_max(x_max / 8.0);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#374151" class="x-label">{}s</text>"##,
            sx(x),
            HEIGHT - BOTTOM + 16.0,
            x
        );
        x += x_step;
    }
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{b:.1}" x2="{:.1}" y2="{b:.1}" stroke="#9ca3af"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#6b7280">seconds since the start</text>"##,
        WIDTH - RIGHT,
        LEFT + plot_w / 2.0,
        HEIGHT - 6.0,
        b = TOP + plot_h,
    );
    let mut legend_x = LEFT;
    for s in series {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let s_peak = s.points.iter().map(|p| p.1).fold(0.0, f64::max);
        let _ = write!(
            out,
            r##"<polyline class="series" data-name="{n}" data-points="{}" data-peak="{s_peak}" fill="none" stroke="{c}" stroke-width="1.8" points="{}"><title>{n}: peak {}</title></polyline>"##,
            s.points.len(),
            points.join(" "),
            escape(&fmt_y(s_peak)),
            n = escape(&s.name),
            c = s.color,
        );
        let label = format!("{} (peak {})", s.name, fmt_y(s_peak));
        let _ = write!(
            out,
            r##"<rect x="{legend_x:.1}" y="28" width="10" height="10" fill="{}"/><text x="{:.1}" y="37" font-size="11" fill="#111" class="legend">{}</text>"##,
            s.color,
            legend_x + 14.0,
            escape(&label)
        );
        legend_x += 24.0 + 6.5 * label.len() as f64;
    }
    out.push_str("</svg>");
    out
}

/// A bar chart: one bar per (label, value), labels under every few bars.
pub fn bar_chart(
    id: &str,
    title: &str,
    bars: &[(String, f64)],
    fmt_y: &dyn Fn(f64) -> String,
) -> String {
    let mut out = String::new();
    open(&mut out, id, title, "bar");
    let peak = bars.iter().map(|b| b.1).fold(0.0, f64::max);
    let y_max = nice_max(peak);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    y_axis(&mut out, y_max, fmt_y);
    let n = bars.len().max(1) as f64;
    let w = plot_w / n;
    let label_every = (bars.len() / 8).max(1);
    for (i, (label, v)) in bars.iter().enumerate() {
        let h = plot_h * (v / y_max).clamp(0.0, 1.0);
        let x = LEFT + w * i as f64;
        let _ = write!(
            out,
            r##"<rect class="bar" data-label="{l}" data-value="{v}" x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#2563eb"><title>{l}: {}</title></rect>"##,
            x + 0.5,
            TOP + plot_h - h,
            (w - 1.0).max(0.5),
            escape(&fmt_y(*v)),
            l = escape(label),
        );
        if i % label_every == 0 {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#374151" class="x-label">{}</text>"##,
                x + w / 2.0,
                HEIGHT - BOTTOM + 16.0,
                escape(label)
            );
        }
    }
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{b:.1}" x2="{:.1}" y2="{b:.1}" stroke="#9ca3af"/>"##,
        WIDTH - RIGHT,
        b = TOP + plot_h,
    );
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(2.4), 2.5);
        assert_eq!(nice_max(1000.0), 1000.0);
    }

    #[test]
    fn charts_are_escaped_svg() {
        let s = line_chart(
            "c<1>",
            "a & b",
            &[Series {
                name: "p99".into(),
                color: PALETTE[0],
                points: vec![(1.0, 2.0), (2.0, 4.0)],
            }],
            &|v| format!("{v}"),
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("id=\"c&lt;1&gt;\"") && s.contains("a &amp; b"));
        assert!(s.contains("data-points=\"2\""));
        let b = bar_chart("h", "t", &[("1ms".into(), 3.0)], &|v| format!("{v}"));
        assert!(b.contains("data-value=\"3\""));
    }
}
