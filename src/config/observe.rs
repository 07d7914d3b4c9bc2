//! `[journal]`, `[alerting]`, `[[alerts]]` and `[[notifiers]]`: what levee remembers, when it
//! alerts and whom it tells. Raw (as written) and validated. The alert rules themselves are
//! built in (`crate::observe::rules`); `[[alerts]]` only overrides their settings.

use super::units::Dur;
use super::{Problem, line_col};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// `[journal]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    /// The SQLite file. Default none: no journal (levee writes no file you did not ask for).
    /// Relative paths are relative to the config file.
    pub path: Option<Spanned<String>>,
    /// Events and per-second samples older than this are deleted. Default `30d`: a month of
    /// incidents to write postmortems from.
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
    /// At most this many events are kept (the oldest go first). Default `1000000`
    /// (a few hundred MB at most).
    #[serde(default = "default_max_events")]
    pub max_events: u64,
    /// `"normal"` (default) or `"full"`. In WAL mode `normal` survives a crash or kill -9 of
    /// levee with nothing lost that was committed; only a power loss may lose the last commits.
    /// `full` also syncs the WAL on every commit (once a second at most).
    #[serde(default = "default_sync")]
    pub synchronous: Spanned<String>,
}

impl Default for RawJournal {
    fn default() -> Self {
        RawJournal {
            path: None,
            max_age: default_max_age(),
            max_events: default_max_events(),
            synchronous: default_sync(),
        }
    }
}

/// `[alerting]` as written: settings shared by every rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerting {
    /// Default `true`: the built-in rules run.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Multiplies every window and `for` duration of the rules (and the incident quiet
    /// period). Default `1.0`. Tests and drills use e.g. `0.01` to see an hour in 36 s.
    #[serde(default = "one_f")]
    pub time_scale: f64,
    /// An incident closes when every alert has resolved and this long passed quietly.
    /// Default `5m`: a flapping backend stays one incident.
    #[serde(default = "default_quiet")]
    pub incident_quiet_period: Dur,
    /// Sent as `externalURL` to webhooks and linked in notifications: where levee's dashboard
    /// can be reached. Default empty (the admin bind address is used).
    #[serde(default)]
    pub external_url: String,
}

impl Default for RawAlerting {
    fn default() -> Self {
        RawAlerting {
            enabled: true,
            time_scale: 1.0,
            incident_quiet_period: default_quiet(),
            external_url: String::new(),
        }
    }
}

/// `[[alerts]]` as written: overrides for one built-in rule. Every key is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {
    /// The rule: one of `crate::observe::rules::RULE_NAMES`.
    pub name: Spanned<String>,
    /// Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long the condition must hold before the alert fires (it is pending until then).
    #[serde(rename = "for")]
    pub for_: Option<Dur>,
    /// How long a firing alert stays firing after its condition cleared (no flapping).
    pub keep_firing_for: Option<Dur>,
    /// `"critical"`, `"warning"` or `"info"`.
    pub severity: Option<Spanned<String>>,
    /// The rule's threshold (its meaning per rule is in the README).
    pub threshold: Option<f64>,
    /// The rule's evaluation window.
    pub window: Option<Dur>,
    /// Fewer requests than this in the window never fire a ratio rule.
    pub min_requests: Option<u64>,
    /// Extra labels on every instance (e.g. `team = "web"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A link added to the runbook annotation.
    pub runbook_url: Option<String>,
}

/// `[[notifiers]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifier {
    /// Names the receiver in logs and in the webhook's `receiver` field.
    pub name: Spanned<String>,
    /// `"webhook"`, `"log"` or `"command"`.
    pub kind: Spanned<String>,
    /// webhook: `http://host:port/path` (plain HTTP; put a relay in front for TLS).
    pub url: Option<Spanned<String>>,
    /// command: the program and its arguments; it gets the alert JSON on stdin.
    #[serde(default)]
    pub command: Vec<String>,
    /// One delivery attempt's time limit. Default `5s`.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Attempts after the first, with doubling backoff from 500ms. Default `5`.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Notifications waiting for this receiver; beyond it the oldest new ones are dropped and
    /// counted. Default `256`: a dead receiver costs bounded memory.
    #[serde(default = "default_queue")]
    pub queue_size: u64,
    /// Also notify when an alert resolves. Default `true`.
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

/// `[journal]`, validated (present only when `path` is set).
#[derive(Debug, Clone)]
pub struct Journal {
    pub path: PathBuf,
    pub max_age: Duration,
    pub max_events: u64,
    /// `synchronous=FULL` instead of `NORMAL`.
    pub sync_full: bool,
}

/// `[alerting]`, validated.
#[derive(Debug, Clone)]
pub struct Alerting {
    pub enabled: bool,
    pub time_scale: f64,
    pub incident_quiet_period: Duration,
    pub external_url: String,
}

/// `[[alerts]]`, validated.
#[derive(Debug, Clone, Default)]
pub struct AlertOverride {
    pub name: String,
    pub enabled: bool,
    pub for_: Option<Duration>,
    pub keep_firing_for: Option<Duration>,
    pub severity: Option<String>,
    pub threshold: Option<f64>,
    pub window: Option<Duration>,
    pub min_requests: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub runbook_url: Option<String>,
}

/// What a notifier does.
#[derive(Debug, Clone)]
pub enum NotifierKind {
    /// POST the Alertmanager webhook JSON.
    Webhook { url: http::Uri },
    /// One tracing line per notification.
    Log,
    /// Run a program with the JSON on stdin.
    Command { argv: Vec<String> },
}

/// `[[notifiers]]`, validated.
#[derive(Debug, Clone)]
pub struct Notifier {
    pub name: String,
    pub kind: NotifierKind,
    pub timeout: Duration,
    pub max_retries: u32,
    pub queue_size: usize,
    pub send_resolved: bool,
}

/// Everything above, validated.
#[derive(Debug, Clone)]
pub struct Observe {
    pub journal: Option<Journal>,
    pub alerting: Alerting,
    pub alerts: Vec<AlertOverride>,
    pub notifiers: Vec<Notifier>,
}

impl Observe {
    /// The override for a rule, if any.
    pub fn alert(&self, name: &str) -> Option<&AlertOverride> {
        self.alerts.iter().find(|a| a.name == name)
    }
}

fn problem<T>(text: &str, s: &Spanned<T>, key: String, message: String) -> Problem {
    let span = s.span();
    Problem {
        line_col: (span.end > 0).then(|| line_col(text, span.start)),
        key,
        message,
    }
}

/// Validates the four sections, reporting every problem.
pub fn validate(
    journal: &RawJournal,
    alerting: &RawAlerting,
    alerts: &[RawAlert],
    notifiers: &[RawNotifier],
    text: &str,
    base_dir: Option<&Path>,
) -> Result<Observe, Vec<Problem>> {
    let mut problems = Vec::new();
    let sync_full = match journal.synchronous.get_ref().as_str() {
        "normal" => false,
        "full" => true,
        other => {
            problems.push(problem(
                text,
                &journal.synchronous,
                "journal.synchronous".into(),
                format!("{other:?} is not one of \"normal\", \"full\""),
            ));
            false
        }
    };
    let journal = journal.path.as_ref().map(|p| {
        let path = PathBuf::from(p.get_ref());
        let path = match base_dir {
            Some(b) if path.is_relative() => b.join(path),
            _ => path,
        };
        Journal {
            path,
            max_age: journal.max_age.0,
            max_events: journal.max_events.max(1),
            sync_full,
        }
    });
    if !(alerting.time_scale > 0.0 && alerting.time_scale <= 100.0) {
        problems.push(Problem {
            line_col: None,
            key: "alerting.time_scale".into(),
            message: format!(
                "{} is out of range: use a factor above 0 and at most 100",
                alerting.time_scale
            ),
        });
    }
    let mut seen = Vec::new();
    let mut overrides = Vec::new();
    for (i, a) in alerts.iter().enumerate() {
        let key = |k: &str| format!("alerts[{i}].{k}");
        let name = a.name.get_ref();
        if !crate::observe::rules::RULE_NAMES.contains(&name.as_str()) {
            problems.push(problem(
                text,
                &a.name,
                key("name"),
                format!(
                    "no built-in alert named {name:?} (alerts: {})",
                    crate::observe::rules::RULE_NAMES.join(", ")
                ),
            ));
        } else if seen.contains(name) {
            problems.push(problem(
                text,
                &a.name,
                key("name"),
                format!("alert {name:?} is overridden twice"),
            ));
        }
        seen.push(name.clone());
        if let Some(s) = &a.severity
            && !["critical", "warning", "info"].contains(&s.get_ref().as_str())
        {
            problems.push(problem(
                text,
                s,
                key("severity"),
                format!(
                    "{:?} is not one of \"critical\", \"warning\", \"info\"",
                    s.get_ref()
                ),
            ));
        }
        if let Some(t) = a.threshold
            && !(t.is_finite() && t >= 0.0)
        {
            problems.push(problem(
                text,
                &a.name,
                key("threshold"),
                format!("{t} must be a finite number, 0 or more"),
            ));
        }
        overrides.push(AlertOverride {
            name: name.clone(),
            enabled: a.enabled,
            for_: a.for_.map(|d| d.0),
            keep_firing_for: a.keep_firing_for.map(|d| d.0),
            severity: a.severity.as_ref().map(|s| s.get_ref().clone()),
            threshold: a.threshold,
            window: a.window.map(|d| d.0),
            min_requests: a.min_requests,
            labels: a.labels.clone(),
            runbook_url: a.runbook_url.clone(),
        });
    }
    let mut out = Vec::new();
    for (i, n) in notifiers.iter().enumerate() {
        let key = |k: &str| format!("notifiers[{i}].{k}");
        let kind = match n.kind.get_ref().as_str() {
            "webhook" => match &n.url {
                Some(u) => match u.get_ref().parse::<http::Uri>() {
                    Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
                        Some(NotifierKind::Webhook { url: uri })
                    }
                    _ => {
                        problems.push(problem(
                            text,
                            u,
                            key("url"),
                            format!("{:?} is not an http://host:port/path URL", u.get_ref()),
                        ));
                        None
                    }
                },
                None => {
                    problems.push(problem(
                        text,
                        &n.kind,
                        key("url"),
                        "a webhook notifier needs `url`".into(),
                    ));
                    None
                }
            },
            "log" => Some(NotifierKind::Log),
            "command" if !n.command.is_empty() => Some(NotifierKind::Command {
                argv: n.command.clone(),
            }),
            "command" => {
                problems.push(problem(
                    text,
                    &n.kind,
                    key("command"),
                    "a command notifier needs `command = [\"program\", \"arg\", ...]`".into(),
                ));
                None
            }
            other => {
                problems.push(problem(
                    text,
                    &n.kind,
                    key("kind"),
                    format!("{other:?} is not one of \"webhook\", \"log\", \"command\""),
                ));
                None
            }
        };
        if let Some(kind) = kind {
            out.push(Notifier {
                name: n.name.get_ref().clone(),
                kind,
                timeout: n.timeout.0,
                max_retries: n.max_retries,
                queue_size: usize::try_from(n.queue_size.max(1)).unwrap_or(usize::MAX),
                send_resolved: n.send_resolved,
            });
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Observe {
        journal,
        alerting: Alerting {
            enabled: alerting.enabled,
            time_scale: alerting.time_scale,
            incident_quiet_period: alerting.incident_quiet_period.0,
            external_url: alerting.external_url.clone(),
        },
        alerts: overrides,
        notifiers: out,
    })
}

fn yes() -> bool {
    true
}
fn one_f() -> f64 {
    1.0
}
fn default_max_age() -> Dur {
    Dur(Duration::from_secs(30 * 86_400))
}
fn default_max_events() -> u64 {
    1_000_000
}
fn default_sync() -> Spanned<String> {
    Spanned::new(0..0, "normal".to_string())
}
fn default_quiet() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_retries() -> u32 {
    5
}
fn default_queue() -> u64 {
    256
}
