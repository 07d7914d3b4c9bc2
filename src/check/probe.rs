//! `levee probe URL`: measure a server's real capacity, safely.
//!
//! Concurrency rises step by step (1, 2, 4, 8, ...) while throughput grows; it stops at the
//! first error, at the latency ceiling, at the time budget, at the request budget, or once
//! throughput stops growing while latency climbs (the knee). Then it refines between the last
//! step below the knee and the first at it. The result is the server's capacity (the best
//! throughput seen), its typical latency at the knee and a recommended `max_concurrency` (the
//! smallest concurrency that reaches 90% of the capacity: more in flight only adds latency),
//! printed as a TOML snippet to paste into the config.
//!
//! Only the given URL is requested, with GET, and only on loopback unless `allow_remote`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a probe could not run or found nothing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0:?} is not an http:// URL with a host, e.g. http://127.0.0.1:9001/")]
    BadUrl(String),
    #[error(
        "{0} is not a loopback address: probing is a load test, so levee only probes this machine unless --allow-remote is given"
    )]
    NotLoopback(String),
    #[error("the server failed at concurrency 1 ({0}): nothing to measure")]
    FailsAlone(String),
}

/// What to probe and within which bounds.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub url: String,
    /// Total time budget.
    pub max_time: Duration,
    /// A step whose median latency passes this ends the climb.
    pub max_latency: Duration,
    /// Highest concurrency tried.
    pub max_concurrency: u32,
    /// Total request budget.
    pub max_requests: u64,
    pub allow_remote: bool,
}

/// One step: a fixed concurrency for a while.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub concurrency: u32,
    pub requests: u64,
    pub errors: u64,
    /// The first error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub throughput_rps: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
}

/// The result of a probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub url: String,
    /// The best throughput seen.
    pub capacity_rps: f64,
    /// Mean latency at the recommended concurrency.
    pub typical_latency_ms: f64,
    pub recommended_max_concurrency: u32,
    /// Why the climb stopped.
    pub stopped: String,
    pub elapsed_ms: u64,
    pub requests: u64,
    pub steps: Vec<Step>,
}

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Checks the URL: http, with a host, loopback unless allowed. Returns the authority.
pub fn check_url(url: &str, allow_remote: bool) -> Result<http::Uri, ProbeError> {
    let uri: http::Uri = url.parse().map_err(|_| ProbeError::BadUrl(url.into()))?;
    if uri.scheme_str() != Some("http") {
        return Err(ProbeError::BadUrl(url.into()));
    }
    let Some(host) = uri.host() else {
        return Err(ProbeError::BadUrl(url.into()));
    };
    let h = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_remote {
        return Err(ProbeError::NotLoopback(host.to_string()));
    }
    Ok(uri)
}

struct Run {
    client: ProbeClient,
    uri: http::Uri,
    sent: AtomicU64,
    max_requests: u64,
    request_timeout: Duration,
}

async fn one(run: &Run) -> Result<Duration, String> {
    let req = http::Request::get(run.uri.clone())
        .header(http::header::USER_AGENT, "levee-probe")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let fut = async {
        let resp = run.client.request(req).await.map_err(|e| format!("{e}"))?;
        let status = resp.status();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("{e}"))?;
        if status.is_server_error() || status.is_client_error() {
            return Err(format!("status {status}"));
        }
        Ok(())
    };
    match tokio::time::timeout(run.request_timeout, fut).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {:?}", run.request_timeout)),
    }
}

/// Runs `c` workers until `dur` has passed; measures the part after a short warm-up.
async fn step(run: &Arc<Run>, c: u32, dur: Duration) -> Step {
    let start = Instant::now();
    let warm = start + dur / 5;
    let end = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..c {
        let run = run.clone();
        tasks.spawn(async move {
            let mut got: Vec<(Instant, Result<Duration, String>)> = Vec::new();
            while Instant::now() < end {
                if run.sent.fetch_add(1, Ordering::Relaxed) >= run.max_requests {
                    break;
                }
                let r = one(&run).await;
                let failed = r.is_err();
                got.push((Instant::now(), r));
                if failed {
                    break;
                }
            }
            got
        });
    }
    let mut lat = Vec::new();
    let (mut requests, mut errors, mut error) = (0u64, 0u64, None);
    while let Some(r) = tasks.join_next().await {
        for (at, res) in r.unwrap_or_default() {
            match res {
                // Only what completes within the measured window: the drain after `end`
                // runs with fewer requests in flight, so it is faster than the step.
                Ok(l) if at >= warm && at <= end => {
                    requests += 1;
                    lat.push(l.as_secs_f64() * 1000.0);
                }
                Ok(_) => {}
                Err(e) => {
                    errors += 1;
                    error.get_or_insert(e);
                }
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let window = end.saturating_duration_since(warm).as_secs_f64();
    Step {
        concurrency: c,
        requests,
        errors,
        error,
        throughput_rps: if window > 0.0 {
            requests as f64 / window
        } else {
            0.0
        },
        mean_ms: if lat.is_empty() {
            0.0
        } else {
            lat.iter().sum::<f64>() / lat.len() as f64
        },
        p50_ms: q(0.5),
        p90_ms: q(0.9),
    }
}

/// Probes the server. Progress lines go to `progress` as each step ends.
pub async fn probe(
    opts: &ProbeOptions,
    mut progress: impl FnMut(&Step),
) -> Result<ProbeResult, ProbeError> {
    let uri = check_url(&opts.url, opts.allow_remote)?;
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let client = Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(opts.max_concurrency as usize)
        .build(conn);
    let run = Arc::new(Run {
        client,
        uri,
        sent: AtomicU64::new(0),
        max_requests: opts.max_requests,
        request_timeout: (opts.max_latency * 4).max(Duration::from_secs(1)),
    });
    let began = Instant::now();
    let deadline = began + opts.max_time;
    // About 16 steps fit in the budget: ~10 doublings and ~6 refinements.
    let step_time = (opts.max_time / 16).clamp(Duration::from_millis(250), Duration::from_secs(3));
    let mut steps: Vec<Step> = Vec::new();
    let mut stopped = String::from("reached --max-concurrency");
    let mut c = 1u32;
    loop {
        if Instant::now() + step_time > deadline {
            stopped = "time budget (--max-time) spent".into();
            break;
        }
        if run.sent.load(Ordering::Relaxed) >= opts.max_requests {
            stopped = "request budget spent".into();
            break;
        }
        let s = step(&run, c, step_time).await;
        progress(&s);
        let best = steps.iter().map(|s| s.throughput_rps).fold(0.0, f64::max);
        let min_lat = steps
            .iter()
            .map(|s| s.mean_ms)
            .filter(|m| *m > 0.0)
            .fold(f64::INFINITY, f64::min);
        let (errors, slow) = (
            s.errors > 0,
            s.p50_ms > opts.max_latency.as_secs_f64() * 1000.0,
        );
        let flat = !steps.is_empty() && s.throughput_rps < best * 1.1 && s.mean_ms > min_lat * 1.3;
        if c == 1 && (errors || s.requests == 0) {
            return Err(ProbeError::FailsAlone(
                s.error.clone().unwrap_or_else(|| "no answer".into()),
            ));
        }
        steps.push(s);
        if errors {
            stopped = format!("errors at concurrency {c}");
            break;
        }
        if slow {
            stopped = format!("median latency above --max-latency at concurrency {c}");
            break;
        }
        if flat {
            stopped =
                format!("throughput stopped growing at concurrency {c} while latency climbed");
            break;
        }
        if c >= opts.max_concurrency {
            break;
        }
        c = c.saturating_mul(2).min(opts.max_concurrency);
    }
    // Refine: the smallest concurrency reaching 90% of the best clean throughput.
    loop {
        let good: Vec<&Step> = steps
            .iter()
            .filter(|s| s.errors == 0 && s.p50_ms <= opts.max_latency.as_secs_f64() * 1000.0)
            .collect();
        let best = good.iter().map(|s| s.throughput_rps).fold(0.0, f64::max);
        let hi = good
            .iter()
            .filter(|s| s.throughput_rps >= best * 0.9)
            .map(|s| s.concurrency)
            .min()
            .unwrap_or(1);
        let lo = good
            .iter()
            .filter(|s| s.concurrency < hi)
            .map(|s| s.concurrency)
            .max()
            .unwrap_or(hi);
        let mid = lo + (hi - lo) / 2;
        let done = hi <= lo + 1 || hi - lo <= lo / 16 || steps.iter().any(|s| s.concurrency == mid);
        if done
            || Instant::now() + step_time > deadline
            || run.sent.load(Ordering::Relaxed) >= opts.max_requests
        {
            let at = good.iter().find(|s| s.concurrency == hi);
            let capacity = best;
            let typical = at.map_or(0.0, |s| s.mean_ms);
            return Ok(ProbeResult {
                url: opts.url.clone(),
                capacity_rps: capacity,
                typical_latency_ms: typical,
                recommended_max_concurrency: hi,
                stopped,
                elapsed_ms: began.elapsed().as_millis() as u64,
                requests: run.sent.load(Ordering::Relaxed).min(opts.max_requests),
                steps,
            });
        }
        let s = step(&run, mid, step_time).await;
        progress(&s);
        steps.push(s);
    }
}

/// The text report with the TOML snippet.
pub fn text(r: &ProbeResult) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mut steps = r.steps.clone();
    steps.sort_by_key(|s| s.concurrency);
    let _ = writeln!(
        s,
        "  concurrency  requests  errors  throughput  mean       p90"
    );
    for st in &steps {
        let _ = writeln!(
            s,
            "  {:<11}  {:<8}  {:<6}  {:<10}  {:<9}  {:.1}ms",
            st.concurrency,
            st.requests,
            st.errors,
            format!("{:.0}/s", st.throughput_rps),
            format!("{:.1}ms", st.mean_ms),
            st.p90_ms
        );
    }
    let _ = writeln!(s, "stopped: {}", r.stopped);
    let _ = writeln!(
        s,
        "knee: {} in flight already reach 90% of the best throughput ({:.0}/s); more in flight only adds latency",
        r.recommended_max_concurrency, r.capacity_rps
    );
    let _ = writeln!(
        s,
        "{} requests in {:.1}s",
        r.requests,
        r.elapsed_ms as f64 / 1000.0
    );
    let _ = writeln!(s);
    let _ = write!(s, "{}", snippet(r));
    s
}

/// The TOML snippet to paste into a pool's section.
pub fn snippet(r: &ProbeResult) -> String {
    let addr = r
        .url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let lat = Duration::from_micros((r.typical_latency_ms * 1000.0).round() as u64);
    let lat = if lat >= Duration::from_millis(10) {
        Duration::from_millis(lat.as_millis() as u64)
    } else {
        lat
    };
    format!(
        "# measured by levee probe {url}: paste into your pool's section\n\
         [pools.NAME]\n\
         max_concurrency = {cap}        # the knee: more in flight only adds latency\n\
         typical_latency = \"{lat}\"     # mean response time at the knee\n\
         servers = [\n  {{ address = \"{addr}\", capacity_rps = {rps:.0} }},\n]\n",
        url = r.url,
        cap = r.recommended_max_concurrency,
        lat = super::report::dur(lat),
        rps = r.capacity_rps.floor(),
    )
}
