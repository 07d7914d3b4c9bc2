//! The metrics the observe issue adds: per-server and per-route latency and counts, queue wait
//! and shed per pool, process figures from /proc, alert gauges; all labels from config names.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_server_route_pool_and_process_metrics_are_exposed() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let tail = "[[routes]]\npath_prefix = \"/api\"\npool = \"web\"\n";
        let l = levee(&config_full(
            &[b.addr()],
            "max_concurrency = 1\nqueue_size = 0\n",
            tail,
        ))
        .await;
        let c = client();
        for _ in 0..3 {
            assert_eq!(
                get(&c, &format!("http://{}/api/x", l.addr))
                    .await
                    .unwrap()
                    .status,
                200
            );
        }
        assert_eq!(
            get(&c, &format!("http://{}/api/x?status=503", l.addr))
                .await
                .unwrap()
                .status,
            503
        );
        let slow = {
            let url = format!("http://{}/api/slow?sleep=500ms", l.addr);
            tokio::spawn(async move { get(&client(), &url).await.unwrap().status })
        };
        wait_until(Duration::from_secs(5), "slow request in flight", || {
            b.stats().in_flight == 1
        })
        .await;
        assert_eq!(
            get(&client(), &format!("http://{}/api/y", l.addr))
                .await
                .unwrap()
                .status,
            503
        );
        assert_eq!(slow.await.unwrap(), 200);
        let s = b.addr().to_string();
        let checks = [
            (
                format!(
                    "levee_server_request_duration_seconds_count{{pool=\"web\",server=\"{s}\"}}"
                ),
                5.0,
            ),
            (
                "levee_route_requests_total{route=\"/api\",class=\"2xx\"}".to_string(),
                4.0,
            ),
            (
                "levee_route_requests_total{route=\"/api\",class=\"5xx\"}".to_string(),
                2.0,
            ),
            (
                "levee_route_request_duration_seconds_count{route=\"/api\"}".to_string(),
                6.0,
            ),
            (
                "levee_pool_shed_total{pool=\"web\",reason=\"queue_full\"}".to_string(),
                1.0,
            ),
            (
                "levee_pool_queue_wait_seconds_count{pool=\"web\"}".to_string(),
                6.0,
            ),
        ];
        for (series, want) in checks {
            assert_eq!(metric(&l, &series).await, Some(want), "{series}");
        }
        assert!(
            metric(&l, "levee_process_resident_memory_bytes")
                .await
                .unwrap()
                > 1e6
        );
        assert!(metric(&l, "levee_process_open_fds").await.unwrap() >= 3.0);
        assert!(metric(&l, "levee_process_uptime_seconds").await.is_some());
        wait_for(Duration::from_secs(5), "alert gauges", || async {
            metric(
                &l,
                "levee_alerts_firing{alert=\"server_down\",severity=\"warning\"}",
            )
            .await
                == Some(0.0)
        })
        .await;
        l.shutdown().await;
    })
    .await;
}
