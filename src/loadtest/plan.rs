//! A typed plan for one scenario, and the parsers that build it from command-line or scenario
//! text: URL, stages, headers, body, source address range.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use ipnet::IpNet;

use super::LoadtestError;
use super::threshold::Threshold;

/// Default pool size of the open model (`--connections` is its maximum there).
pub const DEFAULT_OPEN_CONNECTIONS: u32 = 512;
/// Default connections of the closed model.
pub const DEFAULT_CLOSED_CONNECTIONS: u32 = 50;
/// Default run length when neither a duration, a request count nor stages are given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// One scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub target: Target,
    pub kind: Kind,
    /// Waits this long after the run's start before starting.
    pub start_after: Duration,
    /// Stops after this long (from its own start), if set.
    pub duration: Option<Duration>,
    /// Stops after this many requests, if set.
    pub requests: Option<u64>,
    /// Statuses that count as successes beside 2xx and 3xx.
    pub expect_status: Vec<u16>,
    pub thresholds: Vec<Threshold>,
    pub source_ips: Option<SourceIps>,
    /// Per request: `Some` when the run waits this long at most for a response.
    pub timeout: Duration,
}

/// What the scenario's connections do.
#[derive(Debug, Clone)]
pub enum Kind {
    Http(HttpPlan),
    /// Connections that send their request head a byte at a time and hold on.
    Slowloris {
        connections: u32,
        /// Pause between two bytes.
        byte_interval: Duration,
    },
}

/// The requests of an HTTP scenario.
#[derive(Debug, Clone)]
pub struct HttpPlan {
    pub model: Model,
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub keepalive: bool,
}

/// Closed model: a number of connections each sending the next request when the previous one is
/// answered. Open model: requests sent at a rate whatever the answers, over at most
/// `max_connections` connections.
#[derive(Debug, Clone)]
pub enum Model {
    Closed { connections: Load },
    Open { rate: Load, max_connections: u32 },
}

impl Model {
    pub fn name(&self) -> &'static str {
        match self {
            Model::Closed { .. } => "closed",
            Model::Open { .. } => "open",
        }
    }
}

/// A level (connections or requests per second) that is constant or follows stages.
#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    Constant(f64),
    /// Starting from `start`, each stage ramps linearly to its target over its duration.
    Stages {
        start: f64,
        stages: Vec<Stage>,
    },
}

/// One ramp stage: reach `target` in `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    pub target: f64,
}

impl Load {
    /// The level `t` seconds after the scenario's start (the last target after the stages).
    pub fn at(&self, t: f64) -> f64 {
        match self {
            Load::Constant(v) => *v,
            Load::Stages { start, stages } => {
                let (mut from, mut t0) = (*start, 0.0);
                for s in stages {
                    let d = s.duration.as_secs_f64();
                    if t < t0 + d {
                        let f = if d > 0.0 { (t - t0) / d } else { 1.0 };
                        return from + (s.target - from) * f;
                    }
                    from = s.target;
                    t0 += d;
                }
                from
            }
        }
    }

    /// With this level as a rate: the number of requests due in the first `t` seconds (the
    /// integral of the rate from 0 to `t`).
    pub fn integral(&self, t: f64) -> f64 {
        match self {
            Load::Constant(r) => r * t.max(0.0),
            Load::Stages { stages, .. } => {
                let (mut area, mut t0) = (0.0, 0.0);
                for s in stages {
                    let t1 = t0 + s.duration.as_secs_f64();
                    let upto = t.min(t1);
                    if upto > t0 {
                        area += (self.at(t0) + self.at(upto)) / 2.0 * (upto - t0);
                    }
                    if t <= t1 {
                        return area;
                    }
                    t0 = t1;
                }
                area + self.at(t0) * (t - t0)
            }
        }
    }

    /// With this level as a rate: when the `n`-th request (from 0) is due, the time at which
    /// the integral of the rate reaches `n`. `None` if it never does (the rate ends at 0).
    pub fn time_of(&self, n: u64) -> Option<f64> {
        let n = n as f64;
        match self {
            Load::Constant(r) => (*r > 0.0).then(|| n / r),
            Load::Stages { stages, .. } => {
                let (mut area, mut t0) = (0.0, 0.0);
                for s in stages {
                    let d = s.duration.as_secs_f64();
                    let (r0, r1) = (self.at(t0), s.target);
                    let segment = (r0 + r1) / 2.0 * d;
                    if area + segment >= n && d > 0.0 {
                        // r0 x + k x^2 / 2 = remaining, k the slope of the rate.
                        let remaining = n - area;
                        let k = (r1 - r0) / d;
                        let x = if k.abs() < 1e-12 {
                            if r0 > 0.0 { remaining / r0 } else { 0.0 }
                        } else {
                            (-r0 + (r0 * r0 + 2.0 * k * remaining).max(0.0).sqrt()) / k
                        };
                        return Some(t0 + x.clamp(0.0, d));
                    }
                    area += segment;
                    t0 += d;
                }
                let last = self.at(t0);
                (last > 0.0).then(|| t0 + (n - area) / last)
            }
        }
    }

    /// The total length of the stages, if any.
    pub fn stages_duration(&self) -> Option<Duration> {
        match self {
            Load::Constant(_) => None,
            Load::Stages { stages, .. } => Some(stages.iter().map(|s| s.duration).sum()),
        }
    }

    /// The highest level reached.
    pub fn max(&self) -> f64 {
        match self {
            Load::Constant(v) => *v,
            Load::Stages { start, stages } => {
                stages.iter().map(|s| s.target).fold(*start, f64::max)
            }
        }
    }
}

/// Parses `"30s:100,1m:500,30s:0"`.
pub fn parse_stages(s: &str) -> Result<Vec<Stage>, String> {
    let mut stages = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (d, t) = part.split_once(':').ok_or_else(|| {
            format!("bad stage {part:?}: write it as DURATION:TARGET, e.g. 30s:100")
        })?;
        let duration = crate::config::units::parse_duration(d)?;
        let target: f64 = t
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("bad stage target {t:?}: expected a number >= 0"))?;
        stages.push(Stage { duration, target });
    }
    if stages.is_empty() {
        return Err(format!(
            "no stages in {s:?}: write them like \"30s:100,1m:500,30s:0\""
        ));
    }
    Ok(stages)
}

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// The resolved address to connect to.
    pub addr: SocketAddr,
    /// Path and query, sent in the request line.
    pub path: Uri,
    /// The `Host` header value.
    pub host: HeaderValue,
}

/// Parses an `http://` URL and resolves its host (once, before the run).
pub fn parse_target(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "bad URL {url:?}: scheme {other:?} is not supported (only http://)"
            ));
        }
        None => {
            return Err(format!(
                "bad URL {url:?}: write it like http://127.0.0.1:8080/"
            ));
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("bad URL {url:?}: no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host:?}: no address"))?;
    let path: Uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| format!("bad URL path in {url:?}: {e}"))?;
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|e| format!("bad URL host in {url:?}: {e}"))?;
    Ok(Target {
        url: url.to_owned(),
        addr,
        path,
        host,
    })
}

/// Parses `"Name: value"` headers into a map.
pub fn parse_headers<S: AsRef<str>>(lines: &[S]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for line in lines {
        let line = line.as_ref();
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header {line:?}: write it as \"Name: value\""))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("bad header name in {line:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("bad header value in {line:?}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A body given literally, or as `@FILE` (read now, relative to `base`).
pub fn load_body(spec: &str, base: Option<&Path>) -> Result<Bytes, LoadtestError> {
    match spec.strip_prefix('@') {
        Some(file) => {
            let path = match base {
                Some(dir) if Path::new(file).is_relative() => dir.join(file),
                _ => Path::new(file).to_path_buf(),
            };
            std::fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| LoadtestError::Read(path.display().to_string(), e))
        }
        None => Ok(Bytes::copy_from_slice(spec.as_bytes())),
    }
}

/// Parses a method name.
pub fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("bad method {s:?}"))
}

/// A range of source addresses; connection `i` binds address `i % count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIps {
    pub net: IpNet,
    /// How many addresses of the range are used (from its first usable one).
    pub count: u64,
}

impl SourceIps {
    /// Parses a CIDR (`127.10.0.0/16`) or a single address; `limit` caps the addresses used.
    pub fn parse(s: &str, limit: Option<u64>) -> Result<SourceIps, String> {
        let net: IpNet = match s.trim().parse() {
            Ok(net) => net,
            Err(_) => s.trim().parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                format!("bad source address range {s:?}: write it like 127.10.0.0/16")
            })?,
        };
        let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
        let size: u64 = if host_bits >= 63 {
            u64::MAX
        } else {
            1u64 << host_bits
        };
        // Leave out the network and broadcast addresses of IPv4 ranges larger than /31.
        let usable = if net.addr().is_ipv4() && host_bits >= 2 {
            size - 2
        } else {
            size
        };
        let count = match limit {
            Some(0) => return Err("the number of source addresses must be at least 1".into()),
            Some(n) if n > usable => {
                return Err(format!(
                    "{s} holds {usable} usable addresses, fewer than {n}"
                ));
            }
            Some(n) => n,
            None => usable,
        };
        Ok(SourceIps { net, count })
    }

    /// The `i`-th address (modulo the count).
    pub fn nth(&self, i: u64) -> IpAddr {
        let i = i % self.count;
        match self.net {
            IpNet::V4(n) => {
                let skip = u32::from(n.prefix_len() <= 30);
                let base = u32::from(n.network());
                IpAddr::from(std::net::Ipv4Addr::from(
                    base.wrapping_add(skip).wrapping_add(i as u32),
                ))
            }
            IpNet::V6(n) => IpAddr::from(std::net::Ipv6Addr::from(
                u128::from(n.network()).wrapping_add(u128::from(i)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_ramp_linearly() {
        let stages = parse_stages("10s:100, 10s:100,5s:0").unwrap_or_default();
        let load = Load::Stages { start: 0.0, stages };
        assert_eq!(load.at(0.0), 0.0);
        assert_eq!(load.at(5.0), 50.0);
        assert_eq!(load.at(15.0), 100.0);
        assert_eq!(load.at(22.5), 50.0);
        assert_eq!(load.at(30.0), 0.0);
        assert_eq!(load.stages_duration(), Some(Duration::from_secs(25)));
        assert_eq!(load.max(), 100.0);
        // Requests due: 50 in the first ramp, 100 at 100/s, 25 in the ramp down.
        assert!((load.integral(10.0) - 500.0).abs() < 1e-9);
        assert!((load.integral(25.0) - 1750.0).abs() < 1e-9);
        assert_eq!(load.time_of(0), Some(0.0));
        let t = load.time_of(500).unwrap_or(0.0);
        assert!((t - 10.0).abs() < 1e-9, "{t}");
        let t = load.time_of(1000).unwrap_or(0.0);
        assert!((t - 15.0).abs() < 1e-9, "{t}");
        let t = load.time_of(1700).unwrap_or(0.0);
        assert!(t > 20.0 && t < 25.0, "{t}");
        assert_eq!(load.time_of(1751), None);
        for n in [1u64, 7, 333, 1234, 1749] {
            let t = load.time_of(n).unwrap_or(-1.0);
            assert!((load.integral(t) - n as f64).abs() < 1e-6, "{n} {t}");
        }
        assert_eq!(Load::Constant(200.0).time_of(400), Some(2.0));

        assert!(parse_stages("10s").is_err());
        assert!(parse_stages("soon:5").is_err());
        assert!(parse_stages("1s:-5").is_err());
        assert!(parse_stages("").is_err());
    }

    #[test]
    fn source_ranges() {
        let s = SourceIps::parse("127.10.0.0/16", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.count, 65534);
        assert_eq!(s.nth(0), "127.10.0.1".parse::<IpAddr>().unwrap_or(s.nth(1)));
        assert_eq!(s.nth(65534), s.nth(0));
        let s = SourceIps::parse("127.0.0.5", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.count, 1);
        assert_eq!(s.nth(7).to_string(), "127.0.0.5");
        let s = SourceIps::parse("127.20.0.0/16", Some(10_000)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.nth(9_999).to_string(), "127.20.39.16");
        assert!(SourceIps::parse("127.0.0.0/30", Some(3)).is_err());
        assert!(SourceIps::parse("nowhere", None).is_err());
    }

    #[test]
    fn urls_and_headers() {
        let t = parse_target("http://127.0.0.1:8080/a?b=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.addr.port(), 8080);
        assert_eq!(t.path, "/a?b=1");
        assert_eq!(t.host, "127.0.0.1:8080");
        assert!(parse_target("https://127.0.0.1/").is_err());
        assert!(parse_target("127.0.0.1:80").is_err());
        let h = parse_headers(&["X-A: 1", "x-a: 2"]).unwrap_or_default();
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert!(parse_headers(&["nocolon"]).is_err());
    }
}
