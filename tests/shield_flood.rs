//! Under a real flood the site stays up: three capacity-limited backends that crash when
//! overloaded, levee with per-server caps, a flood from 1,000 source addresses (5.5 requests/s
//! each, open model: individually moderate, together over 20x the pool's capacity), and 50 legitimate
//! clients at 2 requests/s from other addresses.
//! Required: the backends never exceed their caps and never crash, the legitimate success
//! rate is at least 99%, and every flood source is banned within 5 s of the flood starting.

mod common;

use common::*;
use levee::backend::BackendOptions;
use levee::events::EventKind;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FLOOD_SOURCES: u32 = 1000;
const LEGIT: u32 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_stays_up_under_a_flood_from_a_thousand_sources() {
    bounded(Duration::from_secs(60), async {
        // Each backend: fine up to 8 concurrent requests of 150 ms, crashes above 12.
        let opts = BackendOptions { capacity: 8, latency: Duration::from_millis(150), crash_above: Some(12), down_for: Duration::from_secs(30) };
        let bs = [backend(opts.clone()).await, backend(opts.clone()).await, backend(opts).await];
        let addrs: Vec<_> = bs.iter().map(|b| b.addr()).collect();
        // Pool capacity: 3 servers x 8 in flight / 150 ms = 160 requests/s.
        let capacity_rps = 3.0 * 8.0 / 0.15;
        let text = config_full(
            &addrs,
            "max_concurrency = 8\nqueue_size = 64\nqueue_timeout = \"1s\"",
            // 3 requests/s per client: legitimate users (2/s) fit, flood sources (5/s) do not.
            "[shield]\nrate = 3\nburst = 3\n[shield.bans]\nthreshold = 5\nweight_rate_limited = 3\nduration = \"5m\"\n[shield.attack]\nunder_attack_rate_factor = 1.0",
        );
        let l = levee(&text).await;
        let url = format!("http://{}/", l.addr);
        let mut events = l.shared.events.subscribe();

        // Legitimate users: 50 addresses, 2 requests/s each, for the whole test.
        let stop = Arc::new(AtomicBool::new(false));
        let (legit_ok, legit_total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut legit = Vec::new();
        for i in 0..LEGIT {
            let src: IpAddr = format!("127.30.0.{}", i + 1).parse().unwrap();
            let (url, stop, ok, total) = (url.clone(), stop.clone(), legit_ok.clone(), legit_total.clone());
            legit.push(tokio::spawn(async move {
                let c = client_from(Some(src));
                // Users do not click in step: their requests are spread over each 500 ms
                // (started together, all 50 arrived in the same millisecond every 500 ms).
                tokio::time::sleep(Duration::from_millis(u64::from(i) * 10)).await;
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    total.fetch_add(1, Ordering::Relaxed);
                    match tokio::time::timeout(Duration::from_secs(5), get(&c, &url)).await.map_err(|_| "timeout".to_string()).and_then(|r| r) {
                        Ok(a) if a.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => eprintln!("legit {src} failed: {:?}", other.map(|a| a.status)),
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;

        // The flood: 1,000 addresses, each a keep-alive connection sending 5 requests/s
        // (after a refused connection the attacker knocks again once a second).
        let flood_start = Instant::now();
        let attempts = Arc::new(AtomicU64::new(0));
        let flood_stop = Arc::new(AtomicBool::new(false));
        let mut flood = Vec::new();
        for i in 0..FLOOD_SOURCES {
            let src: IpAddr = format!("127.20.{}.{}", i / 250, i % 250 + 1).parse().unwrap();
            let (url, stop, attempts) = (url.clone(), flood_stop.clone(), attempts.clone());
            flood.push(tokio::spawn(async move {
                let c = client_from(Some(src));
                // Spread the sources' start over the first 200 ms.
                tokio::time::sleep(Duration::from_micros(u64::from(i) * 200)).await;
                // Open model: a request every 180 ms whether or not the last one was answered,
                // as a flood tool at a fixed rate does. After a refused connection the
                // attacker knocks again once a second.
                let mut tick = tokio::time::interval(Duration::from_millis(180));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let refused = Arc::new(AtomicBool::new(false));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if refused.swap(false, Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let (c, url, refused) = (c.clone(), url.clone(), refused.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(Duration::from_secs(2), get(&c, &url)).await {
                            Ok(Ok(_)) => {}
                            _ => refused.store(true, Ordering::Relaxed),
                        }
                    });
                }
            }));
        }
        // Collect ban times while the flood runs for 8 s.
        let mut banned: HashMap<String, Duration> = HashMap::new();
        let mut attack_detected = None;
        let deadline = flood_start + Duration::from_secs(8);
        let mut offered_first_2s = 0;
        while Instant::now() < deadline {
            if offered_first_2s == 0 && flood_start.elapsed() >= Duration::from_secs(2) {
                offered_first_2s = attempts.load(Ordering::Relaxed);
            }
            match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
                Ok(Ok(e)) if e.kind == EventKind::BanAdded => {
                    if let Some(c) = &e.client {
                        banned.entry(c.clone()).or_insert(flood_start.elapsed());
                    }
                }
                Ok(Ok(e)) if e.kind == EventKind::AttackStarted => attack_detected = attack_detected.or(Some(flood_start.elapsed())),
                _ => {}
            }
        }
        eprintln!("flood phase over at {:?}", flood_start.elapsed());
        flood_stop.store(true, Ordering::Relaxed);
        for f in flood {
            let _ = f.await;
        }
        eprintln!("flood tasks done at {:?}", flood_start.elapsed());
        // Legitimate traffic carries on for 2 s after the flood.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        for t in legit {
            let _ = t.await;
        }

        let flood_banned: Vec<&Duration> = banned.iter().filter(|(c, _)| c.starts_with("127.20.")).map(|(_, t)| t).collect();
        let slowest = flood_banned.iter().max().copied().copied().unwrap_or_default();
        let legit_banned = banned.keys().filter(|c| c.starts_with("127.30.")).count();
        let (ok, total) = (legit_ok.load(Ordering::Relaxed), legit_total.load(Ordering::Relaxed));
        let rate = ok as f64 / total.max(1) as f64;
        let offered_rps = offered_first_2s as f64 / 2.0;
        let stats: Vec<_> = bs.iter().map(|b| b.stats()).collect();
        eprintln!(
            "flood: offered {offered_rps:.0} req/s in its first 2 s ({:.0}x capacity); {} of {FLOOD_SOURCES} sources banned, the last after {slowest:?}; attack detected after {attack_detected:?}; legit {ok}/{total} = {:.2}%; backends max in flight {:?}, crashes {:?}",
            offered_rps / capacity_rps,
            flood_banned.len(),
            rate * 100.0,
            stats.iter().map(|s| s.max_in_flight).collect::<Vec<_>>(),
            stats.iter().map(|s| s.crashes).collect::<Vec<_>>(),
        );
        for r in ["queue_full", "queue_timeout", "no_healthy_server", "rate_limited", "banned", "too_many_connections"] {
            eprintln!("  rejections {r}: {:?}", metric(&l, &format!("levee_rejections_total{{reason=\"{r}\"}}")).await);
        }
        assert!(offered_rps >= 20.0 * capacity_rps, "the flood offered {offered_rps:.0} req/s, under 20x capacity");
        for s in &stats {
            assert!(s.max_in_flight <= 8, "a backend saw {} in flight (cap 8)", s.max_in_flight);
            assert_eq!(s.crashes, 0, "a backend crashed");
        }
        assert!(rate >= 0.99, "legitimate success rate {:.2}% ({ok}/{total})", rate * 100.0);
        assert_eq!(legit_banned, 0, "no legitimate client is banned");
        assert_eq!(flood_banned.len(), FLOOD_SOURCES as usize, "every flood source is banned");
        assert!(slowest <= Duration::from_secs(5), "the last flood source was banned after {slowest:?}");
    })
    .await;
}
