//! Retries: only on connection failure or idempotent 502/503/504, to a different server, at
//! most `attempts`, and within the retry budget.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failure_is_retried_on_another_server() {
    bounded(Duration::from_secs(30), async {
        let good = fast_backend().await;
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let l = levee(&config(
            &[dead, good.addr()],
            "algorithm = \"round_robin\"\n[pools.web.health_check]\nenabled = false\n[pools.web.outlier]\nconsecutive_failures = 0\n[pools.web.retry]\nattempts = 2\nbudget_min_per_second = 100",
        ))
        .await;
        let c = client();
        for _ in 0..20 {
            let a = get(&c, &format!("http://{}/", l.addr)).await.unwrap();
            assert_eq!(a.status, 200, "every request lands on the live server");
        }
        // Even a POST is retried when the connection never opened (nothing was sent).
        let req = http::Request::post(format!("http://{}/", l.addr)).body(Full::new(Bytes::new())).unwrap();
        assert_eq!(send(&c, req).await.unwrap().status, 200);
        assert!(metric(&l, "levee_retries_total{pool=\"web\"}").await.unwrap() >= 10.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_503_is_retried_elsewhere_post_is_not() {
    bounded(Duration::from_secs(30), async {
        let bad = fast_backend().await;
        bad.set_status(503);
        let good = fast_backend().await;
        let l = levee(&config(
            &[bad.addr(), good.addr()],
            "algorithm = \"round_robin\"\n[pools.web.outlier]\nconsecutive_failures = 0\n[pools.web.retry]\nattempts = 3\nbudget_min_per_second = 100",
        ))
        .await;
        let c = client();
        for _ in 0..10 {
            assert_eq!(get(&c, &format!("http://{}/", l.addr)).await.unwrap().status, 200);
        }
        // Never twice to the same server: with 3 attempts and 2 servers, a retry to the same
        // server would show up as more than one hit on `bad` per request.
        assert!(bad.stats().served <= 10, "bad server hit {} times for 10 requests", bad.stats().served);
        assert!(bad.stats().served >= 5);
        assert_eq!(good.stats().served, 10);
        let mut posts_503 = 0;
        for _ in 0..10 {
            let req = http::Request::post(format!("http://{}/", l.addr)).body(Full::new(Bytes::from_static(b"{}"))).unwrap();
            if send(&c, req).await.unwrap().status == 503 {
                posts_503 += 1;
            }
        }
        assert_eq!(posts_503, 5, "a POST that got a 503 is not retried");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_keeps_retries_from_multiplying_load() {
    bounded(Duration::from_secs(60), async {
        // Every server of the pool is struggling (503).
        let bs = [fast_backend().await, fast_backend().await, fast_backend().await];
        for b in &bs {
            b.set_status(503);
        }
        let addrs: Vec<_> = bs.iter().map(|b| b.addr()).collect();
        let l = levee(&config(&addrs, "[pools.web.outlier]\nconsecutive_failures = 0\n[pools.web.retry]\nattempts = 3\nbudget_ratio = 0.2\nbudget_min_per_second = 0")).await;
        let c = client();
        let n = 300u64;
        for _ in 0..n {
            assert_eq!(get(&c, &format!("http://{}/", l.addr)).await.unwrap().status, 503);
        }
        let hits: u64 = bs.iter().map(|b| b.stats().served).sum();
        // Without a budget, 3 attempts would triple the load (900); the budget allows +20%.
        assert!(hits <= n + n / 5 + 1, "servers saw {hits} requests for {n} client requests");
        assert!(hits > n, "some retries were allowed: {hits}");
        assert!(metric(&l, "levee_retry_budget_exhausted_total{pool=\"web\"}").await.unwrap() > 0.0);
    })
    .await;
}
