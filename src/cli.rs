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
    /// Generate load against a URL or run a scenario file; thresholds decide the exit code
    Loadtest(Box<crate::loadtest::LoadtestArgs>),
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
        Command::Backend(a) => {
            backend::run(a).await.context("levee backend")?;
            Ok(ExitCode::SUCCESS)
        }
        // The load generator runs on its own runtime, sized by its --threads.
        Command::Loadtest(a) => {
            Ok(tokio::task::spawn_blocking(move || crate::loadtest::run_blocking(*a)).await?)
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
