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
    /// Validate a config file (parse and check every key); exit 2 on problems
    Check(CheckArgs),
    /// Start three simulated backends and levee in front of them, with a safe built-in config
    Demo(crate::demo::DemoArgs),
    /// Run a simulated web server (capacity, latency, crashes) for drills, demos and tests
    Backend(BackendArgs),
    /// List, add or lift bans on a running levee (through its admin API)
    Ban(BanArgs),
    /// Draft the postmortem of an incident from the journal (Markdown or JSON)
    Postmortem(PostmortemArgs),
    /// Print the runbook of every alert: what it means and what to do
    Runbook,
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
    /// Worker threads of the runtime (default: one per core)
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The config file (TOML)
    #[arg(long, short)]
    pub config: PathBuf,
}

/// Parses the command line and runs the command; returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let threads = match &cli.command {
        Command::Serve(a) => a.threads,
        _ => None,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = threads {
        rt.worker_threads(t.max(1));
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Serve(a) => serve(a).await,
        Command::Check(a) => match Config::load(&a.config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} pool{}, {} route{})",
                    a.config.display(),
                    cfg.pools.len(),
                    if cfg.pools.len() == 1 { "" } else { "s" },
                    cfg.routes.len(),
                    if cfg.routes.len() == 1 { "" } else { "s" }
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprint!("levee: {e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Demo(a) => crate::demo::run(a).await,
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

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            eprint!("levee: {e}");
            return Ok(ExitCode::from(2));
        }
    };
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
    run_until_signal(levee).await
}

/// Serves until SIGTERM/SIGINT (graceful drain, exit 0); SIGHUP reloads the config.
pub async fn run_until_signal(levee: crate::proxy::Levee) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
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
