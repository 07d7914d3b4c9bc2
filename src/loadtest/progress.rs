//! Every second: close the timeline interval of every scenario, and show progress.
//!
//! On a terminal (stderr), one status line redrawn in place: elapsed time, requests/s, p50/p99
//! and errors per scenario. Elsewhere (CI logs), at most one line every 10 seconds.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::report_text::fmt_ms;
use super::stats::{Recorder, TimelinePoint};

/// How often a line is printed when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One scenario as the progress line shows it.
pub struct Watched {
    pub name: String,
    pub recorder: Arc<Recorder>,
}

/// Ticks every second until dropped (abort the task); `run_start` is the timeline's zero.
pub async fn collect(watched: Arc<Vec<Watched>>, run_start: Instant, enabled: bool) {
    let terminal = enabled && std::io::stderr().is_terminal();
    let mut next = run_start + Duration::from_secs(1);
    let mut last_log = run_start;
    loop {
        tokio::time::sleep_until(next).await;
        // The time the tick really runs (a busy runtime may be late): rates stay honest.
        let t = run_start.elapsed().as_secs_f64();
        let points: Vec<TimelinePoint> = watched.iter().map(|w| w.recorder.tick(t)).collect();
        let line = line(&watched, &points, t);
        if terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if enabled && next.saturating_duration_since(last_log) >= LOG_EVERY {
            last_log = next;
            eprintln!("{line}");
        }
        next += Duration::from_secs(1);
    }
}

/// Closes the last (partial) interval at the end of the run and clears the progress line.
pub fn finish(watched: &[Watched], run_start: Instant, enabled: bool) {
    let t = run_start.elapsed().as_secs_f64();
    for w in watched {
        let last = w.recorder.timeline_end();
        if t > last {
            w.recorder.tick(t);
        }
    }
    if enabled && std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}

fn line(watched: &[Watched], points: &[TimelinePoint], t: f64) -> String {
    let mut parts = vec![format!("{t:>4.0}s")];
    for (w, p) in watched.iter().zip(points) {
        let totals = w.recorder.counters();
        parts.push(format!(
            "{}: {:.0} req/s p50 {} p99 {} errors {}",
            w.name,
            p.rps,
            fmt_ms(p.p50_ms),
            fmt_ms(p.p99_ms),
            totals.error_total()
        ));
    }
    parts.join(" | ")
}
