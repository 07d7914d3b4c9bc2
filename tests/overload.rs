//! Overload protection: the per-server cap holds under a 30x overload, a full queue or a long
//! wait answers 503 with Retry-After at once, fair admission keeps light clients served, and a
//! pool with every server down answers 503 at once.

mod common;

use common::*;
use levee::backend::BackendOptions;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_holds_under_30x_overload() {
    bounded(Duration::from_secs(60), async {
        let b = backend(BackendOptions {
            capacity: 1000,
            latency: Duration::from_millis(20),
            ..Default::default()
        })
        .await;
        let l = levee(&config(
            &[b.addr()],
            "max_concurrency = 4\nqueue_size = 16\nqueue_timeout = \"200ms\"",
        ))
        .await;
        let url = format!("http://{}/", l.addr);
        let ok = Arc::new(AtomicU64::new(0));
        let shed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        // 120 concurrent clients against a cap of 4: 30x.
        for _ in 0..120 {
            let (url, ok, shed) = (url.clone(), ok.clone(), shed.clone());
            tasks.push(tokio::spawn(async move {
                let c = client();
                let end = Instant::now() + Duration::from_secs(2);
                while Instant::now() < end {
                    match get(&c, &url).await {
                        Ok(a) if a.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(a) if a.status == 503 => {
                            assert_eq!(
                                a.header("retry-after"),
                                Some("1"),
                                "503 carries Retry-After"
                            );
                            shed.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let st = b.stats();
        assert!(
            st.max_in_flight <= 4,
            "backend saw {} in flight, cap is 4",
            st.max_in_flight
        );
        assert!(
            st.max_in_flight >= 3,
            "the cap should be used, saw {}",
            st.max_in_flight
        );
        assert!(shed.load(Ordering::Relaxed) > 0, "a 30x overload must shed");
        // Shed requests never reached the backend.
        assert_eq!(
            st.served,
            ok.load(Ordering::Relaxed),
            "backend served exactly the 200s"
        );
        let rej = metric(&l, "levee_rejections_total{reason=\"queue_full\"}")
            .await
            .unwrap_or(0.0)
            + metric(&l, "levee_rejections_total{reason=\"queue_timeout\"}")
                .await
                .unwrap_or(0.0);
        assert_eq!(
            rej as u64,
            shed.load(Ordering::Relaxed),
            "every 503 is counted with its reason"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_and_queue_timeout_answer_503_at_once() {
    bounded(Duration::from_secs(30), async {
        let b = backend(BackendOptions {
            capacity: 100,
            latency: Duration::from_secs(2),
            ..Default::default()
        })
        .await;
        let l = levee(&config(
            &[b.addr()],
            "max_concurrency = 1\nqueue_size = 2\nqueue_timeout = \"300ms\"",
        ))
        .await;
        let url = format!("http://{}/", l.addr);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let a = get(&client(), &url).await.unwrap();
                (
                    a.status,
                    t.elapsed(),
                    a.header("retry-after").map(str::to_string),
                )
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let shed: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
        assert_eq!(
            shed.len(),
            7,
            "one request is served, the rest are shed: {results:?}"
        );
        for (_, took, ra) in &shed {
            assert_eq!(ra.as_deref(), Some("1"));
            assert!(
                *took < Duration::from_millis(1500),
                "shed answers come long before the 2s backend: {took:?}"
            );
        }
        assert_eq!(b.stats().max_in_flight, 1);
        assert!(
            metric(&l, "levee_rejections_total{reason=\"queue_full\"}")
                .await
                .unwrap()
                >= 5.0
        );
        assert!(
            metric(&l, "levee_rejections_total{reason=\"queue_timeout\"}")
                .await
                .unwrap()
                >= 1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_clients_stay_served_while_heavy_clients_flood() {
    bounded(Duration::from_secs(60), async {
        // One server that can work on 4 requests at a time, 20ms each: ~200 requests/s.
        let b = backend(BackendOptions {
            capacity: 1000,
            latency: Duration::from_millis(20),
            ..Default::default()
        })
        .await;
        let l = levee(&config(
            &[b.addr()],
            "max_concurrency = 4\nqueue_size = 32\nqueue_timeout = \"1s\"",
        ))
        .await;
        let url = format!("http://{}/", l.addr);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let heavy_ok = Arc::new(AtomicU64::new(0));
        let heavy_shed = Arc::new(AtomicU64::new(0));
        let mut heavy = Vec::new();
        // 4 heavy clients (distinct source addresses), 16 connections each, flooding.
        for h in 1..=4u8 {
            let ip: IpAddr = format!("127.0.1.{h}").parse().unwrap();
            for _ in 0..16 {
                let (url, stop, ok, shed) = (
                    url.clone(),
                    stop.clone(),
                    heavy_ok.clone(),
                    heavy_shed.clone(),
                );
                heavy.push(tokio::spawn(async move {
                    let c = client_from(Some(ip));
                    while !stop.load(Ordering::Relaxed) {
                        match get(&c, &url).await {
                            Ok(a) if a.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => shed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // 20 light clients at 2 requests/s each for 5 s.
        let mut light = Vec::new();
        for i in 1..=20u8 {
            let ip: IpAddr = format!("127.0.2.{i}").parse().unwrap();
            let url = url.clone();
            light.push(tokio::spawn(async move {
                let c = client_from(Some(ip));
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                let (mut ok, mut total) = (0u32, 0u32);
                for _ in 0..10 {
                    tick.tick().await;
                    total += 1;
                    if matches!(get(&c, &url).await, Ok(a) if a.status == 200) {
                        ok += 1;
                    }
                }
                (ok, total)
            }));
        }
        let (mut ok, mut total) = (0, 0);
        for t in light {
            let (o, n) = t.await.unwrap();
            ok += o;
            total += n;
        }
        stop.store(true, Ordering::Relaxed);
        for t in heavy {
            t.await.unwrap();
        }
        let rate = f64::from(ok) / f64::from(total);
        assert!(
            heavy_shed.load(Ordering::Relaxed) > 0,
            "the pool was saturated"
        );
        assert!(
            rate >= 0.99,
            "light clients' success rate {rate:.3} ({ok}/{total}) must be at least 99%"
        );
        assert!(b.stats().max_in_flight <= 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_down_answers_503_at_once() {
    bounded(Duration::from_secs(30), async {
        // Two addresses nobody listens on, with fast health checks.
        let dead: Vec<std::net::SocketAddr> = (0..2)
            .map(|_| {
                let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                s.local_addr().unwrap()
            })
            .collect();
        let l = levee(&config(&dead, "[pools.web.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 1\nrise = 1")).await;
        wait_for(Duration::from_secs(5), "both servers marked down", || async {
            admin_json(&l, "/api/status").await["pools"][0]["healthy_servers"] == 0
        })
        .await;
        let t = Instant::now();
        let a = get(&client(), &format!("http://{}/", l.addr)).await.unwrap();
        assert_eq!(a.status, 503);
        assert!(a.header("content-type").unwrap().starts_with("text/plain"));
        assert!(a.text().contains("no healthy server"), "{}", a.text());
        assert!(t.elapsed() < Duration::from_millis(500), "answered at once, took {:?}", t.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_give_up_do_not_free_a_busy_servers_slot() {
    bounded(Duration::from_secs(30), async {
        let b = backend(BackendOptions {
            capacity: 100,
            latency: Duration::from_millis(400),
            ..Default::default()
        })
        .await;
        let l = levee(&config(
            &[b.addr()],
            "max_concurrency = 2\nqueue_size = 64\nqueue_timeout = \"2s\"",
        ))
        .await;
        let url = format!("http://{}/", l.addr);
        // Impatient clients: each gives up after 50 ms, while the server needs 400 ms.
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), get(&client(), &url)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        wait_until(Duration::from_secs(5), "the server finishes", || {
            b.stats().in_flight == 0
        })
        .await;
        assert!(
            b.stats().max_in_flight <= 2,
            "abandoned requests still count until the server answers: saw {}",
            b.stats().max_in_flight
        );
        // And the slots come back afterwards.
        assert_eq!(get(&client(), &url).await.unwrap().status, 200);
    })
    .await;
}
