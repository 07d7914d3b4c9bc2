//! The admin API: healthz, metrics, status, errors as JSON, bearer token.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_metrics_status_and_errors() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(&config(&[b.addr()], "max_concurrency = 7")).await;
        let c = client();
        get(&c, &format!("http://{}/", l.addr)).await.unwrap();
        let h = get(&c, &format!("http://{}/healthz", l.admin_addr))
            .await
            .unwrap();
        assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));

        let m = get(&c, &format!("http://{}/metrics", l.admin_addr))
            .await
            .unwrap();
        assert!(
            m.header("content-type")
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = m.text();
        let server = b.addr();
        for needle in [
            format!("levee_requests_total{{pool=\"web\",server=\"{server}\",class=\"2xx\"}} 1"),
            format!("levee_server_max_concurrency{{pool=\"web\",server=\"{server}\"}} 7"),
            format!("levee_server_in_flight{{pool=\"web\",server=\"{server}\"}} 0"),
            format!("levee_server_up{{pool=\"web\",server=\"{server}\"}} 1"),
            "levee_pool_queue_depth{pool=\"web\"} 0".to_string(),
            "levee_request_duration_seconds_bucket{le=\"0.1\",pool=\"web\"}".to_string(),
            "levee_rejections_total{reason=\"queue_full\"} 0".to_string(),
            "levee_config_reloads_total{result=\"failed\"} 0".to_string(),
        ] {
            assert!(text.contains(&needle), "missing {needle} in\n{text}");
        }
        assert!(!text.contains("# EOF"));
        let req = http::Request::get(format!("http://{}/metrics", l.admin_addr))
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .body(Default::default())
            .unwrap();
        let om = send(&c, req).await.unwrap();
        assert!(
            om.header("content-type")
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        assert!(om.text().ends_with("# EOF\n"));

        let st = admin_json(&l, "/api/status").await;
        let s = &st["pools"][0]["servers"][0];
        assert_eq!(st["pools"][0]["name"], "web");
        assert_eq!(s["healthy"], true);
        assert_eq!(s["max_concurrency"], 7);
        assert_eq!(s["in_flight"], 0);
        assert_eq!(st["pools"][0]["queue_depth"], 0);

        let nf = get(&c, &format!("http://{}/nope", l.admin_addr))
            .await
            .unwrap();
        assert_eq!(nf.status, 404);
        let v: serde_json::Value = serde_json::from_slice(&nf.body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("/nope"));
        assert!(v["details"].is_array());
        // A reload without a config file is refused with a JSON error.
        let r = send(
            &c,
            http::Request::post(format!("http://{}/api/reload", l.admin_addr))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 422);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_protects_every_admin_request() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let dir = std::env::temp_dir().join(format!("levee-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "s3cret-token\n").unwrap();
        let text = config(&[b.addr()], "").replace(
            "[admin]\nbind = \"127.0.0.1:0\"",
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"token\"",
        );
        let cfg = levee::config::Config::parse(&text, "t.toml", Some(&dir)).unwrap();
        let l = levee::proxy::Levee::start(cfg).await.unwrap();
        let c = client();
        for path in ["/healthz", "/metrics", "/api/status"] {
            let a = get(&c, &format!("http://{}{path}", l.admin_addr))
                .await
                .unwrap();
            assert_eq!(a.status, 401, "{path} without a token");
            let wrong = http::Request::get(format!("http://{}{path}", l.admin_addr))
                .header("authorization", "Bearer nope")
                .body(Default::default())
                .unwrap();
            assert_eq!(send(&c, wrong).await.unwrap().status, 401);
            let right = http::Request::get(format!("http://{}{path}", l.admin_addr))
                .header("authorization", "Bearer s3cret-token")
                .body(Default::default())
                .unwrap();
            assert_eq!(
                send(&c, right).await.unwrap().status,
                200,
                "{path} with the token"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[test]
fn public_admin_without_token_is_a_config_error() {
    let text = "[admin]\nbind = \"0.0.0.0:9090\"\n[pools.web]\nservers = [\"127.0.0.1:9001\"]\n";
    let e = levee::config::Config::parse(text, "levee.toml", None).unwrap_err();
    let lines = e.lines().join("\n");
    assert!(
        lines.contains("levee.toml:2:8: admin.bind") && lines.contains("token_file"),
        "{lines}"
    );
}
