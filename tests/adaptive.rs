//! `max_concurrency = "auto"`: levee learns a server's limit from its latency and follows it
//! when the server slows down, so the server never gets pushed over.

mod common;

use common::*;
use levee::backend::BackendOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

async fn cap(l: &levee::proxy::Levee) -> u64 {
    admin_json(l, "/api/status").await["pools"][0]["servers"][0]["max_concurrency"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_follows_a_capacity_drop_and_the_server_never_crashes() {
    bounded(Duration::from_secs(90), async {
        // 40 requests at a time at 50ms; it crashes with more than 70 in flight.
        let b = backend(BackendOptions {
            capacity: 40,
            latency: Duration::from_millis(50),
            crash_above: Some(70),
            ..Default::default()
        })
        .await;
        let l = levee(&config(
            &[b.addr()],
            "max_concurrency = \"auto\"\nqueue_size = 512\nqueue_timeout = \"10s\"\n\
             [pools.web.adaptive]\nmin = 2\nmax = 200\ninitial = 8",
        ))
        .await;
        assert_eq!(cap(&l).await, 8, "starts at the initial limit");
        // 120 clients in a closed loop: always more than the server can take.
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("http://{}/", l.addr);
        let mut load = Vec::new();
        for _ in 0..120 {
            let (url, stop) = (url.clone(), stop.clone());
            load.push(tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let _ = get(&c, &url).await;
                }
            }));
        }
        // It learns a limit near the capacity (neither stuck low nor at the max of 200).
        wait_for(Duration::from_secs(30), "limit learned above 30", || async {
            cap(&l).await >= 30
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let learned = cap(&l).await;
        assert!((30..=65).contains(&learned), "learned {learned} for a capacity of 40");
        // The server slows down: it can now work on 10 at a time.
        b.set_capacity(10);
        let dropped_at = std::time::Instant::now();
        wait_for(Duration::from_secs(10), "limit follows the drop below 20", || async {
            cap(&l).await <= 20
        })
        .await;
        let took = dropped_at.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = cap(&l).await;
        assert!((3..=22).contains(&after), "limit {after} after the drop to 10");
        let metric_cap = metric(
            &l,
            &format!(
                "levee_server_max_concurrency{{pool=\"web\",server=\"{}\"}}",
                b.addr()
            ),
        )
        .await;
        assert_eq!(metric_cap, Some(after as f64));
        stop.store(true, Ordering::Relaxed);
        for t in load {
            let _ = t.await;
        }
        let s = b.stats();
        assert_eq!(s.crashes, 0, "the server never crashed: {s:?}");
        assert!(s.max_in_flight <= 70, "{s:?}");
        eprintln!("learned {learned}, after the drop {after} (below 20 after {took:?}), server max in flight {}", s.max_in_flight);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_keeps_within_its_bounds_and_a_reload_keeps_what_was_learned() {
    bounded(Duration::from_secs(60), async {
        let b = backend(BackendOptions {
            capacity: 1000,
            latency: Duration::from_millis(5),
            ..Default::default()
        })
        .await;
        let dir = std::env::temp_dir().join(format!(
            "levee-adaptive-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("levee.toml");
        let text = |max: u32| {
            config(
                &[b.addr()],
                &format!(
                    "max_concurrency = \"auto\"\nqueue_size = 256\nqueue_timeout = \"5s\"\n\
                     [pools.web.adaptive]\nmin = 4\nmax = {max}\ninitial = 4"
                ),
            )
        };
        std::fs::write(&path, text(24)).unwrap();
        let l = levee_from_file(&path).await;
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("http://{}/", l.addr);
        let mut load = Vec::new();
        for _ in 0..60 {
            let (url, stop) = (url.clone(), stop.clone());
            load.push(tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let _ = get(&c, &url).await;
                }
            }));
        }
        // A fast server with room: the limit climbs to the max and stays there.
        wait_for(Duration::from_secs(30), "limit reaches max 24", || async {
            cap(&l).await == 24
        })
        .await;
        assert!(b.stats().max_in_flight <= 24, "{:?}", b.stats());
        // A reload that lowers max clamps the learned limit; one that raises it keeps it.
        std::fs::write(&path, text(16)).unwrap();
        l.reload().await.unwrap();
        assert_eq!(cap(&l).await, 16);
        std::fs::write(&path, text(100)).unwrap();
        l.reload().await.unwrap();
        let kept = cap(&l).await;
        assert!(
            (16..=30).contains(&kept),
            "kept {kept}, not reset to initial 4"
        );
        stop.store(true, Ordering::Relaxed);
        for t in load {
            let _ = t.await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[test]
fn auto_config_is_validated() {
    let bad = |extra: &str| {
        let text = config(&["127.0.0.1:9001".parse().unwrap()], extra);
        levee::config::Config::parse(&text, "t.toml", None)
            .err()
            .map(|e| e.lines().join("\n"))
            .unwrap_or_default()
    };
    assert!(
        bad("max_concurrency = \"auto\"\n[pools.web.adaptive]\nmin = 10\nmax = 5")
            .contains("pools.web.adaptive.max")
    );
    assert!(
        bad("max_concurrency = 8\n[pools.web.adaptive]\nmin = 2")
            .contains("only used with max_concurrency = \"auto\"")
    );
    assert!(bad("max_concurrency = \"fast\"").contains("\"auto\""));
    assert!(
        bad("max_concurrency = \"auto\"\n[pools.web.adaptive]\ntolerance = 0.5")
            .contains("tolerance")
    );
    assert!(
        bad("max_concurrency = \"auto\"\n[pools.web.adaptive]\nwindow = \"1ms\"")
            .contains("window")
    );
    let ok = config(
        &["127.0.0.1:9001".parse().unwrap()],
        "max_concurrency = \"auto\"",
    );
    let cfg = levee::config::Config::parse(&ok, "t.toml", None).unwrap();
    let a = cfg.pools[0].adaptive.as_ref().unwrap();
    assert_eq!((a.min, a.max, a.initial), (2, 64, 16));
    assert_eq!(cfg.pools[0].servers[0].max_concurrency, 64);
}
