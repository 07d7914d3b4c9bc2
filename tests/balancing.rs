//! Balancing algorithms: the distributions users would see.

mod common;

use common::*;
use levee::backend::BackendOptions;
use std::collections::HashMap;
use std::time::Duration;

async fn count_by_server(url: &str, n: usize, c: &TestClient) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let a = get(c, url).await.unwrap();
        assert_eq!(a.status, 200);
        *m.entry(a.header("x-backend").unwrap().to_string())
            .or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    bounded(Duration::from_secs(30), async {
        let bs = [
            fast_backend().await,
            fast_backend().await,
            fast_backend().await,
        ];
        let addrs: Vec<_> = bs.iter().map(|b| b.addr()).collect();
        let l = levee(&config(&addrs, "algorithm = \"round_robin\"")).await;
        let m = count_by_server(&format!("http://{}/", l.addr), 300, &client()).await;
        assert_eq!(m.len(), 3);
        for (s, n) in &m {
            assert!((95..=105).contains(n), "{s} got {n} of 300: {m:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_weights_smoothly() {
    bounded(Duration::from_secs(30), async {
        let bs = [fast_backend().await, fast_backend().await, fast_backend().await];
        let text = format!(
            "[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[shield]\nenabled = false\n[pools.web]\nalgorithm = \"weighted_round_robin\"\nservers = [{{ address = \"{}\", weight = 1 }}, {{ address = \"{}\", weight = 2 }}, {{ address = \"{}\", weight = 3 }}]\n",
            bs[0].addr(),
            bs[1].addr(),
            bs[2].addr()
        );
        let l = levee(&text).await;
        let c = client();
        let url = format!("http://{}/", l.addr);
        let mut seq = Vec::new();
        for _ in 0..600 {
            seq.push(get(&c, &url).await.unwrap().header("x-backend").unwrap().to_string());
        }
        for (i, b) in bs.iter().enumerate() {
            let n = seq.iter().filter(|s| **s == b.addr().to_string()).count();
            assert_eq!(n, 100 * (i + 1), "weight {} server got {n} of 600", i + 1);
        }
        // Smooth: the heaviest server never gets more than 2 in a row (nginx's 1:2:3 pattern).
        let heavy = bs[2].addr().to_string();
        let longest = seq.split(|s| *s != heavy).map(<[String]>::len).max().unwrap();
        assert!(longest <= 2, "weight-3 server got {longest} in a row");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_more_to_the_faster_server() {
    bounded(Duration::from_secs(60), async {
        let fast = backend(BackendOptions {
            capacity: 1000,
            latency: Duration::from_millis(5),
            ..Default::default()
        })
        .await;
        let slow = backend(BackendOptions {
            capacity: 1000,
            latency: Duration::from_millis(100),
            ..Default::default()
        })
        .await;
        let l = levee(&config(
            &[fast.addr(), slow.addr()],
            "algorithm = \"least_request\"\nmax_concurrency = 100",
        ))
        .await;
        let url = format!("http://{}/", l.addr);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let c = client();
                for _ in 0..40 {
                    assert_eq!(get(&c, &url).await.unwrap().status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (f, s) = (fast.stats().served, slow.stats().served);
        let retries = metric(&l, "levee_retries_total{pool=\"web\"}").await;
        assert_eq!(
            f + s,
            320,
            "retries {retries:?}, upstream errors {:?}",
            metric(
                &l,
                "levee_rejections_total{reason=\"upstream_bad_response\"}"
            )
            .await
        );
        assert!(
            f > 3 * s,
            "the fast server should take most requests: fast {f}, slow {s}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_sticky_per_client_and_per_header() {
    bounded(Duration::from_secs(60), async {
        let bs = [
            fast_backend().await,
            fast_backend().await,
            fast_backend().await,
            fast_backend().await,
        ];
        let addrs: Vec<_> = bs.iter().map(|b| b.addr()).collect();
        let l = levee(&config(&addrs, "algorithm = \"consistent_hash\"")).await;
        let url = format!("http://{}/", l.addr);
        let mut owners = HashMap::new();
        for i in 1..=40u8 {
            let c = client_from(Some(format!("127.0.3.{i}").parse().unwrap()));
            let m = count_by_server(&url, 5, &c).await;
            assert_eq!(
                m.len(),
                1,
                "client 127.0.3.{i} moved between servers: {m:?}"
            );
            *owners.entry(m.into_keys().next().unwrap()).or_insert(0) += 1;
        }
        assert!(
            owners.len() >= 3,
            "40 clients should spread over the servers: {owners:?}"
        );

        // Hashing on a header: the same user id always lands on the same server, whatever the client address.
        let l2 = levee(&config(
            &addrs,
            "algorithm = \"consistent_hash\"\nhash_key = \"header:x-user\"",
        ))
        .await;
        let url2 = format!("http://{}/", l2.addr);
        for user in ["alice", "bob", "carol"] {
            let mut seen = std::collections::HashSet::new();
            for i in 1..=5u8 {
                let c = client_from(Some(format!("127.0.4.{i}").parse().unwrap()));
                let req = http::Request::get(&url2)
                    .header("x-user", user)
                    .body(Default::default())
                    .unwrap();
                seen.insert(
                    send(&c, req)
                        .await
                        .unwrap()
                        .header("x-backend")
                        .unwrap()
                        .to_string(),
                );
            }
            assert_eq!(seen.len(), 1, "user {user} landed on {seen:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_bounded_load_spills_a_hot_key() {
    bounded(Duration::from_secs(60), async {
        let opts = BackendOptions { capacity: 1000, latency: Duration::from_millis(50), ..Default::default() };
        let bs = [backend(opts.clone()).await, backend(opts.clone()).await, backend(opts.clone()).await, backend(opts).await];
        let addrs: Vec<_> = bs.iter().map(|b| b.addr()).collect();
        let l = levee(&config(&addrs, "algorithm = \"consistent_hash\"\nhash_key = \"header:x-user\"\nhash_balance_factor = 1.25\nmax_concurrency = 100")).await;
        let url = format!("http://{}/", l.addr);
        // One hot key, 40 concurrent requests.
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let req = http::Request::get(&url).header("x-user", "hot").body(Default::default()).unwrap();
                send(&client(), req).await.unwrap().status
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        let maxes: Vec<u64> = bs.iter().map(|b| b.stats().max_in_flight).collect();
        // Without the bound one server would take all 40; with it no server goes far past 1.25x the mean (10).
        assert!(maxes.iter().all(|m| *m <= 16), "in-flight high-water marks {maxes:?}");
        assert!(maxes.iter().filter(|m| **m > 0).count() >= 3, "the hot key spilled over: {maxes:?}");
    })
    .await;
}
