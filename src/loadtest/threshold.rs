//! Thresholds for CI: `p99 < 250ms`, `success_rate > 99.5%`, `rps > 450`, `status_429 > 0`.
//!
//! A threshold is `METRIC OP VALUE` with OP one of `<`, `<=`, `>`, `>=`, `==`, `!=`. Metrics:
//!
//! | metric | unit | what |
//! |---|---|---|
//! | `p50`, `p90`, `p99`, `p99.9`, any `pNN` | ms (or a duration: `250ms`, `1s`) | corrected latency percentile |
//! | `min`, `mean`, `max` | ms | corrected latency |
//! | `uncorrected_p99`, `uncorrected_max`... | ms | latency from the actual send time |
//! | `success_rate`, `error_rate` | % | successes (or failures) among requests |
//! | `rps` | requests/s | finished requests per second |
//! | `requests`, `successes`, `failures`, `errors` | count | |
//! | `status_429`, `status_5xx` | count | responses with this status or class |
//! | `errors_timeout` (connect, reset, closed, protocol, unsent, other) | count | errors of one kind |

use std::fmt;

use super::results::ScenarioResult;
use super::stats::{ErrorKind, LatencySummary};

/// A parsed threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub text: String,
    metric: Metric,
    op: Op,
    value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    Latency { q: Stat, uncorrected: bool },
    SuccessRate,
    ErrorRate,
    Rps,
    Requests,
    Successes,
    Failures,
    Errors,
    Status(u16),
    StatusClass(u16),
    ErrorsOf(ErrorKind),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stat {
    Percentile(f64),
    Min,
    Mean,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => (a - b).abs() < 1e-9,
            Op::Ne => (a - b).abs() >= 1e-9,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_stat(s: &str) -> Option<Stat> {
    match s {
        "min" => Some(Stat::Min),
        "mean" | "avg" => Some(Stat::Mean),
        "max" => Some(Stat::Max),
        _ => {
            let p: f64 = s.strip_prefix('p')?.parse().ok()?;
            (0.0..=100.0).contains(&p).then_some(Stat::Percentile(p))
        }
    }
}

fn parse_metric(s: &str) -> Option<Metric> {
    let s = s.trim().to_ascii_lowercase();
    if let Some(rest) = s.strip_prefix("uncorrected_") {
        return parse_stat(rest).map(|q| Metric::Latency {
            q,
            uncorrected: true,
        });
    }
    if let Some(q) = parse_stat(s.strip_prefix("latency_").unwrap_or(&s)) {
        return Some(Metric::Latency {
            q,
            uncorrected: false,
        });
    }
    if let Some(code) = s.strip_prefix("status_") {
        if let Some(class) = code.strip_suffix("xx") {
            let class: u16 = class.parse().ok()?;
            return (1..=5)
                .contains(&class)
                .then_some(Metric::StatusClass(class));
        }
        let code: u16 = code.parse().ok()?;
        return (100..=599).contains(&code).then_some(Metric::Status(code));
    }
    if let Some(kind) = s.strip_prefix("errors_") {
        return ErrorKind::ALL
            .into_iter()
            .find(|k| k.name() == kind)
            .map(Metric::ErrorsOf);
    }
    Some(match s.as_str() {
        "success_rate" => Metric::SuccessRate,
        "error_rate" => Metric::ErrorRate,
        "rps" => Metric::Rps,
        "requests" => Metric::Requests,
        "successes" => Metric::Successes,
        "failures" => Metric::Failures,
        "errors" => Metric::Errors,
        _ => return None,
    })
}

impl Threshold {
    /// Parses `METRIC OP VALUE`.
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let bad = |why: &str| {
            format!(
                "bad threshold {text:?}: {why} (write it like \"p99 < 250ms\", \"success_rate > 99.5%\", \"rps > 450\", \"status_429 > 0\")"
            )
        };
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (at, token, op) = ops
            .iter()
            .filter_map(|(tok, op)| text.find(tok).map(|i| (i, *tok, *op)))
            .min_by_key(|(i, tok, _)| (*i, usize::MAX - tok.len()))
            .ok_or_else(|| bad("no comparison"))?;
        let (name, value) = (&text[..at], text[at + token.len()..].trim());
        let metric =
            parse_metric(name).ok_or_else(|| bad(&format!("unknown metric {:?}", name.trim())))?;
        let value = match metric {
            Metric::Latency { .. } => parse_ms(value),
            Metric::SuccessRate | Metric::ErrorRate => {
                value.strip_suffix('%').unwrap_or(value).trim().parse().ok()
            }
            _ => value.parse().ok(),
        }
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| bad(&format!("bad value {value:?}")))?;
        Ok(Threshold {
            text: text.trim().to_owned(),
            metric,
            op,
            value,
        })
    }

    /// The observed value (ms for latencies, % for rates) and whether the threshold holds.
    pub fn evaluate(&self, r: &ScenarioResult) -> (f64, bool) {
        let observed = self.observe(r);
        (observed, self.op.holds(observed, self.value))
    }

    /// The observed value formatted in the threshold's unit.
    pub fn format(&self, observed: f64) -> String {
        match self.metric {
            Metric::Latency { .. } => super::report_text::fmt_ms(observed),
            Metric::SuccessRate | Metric::ErrorRate => format!("{observed:.2}%"),
            Metric::Rps => format!("{observed:.1}/s"),
            _ => format!("{observed}"),
        }
    }

    fn observe(&self, r: &ScenarioResult) -> f64 {
        let pct = |n: u64| {
            if r.requests == 0 {
                0.0
            } else {
                n as f64 * 100.0 / r.requests as f64
            }
        };
        match self.metric {
            Metric::Latency { q, uncorrected } => {
                let l = if uncorrected {
                    &r.latency_uncorrected
                } else {
                    &r.latency
                };
                stat(l, r, q, uncorrected)
            }
            Metric::SuccessRate => r.success_rate,
            Metric::ErrorRate => pct(r.failures),
            Metric::Rps => r.rps,
            Metric::Requests => r.requests as f64,
            Metric::Successes => r.successes as f64,
            Metric::Failures => r.failures as f64,
            Metric::Errors => r.error_total() as f64,
            Metric::Status(s) => r.status(s) as f64,
            Metric::StatusClass(c) => r.status_class(c) as f64,
            Metric::ErrorsOf(k) => r.errors.get(k.name()).copied().unwrap_or(0) as f64,
        }
    }
}

fn stat(l: &LatencySummary, r: &ScenarioResult, q: Stat, uncorrected: bool) -> f64 {
    match q {
        Stat::Min => l.min_ms,
        Stat::Mean => l.mean_ms,
        Stat::Max => l.max_ms,
        Stat::Percentile(p) => {
            let known = [
                (50.0, l.p50_ms),
                (75.0, l.p75_ms),
                (90.0, l.p90_ms),
                (95.0, l.p95_ms),
                (99.0, l.p99_ms),
                (99.9, l.p99_9_ms),
                (99.99, l.p99_99_ms),
                (100.0, l.max_ms),
            ];
            match known.iter().find(|(k, _)| (k - p).abs() < 1e-9) {
                Some((_, v)) => *v,
                None if uncorrected => l.p99_ms.min(l.max_ms),
                None => percentile_from_buckets(r, p),
            }
        }
    }
}

/// A percentile not in the summary, from the stored corrected histogram buckets.
fn percentile_from_buckets(r: &ScenarioResult, p: f64) -> f64 {
    let total: u64 = r.histogram.iter().map(|b| b.count).sum();
    if total == 0 {
        return 0.0;
    }
    let want = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for b in &r.histogram {
        seen += b.count;
        if seen >= want {
            return b.le_us as f64 / 1000.0;
        }
    }
    r.latency.max_ms
}

/// A latency value: a duration (`250ms`, `1s`, `500us`) or a bare number of milliseconds.
fn parse_ms(s: &str) -> Option<f64> {
    if let Ok(ms) = s.parse::<f64>() {
        return Some(ms);
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match unit.trim() {
        "us" | "µs" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" | "min" => 60_000.0,
        _ => return None,
    };
    Some(n * factor)
}

/// Evaluates every threshold of a scenario into its results.
pub fn apply(thresholds: &[Threshold], r: &mut ScenarioResult) {
    r.thresholds = thresholds
        .iter()
        .map(|t| {
            let (observed, passed) = t.evaluate(r);
            super::results::ThresholdResult {
                threshold: t.text.clone(),
                passed,
                observed,
                observed_text: t.format(observed),
            }
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Threshold {
        Threshold::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(ok("p99 < 250ms").value, 250.0);
        assert_eq!(ok("p99<1s").value, 1000.0);
        assert_eq!(ok("p99.9 <= 2.5ms").value, 2.5);
        assert_eq!(ok("success_rate > 99.5%").value, 99.5);
        assert_eq!(ok("rps >= 450").op, Op::Ge);
        assert_eq!(ok("status_429 > 0").metric, Metric::Status(429));
        assert_eq!(ok("status_5xx == 0").metric, Metric::StatusClass(5));
        assert_eq!(
            ok("errors_timeout == 0").metric,
            Metric::ErrorsOf(ErrorKind::Timeout)
        );
        assert_eq!(
            ok("uncorrected_p99 < 10").metric,
            Metric::Latency {
                q: Stat::Percentile(99.0),
                uncorrected: true
            }
        );
        for bad in [
            "p99",
            "p99 < soon",
            "speed > 3",
            "status_999 > 0",
            "p101 < 1ms",
            "rps > x",
        ] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }
}
