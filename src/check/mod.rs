//! `levee check`: review a validated configuration for safety, not only syntax.
//!
//! Validation (`config/`) says whether a file can run; the review says whether it should: every
//! finding has a stable id, a severity, the file:line of its key, what is wrong, why it matters
//! and the fix. The same review runs in `levee serve` (errors refuse to start) and on every
//! reload (errors reject the new config).
//!
//! - `rules.rs`: the rule registry and the rules about single keys;
//! - `capacity.rs`: the capacity model (capacity, headroom, N+1, retries, Little's law) and its
//!   rules;
//! - `report.rs`: text and JSON output;
//! - `probe.rs`: `levee probe`, which measures a server's real capacity.

pub mod capacity;
pub mod probe;
pub mod report;
pub mod rules;

use crate::config::{Config, Location};
use serde::Serialize;

pub use capacity::PoolCapacity;
pub use rules::{PLANNED, RULES, Rule};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Works, but a reviewer would ask you to change it.
    Warning,
    /// Unsafe: `levee serve` refuses to start with it, a reload is rejected.
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Severity, String> {
        match s {
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            other => Err(format!("{other:?} is not a severity: use error or warning")),
        }
    }
}

/// One thing the review found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable id, e.g. `L012`.
    pub id: &'static str,
    /// The rule's name, e.g. `single-server`.
    pub rule: &'static str,
    pub severity: Severity,
    /// The key concerned, e.g. `pools.web.max_concurrency`.
    pub key: String,
    /// 1-based line of the key (of its table when the key is left out).
    pub line: usize,
    pub column: usize,
    /// False when the key is not written in the file (a default applies).
    pub key_written: bool,
    /// What is wrong.
    pub message: String,
    /// Why it matters, in one sentence.
    pub why: &'static str,
    /// How to fix it.
    pub fix: String,
    /// The numbers behind the finding (rates, ratios), when there are some.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Finding {
    /// `file:line: severity[ID] key: message (fix: ...)`, one line for logs and API answers.
    pub fn line(&self, file: &str) -> String {
        format!(
            "{file}:{}: {}[{}] {}: {} (fix: {})",
            self.line,
            self.severity.as_str(),
            self.id,
            self.key,
            self.message,
            self.fix
        )
    }
}

/// The outcome of a review.
#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub file: String,
    pub findings: Vec<Finding>,
    pub capacity: Vec<PoolCapacity>,
}

impl Review {
    /// Findings at or above `level`.
    pub fn at_or_above(&self, level: Severity) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.severity >= level)
    }
    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }
    pub fn has_errors(&self) -> bool {
        self.count(Severity::Error) > 0
    }
    /// One line per finding of severity `s`.
    pub fn lines(&self, s: Severity) -> Vec<String> {
        self.findings
            .iter()
            .filter(|f| f.severity == s)
            .map(|f| f.line(&self.file))
            .collect()
    }
}

/// What rules see: the config and the capacity model of each pool.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub capacity: &'a [PoolCapacity],
}

impl Ctx<'_> {
    /// Where `key` is written (or its table).
    pub fn locate(&self, key: &str) -> Location {
        self.cfg.locations.locate(key)
    }
    /// Whether `key` is written in the file.
    pub fn written(&self, key: &str) -> bool {
        self.cfg.locations.has(key)
    }
    /// A finding of rule `rule` about `key`.
    pub fn finding(
        &self,
        rule: &Rule,
        severity: Severity,
        key: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        let key = key.into();
        let at = self.locate(&key);
        Finding {
            id: rule.id,
            rule: rule.name,
            severity,
            line: at.line,
            column: at.column,
            key_written: at.exact,
            key,
            message: message.into(),
            why: rule.why,
            fix: fix.into(),
            data: serde_json::Value::Null,
        }
    }
}

/// Reviews a validated config: every rule of [`RULES`], findings sorted by line.
pub fn review(cfg: &Config) -> Review {
    let capacity: Vec<PoolCapacity> = cfg.pools.iter().map(capacity::model).collect();
    let cx = Ctx {
        cfg,
        capacity: &capacity,
    };
    let mut findings = Vec::new();
    for rule in RULES {
        (rule.check)(&cx, rule, &mut findings);
    }
    findings.sort_by(|a, b| (a.line, a.id).cmp(&(b.line, b.id)));
    Review {
        file: cfg.locations.file.clone(),
        findings,
        capacity,
    }
}
