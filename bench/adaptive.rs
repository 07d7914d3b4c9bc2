//! Benchmark: `max_concurrency = "auto"` against static caps when a server's capacity drops.
//!
//! One simulated server (capacity 40 concurrent requests at 50ms, crashes above 60 in flight,
//! down 5s after a crash) behind levee; 120 clients in a closed loop. Phase A: 8s at capacity
//! 40. Phase B: the server slows down to capacity 10 for 10s. Run with
//! `cargo run --release --example adaptive` (or `bench/adaptive.sh`); prints a markdown table.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use levee::backend::{BackendOptions, SimServer};
use levee::config::Config;
use levee::proxy::Levee;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: usize = 120;
const PHASE_A: Duration = Duration::from_secs(8);
const PHASE_B: Duration = Duration::from_secs(10);

struct Sample {
    at: Duration,
    ms: f64,
    status: u16,
}

#[derive(Default)]
struct Phase {
    ok: usize,
    shed: usize,
    failed: usize,
    lat: Vec<f64>,
    server_in_flight: Vec<f64>,
    secs: f64,
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(mode: &str, pool: &str) -> Vec<String> {
    let b = SimServer::start(
        "127.0.0.1:0".parse().unwrap(),
        BackendOptions {
            capacity: 40,
            latency: Duration::from_millis(50),
            crash_above: Some(60),
            down_for: Duration::from_secs(5),
        },
    )
    .await
    .expect("backend");
    let text = format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n\
         [pools.web]\nservers = [\"{}\"]\n{pool}\n[pools.web.health_check]\npath = \"/health\"\ninterval = \"500ms\"\n",
        b.addr()
    );
    let cfg = Config::parse(&text, "bench", None).expect("config");
    let l = Levee::start(cfg).await.expect("levee");
    let url: http::Uri = format!("http://{}/", l.addr).parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (url, stop) = (url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let c =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<Empty<Bytes>>();
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let status = match c.get(url.clone()).await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.into_body().collect().await;
                        s
                    }
                    Err(_) => 0,
                };
                out.push(Sample {
                    at: t.duration_since(start),
                    ms: t.elapsed().as_secs_f64() * 1000.0,
                    status,
                });
                if status == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            out
        }));
    }
    // Sample the server's in-flight count and levee's cap.
    let inflight = Arc::new(std::sync::Mutex::new(Vec::<(Duration, u64)>::new()));
    let caps = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (inflight, stop) = (inflight.clone(), stop.clone());
        let shared = l.shared.clone();
        let b_stats = Arc::new(b);
        let bs = b_stats.clone();
        let caps = caps.clone();
        let h = tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut v) = inflight.lock() {
                    v.push((start.elapsed(), bs.stats().in_flight));
                }
                let snap = shared.snapshot.load();
                if let Some(p) = snap.pools.first() {
                    caps.store(
                        u64::from(p.inner.load().servers[0].cap()),
                        Ordering::Relaxed,
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        (h, b_stats)
    };
    let (sampler, b) = sampler;
    tokio::time::sleep(PHASE_A).await;
    let cap_a = caps.load(Ordering::Relaxed);
    b.set_capacity(10);
    tokio::time::sleep(PHASE_B).await;
    let cap_b = caps.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap_or_default());
    }
    let _ = sampler.await;
    let stats = b.stats();
    // Phase A measured after a 3s warm-up (the auto limit starts at 16 and learns).
    let warm = Duration::from_secs(3);
    let mut phases = [Phase::default(), Phase::default()];
    phases[0].secs = (PHASE_A - warm).as_secs_f64();
    phases[1].secs = PHASE_B.as_secs_f64();
    for s in &samples {
        let i = if s.at < warm {
            continue;
        } else if s.at < PHASE_A {
            0
        } else if s.at < PHASE_A + PHASE_B {
            1
        } else {
            continue;
        };
        let p = &mut phases[i];
        match s.status {
            200 => {
                p.ok += 1;
                p.lat.push(s.ms);
            }
            503 => p.shed += 1,
            _ => p.failed += 1,
        }
    }
    for (at, n) in inflight.lock().map(|v| v.clone()).unwrap_or_default() {
        if at >= warm && at < PHASE_A {
            phases[0].server_in_flight.push(n as f64);
        } else if at >= PHASE_A && at < PHASE_A + PHASE_B {
            phases[1].server_in_flight.push(n as f64);
        }
    }
    let mut rows = Vec::new();
    for (i, p) in phases.iter_mut().enumerate() {
        p.lat.sort_by(f64::total_cmp);
        let mean_inflight =
            p.server_in_flight.iter().sum::<f64>() / p.server_in_flight.len().max(1) as f64;
        let tput = p.ok as f64 / p.secs;
        rows.push(format!(
            "| {mode} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {:.1} | {} | {} |",
            if i == 0 {
                "A: capacity 40"
            } else {
                "B: capacity 10"
            },
            if i == 0 { cap_a } else { cap_b },
            tput,
            pct(&p.lat, 0.5),
            pct(&p.lat, 0.99),
            p.shed,
            p.failed,
            mean_inflight,
            if tput > 0.0 {
                format!("{:.0}", mean_inflight / tput * 1000.0)
            } else {
                "-".into()
            },
            if i == 0 {
                String::from("")
            } else {
                format!("{} (max in flight {})", stats.crashes, stats.max_in_flight)
            },
        ));
    }
    let _ = l.shutdown().await;
    rows
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    println!(
        "| pool config | phase | cap at end | ok/s | client p50 ms | client p99 ms | 503 | errors | server in flight (mean) | server latency ms (Little) | server crashes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (mode, pool) in [
        ("static 64 (default)", "max_concurrency = 64"),
        ("static 40 (tuned for A)", "max_concurrency = 40"),
        (
            "auto (min 2, max 200)",
            "max_concurrency = \"auto\"\n[pools.web.adaptive]\nmin = 2\nmax = 200",
        ),
    ] {
        for r in run(mode, pool).await {
            println!("{r}");
        }
    }
}
