//! Command-line definitions and dispatch. Exit codes: 0 ok, 1 the job ran and found a
//! failure, 2 bad input (unreadable or invalid config, bad arguments).

use crate::backend::{self, BackendArgs};
use crate::config::Config;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// levee: an HTTP load balancer that never sends a server more than it can take.
#[derive(Parser, Debug)]
#[command(name = "levee", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the load balancer with a config file
    Serve(ServeArgs),
    /// Review a config file for safety: exit 0 clean, 1 findings at or above --fail-on, 2 invalid
    Check(CheckArgs),
    /// Start three simulated backends and levee in front of them, with a safe built-in config
    Demo(crate::demo::DemoArgs),
    /// Replay the outage as a game day on loopback: servers, levee, users and a flood; writes a verdict
    Drill(crate::drill::DrillArgs),
    /// Run a simulated web server (capacity, latency, crashes) for drills, demos and tests
    Backend(BackendArgs),
    /// List, add or lift bans on a running levee (through its admin API)
    Ban(BanArgs),
    /// Measure a server's capacity step by step and print the config to paste
    Probe(ProbeArgs),
    /// Draft the postmortem of an incident from the journal (Markdown or JSON)
    Postmortem(PostmortemArgs),
    /// Print the runbook of every alert: what it means and what to do
    Runbook,
    /// Generate load against a URL or run a scenario file; thresholds decide the exit code
    Loadtest(Box<crate::loadtest::LoadtestArgs>),
}

#[derive(clap::Args, Debug)]
pub struct PostmortemArgs {
    /// The journal file (`[journal] path`)
    #[arg(long)]
    pub journal: PathBuf,
    /// The incident's id (see GET /api/incidents)
    #[arg(long, conflicts_with = "last")]
    pub incident: Option<i64>,
    /// The latest incident (the default)
    #[arg(long)]
    pub last: bool,
    /// md or json
    #[arg(long, default_value = "md", value_parser = ["md", "json"])]
    pub format: String,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The config file (TOML)
    #[arg(long, short)]
    pub config: PathBuf,
    /// Worker threads of the runtime (default: one per core; 1: a single-threaded runtime)
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The config file (TOML)
    #[arg(long, short, required_unless_present = "list_rules")]
    pub config: Option<PathBuf>,
    /// Output format: text (a reviewer's comments) or json (for CI)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Exit 1 when a finding is at or above this severity: error or warning
    #[arg(long, default_value = "error", value_parser = clap::value_parser!(crate::check::Severity))]
    pub fail_on: crate::check::Severity,
    /// Print every rule (id, severity, name, why) and exit
    #[arg(long)]
    pub list_rules: bool,
}

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The URL to probe (GET), e.g. http://127.0.0.1:9001/
    pub url: String,
    /// Total time budget, e.g. 30s
    #[arg(long, default_value = "30s", value_parser = crate::backend::parse_duration)]
    pub max_time: std::time::Duration,
    /// Stop raising concurrency once the median latency passes this, e.g. 1s
    #[arg(long, default_value = "1s", value_parser = crate::backend::parse_duration)]
    pub max_latency: std::time::Duration,
    /// Highest concurrency tried
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrency: u32,
    /// Most requests sent in all
    #[arg(long, default_value_t = 200_000)]
    pub max_requests: u64,
    /// Allow a URL that is not on this machine (a probe is a load test: ask first)
    #[arg(long)]
    pub allow_remote: bool,
    /// Output format: text (steps and a TOML snippet) or json
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

/// Parses the command line and runs the command; returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // The drill and the load generator have their own live view: only warnings go to stderr.
    init_tracing(match &cli.command {
        Command::Drill(_) | Command::Loadtest(_) => "warn",
        _ => "info",
    });
    let threads = match &cli.command {
        Command::Serve(a) => a.threads,
        _ => None,
    };
    // One thread: a current-thread runtime runs every task on this thread, without the
    // work-stealing scheduler's atomics, injection queue and cross-thread wake-ups.
    let mut rt = if threads.is_some_and(|t| t <= 1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    rt.enable_all();
    if let Some(t) = threads.filter(|&t| t > 1) {
        rt.worker_threads(t);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("levee: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("levee: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Serve(a) => serve(a).await,
        Command::Check(a) => Ok(check(a)),
        Command::Probe(a) => probe(a).await,
        Command::Demo(a) => crate::demo::run(a).await,
        Command::Drill(a) => match crate::drill::run(a).await {
            Ok(code) => Ok(code),
            Err(e) => {
                eprintln!("levee drill: {e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Ban(a) => ban(a).await,
        Command::Backend(a) => {
            backend::run(a).await.context("levee backend")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Postmortem(a) => Ok(postmortem(a)),
        Command::Runbook => {
            print!("{}", crate::observe::rules::runbook_markdown());
            Ok(ExitCode::SUCCESS)
        }
        // The load generator runs on its own runtime, sized by its --threads.
        Command::Loadtest(a) => {
            Ok(tokio::task::spawn_blocking(move || crate::loadtest::run_blocking(*a)).await?)
        }
    }
}

fn postmortem(a: PostmortemArgs) -> ExitCode {
    use crate::journal::{Format, JournalError};
    if !a.journal.is_file() {
        eprintln!("levee: no journal file at {}", a.journal.display());
        return ExitCode::from(2);
    }
    let format = if a.format == "json" {
        Format::Json
    } else {
        Format::Markdown
    };
    match crate::journal::postmortem(&a.journal, a.incident, format) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e @ (JournalError::NoIncident(_) | JournalError::Empty)) => {
            eprintln!("levee: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("levee: {e}");
            ExitCode::from(2)
        }
    }
}

fn check(a: CheckArgs) -> ExitCode {
    use crate::check::{self, report};
    if a.list_rules {
        print!("{}", report::rule_list());
        return ExitCode::SUCCESS;
    }
    let Some(path) = a.config else {
        eprintln!("levee: check needs --config FILE");
        return ExitCode::from(2);
    };
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            if a.format == "json" {
                let v = serde_json::json!({ "schema": 1, "file": e.file, "ok": false, "invalid": true, "problems": e.lines() });
                println!("{v:#}");
            }
            eprint!("levee: {e}");
            return ExitCode::from(2);
        }
    };
    let review = check::review(&cfg);
    if a.format == "json" {
        println!("{:#}", report::json(&review, a.fail_on));
    } else {
        print!("{}", report::text(&review, a.fail_on, cfg.pools.len()));
    }
    if review.at_or_above(a.fail_on).next().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn probe(a: ProbeArgs) -> anyhow::Result<ExitCode> {
    use crate::check::probe;
    let opts = probe::ProbeOptions {
        url: a.url.clone(),
        max_time: a.max_time,
        max_latency: a.max_latency,
        max_concurrency: a.max_concurrency,
        max_requests: a.max_requests,
        allow_remote: a.allow_remote,
    };
    if let Err(e) = probe::check_url(&a.url, a.allow_remote) {
        eprintln!("levee: probe: {e}");
        return Ok(ExitCode::from(2));
    }
    let text = a.format == "text";
    if text {
        eprintln!(
            "levee probe {}: raising concurrency until the knee (at most {}, {} requests, median latency {})",
            a.url,
            crate::config::units::fmt_duration(a.max_time),
            a.max_requests,
            crate::config::units::fmt_duration(a.max_latency)
        );
    }
    let result = probe::probe(&opts, |s| {
        if text {
            eprintln!(
                "  concurrency {:>5}: {:>8.0}/s, mean {:.1}ms, p90 {:.1}ms{}",
                s.concurrency,
                s.throughput_rps,
                s.mean_ms,
                s.p90_ms,
                if s.errors > 0 {
                    format!(", {} errors", s.errors)
                } else {
                    String::new()
                }
            );
        }
    })
    .await;
    match result {
        Ok(r) => {
            if text {
                print!("{}", probe::text(&r));
            } else {
                println!(
                    "{:#}",
                    serde_json::json!({ "result": r, "snippet": probe::snippet(&r) })
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("levee: probe: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Loads and reviews the config for `serve`: `None` (after printing why) when it is invalid or
/// has error-severity findings; warnings are logged.
fn load_reviewed(path: &std::path::Path) -> Option<Config> {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("levee: {e}");
            return None;
        }
    };
    let review = crate::check::review(&cfg);
    if review.has_errors() {
        eprintln!(
            "levee: {} is not safe to serve ({} error finding{}; `levee check --config {}` explains each):",
            review.file,
            review.count(crate::check::Severity::Error),
            if review.count(crate::check::Severity::Error) == 1 {
                ""
            } else {
                "s"
            },
            path.display()
        );
        for l in review.lines(crate::check::Severity::Error) {
            eprintln!("  {l}");
        }
        return None;
    }
    for l in review.lines(crate::check::Severity::Warning) {
        tracing::warn!("config review: {l}");
    }
    Some(cfg)
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let Some(cfg) = load_reviewed(&a.config) else {
        return Ok(ExitCode::from(2));
    };
    // Handlers first: a SIGHUP sent as soon as levee says it serves must reload, not kill it.
    let signals = Signals::install()?;
    let levee = match crate::proxy::Levee::start(cfg).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("levee: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    eprintln!(
        "levee: serving on http://{} (admin http://{})",
        levee.addr, levee.admin_addr
    );
    run_until_signal(levee, signals).await
}

/// SIGTERM, SIGINT and SIGHUP handlers, installed before levee announces it is serving.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// Serves until SIGTERM/SIGINT (graceful drain, exit 0); SIGHUP reloads the config.
pub async fn run_until_signal(
    levee: crate::proxy::Levee,
    signals: Signals,
) -> anyhow::Result<ExitCode> {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match levee.reload().await {
                    Ok(o) => tracing::info!(generation = o.generation, "reloaded on SIGHUP"),
                    Err(e) => for d in e.details() { tracing::error!("reload on SIGHUP rejected: {d}") },
                }
            }
        }
    }
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let clean = levee.shutdown().await;
    tracing::info!(clean, "levee stopped");
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct BanArgs {
    /// The admin API of the running levee
    #[arg(long, default_value = "http://127.0.0.1:9090", global = true)]
    pub admin: String,
    /// A file holding the admin bearer token (admin.token_file)
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub action: BanAction,
}

#[derive(Subcommand, Debug)]
pub enum BanAction {
    /// Ban an address or a CIDR range
    Add {
        /// "203.0.113.7" or "203.0.113.0/24"
        target: String,
        /// How long, e.g. "10m", "1h", "7d" (default: shield.bans.duration)
        #[arg(long)]
        duration: Option<String>,
        /// Why (kept with the ban and in the journal)
        #[arg(long)]
        reason: Option<String>,
    },
    /// List the bans in force
    List {
        /// Print the API's JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Lift a ban
    Remove {
        /// The banned address or range, as listed
        target: String,
    },
}

async fn ban(a: BanArgs) -> anyhow::Result<ExitCode> {
    let token = match &a.token_file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("levee ban: cannot read the token file {}: {e}", f.display());
                return Ok(ExitCode::from(2));
            }
        },
        None => None,
    };
    let base = a.admin.trim_end_matches('/');
    let (method, url, body) = match &a.action {
        BanAction::Add {
            target,
            duration,
            reason,
        } => {
            if let Err(e) = crate::admin::bans::parse_target(target) {
                eprintln!("levee ban add: {e}");
                return Ok(ExitCode::from(2));
            }
            if let Some(d) = duration
                && let Err(e) = crate::config::units::parse_duration(d)
            {
                eprintln!("levee ban add: --duration: {e}");
                return Ok(ExitCode::from(2));
            }
            let body =
                serde_json::json!({ "target": target, "duration": duration, "reason": reason });
            (
                http::Method::POST,
                format!("{base}/api/bans"),
                Some(body.to_string()),
            )
        }
        BanAction::List { .. } => (http::Method::GET, format!("{base}/api/bans"), None),
        BanAction::Remove { target } => {
            if let Err(e) = crate::admin::bans::parse_target(target) {
                eprintln!("levee ban remove: {e}");
                return Ok(ExitCode::from(2));
            }
            (
                http::Method::DELETE,
                format!("{base}/api/bans/{}", target.replace('/', "%2F")),
                None,
            )
        }
    };
    let (status, body) =
        match crate::admin::client::call(method, &url, token.as_deref(), body).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("levee ban: {e}");
                return Ok(ExitCode::from(1));
            }
        };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&status) {
        eprintln!(
            "levee ban: the admin API answered {status}: {}",
            v["error"].as_str().unwrap_or("(no message)")
        );
        for d in v["details"].as_array().into_iter().flatten() {
            eprintln!("  {}", d.as_str().unwrap_or_default());
        }
        return Ok(ExitCode::from(if status == 400 || status == 404 {
            2
        } else {
            1
        }));
    }
    match &a.action {
        BanAction::Add { .. } => {
            let b = &v["ban"];
            println!(
                "banned {} until {} ({})",
                b["target"].as_str().unwrap_or("?"),
                b["until"].as_str().unwrap_or("?"),
                b["note"].as_str().unwrap_or("")
            );
        }
        BanAction::Remove { .. } => println!(
            "ban on {} lifted",
            v["removed"]["target"].as_str().unwrap_or("?")
        ),
        BanAction::List { json } => {
            if *json {
                println!("{v}");
            } else {
                let bans = v["bans"].as_array().cloned().unwrap_or_default();
                println!(
                    "{:<20} {:<12} {:<22} {:>5}  NOTE",
                    "TARGET", "REASON", "UNTIL", "COUNT"
                );
                for b in &bans {
                    println!(
                        "{:<20} {:<12} {:<22} {:>5}  {}",
                        b["target"].as_str().unwrap_or("?"),
                        b["reason"].as_str().unwrap_or("?"),
                        b["until"].as_str().unwrap_or("?"),
                        b["count"],
                        b["note"].as_str().unwrap_or("")
                    );
                }
                println!(
                    "{} ban{} in force",
                    bans.len(),
                    if bans.len() == 1 { "" } else { "s" }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
