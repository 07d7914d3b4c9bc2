//! The simulated web server (`levee backend`).
//!
//! A small HTTP/1.1 server that behaves like a web server with limited capacity, for drills,
//! demos and tests of the load balancer:
//!
//! - **Capacity**: up to `capacity` concurrent requests are served at normal speed. Beyond it the
//!   server shares its capacity among all of them (processor sharing), so every extra request
//!   slows all the others down, like a CPU-bound application server.
//! - **Latency**: each request needs `latency` of work, with ±20% uniform jitter.
//! - **Crash**: with `crash_above`, a request that brings the concurrency above that limit crashes
//!   the server: every open connection is reset and, for `down_for`, `/health` answers 503 and
//!   every other request (except `/stats`) has its connection reset.
//! - `GET /health` answers 200 `ok` (503 while down or after [`SimServer::set_healthy`]`(false)`),
//!   `GET /stats` answers the JSON of [`Stats`]. Neither counts as a request in flight.
//!
//! Query parameters on any other request: `sleep=DUR` (exact service time), `status=N` (answer
//! status), `size=N` (stream a body of N bytes), `echo=1` (answer the request headers as JSON).
//! Every response carries `x-backend: <listen address>`.

mod body;
mod handler;
mod processor;
mod server;

use std::net::SocketAddr;
use std::time::Duration;

pub use server::SimServer;

/// CLI arguments of `levee backend`.
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Address to listen on; repeat for several servers in one process.
    #[arg(long = "listen", default_value = "127.0.0.1:9001")]
    pub listen: Vec<SocketAddr>,
    /// Concurrent requests served at normal speed; beyond it every extra request slows all of them.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: u32,
    /// Service time of one request at normal speed (±20% jitter), e.g. 20ms.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Crash when more than this many requests are in flight (default: never crash).
    #[arg(long)]
    pub crash_above: Option<u32>,
    /// How long the server stays down after a crash, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub down_for: Duration,
}

/// Options for an in-process simulated server (tests, demo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendOptions {
    /// Concurrent requests served at normal speed (0 is treated as 1).
    pub capacity: u32,
    /// Service time of one request at normal speed (±20% jitter).
    pub latency: Duration,
    /// Crash when more than this many requests are in flight; `None` never crashes.
    pub crash_above: Option<u32>,
    /// How long the server stays down after a crash.
    pub down_for: Duration,
}

impl Default for BackendOptions {
    /// Capacity 32, latency 20ms, never crashes, down for 10s after a crash.
    fn default() -> Self {
        BackendOptions {
            capacity: 32,
            latency: Duration::from_millis(20),
            crash_above: None,
            down_for: Duration::from_secs(10),
        }
    }
}

impl From<&BackendArgs> for BackendOptions {
    fn from(args: &BackendArgs) -> Self {
        BackendOptions {
            capacity: args.capacity,
            latency: args.latency,
            crash_above: args.crash_above,
            down_for: args.down_for,
        }
    }
}

/// A snapshot of a simulated server's counters (the body of `GET /stats`).
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Requests being handled now (`/health` and `/stats` excluded).
    pub in_flight: u64,
    /// The highest `in_flight` seen since the server started.
    pub max_in_flight: u64,
    /// Requests handled to completion (`/health` and `/stats` excluded).
    pub served: u64,
    /// How many times the server crashed.
    pub crashes: u64,
    /// Whether the server is down after a crash right now.
    pub down: bool,
    /// TCP connections accepted since the server started.
    pub connections: u64,
}

/// `levee backend`: start one [`SimServer`] per `--listen` address, print one line per server and
/// run until SIGINT or SIGTERM.
pub async fn run(args: BackendArgs) -> std::io::Result<()> {
    let opts = BackendOptions::from(&args);
    let mut servers = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        let server = SimServer::start(*addr, opts.clone()).await?;
        println!("{}", describe(server.addr(), &opts));
        servers.push(server);
    }
    wait_for_signal().await?;
    for server in &servers {
        server.shutdown();
    }
    Ok(())
}

/// The line `levee backend` prints for one server.
fn describe(addr: SocketAddr, opts: &BackendOptions) -> String {
    let mut line = format!(
        "levee backend listening on http://{addr} (capacity {}, latency {}",
        opts.capacity,
        humantime::format_duration(opts.latency)
    );
    if let Some(limit) = opts.crash_above {
        line.push_str(&format!(", crash above {limit}"));
    }
    line.push(')');
    line
}

#[cfg(unix)]
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

/// Parse a duration such as `250ms`, `5s` or `1m` (for clap `value_parser`s and query strings).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 250ms, 5s, 1m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_mentions_crash_limit_only_when_set() {
        let addr: SocketAddr = ([127, 0, 0, 1], 9001).into();
        let mut opts = BackendOptions::default();
        assert_eq!(
            describe(addr, &opts),
            "levee backend listening on http://127.0.0.1:9001 (capacity 32, latency 20ms)"
        );
        opts.crash_above = Some(64);
        assert_eq!(
            describe(addr, &opts),
            "levee backend listening on http://127.0.0.1:9001 (capacity 32, latency 20ms, crash above 64)"
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }
}
