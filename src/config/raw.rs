//! The config file as written: serde structs that mirror the TOML, with every default documented.
//!
//! Unknown keys are errors (`deny_unknown_fields`), so a typo never silently falls back to a
//! default. These structs are turned into the validated [`crate::config::Config`] by
//! `validate.rs`; nothing outside the config module sees them.

use super::units::{Dur, Size};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The client-facing listener. Default: `127.0.0.1:8080` with the limits below.
    #[serde(default)]
    pub listener: RawListener,
    /// The admin listener (health, metrics, status, reload).
    #[serde(default)]
    pub admin: RawAdmin,
    /// One structured line per request.
    #[serde(default)]
    pub access_log: RawAccessLog,
    /// Pools of backend servers, by name. At least one is required.
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    /// Routes from host / path prefix to a pool. Optional when there is exactly one pool.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// The durable incident journal (SQLite). Off unless `path` is set.
    #[serde(default)]
    pub journal: super::observe::RawJournal,
    /// Settings shared by the built-in alert rules.
    #[serde(default)]
    pub alerting: super::observe::RawAlerting,
    /// Overrides for built-in alert rules.
    #[serde(default)]
    pub alerts: Vec<super::observe::RawAlert>,
    /// Who is told when alerts fire and resolve.
    #[serde(default)]
    pub notifiers: Vec<super::observe::RawNotifier>,
    /// The shield: per-client limits, slow-client defence, bans, attack detection.
    #[serde(default)]
    pub shield: super::shield::RawShield,
}

/// `[listener]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Address clients connect to. Default `127.0.0.1:8080`: loopback until you mean it.
    #[serde(default = "default_listener_bind")]
    pub bind: Spanned<String>,
    /// Time a client has to send a complete request head. Default `10s`: long enough for any
    /// real client, short enough that a slowloris holds a connection for seconds, not hours.
    #[serde(default = "default_header_timeout")]
    pub client_header_timeout: Dur,
    /// How long an idle keep-alive client connection is kept open. Default `60s`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Largest request head accepted (request line + headers); larger answers 431.
    /// Default `16KiB`, as common servers do.
    #[serde(default = "default_max_header_size")]
    pub max_header_size: Size,
    /// Longest request URI accepted; longer answers 414. Default `8192` bytes.
    #[serde(default = "default_max_uri_length")]
    pub max_uri_length: u64,
    /// Largest request body accepted; larger answers 413. Default `64MiB`: bodies stream, so
    /// this bounds abuse, not memory.
    #[serde(default = "default_max_body_size")]
    pub max_body_size: Size,
    /// Request bodies up to this size (with a Content-Length) are read whole before a server
    /// slot is taken, so a slow upload never holds a server and the request can be retried.
    /// Default `64KiB`; `0` streams every body.
    #[serde(default = "default_buffer_request_body")]
    pub buffer_request_body: Size,
    /// Hard cap on open client connections; beyond it new connections are refused at accept.
    /// Default `10000`: well under the default file descriptor limits of a tuned host.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish. Default `30s`.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Dur,
    /// Peers whose `X-Forwarded-For` is believed (CIDR list). Default empty: nobody can forge
    /// a client address.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Admin listener address. Default `127.0.0.1:9090`: loopback, never exposed by accident.
    #[serde(default = "default_admin_bind")]
    pub bind: Spanned<String>,
    /// A file holding the bearer token every admin request must present. Default none
    /// (allowed only on a loopback bind).
    #[serde(default)]
    pub token_file: Option<Spanned<String>>,
}

/// `[access_log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// Write one line per request. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `"json"` (default) or `"text"`.
    #[serde(default = "default_log_format")]
    pub format: Spanned<String>,
    /// `"stdout"` (default) or a file path (appended to).
    #[serde(default = "default_log_path")]
    pub path: String,
}

/// `[pools.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// The servers: `"host:port"` strings or tables `{ address, weight, max_concurrency }`.
    pub servers: Spanned<Vec<RawServer>>,
    /// `round_robin`, `weighted_round_robin`, `least_request` (default: adapts to slow
    /// servers) or `consistent_hash`.
    #[serde(default = "default_algorithm")]
    pub algorithm: Spanned<String>,
    /// Per server: hard cap on in-flight requests from levee. Default `64`: finite, so a
    /// config that forgets it can never forward an unbounded flood. `"auto"` learns each
    /// server's limit from its latency, within the bounds of `[pools.NAME.adaptive]`.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: Spanned<RawMaxConcurrency>,
    /// Requests that may wait for a free server, per pool. Default `128`. `0` sheds at once.
    #[serde(default = "default_queue_size")]
    pub queue_size: u64,
    /// Longest wait in the queue before answering 503. Default `1s`: an overloaded pool
    /// answers quickly instead of piling up waiting clients.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Dur,
    /// Time to open a TCP connection to a server. Default `2s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Time for a server to send its response head. Default `30s`.
    #[serde(default = "default_response_header_timeout")]
    pub response_header_timeout: Dur,
    /// Whole-request budget from admission to response head, retries included. Default `60s`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// For `consistent_hash`: `"client"` (default, the client address) or `"header:NAME"`.
    #[serde(default = "default_hash_key")]
    pub hash_key: Spanned<String>,
    /// For `consistent_hash`: no server takes more than this factor times the mean load
    /// (bounded-load consistent hashing). Default `1.25`.
    #[serde(default = "default_hash_balance")]
    pub hash_balance_factor: f64,
    /// A recovered server's share ramps from near zero to full over this time. Default `10s`.
    #[serde(default = "default_slow_start")]
    pub slow_start: Dur,
    /// Idle keep-alive connections kept per server. Default `64`.
    #[serde(default = "default_pool_idle")]
    pub max_idle_connections: u64,
    /// Active health checks.
    #[serde(default)]
    pub health_check: RawHealthCheck,
    /// Passive outlier ejection.
    #[serde(default)]
    pub outlier: RawOutlier,
    /// Retries.
    #[serde(default)]
    pub retry: RawRetry,
    /// Bounds and tuning of `max_concurrency = "auto"`. Default: the defaults of
    /// [`RawAdaptive`]; only allowed with `"auto"`.
    #[serde(default)]
    pub adaptive: Option<Spanned<RawAdaptive>>,
    /// The expected peak request rate of the pool (requests per second), for `levee check`'s
    /// capacity model. Default none: no peak, no headroom review. Not used by the proxy.
    #[serde(default)]
    pub peak_rps: Option<f64>,
    /// A typical response time of the pool's servers at normal load (e.g. `"20ms"`), for
    /// Little's law in `levee check` (concurrency = rate × latency). Default none. Not used by
    /// the proxy.
    #[serde(default)]
    pub typical_latency: Option<Dur>,
}

/// `max_concurrency`: a number or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMaxConcurrency {
    Fixed(u64),
    Auto,
}

impl<'de> Deserialize<'de> for RawMaxConcurrency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawMaxConcurrency;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of requests such as 64, or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawMaxConcurrency, E> {
                Ok(RawMaxConcurrency::Fixed(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawMaxConcurrency, E> {
                u64::try_from(v)
                    .map(RawMaxConcurrency::Fixed)
                    .map_err(|_| E::custom("max_concurrency cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawMaxConcurrency, E> {
                match v {
                    "auto" => Ok(RawMaxConcurrency::Auto),
                    other => Err(E::custom(format!(
                        "{other:?} is not a max_concurrency: write a number such as 64, or \"auto\""
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `[pools.NAME.adaptive]`: how `max_concurrency = "auto"` learns each server's limit.
///
/// Every sampling `window`, levee compares the mean response time of the window with the
/// server's baseline (the response time when it is not queueing) and moves the limit by a
/// gradient: `new = limit × clamp(tolerance × baseline / latency, 0.5, 1) + √limit`, smoothed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    /// The limit never goes below this. Default `2`: a slow server still gets a trickle, so
    /// levee notices when it recovers.
    #[serde(default = "two_u64")]
    pub min: u64,
    /// The limit never goes above this (a server's own `max_concurrency` lowers it further).
    /// Default `64`, the static default: "auto" never sends more than a config that forgot
    /// `max_concurrency` would, unless you raise it.
    #[serde(default = "default_max_concurrency_u64")]
    pub max: u64,
    /// The limit a server starts with (also a server added by a reload). Default `16` (within
    /// min and max): low enough to be safe before anything is known.
    #[serde(default = "sixteen")]
    pub initial: u64,
    /// How far the response time may rise above the baseline before the limit is cut:
    /// `1.25` allows 25% of queueing. Default `1.25`; from 1.0 to 10.0.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// How much of each new estimate is taken (0 to 1). Default `0.2`: a noisy window moves the
    /// limit a little, a sustained slowdown moves it a lot within a few windows.
    #[serde(default = "default_smoothing")]
    pub smoothing: f64,
    /// Length of a sampling window. Default `100ms`.
    #[serde(default = "default_window")]
    pub window: Dur,
    /// Responses needed before a window counts (it is extended until then). Default `10`:
    /// one slow request cannot swing the limit.
    #[serde(default = "ten")]
    pub min_samples: u32,
}

/// One server entry: a string or a table.
#[derive(Debug)]
pub struct RawServer {
    pub address: String,
    pub weight: u32,
    pub max_concurrency: Option<u64>,
    pub capacity_rps: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTable {
    /// `host:port` of the server.
    address: String,
    /// Relative share for `weighted_round_robin` and hashing. Default `1`.
    #[serde(default = "one")]
    weight: u32,
    /// Overrides the pool's `max_concurrency` for this server (with `"auto"`: its upper bound).
    #[serde(default)]
    max_concurrency: Option<u64>,
    /// Requests per second this server can serve (measure it with `levee probe`), for
    /// `levee check`'s capacity model. Default none. Not used by the proxy.
    #[serde(default)]
    capacity_rps: Option<f64>,
}

impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawServer;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "\"host:port\" or { address = \"host:port\", weight = N, max_concurrency = N, capacity_rps = N }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawServer, E> {
                Ok(RawServer {
                    address: v.to_string(),
                    weight: 1,
                    max_concurrency: None,
                    capacity_rps: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawServer, A::Error> {
                let t =
                    RawServerTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawServer {
                    address: t.address,
                    weight: t.weight,
                    max_concurrency: t.max_concurrency,
                    capacity_rps: t.capacity_rps,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[pools.NAME.health_check]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Default `true`: a dead server must be noticed without waiting for users to hit it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Path requested with GET; 2xx/3xx is healthy. Default `/`.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between checks. Default `2s`.
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    /// A check slower than this fails. Default `1s`.
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
    /// Consecutive successes to mark a server up. Default `2`.
    #[serde(default = "two")]
    pub rise: u32,
    /// Consecutive failures to mark a server down. Default `3` (down within ~6s).
    #[serde(default = "three")]
    pub fall: u32,
}

/// `[pools.NAME.outlier]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Consecutive 5xx or connection errors that eject a server. Default `5`; `0` disables.
    #[serde(default = "five")]
    pub consecutive_failures: u32,
    /// First ejection time; doubles on each repeat. Default `10s`.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Dur,
    /// Upper bound of the doubling. Default `5m`.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Dur,
    /// Never eject more than this share of a pool. Default `50` (percent).
    #[serde(default = "fifty")]
    pub max_ejected_percent: u32,
}

/// `[pools.NAME.retry]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total tries per request, the first included. Default `2`; `1` disables retries.
    #[serde(default = "two")]
    pub attempts: u32,
    /// Retries may be at most this share of requests over `budget_window`. Default `0.2`:
    /// retries can add at most 20% load to a struggling pool.
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// The window of the budget. Default `10s`.
    #[serde(default = "default_budget_window")]
    pub budget_window: Dur,
    /// Retries always allowed per second on top of the ratio, so a quiet pool can still
    /// retry. Default `3`.
    #[serde(default = "three")]
    pub budget_min_per_second: u32,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Match this Host (without port); absent matches any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Match paths starting with this prefix. Default `/`.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// The pool that serves the route.
    pub pool: Spanned<String>,
}

fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn five() -> u32 {
    5
}
fn fifty() -> u32 {
    50
}
fn secs(s: u64) -> Dur {
    Dur(Duration::from_secs(s))
}
fn default_listener_bind() -> Spanned<String> {
    spanned("127.0.0.1:8080".into())
}
fn default_admin_bind() -> Spanned<String> {
    spanned("127.0.0.1:9090".into())
}
fn default_header_timeout() -> Dur {
    secs(10)
}
fn default_idle_timeout() -> Dur {
    secs(60)
}
fn default_max_header_size() -> Size {
    Size(16 * 1024)
}
fn default_max_uri_length() -> u64 {
    8192
}
fn default_max_body_size() -> Size {
    Size(64 << 20)
}
fn default_buffer_request_body() -> Size {
    Size(64 * 1024)
}
fn default_max_connections() -> u64 {
    10_000
}
fn default_drain_timeout() -> Dur {
    secs(30)
}
fn default_log_format() -> Spanned<String> {
    spanned("json".into())
}
fn default_log_path() -> String {
    "stdout".into()
}
fn default_algorithm() -> Spanned<String> {
    spanned("least_request".into())
}
fn default_max_concurrency() -> Spanned<RawMaxConcurrency> {
    spanned(RawMaxConcurrency::Fixed(64))
}
fn default_max_concurrency_u64() -> u64 {
    64
}
fn two_u64() -> u64 {
    2
}
fn sixteen() -> u64 {
    16
}
fn ten() -> u32 {
    10
}
fn default_tolerance() -> f64 {
    1.25
}
fn default_smoothing() -> f64 {
    0.2
}
fn default_window() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_queue_size() -> u64 {
    128
}
fn default_queue_timeout() -> Dur {
    secs(1)
}
fn default_connect_timeout() -> Dur {
    secs(2)
}
fn default_response_header_timeout() -> Dur {
    secs(30)
}
fn default_request_timeout() -> Dur {
    secs(60)
}
fn default_hash_key() -> Spanned<String> {
    spanned("client".into())
}
fn default_hash_balance() -> f64 {
    1.25
}
fn default_slow_start() -> Dur {
    secs(10)
}
fn default_pool_idle() -> u64 {
    64
}
fn default_health_path() -> String {
    "/".into()
}
fn default_health_interval() -> Dur {
    secs(2)
}
fn default_health_timeout() -> Dur {
    secs(1)
}
fn default_base_ejection() -> Dur {
    secs(10)
}
fn default_max_ejection() -> Dur {
    secs(300)
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_window() -> Dur {
    secs(10)
}
fn default_path_prefix() -> String {
    "/".into()
}

macro_rules! default_from_empty {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").unwrap_or_else(|e| unreachable!("defaults of {} must parse: {e}", stringify!($t)))
            }
        }
    )*};
}
default_from_empty!(
    RawListener,
    RawAdmin,
    RawAccessLog,
    RawHealthCheck,
    RawOutlier,
    RawRetry,
    RawAdaptive
);
