//! Health: active checks, passive outlier ejection with doubling, never more than half a pool
//! ejected, and slow start.

mod common;

use common::*;
use std::time::Duration;

const FAST_CHECKS: &str = "[pools.web.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_server_out_and_back() {
    bounded(Duration::from_secs(30), async {
        let a = fast_backend().await;
        let b = fast_backend().await;
        let l = levee(&config(
            &[a.addr(), b.addr()],
            &format!("algorithm = \"round_robin\"\nslow_start = \"0s\"\n{FAST_CHECKS}"),
        ))
        .await;
        let mut events = l.shared.events.subscribe();
        b.set_healthy(false);
        wait_for(Duration::from_secs(5), "b marked down", || async {
            admin_json(&l, "/api/status").await["pools"][0]["healthy_servers"] == 1
        })
        .await;
        let ev = events
            .try_recv()
            .expect("a server_down event was published");
        assert_eq!(ev.kind, levee::events::EventKind::ServerDown);
        assert_eq!(ev.server.as_deref(), Some(b.addr().to_string().as_str()));
        let before = b.stats().served;
        let c = client();
        for _ in 0..30 {
            assert_eq!(
                get(&c, &format!("http://{}/", l.addr))
                    .await
                    .unwrap()
                    .status,
                200
            );
        }
        assert_eq!(b.stats().served, before, "a down server gets no traffic");
        assert_eq!(
            metric(
                &l,
                &format!("levee_server_up{{pool=\"web\",server=\"{}\"}}", b.addr())
            )
            .await,
            Some(0.0)
        );
        b.set_healthy(true);
        wait_for(Duration::from_secs(5), "b back up", || async {
            admin_json(&l, "/api/status").await["pools"][0]["healthy_servers"] == 2
        })
        .await;
        for _ in 0..30 {
            get(&c, &format!("http://{}/", l.addr)).await.unwrap();
        }
        assert!(
            b.stats().served > before,
            "a recovered server gets traffic again"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_with_doubling_but_never_more_than_half() {
    bounded(Duration::from_secs(60), async {
        let bad1 = fast_backend().await;
        let bad2 = fast_backend().await;
        let good = fast_backend().await;
        let good2 = fast_backend().await;
        bad1.set_status(500);
        bad2.set_status(500);
        let addrs = [bad1.addr(), bad2.addr(), good.addr(), good2.addr()];
        let l = levee(&config(
            &addrs,
            "algorithm = \"round_robin\"\nslow_start = \"0s\"\n[pools.web.retry]\nattempts = 1\n[pools.web.health_check]\nenabled = false\n[pools.web.outlier]\nconsecutive_failures = 3\nbase_ejection_time = \"400ms\"\nmax_ejected_percent = 25",
        ))
        .await;
        let c = client();
        for _ in 0..40 {
            get(&c, &format!("http://{}/", l.addr)).await.unwrap();
        }
        let st = admin_json(&l, "/api/status").await;
        let ejected: Vec<&str> = st["pools"][0]["servers"].as_array().unwrap().iter().filter(|s| s["ejected"] == true).map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(ejected.len(), 1, "25% of 4 servers: at most one ejected, got {ejected:?}");
        assert_eq!(metric(&l, &format!("levee_outlier_ejections_total{{pool=\"web\",server=\"{}\"}}", ejected[0])).await, Some(1.0));

        // Doubling: the second ejection of the same server lasts about twice as long.
        let l2 = levee(&config(
            &[bad1.addr(), good.addr()],
            "algorithm = \"round_robin\"\nslow_start = \"0s\"\n[pools.web.retry]\nattempts = 1\n[pools.web.health_check]\nenabled = false\n[pools.web.outlier]\nconsecutive_failures = 2\nbase_ejection_time = \"300ms\"",
        ))
        .await;
        let mut durations = Vec::new();
        for _ in 0..2 {
            // Drive failures until bad1 is ejected, then time how long it stays out.
            wait_for(Duration::from_secs(5), "ejection", || async {
                get(&c, &format!("http://{}/", l2.addr)).await.unwrap();
                admin_json(&l2, "/api/status").await["pools"][0]["servers"][0]["ejected"] == true
            })
            .await;
            let t = std::time::Instant::now();
            wait_for(Duration::from_secs(5), "return from ejection", || async {
                admin_json(&l2, "/api/status").await["pools"][0]["servers"][0]["ejected"] == false
            })
            .await;
            durations.push(t.elapsed());
        }
        assert!(durations[0] >= Duration::from_millis(200) && durations[0] < Duration::from_millis(550), "first ejection {:?}", durations[0]);
        assert!(durations[1] >= Duration::from_millis(500), "second ejection doubled: {durations:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_recovered_servers_share() {
    bounded(Duration::from_secs(60), async {
        let a = fast_backend().await;
        let b = fast_backend().await;
        let l = levee(&config(
            &[a.addr(), b.addr()],
            &format!("algorithm = \"round_robin\"\nslow_start = \"3s\"\n{FAST_CHECKS}"),
        ))
        .await;
        b.set_healthy(false);
        wait_for(Duration::from_secs(5), "b down", || async {
            admin_json(&l, "/api/status").await["pools"][0]["healthy_servers"] == 1
        })
        .await;
        b.set_healthy(true);
        wait_for(Duration::from_secs(5), "b up", || async {
            admin_json(&l, "/api/status").await["pools"][0]["healthy_servers"] == 2
        })
        .await;
        let c = client();
        let share = |n0: u64| (b.stats().served - n0) as f64;
        // Right after recovery b gets a small share...
        let n0 = b.stats().served;
        for _ in 0..100 {
            get(&c, &format!("http://{}/", l.addr)).await.unwrap();
        }
        let early = share(n0) / 100.0;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // ...and its full half once slow start is over.
        let n1 = b.stats().served;
        for _ in 0..100 {
            get(&c, &format!("http://{}/", l.addr)).await.unwrap();
        }
        let late = share(n1) / 100.0;
        assert!(early < 0.35, "share right after recovery {early}");
        assert!(late > 0.45, "share after slow start {late}");
    })
    .await;
}
