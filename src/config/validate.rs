//! Raw file structs → validated [`Config`], collecting every problem with its location.

use super::raw::{RawConfig, RawMaxConcurrency, RawPool};
use super::{
    AccessLog, Adaptive, Admin, Algorithm, Config, HashKey, HealthCheck, Listener, LogFormat,
    Outlier, Pool, Problem, Retry, Route, Server, line_col,
};
use ipnet::IpNet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use toml::Spanned;

struct Ctx<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn at<T>(&mut self, s: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        let span = s.span();
        let line_col = (span.end > 0).then(|| line_col(self.text, span.start));
        self.problems.push(Problem {
            line_col,
            key: key.into(),
            message: message.into(),
        });
    }
    fn key(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line_col: None,
            key: key.into(),
            message: message.into(),
        });
    }
    /// Resolves "host:port" (numeric or a name resolved once, at load).
    fn addr(&mut self, s: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        let v = s.get_ref();
        if let Ok(a) = v.parse::<SocketAddr>() {
            return Some(a);
        }
        match v.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(a)) => Some(a),
            _ => {
                self.at(s, key, format!("{v:?} is not a valid address: write it as \"host:port\", e.g. \"127.0.0.1:9001\""));
                None
            }
        }
    }
}

pub(super) fn validate(
    raw: RawConfig,
    text: &str,
    base_dir: Option<&Path>,
) -> Result<Config, Vec<Problem>> {
    let mut cx = Ctx {
        text,
        problems: Vec::new(),
    };

    let l = &raw.listener;
    let listener_bind = cx.addr(&l.bind, "listener.bind");
    let mut trusted = Vec::new();
    for (i, t) in l.trusted_proxies.iter().enumerate() {
        let v = t.get_ref();
        match v
            .parse::<IpNet>()
            .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => trusted.push(n),
            Err(_) => cx.at(
                t,
                format!("listener.trusted_proxies[{i}]"),
                format!("{v:?} is not a CIDR such as \"10.0.0.0/8\" or an IP address"),
            ),
        }
    }
    if l.max_header_size.0 < 1024 {
        cx.key(
            "listener.max_header_size",
            "must be at least 1KiB: real browsers send more than that",
        );
    }
    if l.max_uri_length < 16 {
        cx.key("listener.max_uri_length", "must be at least 16 bytes");
    }
    if l.max_connections == 0 {
        cx.key("listener.max_connections", "must be at least 1");
    }
    if l.client_header_timeout.0.is_zero() {
        cx.key(
            "listener.client_header_timeout",
            "must be above zero: without it a slowloris client holds connections forever",
        );
    }
    if l.idle_timeout.0.is_zero() {
        cx.key("listener.idle_timeout", "must be above zero");
    }

    let a = &raw.admin;
    let admin_bind = cx.addr(&a.bind, "admin.bind");
    let mut token = None;
    if let Some(tf) = &a.token_file {
        let p = resolve(base_dir, tf.get_ref());
        match std::fs::read_to_string(&p) {
            Ok(s) if !s.trim().is_empty() => token = Some(s.trim().to_string()),
            Ok(_) => cx.at(tf, "admin.token_file", format!("{} is empty", p.display())),
            Err(e) => cx.at(
                tf,
                "admin.token_file",
                format!("cannot read {}: {e}", p.display()),
            ),
        }
    }
    if let Some(ab) = admin_bind {
        if !ab.ip().is_loopback() && a.token_file.is_none() {
            cx.at(&a.bind, "admin.bind", format!("{ab} is not a loopback address and no admin.token_file is set: anyone who reaches it could reload the config; set a token_file or bind to 127.0.0.1"));
        }
        if Some(ab) == listener_bind && ab.port() != 0 {
            cx.at(
                &a.bind,
                "admin.bind",
                "is the same address as listener.bind",
            );
        }
    }

    let format = match raw.access_log.format.get_ref().as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => {
            cx.at(
                &raw.access_log.format,
                "access_log.format",
                format!("{other:?} is not a format: use \"json\" or \"text\""),
            );
            LogFormat::Json
        }
    };
    let access_log = AccessLog {
        enabled: raw.access_log.enabled,
        format,
        path: match raw.access_log.path.as_str() {
            "stdout" | "-" => None,
            p => Some(resolve(base_dir, p)),
        },
    };

    if raw.pools.is_empty() {
        cx.key(
            "pools",
            "no pool is defined: add at least one [pools.NAME] with servers = [\"host:port\"]",
        );
    }
    let mut pools = Vec::new();
    for (name, p) in &raw.pools {
        if let Some(pool) = pool(&mut cx, name, p) {
            pools.push(pool);
        }
    }

    let mut routes = Vec::new();
    if raw.routes.is_empty() {
        if raw.pools.len() > 1 {
            cx.key(
                "routes",
                format!(
                    "{} pools are defined but no [[routes]]: say which requests go to which pool",
                    raw.pools.len()
                ),
            );
        } else if !pools.is_empty() {
            routes.push(Route {
                host: None,
                path_prefix: "/".into(),
                pool: 0,
            });
        }
    }
    for (i, r) in raw.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if !r.path_prefix.starts_with('/') {
            cx.at(
                &r.pool,
                format!("{key}.path_prefix"),
                format!("{:?} must start with '/'", r.path_prefix),
            );
        }
        match raw.pools.keys().position(|n| n == r.pool.get_ref()) {
            Some(_) => {
                if let Some(idx) = pools.iter().position(|p| &p.name == r.pool.get_ref()) {
                    routes.push(Route {
                        host: r.host.as_ref().map(|h| h.trim().to_ascii_lowercase()),
                        path_prefix: r.path_prefix.clone(),
                        pool: idx,
                    });
                }
            }
            None => {
                let known: Vec<&str> = raw.pools.keys().map(String::as_str).collect();
                cx.at(
                    &r.pool,
                    format!("{key}.pool"),
                    format!(
                        "no pool named {:?} (pools: {})",
                        r.pool.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
    }
    // Most specific first: host routes before host-less ones, then the longest prefix.
    routes.sort_by(|x, y| {
        y.host
            .is_some()
            .cmp(&x.host.is_some())
            .then(y.path_prefix.len().cmp(&x.path_prefix.len()))
    });

    let observe = super::observe::validate(
        &raw.journal,
        &raw.alerting,
        &raw.alerts,
        &raw.notifiers,
        text,
        base_dir,
    )
    .map_err(|p| cx.problems.extend(p))
    .ok();
    let shield = match super::shield::validate(&raw.shield, text, base_dir) {
        Ok(s) => Some(s),
        Err(p) => {
            cx.problems.extend(p);
            None
        }
    };
    if !cx.problems.is_empty() {
        return Err(cx.problems);
    }
    let (Some(listener_bind), Some(admin_bind), Some(observe), Some(shield)) =
        (listener_bind, admin_bind, observe, shield)
    else {
        return Err(cx.problems);
    };
    Ok(Config {
        path: None,
        listener: Listener {
            bind: listener_bind,
            client_header_timeout: l.client_header_timeout.0,
            idle_timeout: l.idle_timeout.0,
            max_header_size: usize::try_from(l.max_header_size.0).unwrap_or(usize::MAX),
            max_uri_length: usize::try_from(l.max_uri_length).unwrap_or(usize::MAX),
            max_body_size: l.max_body_size.0,
            buffer_request_body: l.buffer_request_body.0.min(l.max_body_size.0),
            max_connections: usize::try_from(l.max_connections).unwrap_or(usize::MAX),
            drain_timeout: l.drain_timeout.0,
            trusted_proxies: trusted,
        },
        admin: Admin {
            bind: admin_bind,
            token,
        },
        access_log,
        pools,
        routes,
        observe,
        shield,
        locations: Default::default(),
    })
}

fn resolve(base: Option<&Path>, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    match base {
        Some(b) if path.is_relative() => b.join(path),
        _ => path,
    }
}

fn pool(cx: &mut Ctx, name: &str, p: &RawPool) -> Option<Pool> {
    let k = |s: &str| format!("pools.{name}.{s}");
    let before = cx.problems.len();
    let algorithm = match p.algorithm.get_ref().as_str() {
        "round_robin" => Algorithm::RoundRobin,
        "weighted_round_robin" => Algorithm::WeightedRoundRobin,
        "least_request" => Algorithm::LeastRequest,
        "consistent_hash" => Algorithm::ConsistentHash,
        other => {
            cx.at(&p.algorithm, k("algorithm"), format!("{other:?} is not an algorithm: use round_robin, weighted_round_robin, least_request or consistent_hash"));
            Algorithm::LeastRequest
        }
    };
    let auto = *p.max_concurrency.get_ref() == RawMaxConcurrency::Auto;
    let adaptive = adaptive(cx, name, p);
    let cap = match *p.max_concurrency.get_ref() {
        RawMaxConcurrency::Fixed(n) => n,
        RawMaxConcurrency::Auto => adaptive.as_ref().map_or(64, |a| u64::from(a.max)),
    };
    if cap == 0 {
        cx.at(&p.max_concurrency, k("max_concurrency"), "0 would send nothing to the servers: set the number of requests one server can work on at once");
    } else if cap > 1_000_000 {
        cx.at(
            &p.max_concurrency,
            k("max_concurrency"),
            "above 1000000 is no cap at all: set what one server can really take",
        );
    }
    if p.servers.get_ref().is_empty() {
        cx.at(&p.servers, k("servers"), "the pool has no servers");
    }
    let mut servers: Vec<Server> = Vec::new();
    for (i, s) in p.servers.get_ref().iter().enumerate() {
        let key = format!("pools.{name}.servers[{i}]");
        let spanned = Spanned::new(p.servers.span(), s.address.clone());
        let Some(addr) = cx.addr(&spanned, &key) else {
            continue;
        };
        if servers.iter().any(|o| o.name == s.address) {
            cx.at(
                &p.servers,
                key.clone(),
                format!("{} is listed twice", s.address),
            );
        }
        if s.weight == 0 {
            cx.at(
                &p.servers,
                format!("{key}.weight"),
                "weight 0 would never be picked: remove the server instead",
            );
        }
        let server_cap = s.max_concurrency.unwrap_or(cap);
        if server_cap == 0 || server_cap > 1_000_000 {
            cx.at(
                &p.servers,
                format!("{key}.max_concurrency"),
                "must be between 1 and 1000000",
            );
        }
        servers.push(Server {
            name: s.address.clone(),
            addr,
            weight: s.weight.max(1),
            max_concurrency: u32::try_from(server_cap.clamp(1, 1_000_000)).unwrap_or(1),
            capacity_rps: s.capacity_rps,
        });
        if let Some(c) = s.capacity_rps
            && !(c.is_finite() && c > 0.0)
        {
            cx.at(
                &p.servers,
                format!("{key}.capacity_rps"),
                "must be a number of requests per second above zero",
            );
        }
        if auto
            && let (Some(m), Some(a)) = (s.max_concurrency, adaptive.as_ref())
            && m < u64::from(a.min)
        {
            cx.at(
                &p.servers,
                format!("{key}.max_concurrency"),
                format!(
                    "{m} is below adaptive.min ({}): the learned limit could not reach its minimum",
                    a.min
                ),
            );
        }
    }
    if let Some(peak) = p.peak_rps
        && !(peak.is_finite() && peak > 0.0)
    {
        cx.key(
            k("peak_rps"),
            "must be a number of requests per second above zero",
        );
    }
    if p.typical_latency.is_some_and(|d| d.0.is_zero()) {
        cx.key(k("typical_latency"), "must be above zero");
    }
    if p.queue_size > 0 && p.queue_timeout.0.is_zero() {
        cx.key(
            k("queue_timeout"),
            "must be above zero when queue_size is above zero",
        );
    }
    if p.queue_size > 1_000_000 {
        cx.key(
            k("queue_size"),
            "above 1000000 is an unbounded queue in practice: keep it a few times max_concurrency",
        );
    }
    for (key, d) in [
        ("connect_timeout", p.connect_timeout),
        ("response_header_timeout", p.response_header_timeout),
        ("request_timeout", p.request_timeout),
    ] {
        if d.0.is_zero() {
            cx.key(k(key), "must be above zero");
        }
    }
    let hash_key = match p.hash_key.get_ref().as_str() {
        "client" => HashKey::Client,
        s => match s
            .strip_prefix("header:")
            .map(|h| http::HeaderName::from_bytes(h.trim().as_bytes()))
        {
            Some(Ok(h)) => HashKey::Header(h),
            _ => {
                cx.at(
                    &p.hash_key,
                    k("hash_key"),
                    format!("{s:?} is not a hash key: use \"client\" or \"header:NAME\""),
                );
                HashKey::Client
            }
        },
    };
    if !(1.0..=100.0).contains(&p.hash_balance_factor) {
        cx.key(
            k("hash_balance_factor"),
            "must be between 1.0 and 100.0 (1.25 is usual)",
        );
    }
    let hc = &p.health_check;
    if hc.enabled {
        if !hc.path.starts_with('/') {
            cx.key(
                k("health_check.path"),
                format!("{:?} must start with '/'", hc.path),
            );
        }
        if hc.interval.0.is_zero() || hc.timeout.0.is_zero() {
            cx.key(k("health_check"), "interval and timeout must be above zero");
        }
        if hc.rise == 0 || hc.fall == 0 {
            cx.key(k("health_check"), "rise and fall must be at least 1");
        }
    }
    let o = &p.outlier;
    if o.max_ejected_percent > 100 {
        cx.key(
            k("outlier.max_ejected_percent"),
            "is a percentage: 0 to 100",
        );
    }
    let r = &p.retry;
    if r.attempts == 0 || r.attempts > 10 {
        cx.key(k("retry.attempts"), "must be between 1 (no retries) and 10");
    }
    if !(0.0..=1.0).contains(&r.budget_ratio) {
        cx.key(
            k("retry.budget_ratio"),
            "must be between 0.0 and 1.0 (0.2 allows retries of at most 20% of requests)",
        );
    }
    if r.budget_window.0.as_secs() < 1 {
        cx.key(k("retry.budget_window"), "must be at least 1s");
    }
    if cx.problems.len() > before {
        return None;
    }
    Some(Pool {
        name: name.to_string(),
        servers,
        algorithm,
        queue_size: usize::try_from(p.queue_size).unwrap_or(usize::MAX),
        queue_timeout: p.queue_timeout.0,
        connect_timeout: p.connect_timeout.0,
        response_header_timeout: p.response_header_timeout.0,
        request_timeout: p.request_timeout.0,
        hash_key,
        hash_balance_factor: p.hash_balance_factor,
        slow_start: p.slow_start.0,
        max_idle_connections: usize::try_from(p.max_idle_connections).unwrap_or(usize::MAX),
        health_check: hc.enabled.then(|| HealthCheck {
            path: hc.path.clone(),
            interval: hc.interval.0,
            timeout: hc.timeout.0,
            rise: hc.rise,
            fall: hc.fall,
        }),
        outlier: Outlier {
            consecutive_failures: o.consecutive_failures,
            base_ejection_time: o.base_ejection_time.0,
            max_ejection_time: o.max_ejection_time.0.max(o.base_ejection_time.0),
            max_ejected_percent: o.max_ejected_percent,
        },
        retry: Retry {
            attempts: r.attempts,
            budget_ratio: r.budget_ratio,
            budget_window: r.budget_window.0,
            budget_min_per_second: r.budget_min_per_second,
        },
        adaptive,
        peak_rps: p.peak_rps,
        typical_latency: p.typical_latency.map(|d| d.0),
    })
}

/// `[pools.NAME.adaptive]`: `Some` only with `max_concurrency = "auto"` (defaults when the
/// table is left out); the table without `"auto"` is a problem.
fn adaptive(cx: &mut Ctx, name: &str, p: &RawPool) -> Option<Adaptive> {
    let k = |s: &str| format!("pools.{name}.adaptive.{s}");
    let auto = *p.max_concurrency.get_ref() == RawMaxConcurrency::Auto;
    if !auto {
        if let Some(t) = &p.adaptive {
            cx.at(
                t,
                format!("pools.{name}.adaptive"),
                "is only used with max_concurrency = \"auto\": remove it or set max_concurrency = \"auto\"",
            );
        }
        return None;
    }
    let default;
    let a = match &p.adaptive {
        Some(t) => t.get_ref(),
        None => {
            default = super::raw::RawAdaptive::default();
            &default
        }
    };
    let before = cx.problems.len();
    if a.min == 0 {
        cx.key(
            k("min"),
            "must be at least 1: a limit of 0 would never let levee see the server recover",
        );
    }
    if a.max < a.min || a.max > 1_000_000 {
        cx.key(
            k("max"),
            format!("must be between adaptive.min ({}) and 1000000", a.min),
        );
    }
    if !(1.0..=10.0).contains(&a.tolerance) {
        cx.key(
            k("tolerance"),
            "must be between 1.0 and 10.0 (1.25 lets latency rise 25% before the limit is cut)",
        );
    }
    if !(a.smoothing > 0.0 && a.smoothing <= 1.0) {
        cx.key(
            k("smoothing"),
            "must be above 0 and at most 1 (0.2 is usual)",
        );
    }
    if a.window.0 < std::time::Duration::from_millis(10) {
        cx.key(k("window"), "must be at least 10ms");
    }
    if a.min_samples == 0 {
        cx.key(k("min_samples"), "must be at least 1");
    }
    if cx.problems.len() > before {
        return None;
    }
    let min = u32::try_from(a.min).unwrap_or(u32::MAX);
    let max = u32::try_from(a.max).unwrap_or(u32::MAX);
    Some(Adaptive {
        min,
        max,
        initial: u32::try_from(a.initial).unwrap_or(u32::MAX).clamp(min, max),
        tolerance: a.tolerance,
        smoothing: a.smoothing,
        window: a.window.0,
        min_samples: a.min_samples,
    })
}
