//! Scenario files: several named scenarios run at once, each with its own figures and thresholds.
//!
//! ```toml
//! url = "http://127.0.0.1:8080/"   # default for every scenario
//! duration = "30s"                 # default for every scenario
//!
//! [scenarios.legit]
//! rate = 100                        # open model
//! source_ips = "127.10.0.0/16"
//! source_ip_count = 100
//! thresholds = ["p99 < 250ms", "success_rate > 99.5%"]
//!
//! [scenarios.flood]
//! connections = 2000                # closed model
//! start = "10s"
//! source_ips = "127.20.0.0/16"
//! source_ip_count = 10000
//! expect_status = [429, 503]
//!
//! [scenarios.slowloris]
//! kind = "slowloris"
//! connections = 200
//! byte_interval = "1s"
//! ```
//!
//! Unknown keys are errors; every problem is reported as `file:line:column: message`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::LoadtestError;
use super::plan::{self, HttpPlan, Kind, Load, Model, Plan, SourceIps};
use super::threshold::Threshold;
use crate::config::units::Dur;

/// The file's top level: defaults, then the scenarios.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// Default URL of every scenario.
    url: Option<Spanned<String>>,
    /// Default duration of every scenario (default 10s without `requests` or `stages`).
    duration: Option<Dur>,
    /// Default per-request timeout (default 10s).
    timeout: Option<Dur>,
    scenarios: BTreeMap<String, Spanned<RawScenario>>,
}

/// One scenario.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    /// `"http"` (default) or `"slowloris"`.
    kind: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    /// `"open"` or `"closed"`; default open with `rate`, closed otherwise.
    model: Option<Spanned<String>>,
    /// Open model: requests per second (the start level with `stages`).
    rate: Option<f64>,
    /// Closed model: connections; open model: the most connections (default 512); slowloris:
    /// connections held.
    connections: Option<u32>,
    /// `"30s:100,1m:500,30s:0"`: connections (closed) or requests/s (open).
    stages: Option<Spanned<String>>,
    /// Delay after the run's start.
    start: Option<Dur>,
    duration: Option<Dur>,
    requests: Option<u64>,
    method: Option<Spanned<String>>,
    /// Header name to value.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Literal body, or `@FILE` relative to the scenario file.
    body: Option<String>,
    /// Keep connections open between requests (default true).
    keepalive: Option<bool>,
    timeout: Option<Dur>,
    source_ips: Option<Spanned<String>>,
    /// How many addresses of `source_ips` are used (default: all).
    source_ip_count: Option<u64>,
    /// Statuses counted as successes beside 2xx and 3xx.
    #[serde(default)]
    expect_status: Vec<u16>,
    #[serde(default)]
    thresholds: Vec<Spanned<String>>,
    /// Slowloris: the pause between two bytes (default 1s).
    byte_interval: Option<Dur>,
}

/// Reads and checks a scenario file: every problem with `file:line:column`.
pub fn load(path: &Path) -> Result<Vec<Plan>, LoadtestError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadtestError::Read(path.display().to_string(), e))?;
    parse(&text, &path.display().to_string(), path.parent())
}

/// Parses scenario text; `name` is the file name used in messages, `base` the directory bodies
/// given as `@FILE` are read from.
pub fn parse(text: &str, name: &str, base: Option<&Path>) -> Result<Vec<Plan>, LoadtestError> {
    let at = |offset: usize| {
        let (line, col) = crate::config::line_col(text, offset);
        format!("{name}:{line}:{col}")
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let place = e.span().map_or_else(|| name.to_owned(), |s| at(s.start));
        LoadtestError::Scenario(format!("{place}: {}", e.message().trim()))
    })?;
    let mut problems = Vec::new();
    let mut plans = Vec::new();
    let mut scenarios: Vec<_> = raw.scenarios.iter().collect();
    scenarios.sort_by_key(|(_, s)| s.span().start);
    if scenarios.is_empty() {
        problems.push(format!("{name}: no [scenarios.NAME] table"));
    }
    for (sname, spanned) in scenarios {
        let here = at(spanned.span().start);
        match build(sname, spanned.get_ref(), &raw, base, &at) {
            Ok(plan) => plans.push(plan),
            Err(errs) => problems.extend(errs.into_iter().map(|(place, msg)| {
                format!(
                    "{}: scenario {sname}: {msg}",
                    place.unwrap_or_else(|| here.clone())
                )
            })),
        }
    }
    if problems.is_empty() {
        Ok(plans)
    } else {
        Err(LoadtestError::Scenario(problems.join("\n")))
    }
}

type Problems = Vec<(Option<String>, String)>;

fn build(
    name: &str,
    s: &RawScenario,
    file: &RawFile,
    base: Option<&Path>,
    at: &dyn Fn(usize) -> String,
) -> Result<Plan, Problems> {
    let mut problems: Problems = Vec::new();
    let mut check = |spanned: Option<usize>, r: Result<(), String>| {
        if let Err(msg) = r {
            problems.push((spanned.map(at), msg));
        }
    };
    let url = s.url.as_ref().or(file.url.as_ref());
    let target = match url {
        Some(u) => match plan::parse_target(u.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                check(Some(u.span().start), Err(e));
                None
            }
        },
        None => {
            check(
                None,
                Err("no url (set it here or at the top of the file)".into()),
            );
            None
        }
    };
    let stages = s
        .stages
        .as_ref()
        .and_then(|st| match plan::parse_stages(st.get_ref()) {
            Ok(v) => Some(v),
            Err(e) => {
                check(Some(st.span().start), Err(e));
                None
            }
        });
    let thresholds: Vec<Threshold> = s
        .thresholds
        .iter()
        .filter_map(|t| match Threshold::parse(t.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                check(Some(t.span().start), Err(e));
                None
            }
        })
        .collect();
    let source_ips = s.source_ips.as_ref().and_then(|ips| {
        match SourceIps::parse(ips.get_ref(), s.source_ip_count) {
            Ok(v) => Some(v),
            Err(e) => {
                check(Some(ips.span().start), Err(e));
                None
            }
        }
    });
    if s.source_ips.is_none() && s.source_ip_count.is_some() {
        check(None, Err("source_ip_count needs source_ips".into()));
    }
    let level = |constant: Option<f64>, default: f64| match &stages {
        Some(st) => Load::Stages {
            start: constant.unwrap_or(0.0),
            stages: st.clone(),
        },
        None => Load::Constant(constant.unwrap_or(default)),
    };
    let kind_name = s.kind.as_ref().map_or("http", |k| k.get_ref().as_str());
    let kind = match kind_name {
        "http" => {
            let open = match s
                .model
                .as_ref()
                .map(|m| (m.get_ref().as_str(), m.span().start))
            {
                None => s.rate.is_some(),
                Some(("open", _)) => true,
                Some(("closed", _)) => false,
                Some((other, pos)) => {
                    check(
                        Some(pos),
                        Err(format!("model {other:?}: expected open or closed")),
                    );
                    false
                }
            };
            if !open && s.rate.is_some() {
                check(None, Err("rate is for the open model".into()));
            }
            if open && s.rate.is_none() && stages.is_none() {
                check(None, Err("the open model needs rate or stages".into()));
            }
            let model = if open {
                Model::Open {
                    rate: level(s.rate, 0.0),
                    max_connections: s.connections.unwrap_or(plan::DEFAULT_OPEN_CONNECTIONS),
                }
            } else {
                Model::Closed {
                    connections: level(
                        s.connections.map(f64::from),
                        f64::from(plan::DEFAULT_CLOSED_CONNECTIONS),
                    ),
                }
            };
            let method = match &s.method {
                Some(m) => plan::parse_method(m.get_ref()).unwrap_or_else(|e| {
                    check(Some(m.span().start), Err(e));
                    http::Method::GET
                }),
                None => http::Method::GET,
            };
            let lines: Vec<String> = s.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let headers = plan::parse_headers(&lines).unwrap_or_else(|e| {
                check(None, Err(e));
                http::HeaderMap::new()
            });
            let body = match &s.body {
                Some(spec) => plan::load_body(spec, base).unwrap_or_else(|e| {
                    check(None, Err(e.to_string()));
                    bytes::Bytes::new()
                }),
                None => bytes::Bytes::new(),
            };
            Kind::Http(HttpPlan {
                model,
                method,
                headers,
                body,
                keepalive: s.keepalive.unwrap_or(true),
            })
        }
        "slowloris" => {
            for (set, key) in [
                (s.rate.is_some(), "rate"),
                (s.stages.is_some(), "stages"),
                (s.model.is_some(), "model"),
                (s.requests.is_some(), "requests"),
                (s.body.is_some(), "body"),
            ] {
                if set {
                    check(
                        None,
                        Err(format!("{key} does not apply to kind = \"slowloris\"")),
                    );
                }
            }
            Kind::Slowloris {
                connections: s.connections.unwrap_or(100),
                byte_interval: s.byte_interval.map_or(Duration::from_secs(1), |d| d.0),
            }
        }
        other => {
            let pos = s.kind.as_ref().map(|k| k.span().start);
            check(
                pos,
                Err(format!("kind {other:?}: expected http or slowloris")),
            );
            Kind::Slowloris {
                connections: 1,
                byte_interval: Duration::from_secs(1),
            }
        }
    };
    if kind_name != "slowloris" && s.byte_interval.is_some() {
        check(
            None,
            Err("byte_interval is for kind = \"slowloris\"".into()),
        );
    }
    let (Some(target), true) = (target, problems.is_empty()) else {
        return Err(problems);
    };
    let plan = Plan {
        name: name.to_owned(),
        target,
        kind,
        start_after: s.start.map_or(Duration::ZERO, |d| d.0),
        duration: s.duration.or(file.duration).map(|d| d.0),
        requests: s.requests,
        expect_status: s.expect_status.clone(),
        thresholds,
        source_ips,
        timeout: s
            .timeout
            .or(file.timeout)
            .map_or(Duration::from_secs(10), |d| d.0),
    };
    super::finish_plan(plan).map_err(|e| vec![(None, e)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse(text, "s.toml", None) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_a_file_in_order() {
        let text = r#"
url = "http://127.0.0.1:9/"
duration = "5s"
[scenarios.legit]
rate = 100
source_ips = "127.10.0.0/16"
source_ip_count = 100
thresholds = ["p99 < 250ms"]
[scenarios.flood]
connections = 20
start = "1s"
expect_status = [429]
[scenarios.slow]
kind = "slowloris"
connections = 3
"#;
        let plans = parse(text, "s.toml", None).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["legit", "flood", "slow"]);
        assert_eq!(plans[0].source_ips.as_ref().map(|s| s.count), Some(100));
        assert_eq!(plans[1].start_after, Duration::from_secs(1));
        assert_eq!(plans[2].duration, Some(Duration::from_secs(5)));
    }

    #[test]
    fn reports_problems_with_line_and_column() {
        let e = err("url = \"http://127.0.0.1:9/\"\n[scenarios.a]\nrat = 5\n");
        assert!(e.starts_with("s.toml:3:1:"), "{e}");
        assert!(e.contains("unknown field `rat`"), "{e}");
        let e = err(
            "url = \"http://127.0.0.1:9/\"\n[scenarios.a]\nrate = 5\nthresholds = [\"p99 < soon\"]\n",
        );
        assert!(
            e.starts_with("s.toml:4:15: scenario a: bad threshold"),
            "{e}"
        );
        let e = err("[scenarios.a]\nrate = 5\nduration = \"soon\"\n");
        assert!(e.starts_with("s.toml:3:12:"), "{e}");
    }
}
