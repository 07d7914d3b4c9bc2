//! `levee loadtest`: a load generator built for regular load tests of a levee deployment.
//!
//! - [`engine`]: the closed and open models and their connection workers; [`slowloris`]: slow
//!   connections; [`conn`]: TCP connections (from chosen source addresses) and requests;
//!   [`http1`]: levee's own lean HTTP/1.1 client side (response parsing and body framing).
//! - [`outcome`]: a request's outcome and error kinds; [`stats`]: per-shard HDR histograms and counters, the per-second timeline.
//! - [`plan`]: the typed plan of a scenario, built from the command line or from a scenario file
//!   ([`scenario`]).
//! - [`threshold`]: pass/fail criteria for CI; [`results`]: the figures every report shows;
//!   [`report_text`], [`report_json`], [`report_html`] (with [`svg`]); [`progress`].
//!
//! Exit codes: 0 every threshold passed, 1 a threshold failed, 2 bad input.

pub mod conn;
pub mod engine;
pub mod http1;
pub mod outcome;
pub mod plan;
pub mod progress;
pub mod report_html;
pub mod report_json;
pub mod report_text;
pub mod results;
pub mod scenario;
pub mod slowloris;
pub mod stats;
pub mod svg;
pub mod threshold;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use self::engine::{Span, StopSignal};
use self::plan::{HttpPlan, Kind, Load, Model, Plan};
use self::results::ScenarioResult;
use self::stats::Recorder;
use self::threshold::Threshold;

/// Errors of `levee loadtest`, all of them bad input (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("{0}")]
    Args(String),
    /// A scenario file problem, already prefixed with `file:line:column:`.
    #[error("{0}")]
    Scenario(String),
    #[error("cannot read {0}: {1}")]
    Read(String, #[source] std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(String, #[source] std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// CLI arguments of `levee loadtest`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LoadtestArgs {
    /// The URL to load (http://HOST:PORT/PATH); not with --scenario
    #[arg(required_unless_present = "scenario", conflicts_with = "scenario")]
    pub url: Option<String>,
    /// A scenario file (TOML) running several named scenarios at once
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Closed model: connections, each sending its next request when answered (default 50).
    /// Open model: the most connections used (default 512)
    #[arg(long, short = 'c')]
    pub connections: Option<u32>,
    /// Open model: requests per second, sent at their intended times whatever the answers
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,
    /// Ramp stages DURATION:TARGET,...: connections (closed model) or requests/s (with --rate or
    /// --model open, starting from --rate), e.g. "30s:100,1m:500,30s:0"
    #[arg(long)]
    pub stages: Option<String>,
    /// The load model: closed or open (default: open with --rate, closed otherwise)
    #[arg(long)]
    pub model: Option<String>,
    /// How long to run, e.g. 30s (default 10s without --requests or --stages)
    #[arg(long, short = 'd', value_parser = crate::backend::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Request method
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// A request header "Name: value" (repeatable)
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Request body: literal text, or @FILE
    #[arg(long)]
    pub body: Option<String>,
    /// Open a new connection for every request (Connection: close)
    #[arg(long)]
    pub no_keepalive: bool,
    /// A request without a complete response within this time is an error
    #[arg(long, default_value = "10s", value_parser = crate::backend::parse_duration)]
    pub timeout: Duration,
    /// Spread connections over the source addresses of this range (each connection bound to
    /// one), e.g. 127.10.0.0/16 on loopback
    #[arg(long, value_name = "CIDR")]
    pub source_ips: Option<String>,
    /// Worker threads of the load generator (default: one per core)
    #[arg(long)]
    pub threads: Option<usize>,
    /// A pass/fail criterion, e.g. "p99 < 250ms" (repeatable); a failure exits 1
    #[arg(long = "threshold", value_name = "THRESHOLD")]
    pub thresholds: Vec<String>,
    /// Statuses that count as successes beside 2xx and 3xx, e.g. 429,503
    #[arg(long, value_delimiter = ',')]
    pub expect_status: Vec<u16>,
    /// Write the full results as JSON (schema: docs/loadtest-json.md)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// No progress line on stderr
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `levee loadtest` on its own runtime (`--threads`); returns the exit code. Call it from
/// a blocking context (not from inside an async task).
pub fn run_blocking(args: LoadtestArgs) -> ExitCode {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // One thread: a current-thread runtime, without the cross-thread wake-ups of the
    // multi-thread scheduler (like one wrk thread).
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("levee loadtest: {}", LoadtestError::Runtime(e));
            return ExitCode::from(2);
        }
    };
    ExitCode::from(runtime.block_on(run(args, threads)))
}

/// Runs `levee loadtest` on the current runtime; returns the exit code (0, 1 or 2).
pub async fn run(args: LoadtestArgs, threads: usize) -> u8 {
    let plans = match plans_of(&args) {
        Ok(plans) => plans,
        Err(e) => {
            eprintln!("levee loadtest: {e}");
            return 2;
        }
    };
    let outcome = execute(plans, threads, !args.quiet).await;
    print!("{}", report_text::summary(&outcome.results));
    if let Err(e) = write_reports(&args, &outcome) {
        eprintln!("levee loadtest: {e}");
        return 2;
    }
    if outcome.results.iter().all(ScenarioResult::passed) {
        0
    } else {
        1
    }
}

/// The scenarios of a run: from the scenario file, or the one of the command line.
pub fn plans_of(args: &LoadtestArgs) -> Result<Vec<Plan>, LoadtestError> {
    match (&args.scenario, &args.url) {
        (Some(file), _) => scenario::load(file),
        (None, Some(url)) => Ok(vec![plan_from_args(url, args)?]),
        (None, None) => Err(LoadtestError::Args(
            "give a URL or --scenario FILE".to_owned(),
        )),
    }
}

fn plan_from_args(url: &str, a: &LoadtestArgs) -> Result<Plan, LoadtestError> {
    let bad = LoadtestError::Args;
    let target = plan::parse_target(url).map_err(bad)?;
    let open = match a.model.as_deref() {
        None => a.rate.is_some(),
        Some("open") => true,
        Some("closed") => false,
        Some(other) => {
            return Err(bad(format!(
                "bad --model {other:?}: expected open or closed"
            )));
        }
    };
    if !open && a.rate.is_some() {
        return Err(bad("--rate is for the open model".to_owned()));
    }
    let stages = a
        .stages
        .as_deref()
        .map(plan::parse_stages)
        .transpose()
        .map_err(bad)?;
    let level = |constant: Option<f64>, default: f64| match &stages {
        Some(stages) => Load::Stages {
            start: constant.unwrap_or(0.0),
            stages: stages.clone(),
        },
        None => Load::Constant(constant.unwrap_or(default)),
    };
    let model = if open {
        if a.rate.is_none() && stages.is_none() {
            return Err(bad("the open model needs --rate or --stages".to_owned()));
        }
        Model::Open {
            rate: level(a.rate, 0.0),
            max_connections: a.connections.unwrap_or(plan::DEFAULT_OPEN_CONNECTIONS),
        }
    } else {
        Model::Closed {
            connections: level(
                a.connections.map(f64::from),
                f64::from(plan::DEFAULT_CLOSED_CONNECTIONS),
            ),
        }
    };
    let http = HttpPlan {
        model,
        method: plan::parse_method(&a.method).map_err(bad)?,
        headers: plan::parse_headers(&a.headers).map_err(bad)?,
        body: match &a.body {
            Some(spec) => plan::load_body(spec, None)?,
            None => bytes::Bytes::new(),
        },
        keepalive: !a.no_keepalive,
    };
    let thresholds = a
        .thresholds
        .iter()
        .map(|t| Threshold::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let source_ips = a
        .source_ips
        .as_deref()
        .map(|s| plan::SourceIps::parse(s, None))
        .transpose()
        .map_err(bad)?;
    let plan = Plan {
        name: "default".to_owned(),
        target,
        kind: Kind::Http(http),
        start_after: Duration::ZERO,
        duration: a.duration,
        requests: a.requests,
        expect_status: a.expect_status.clone(),
        thresholds,
        source_ips,
        timeout: a.timeout,
    };
    finish_plan(plan).map_err(bad)
}

/// Fills in the duration (stages, default) and checks what must hold for any plan.
pub fn finish_plan(mut plan: Plan) -> Result<Plan, String> {
    if let Kind::Http(http) = &plan.kind {
        let load = match &http.model {
            Model::Closed { connections } => connections,
            Model::Open { rate, .. } => rate,
        };
        if let Some(total) = load.stages_duration() {
            plan.duration = Some(plan.duration.map_or(total, |d| d.min(total)));
        }
        match &http.model {
            Model::Open {
                rate,
                max_connections,
            } => {
                if !(rate.max() > 0.0 && rate.max().is_finite()) {
                    return Err("the rate must be above 0 requests/s".to_owned());
                }
                if *max_connections == 0 {
                    return Err("--connections must be at least 1".to_owned());
                }
            }
            Model::Closed { connections } => {
                if connections.max().is_nan() || connections.max() < 1.0 {
                    return Err("the closed model needs at least 1 connection".to_owned());
                }
                if connections.max() > 1_000_000.0 {
                    return Err("more than 1000000 connections".to_owned());
                }
            }
        }
    }
    if let Kind::Slowloris { connections, .. } = &plan.kind {
        if *connections == 0 {
            return Err("slowloris needs at least 1 connection".to_owned());
        }
        if plan.duration.is_none() {
            return Err("slowloris needs a duration".to_owned());
        }
    }
    if plan.duration.is_none() && plan.requests.is_none() {
        plan.duration = Some(plan::DEFAULT_DURATION);
    }
    if plan.requests == Some(0) {
        return Err("--requests must be at least 1".to_owned());
    }
    if plan.timeout.is_zero() {
        return Err("the timeout must be above 0".to_owned());
    }
    if let Some(d) = plan.duration
        && d.is_zero()
    {
        return Err("the duration must be above 0".to_owned());
    }
    Ok(plan)
}

/// What a run produced.
pub struct RunOutcome {
    pub results: Vec<ScenarioResult>,
    pub started_at_unix_ms: u128,
    pub duration_s: f64,
}

/// Runs every plan at once (each after its `start_after`) to its end; Ctrl-C stops the run
/// early and still reports. Thresholds are evaluated.
pub async fn execute(plans: Vec<Plan>, threads: usize, progress: bool) -> RunOutcome {
    let started_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let run_start = Instant::now();
    let stop = StopSignal::new();
    let shards = (threads * 4).max(4);
    let plans: Vec<Arc<Plan>> = plans.into_iter().map(Arc::new).collect();
    let watched: Arc<Vec<progress::Watched>> = Arc::new(
        plans
            .iter()
            .map(|p| progress::Watched {
                name: p.name.clone(),
                recorder: Arc::new(Recorder::new(shards, p.expect_status.clone())),
            })
            .collect(),
    );
    let collector = tokio::spawn(progress::collect(watched.clone(), run_start, progress));
    let ctrl_c = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nlevee loadtest: interrupted, stopping and reporting");
                stop.stop();
            }
        })
    };
    let mut tasks = Vec::new();
    for (plan, w) in plans.iter().zip(watched.iter()) {
        let (plan, recorder, stop) = (plan.clone(), w.recorder.clone(), stop.clone());
        tasks.push(tokio::spawn(run_plan(plan, recorder, stop)));
    }
    let mut spans = Vec::new();
    for task in tasks {
        let now = Instant::now();
        spans.push(task.await.unwrap_or(Span {
            start: now,
            end: now,
        }));
    }
    collector.abort();
    ctrl_c.abort();
    progress::finish(&watched, run_start, progress);
    let results = plans
        .iter()
        .zip(watched.iter())
        .zip(spans)
        .map(|((plan, w), span)| {
            let merged = w.recorder.finish();
            let mut r = ScenarioResult::build(plan, &merged, span, run_start);
            threshold::apply(&plan.thresholds, &mut r);
            r
        })
        .collect();
    RunOutcome {
        results,
        started_at_unix_ms,
        duration_s: run_start.elapsed().as_secs_f64(),
    }
}

async fn run_plan(plan: Arc<Plan>, recorder: Arc<Recorder>, stop: Arc<StopSignal>) -> Span {
    if !plan.start_after.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(plan.start_after) => {}
            _ = stop.wait() => {
                let now = Instant::now();
                return Span { start: now, end: now };
            }
        }
    }
    match &plan.kind {
        Kind::Http(http) => {
            let http = http.clone();
            engine::run_http(plan, &http, recorder, stop).await
        }
        Kind::Slowloris {
            connections,
            byte_interval,
        } => slowloris::run(plan.clone(), *connections, *byte_interval, recorder, stop).await,
    }
}

fn write_reports(args: &LoadtestArgs, outcome: &RunOutcome) -> Result<(), LoadtestError> {
    if let Some(path) = &args.json {
        let text = report_json::render(
            &outcome.results,
            outcome.started_at_unix_ms,
            outcome.duration_s,
        )
        .map_err(|e| LoadtestError::Write(path.display().to_string(), std::io::Error::other(e)))?;
        std::fs::write(path, text)
            .map_err(|e| LoadtestError::Write(path.display().to_string(), e))?;
    }
    if let Some(path) = &args.html {
        let html = report_html::render(&outcome.results, outcome.started_at_unix_ms);
        std::fs::write(path, html)
            .map_err(|e| LoadtestError::Write(path.display().to_string(), e))?;
    }
    Ok(())
}
