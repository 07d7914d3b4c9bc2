//! The drill's traffic: legitimate users (a request every 500 ms each, latency recorded) and a
//! flood (open model: a request at a fixed interval per source, whether or not the last one was
//! answered; a refused source knocks again once a second). Every request is bounded in time.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type C = Client<HttpConnector, Empty<Bytes>>;

fn client(src: IpAddr) -> C {
    let mut c = HttpConnector::new();
    c.set_local_address(Some(src));
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(4)
        .build(c)
}

async fn get(c: &C, uri: &http::Uri, timeout: Duration) -> Result<u16, ()> {
    let fut = async {
        let resp = c.get(uri.clone()).await.map_err(|_| ())?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.map_err(|_| ())?;
        Ok(status)
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| ())?
}

/// What the legitimate users saw.
#[derive(Debug, Default)]
pub struct LegitStats {
    pub total: AtomicU64,
    pub ok: AtomicU64,
    /// Latencies of every request in ms (a few thousand at most).
    pub latencies: Mutex<Vec<f64>>,
    /// Failures per second since the start, for the live view.
    pub failed_now: AtomicU64,
}

impl LegitStats {
    /// p-th percentile latency in ms.
    pub fn percentile(&self, p: f64) -> f64 {
        let mut v = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
        v[i.min(v.len() - 1)]
    }
    pub fn success_rate(&self) -> f64 {
        let t = self.total.load(Ordering::Relaxed);
        if t == 0 {
            1.0
        } else {
            self.ok.load(Ordering::Relaxed) as f64 / t as f64
        }
    }
}

/// Starts `n` legitimate users from 127.30.x.y until `stop`.
pub fn legit(
    uri: http::Uri,
    n: u32,
    stop: Arc<AtomicBool>,
    stats: Arc<LegitStats>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let src: IpAddr = IpAddr::from([127, 30, (i / 250) as u8, (i % 250 + 1) as u8]);
            let (uri, stop, stats) = (uri.clone(), stop.clone(), stats.clone());
            tokio::spawn(async move {
                let c = client(src);
                // Spread the users over the first 500 ms.
                tokio::time::sleep(Duration::from_micros(
                    u64::from(i) * 500_000 / u64::from(n.max(1)),
                ))
                .await;
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let t = Instant::now();
                    let r = get(&c, &uri, Duration::from_secs(5)).await;
                    stats.total.fetch_add(1, Ordering::Relaxed);
                    if r == Ok(200) {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = stats.latencies.lock() {
                            l.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    } else {
                        stats.failed_now.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

/// Counters of the flood.
#[derive(Debug, Default)]
pub struct FloodStats {
    pub attempts: AtomicU64,
    /// Answered with a status other than 200 (403, 429, 503), or refused.
    pub refused: AtomicU64,
    pub served: AtomicU64,
}

/// Starts a flood from `n` sources in 127.20.0.0/14, `interval` apart per source.
pub fn flood(
    uri: http::Uri,
    n: u32,
    interval: Duration,
    stop: Arc<AtomicBool>,
    stats: Arc<FloodStats>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let src: IpAddr = IpAddr::from([
                127,
                20 + (i / 62_500) as u8,
                ((i / 250) % 250) as u8,
                (i % 250 + 1) as u8,
            ]);
            let (uri, stop, stats) = (uri.clone(), stop.clone(), stats.clone());
            tokio::spawn(async move {
                let c = client(src);
                tokio::time::sleep(Duration::from_micros(u64::from(i) * 200)).await;
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let refused = Arc::new(AtomicBool::new(false));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if refused.swap(false, Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    stats.attempts.fetch_add(1, Ordering::Relaxed);
                    let (c, uri, refused, stats) =
                        (c.clone(), uri.clone(), refused.clone(), stats.clone());
                    tokio::spawn(async move {
                        match get(&c, &uri, Duration::from_secs(2)).await {
                            Ok(200) => {
                                stats.served.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {
                                stats.refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(()) => {
                                stats.refused.fetch_add(1, Ordering::Relaxed);
                                refused.store(true, Ordering::Relaxed);
                            }
                        }
                    });
                }
            })
        })
        .collect()
}
