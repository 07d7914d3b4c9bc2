//! Configuration: the TOML schema, loading with file:line:column locations, and validation
//! into the typed runtime [`Config`].
//!
//! Two stages: `raw.rs` mirrors the file (serde, unknown keys rejected), `validate.rs` turns it
//! into [`Config`] and reports every problem at once, not the first only.

pub mod locate;
pub mod observe;
mod raw;
pub mod shield;

pub mod units;
mod validate;

use ipnet::IpNet;
pub use locate::{Location, Locations};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A validated configuration. Immutable; a reload builds a new one and swaps it in.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, when it came from a file.
    pub path: Option<PathBuf>,
    pub listener: Listener,
    pub admin: Admin,
    pub access_log: AccessLog,
    /// Pools in name order.
    pub pools: Vec<Pool>,
    /// Routes, most specific first (host before no host, then longest prefix).
    pub routes: Vec<Route>,
    /// `[journal]`, `[alerting]`, `[[alerts]]`, `[[notifiers]]`.
    pub observe: observe::Observe,
    /// `[shield]`.
    pub shield: shield::Shield,
    /// Where each key is written in the file (for reviewers such as `levee check`).
    pub locations: Arc<Locations>,
}

/// `[listener]`, validated.
#[derive(Debug, Clone)]
pub struct Listener {
    pub bind: SocketAddr,
    pub client_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_size: usize,
    pub max_uri_length: usize,
    pub max_body_size: u64,
    pub buffer_request_body: u64,

    pub max_connections: usize,
    pub drain_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
}

/// `[admin]`, validated.
#[derive(Debug, Clone)]
pub struct Admin {
    pub bind: SocketAddr,
    /// The bearer token, read from `token_file`.
    pub token: Option<String>,
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// `[access_log]`, validated.
#[derive(Debug, Clone)]
pub struct AccessLog {
    pub enabled: bool,
    pub format: LogFormat,
    /// `None` means stdout.
    pub path: Option<PathBuf>,
}

/// Balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastRequest,
    ConsistentHash,
}

impl Algorithm {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastRequest => "least_request",
            Algorithm::ConsistentHash => "consistent_hash",
        }
    }
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client address.
    Client,
    /// The value of a request header (falls back to the client address when absent).
    Header(http::HeaderName),
}

/// One backend server.
#[derive(Debug, Clone)]
pub struct Server {
    /// The address as written in the config: the server's stable name in metrics and logs.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// The hard cap on in-flight requests; with `max_concurrency = "auto"`, the upper bound of
    /// the learned limit.
    pub max_concurrency: u32,
    /// Declared capacity (requests per second), for `levee check` only.
    pub capacity_rps: Option<f64>,
}

/// `[pools.NAME.adaptive]`, validated: present when `max_concurrency = "auto"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Adaptive {
    pub min: u32,
    pub max: u32,
    pub initial: u32,
    pub tolerance: f64,
    pub smoothing: f64,
    pub window: Duration,
    pub min_samples: u32,
}

/// `[pools.NAME.health_check]`, validated.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// `[pools.NAME.outlier]`, validated.
#[derive(Debug, Clone)]
pub struct Outlier {
    /// 0 disables passive ejection.
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejected_percent: u32,
}

/// `[pools.NAME.retry]`, validated.
#[derive(Debug, Clone)]
pub struct Retry {
    pub attempts: u32,
    pub budget_ratio: f64,
    pub budget_window: Duration,
    pub budget_min_per_second: u32,
}

/// `[pools.NAME]`, validated.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub servers: Vec<Server>,
    pub algorithm: Algorithm,
    pub queue_size: usize,
    pub queue_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub request_timeout: Duration,
    pub hash_key: HashKey,
    pub hash_balance_factor: f64,
    pub slow_start: Duration,
    pub max_idle_connections: usize,
    pub health_check: Option<HealthCheck>,
    pub outlier: Outlier,
    pub retry: Retry,
    /// `Some` when `max_concurrency = "auto"`: each server's cap is learned within these bounds.
    pub adaptive: Option<Adaptive>,
    /// Expected peak (requests per second), for `levee check` only.
    pub peak_rps: Option<f64>,
    /// Typical response time at normal load, for `levee check` only.
    pub typical_latency: Option<Duration>,
}

/// `[[routes]]`, validated.
#[derive(Debug, Clone)]
pub struct Route {
    /// Lower-case host without port; `None` matches any.
    pub host: Option<String>,
    pub path_prefix: String,
    /// Index into [`Config::pools`].
    pub pool: usize,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column, when known.
    pub line_col: Option<(usize, usize)>,
    /// The key, e.g. `pools.web.max_concurrency`.
    pub key: String,
    pub message: String,
}

/// Why a config could not be loaded: the file could not be read, or it has problems.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The file name as shown in messages.
    pub file: String,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// Problems as `file:line:col: key: message` lines.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| {
                let at = match p.line_col {
                    Some((l, c)) => format!("{}:{l}:{c}", self.file),
                    None => self.file.clone(),
                };
                if p.key.is_empty() {
                    format!("{at}: {}", p.message)
                } else {
                    format!("{at}: {}: {}", p.key, p.message)
                }
            })
            .collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "invalid configuration {} ({n} problem{}):",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for l in self.lines() {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem {
                line_col: None,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        let mut cfg = Self::parse(&text, &file, path.parent())?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates config text. `file` names it in messages; `base_dir` resolves
    /// relative paths such as `token_file`.
    pub fn parse(text: &str, file: &str, base_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            problems: vec![Problem {
                line_col: e.span().map(|s| line_col(text, s.start)),
                key: String::new(),
                message: e.message().trim().to_string(),
            }],
        })?;
        let mut cfg = validate::validate(raw, text, base_dir).map_err(|problems| ConfigError {
            file: file.to_string(),
            problems,
        })?;
        cfg.locations = Arc::new(Locations::index(text, file));
        Ok(cfg)
    }

    /// Index of the pool with this name.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}
