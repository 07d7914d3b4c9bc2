//! `--json FILE`: the full results (schema: docs/loadtest-json.md).

use serde::Serialize;

use super::results::ScenarioResult;

/// The version of the JSON layout; bumped when a field changes meaning or goes away.
pub const SCHEMA: &str = "levee-loadtest/1";

/// The whole document.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    pub schema: &'static str,
    /// Unix time of the run's start, in milliseconds.
    pub started_at_unix_ms: u128,
    /// Seconds from the run's start to its end.
    pub duration_s: f64,
    /// Whether every threshold of every scenario passed (true without thresholds).
    pub passed: bool,
    pub scenarios: &'a [ScenarioResult],
}

/// The JSON text of a run.
pub fn render(
    results: &[ScenarioResult],
    started_at_unix_ms: u128,
    duration_s: f64,
) -> Result<String, serde_json::Error> {
    let report = JsonReport {
        schema: SCHEMA,
        started_at_unix_ms,
        duration_s,
        passed: results.iter().all(ScenarioResult::passed),
        scenarios: results,
    };
    let mut text = serde_json::to_string_pretty(&report)?;
    text.push('\n');
    Ok(text)
}
