//! `levee drill`: a game day of the outage in one command, on loopback, bounded in time.
//!
//! Three simulated web servers that crash when overloaded; levee in front with the recommended
//! config (or, with `--unprotected`, a config like the misconfigured load balancer's); steady
//! legitimate users; a flood from thousands of addresses at 20x the pool's capacity or more; a
//! reload with a dangerous config mid-flood. It prints what happens each second and writes a
//! verdict, the timeline and a report to `--out`.

mod report;
mod traffic;

use crate::backend::{BackendOptions, SimServer};
use crate::config::Config;
use crate::events::{Event, EventKind};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use traffic::{FloodStats, LegitStats};

/// Arguments of `levee drill`.
#[derive(clap::Args, Debug, Clone)]
pub struct DrillArgs {
    /// Where to write the verdict, the timeline, the postmortem draft and the report
    #[arg(long, default_value = "levee-drill")]
    pub out: PathBuf,
    /// A short drill (under 60 s)
    #[arg(long)]
    pub quick: bool,
    /// Run with levee's protections off, like the misconfigured load balancer of the outage
    #[arg(long)]
    pub unprotected: bool,
    /// Flood source addresses (default 2500, or 1000 with --quick)
    #[arg(long, value_parser = clap::value_parser!(u32).range(100..=60000))]
    pub flood_sources: Option<u32>,
    /// Legitimate users, each sending a request every 500 ms
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub users: u32,
}

/// Why a drill could not run.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("cannot write to {0}: {1}")]
    Out(PathBuf, std::io::Error),
    #[error("cannot start the simulated servers: {0}")]
    Backend(std::io::Error),
    #[error("the drill's own config is invalid: {0}")]
    Config(String),
    #[error("cannot start levee: {0}")]
    Start(String),
}

/// Per-server numbers of the simulated web servers.
pub const SERVER_CAPACITY: u32 = 8;
const SERVER_LATENCY_MS: u64 = 150;
const SERVER_CRASH_ABOVE: u32 = 12;

fn config_text(servers: &[SocketAddr], unprotected: bool, journal: &std::path::Path) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let list = list.join(", ");
    let journal = format!("[journal]\npath = {:?}\n", journal.display().to_string());
    if unprotected {
        return format!(
            r#"# The misconfigured load balancer of the outage: no real cap, no shield, retries without a budget.
[listener]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
[access_log]
enabled = false
{journal}
[shield]
enabled = false
[pools.web]
servers = [{list}]
algorithm = "round_robin"
max_concurrency = 100000
queue_size = 0
[pools.web.health_check]
path = "/health"
interval = "1s"
[pools.web.retry]
attempts = 3
budget_ratio = 1.0
"#
        );
    }
    format!(
        r#"# The recommended config for three servers that work well up to {cap} requests at once.
[listener]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
[access_log]
enabled = false
{journal}
[shield]
rate = 3                   # the drill's users send 2 requests/s
burst = 3
[shield.bans]
threshold = 5
weight_rate_limited = 3
duration = "10m"
[shield.attack]
under_attack_rate_factor = 1.0
[pools.web]
servers = [{list}]
algorithm = "least_request"
max_concurrency = {cap}
queue_size = 64
queue_timeout = "1s"
[pools.web.health_check]
path = "/health"
interval = "1s"
timeout = "500ms"
[pools.web.retry]
attempts = 2
budget_ratio = 0.2
"#,
        cap = SERVER_CAPACITY
    )
}

/// The dangerous change pushed mid-flood: no cap worth the name and a retry storm.
fn dangerous_text(servers: &[SocketAddr]) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[pools.web]\nservers = [{}]\nmax_concurrency = 100000\nqueue_size = 100000\n[pools.web.retry]\nattempts = 5\nbudget_ratio = 1.0\n",
        list.join(", ")
    )
}

/// One second of the drill.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u64,
    pub phase: &'static str,
    pub legit_ok: u64,
    pub legit_failed: u64,
    pub flood_attempts: u64,
    pub flood_refused: u64,
    pub bans: u64,
    pub attack: bool,
    pub backend_in_flight: Vec<u64>,
    pub crashes: u64,
}

/// One verdict line.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub observed: String,
    pub required: String,
    pub passed: bool,
}

/// The outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub protected: bool,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub legit_success_rate: f64,
    pub legit_p50_ms: f64,
    pub legit_p99_ms: f64,
    pub backend_max_in_flight: Vec<u64>,
    pub backend_capacity: u32,
    pub backend_crashes: u64,
    pub flood_sources: u32,
    pub flood_offered_rps: f64,
    pub pool_capacity_rps: f64,
    pub time_to_detect_s: Option<f64>,
    pub time_to_block_s: Option<f64>,
    pub dangerous_reload: String,
    pub alerts: Vec<(f64, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimedEvent {
    pub t: f64,
    #[serde(flatten)]
    pub event: Event,
}

/// Runs the drill; exit 0 when the verdict passes, 1 when it fails, 2 on bad input.
pub async fn run(a: DrillArgs) -> Result<ExitCode, DrillError> {
    std::fs::create_dir_all(&a.out).map_err(|e| DrillError::Out(a.out.clone(), e))?;
    let (warmup, flood_for, cool) = if a.quick {
        (4u64, 14u64, 4u64)
    } else {
        (10, 45, 10)
    };
    let sources = a.flood_sources.unwrap_or(if a.quick { 1000 } else { 2500 });
    let opts = BackendOptions {
        capacity: SERVER_CAPACITY,
        latency: Duration::from_millis(SERVER_LATENCY_MS),
        crash_above: Some(SERVER_CRASH_ABOVE),
        down_for: Duration::from_secs(if a.quick { 20 } else { 60 }),
    };
    let mut sims = Vec::new();
    for _ in 0..3 {
        sims.push(
            SimServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts.clone())
                .await
                .map_err(DrillError::Backend)?,
        );
    }
    let addrs: Vec<SocketAddr> = sims.iter().map(SimServer::addr).collect();
    let capacity_rps = 3.0 * f64::from(SERVER_CAPACITY) / (SERVER_LATENCY_MS as f64 / 1000.0);
    let cfg_path = a.out.join("levee.toml");
    let out_abs = std::fs::canonicalize(&a.out).map_err(|e| DrillError::Out(a.out.clone(), e))?;
    let journal = out_abs.join("journal.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(out_abs.join(format!("journal.db{suffix}")));
    }
    let good = config_text(&addrs, a.unprotected, &journal);
    std::fs::write(&cfg_path, &good).map_err(|e| DrillError::Out(cfg_path.clone(), e))?;
    let cfg = Config::load(&cfg_path).map_err(|e| DrillError::Config(e.to_string()))?;
    let levee = crate::proxy::Levee::start(cfg)
        .await
        .map_err(|e| DrillError::Start(e.to_string()))?;
    let uri: http::Uri = format!("http://{}/", levee.addr)
        .parse()
        .map_err(|_| DrillError::Start("bad listener address".into()))?;
    eprintln!(
        "levee drill ({}): 3 servers of capacity {SERVER_CAPACITY} ({capacity_rps:.0} requests/s in all, crash above {SERVER_CRASH_ABOVE} in flight), levee on {} (admin http://{}), {} users, then a flood from {sources} addresses",
        if a.unprotected {
            "UNPROTECTED, like the misconfigured load balancer"
        } else {
            "protected"
        },
        levee.addr,
        levee.admin_addr,
        a.users
    );

    let start = Instant::now();
    let events: Arc<std::sync::Mutex<Vec<TimedEvent>>> = Arc::default();
    let mut sub = levee.shared.events.subscribe();
    let ev_store = events.clone();
    let ev_task = tokio::spawn(async move {
        loop {
            match sub.recv().await {
                Ok(e) => {
                    if let Ok(mut v) = ev_store.lock() {
                        v.push(TimedEvent {
                            t: start.elapsed().as_secs_f64(),
                            event: (*e).clone(),
                        });
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    });

    let legit_stop = Arc::new(AtomicBool::new(false));
    let legit = Arc::new(LegitStats::default());
    let legit_tasks = traffic::legit(uri.clone(), a.users, legit_stop.clone(), legit.clone());
    let flood_stop = Arc::new(AtomicBool::new(false));
    let flood = Arc::new(FloodStats::default());
    let mut flood_tasks = Vec::new();
    let mut seconds: Vec<Second> = Vec::new();
    let (mut last_ok, mut last_fail, mut last_att, mut last_ref) = (0u64, 0u64, 0u64, 0u64);
    let mut flood_started: Option<f64> = None;
    let mut offered_first_2s = None;
    let mut dangerous_reload = String::from("not attempted");
    let total = warmup + flood_for + cool;
    for t in 1..=total {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            start + Duration::from_secs(t),
        ))
        .await;
        let phase = if t <= warmup {
            "warm-up"
        } else if t <= warmup + flood_for {
            "flood"
        } else {
            "cool-down"
        };
        if t == warmup {
            flood_started = Some(start.elapsed().as_secs_f64());
            flood_tasks = traffic::flood(
                uri.clone(),
                sources,
                Duration::from_millis(180),
                flood_stop.clone(),
                flood.clone(),
            );
            eprintln!(
                "t={t:>3}s  the flood starts: {sources} addresses, a request every 180 ms each"
            );
        }
        if t == warmup + 2 {
            offered_first_2s = Some(flood.attempts.load(Ordering::Relaxed) as f64 / 2.0);
        }
        if t == warmup + flood_for / 3 {
            // Someone "fixes" the overload by pushing a dangerous config, as in the outage.
            let _ = std::fs::write(&cfg_path, dangerous_text(&addrs));
            dangerous_reload = match levee.reload().await {
                Ok(o) => format!(
                    "ACCEPTED (generation {}), warnings: {}",
                    o.generation,
                    o.warnings.join("; ")
                ),
                Err(e) => format!("rejected: {}", e.details().join("; ")),
            };
            let _ = std::fs::write(&cfg_path, &good);
            eprintln!(
                "t={t:>3}s  a reload with a dangerous config (max_concurrency = 100000, a queue of 100000, 5 retries without a budget): {dangerous_reload}"
            );
        }
        if t == warmup + flood_for {
            flood_stop.store(true, Ordering::Relaxed);
            eprintln!("t={t:>3}s  the flood stops");
        }
        let stats: Vec<_> = sims.iter().map(SimServer::stats).collect();
        let (ok, fail) = (
            legit.ok.load(Ordering::Relaxed),
            legit.total.load(Ordering::Relaxed) - legit.ok.load(Ordering::Relaxed),
        );
        let (att, refd) = (
            flood.attempts.load(Ordering::Relaxed),
            flood.refused.load(Ordering::Relaxed),
        );
        let bans = levee.shared.shield.bans.active() as u64;
        let attack = levee.shared.shield.detector.active();
        let s = Second {
            t,
            phase,
            legit_ok: ok - last_ok,
            legit_failed: fail - last_fail,
            flood_attempts: att - last_att,
            flood_refused: refd - last_ref,
            bans,
            attack,
            backend_in_flight: stats.iter().map(|s| s.in_flight).collect(),
            crashes: stats.iter().map(|s| s.crashes).sum(),
        };
        (last_ok, last_fail, last_att, last_ref) = (ok, fail, att, refd);
        eprintln!(
            "t={t:>3}s  {phase:<9}  users {:>4} ok {:>3} failed | flood {:>5} req/s, {:>3.0}% refused | bans {:>5} | attack {} | servers in flight {:?} (cap {SERVER_CAPACITY}), crashes {}",
            s.legit_ok,
            s.legit_failed,
            s.flood_attempts,
            if s.flood_attempts > 0 {
                (100.0 * s.flood_refused as f64 / s.flood_attempts as f64).min(100.0)
            } else {
                0.0
            },
            s.bans,
            if s.attack { "YES" } else { "no " },
            s.backend_in_flight,
            s.crashes
        );
        seconds.push(s);
    }
    legit_stop.store(true, Ordering::Relaxed);
    flood_stop.store(true, Ordering::Relaxed);
    for t in legit_tasks.into_iter().chain(flood_tasks) {
        let _ = tokio::time::timeout(Duration::from_secs(6), t).await;
    }
    // Let the last events reach the journal subscribers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ev_task.abort();
    let events = events.lock().map(|v| v.clone()).unwrap_or_default();
    let stats: Vec<_> = sims.iter().map(SimServer::stats).collect();
    let fs = flood_started.unwrap_or(warmup as f64);
    let time_to_detect = events
        .iter()
        .find(|e| e.event.kind == EventKind::AttackStarted && e.t >= fs)
        .map(|e| e.t - fs);
    // Time to block: until 95% of the flood's sources were banned.
    let mut ban_times: Vec<f64> = events
        .iter()
        .filter(|e| {
            e.event.kind == EventKind::BanAdded
                && e.event
                    .client
                    .as_deref()
                    .is_some_and(|c| c.starts_with("127.2"))
        })
        .map(|e| e.t - fs)
        .collect();
    ban_times.sort_by(f64::total_cmp);
    let need = (f64::from(sources) * 0.95).ceil() as usize;
    let time_to_block = ban_times.get(need.saturating_sub(1)).copied();
    let alerts: Vec<(f64, String)> = events
        .iter()
        .filter(|e| e.event.kind == EventKind::AlertFiring)
        .map(|e| (e.t, e.event.message.clone()))
        .collect();
    let v = verdict(
        &a,
        &legit,
        &stats,
        sources,
        offered_first_2s.unwrap_or(0.0),
        capacity_rps,
        time_to_detect,
        time_to_block,
        dangerous_reload,
        alerts,
    );
    let _ = levee.shutdown().await;
    // The journal's writer commits at least every 250 ms; give it the last events.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let journal_draft = tokio::task::spawn_blocking(move || {
        crate::journal::postmortem(&journal, None, crate::journal::Format::Markdown)
    })
    .await
    .ok()
    .and_then(Result::ok);
    report::write_all(&a.out, &v, &seconds, &events, journal_draft.as_deref())
        .map_err(|e| DrillError::Out(a.out.clone(), e))?;
    eprintln!("\n{}", report::verdict_table(&v));
    eprintln!(
        "written to {}: verdict.md, verdict.json, timeline.jsonl, postmortem.md ({}), report.html, journal.db",
        a.out.display(),
        if journal_draft.is_some() {
            "the incident's draft from the journal, then the drill's account"
        } else {
            "no incident in the journal: the drill's account"
        }
    );
    drop(sims);
    Ok(if v.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[allow(clippy::too_many_arguments)]
fn verdict(
    a: &DrillArgs,
    legit: &LegitStats,
    stats: &[crate::backend::Stats],
    sources: u32,
    offered: f64,
    capacity_rps: f64,
    detect: Option<f64>,
    block: Option<f64>,
    dangerous_reload: String,
    alerts: Vec<(f64, String)>,
) -> Verdict {
    let rate = legit.success_rate();
    let p99 = legit.percentile(99.0);
    let max_in_flight: Vec<u64> = stats.iter().map(|s| s.max_in_flight).collect();
    let crashes: u64 = stats.iter().map(|s| s.crashes).sum();
    let mut checks = Vec::new();
    let mut check = |what: &str, observed: String, required: &str, passed: bool| {
        checks.push(Check {
            what: what.into(),
            observed,
            required: required.into(),
            passed,
        })
    };
    check(
        "legitimate success rate",
        format!("{:.2}%", rate * 100.0),
        ">= 99%",
        rate >= 0.99,
    );
    check(
        "legitimate p99 latency",
        format!("{p99:.0} ms"),
        "< 1000 ms",
        p99 < 1000.0,
    );
    let worst = max_in_flight.iter().copied().max().unwrap_or(0);
    check(
        "backend max in flight",
        format!("{worst} (servers: {max_in_flight:?})"),
        &format!("<= capacity {SERVER_CAPACITY}"),
        worst <= u64::from(SERVER_CAPACITY),
    );
    check("backend crashes", crashes.to_string(), "0", crashes == 0);
    check(
        "flood offered load",
        format!(
            "{offered:.0} req/s = {:.0}x capacity",
            offered / capacity_rps
        ),
        ">= 20x capacity",
        offered >= 20.0 * capacity_rps,
    );
    check(
        "time to detect the attack",
        detect.map_or("never".into(), |d| format!("{d:.1} s")),
        "<= 10 s",
        detect.is_some_and(|d| d <= 10.0),
    );
    check(
        "time to block 95% of the flood's sources",
        block.map_or("never".into(), |d| format!("{d:.1} s")),
        "<= 5 s",
        block.is_some_and(|d| d <= 5.0),
    );
    let rejected = dangerous_reload.starts_with("rejected");
    check(
        "dangerous reload",
        dangerous_reload.clone(),
        "rejected",
        rejected,
    );
    let passed = checks.iter().all(|c| c.passed);
    Verdict {
        protected: !a.unprotected,
        passed,
        checks,
        legit_success_rate: rate,
        legit_p50_ms: legit.percentile(50.0),
        legit_p99_ms: p99,
        backend_max_in_flight: max_in_flight,
        backend_capacity: SERVER_CAPACITY,
        backend_crashes: crashes,
        flood_sources: sources,
        flood_offered_rps: offered,
        pool_capacity_rps: capacity_rps,
        time_to_detect_s: detect,
        time_to_block_s: block,
        dangerous_reload,
        alerts,
    }
}
