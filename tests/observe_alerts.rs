//! Alerts end to end: rules fire and resolve from real traffic and real health state, every
//! transition is on the event bus, webhooks get Alertmanager's JSON, a hanging receiver
//! delays nobody, and `[[alerts]]` is validated with locations.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use levee::events::{Event, EventKind};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// A webhook receiver on loopback that records every body; `hang` never answers.
async fn receiver(hang: bool) -> (SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let g = g.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let g = g.clone();
                    async move {
                        if hang {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let b = req.into_body().collect().await.unwrap().to_bytes();
                        g.lock().unwrap().push(serde_json::from_slice(&b).unwrap());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn kinds(rx: &mut tokio::sync::broadcast::Receiver<Arc<Event>>, out: &mut Vec<Arc<Event>>) {
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_goes_pending_firing_resolved_and_webhooks_get_alertmanager_json() {
    bounded(Duration::from_secs(40), async {
        let good = fast_backend().await;
        let flaky = fast_backend().await;
        let (hook, got) = receiver(false).await;
        let (hang, _) = receiver(true).await;
        let tail = format!(
            r#"
[alerting]
time_scale = 0.05
[[alerts]]
name = "server_down"
for = "20s"
keep_firing_for = "20s"
labels = {{ team = "web" }}
[[notifiers]]
name = "hang"
kind = "webhook"
url = "http://{hang}/hook"
timeout = "30s"
[[notifiers]]
name = "ops"
kind = "webhook"
url = "http://{hook}/alerts"
"#
        );
        let cfg = config_full(
            &[good.addr(), flaky.addr()],
            "[pools.web.health_check]\npath = \"/health\"\ninterval = \"100ms\"\nfall = 1\nrise = 1\n",
            &tail,
        );
        let l = levee(&cfg).await;
        let mut rx = l.shared.events.subscribe();
        flaky.set_healthy(false);
        let mut seen = Vec::new();
        wait_for(Duration::from_secs(15), "server_down firing", || {
            kinds(&mut rx, &mut seen);
            let s = seen.clone();
            async move { s.iter().any(|e| e.kind == EventKind::AlertFiring) }
        })
        .await;
        let pending = seen.iter().position(|e| e.kind == EventKind::AlertPending);
        let firing = seen.iter().position(|e| e.kind == EventKind::AlertFiring);
        assert!(pending.is_some() && pending < firing, "pending comes first");
        let f = &seen[firing.unwrap()];
        assert_eq!(f.server.as_deref(), Some(flaky.addr().to_string().as_str()));
        assert_eq!(f.data["labels"]["alertname"], "server_down");
        assert_eq!(f.data["labels"]["team"], "web");
        assert!(f.data["annotations"]["runbook"].as_str().unwrap().contains("/api/status"));
        // The good receiver is served although the other one hangs.
        wait_until(Duration::from_secs(5), "webhook delivered", || !got.lock().unwrap().is_empty()).await;
        let doc = got.lock().unwrap()[0].clone();
        assert_eq!(doc["version"], "4");
        assert_eq!(doc["status"], "firing");
        assert_eq!(doc["receiver"], "ops");
        assert_eq!(doc["groupLabels"]["alertname"], "server_down");
        assert_eq!(doc["commonLabels"]["server"], flaky.addr().to_string());
        assert!(doc["externalURL"].as_str().unwrap().starts_with("http://"));
        let a = &doc["alerts"][0];
        for k in ["status", "labels", "annotations", "startsAt", "endsAt", "fingerprint"] {
            assert!(!a[k].is_null(), "alert has {k}: {a}");
        }
        assert!(a["annotations"]["description"].as_str().unwrap().contains("1 of 2 servers healthy"));
        let m = metric(&l, "levee_alerts_firing{alert=\"server_down\",severity=\"warning\"}").await;
        assert_eq!(m, Some(1.0));
        // Traffic still flows while a receiver hangs.
        let c = client();
        assert_eq!(get(&c, &format!("http://{}/", l.addr)).await.unwrap().status, 200);
        flaky.set_healthy(true);
        wait_until(Duration::from_secs(10), "resolved webhook", || {
            got.lock().unwrap().iter().any(|d| d["status"] == "resolved")
        })
        .await;
        kinds(&mut rx, &mut seen);
        assert!(seen.iter().any(|e| e.kind == EventKind::AlertResolved));
        let resolved = got.lock().unwrap().iter().find(|d| d["status"] == "resolved").cloned().unwrap();
        assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(resolved["alerts"][0]["fingerprint"], doc["alerts"][0]["fingerprint"]);
        l.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_ratio_names_the_failing_server_and_attack_alert_names_the_top_subnets() {
    bounded(Duration::from_secs(40), async {
        let b = fast_backend().await;
        let tail = r#"
[alerting]
time_scale = 0.02
[[alerts]]
name = "error_ratio"
for = "0s"
window = "250s"
min_requests = 10
"#;
        let l = levee(&config_full(&[b.addr()], "[pools.web.outlier]\nconsecutive_failures = 0\n", tail)).await;
        let c = client();
        for i in 0..40 {
            let q = if i % 2 == 0 { "?status=500" } else { "" };
            get(&c, &format!("http://{}/x{q}", l.addr)).await.unwrap();
        }
        wait_for(Duration::from_secs(10), "error_ratio firing", || async {
            let a = admin_json(&l, "/api/alerts").await;
            a["alerts"].as_array().unwrap().iter().any(|a| a["labels"]["alertname"] == "error_ratio" && a["state"] == "firing")
        })
        .await;
        let a = admin_json(&l, "/api/alerts").await;
        let er = a["alerts"].as_array().unwrap().iter().find(|a| a["labels"]["alertname"] == "error_ratio").unwrap().clone();
        let d = er["annotations"]["description"].as_str().unwrap();
        assert!(d.contains("20 of 40 requests failed"), "{d}");
        assert!(d.contains(&format!("{}: 20 of 40", b.addr())), "{d}");

        l.shared.events.publish(
            Event::new(EventKind::AttackStarted, "flood on pool web")
                .pool("web")
                .data(serde_json::json!({
                    "start": "2026-11-24T02:00:00Z", "peak_rps": 5400.0, "baseline_rps": 120.0, "sources": 2143,
                    "top_sources": [{"client": "203.0.113.7", "count": 1234}],
                    "top_subnets": [{"subnet": "203.0.113.0/24", "count": 4567}],
                    "top_paths": [{"path": "/login", "count": 99}]
                })),
        );
        wait_for(Duration::from_secs(5), "attack_suspected firing", || async {
            let a = admin_json(&l, "/api/alerts").await;
            a["alerts"].as_array().unwrap().iter().any(|a| a["labels"]["alertname"] == "attack_suspected")
        })
        .await;
        let a = admin_json(&l, "/api/alerts").await;
        let at = a["alerts"].as_array().unwrap().iter().find(|a| a["labels"]["alertname"] == "attack_suspected").unwrap().clone();
        let d = at["annotations"]["description"].as_str().unwrap();
        assert!(d.contains("203.0.113.0/24 (4567 requests)") && d.contains("2143") && d.contains("5400"), "{d}");
        assert_eq!(at["labels"]["severity"], "critical");
        l.shared.events.publish(Event::new(EventKind::AttackEnded, "flood over").pool("web"));
        wait_for(Duration::from_secs(10), "attack alert resolved", || async {
            let a = admin_json(&l, "/api/alerts").await;
            !a["alerts"].as_array().unwrap().iter().any(|a| a["labels"]["alertname"] == "attack_suspected")
        })
        .await;
        l.shutdown().await;
    })
    .await;
}

#[test]
fn alert_and_notifier_sections_are_validated_with_locations() {
    let text = "[pools.web]\nservers = [\"127.0.0.1:1\"]\n[[alerts]]\nname = \"server_dwn\"\n[[alerts]]\nname = \"latency\"\nseverity = \"loud\"\n[[notifiers]]\nname = \"x\"\nkind = \"webhook\"\nurl = \"ftp://nope\"\n[journal]\nsynchronous = \"sometimes\"\n";
    let e = levee::config::Config::parse(text, "t.toml", None).unwrap_err();
    let lines = e.lines().join("\n");
    assert!(
        lines.contains("t.toml:4:8: alerts[0].name: no built-in alert named \"server_dwn\""),
        "{lines}"
    );
    assert!(lines.contains("t.toml:7:12: alerts[1].severity"), "{lines}");
    assert!(lines.contains("notifiers[0].url"), "{lines}");
    assert!(lines.contains("journal.synchronous"), "{lines}");
    let ok = "[pools.web]\nservers = [\"127.0.0.1:1\"]\n[[alerts]]\nname = \"latency\"\nthreshold = 0.5\nfor = \"10s\"\n[[notifiers]]\nname = \"log\"\nkind = \"log\"\n";
    let c = levee::config::Config::parse(ok, "t.toml", None).unwrap();
    assert_eq!(c.observe.alerts[0].threshold, Some(0.5));
    assert!(c.observe.journal.is_none());
}

/// A receiver that answers 500 to the first `fail` deliveries, then 200.
async fn flaky_receiver(fail: usize) -> (SocketAddr, Arc<Mutex<Vec<u16>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let a = answers.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let a = a.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let a = a.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        let mut v = a.lock().unwrap();
                        let status = if v.len() < fail { 500 } else { 200 };
                        v.push(status);
                        let mut r = http::Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_and_the_command_notifier_gets_the_json_on_stdin() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let (hook, answers) = flaky_receiver(2).await;
        let dir = std::env::temp_dir().join(format!("levee-notify-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("alert.json");
        let tail = format!(
            r#"
[[notifiers]]
name = "flaky"
kind = "webhook"
url = "http://{hook}/"
send_resolved = false
[[notifiers]]
name = "script"
kind = "command"
command = ["sh", "-c", "cat > {}"]
send_resolved = false
[[notifiers]]
name = "log"
kind = "log"
"#,
            out.display()
        );
        let l = levee(&config_full(&[b.addr()], "", &tail)).await;
        l.shared.events.publish(
            Event::new(EventKind::AttackStarted, "flood")
                .data(serde_json::json!({"peak_rps": 900.0, "baseline_rps": 10.0, "sources": 12, "top_sources": [], "top_subnets": [{"subnet": "198.51.100.0/24", "count": 800}], "top_paths": []})),
        );
        wait_until(Duration::from_secs(15), "delivered after two failures", || {
            answers.lock().unwrap().as_slice() == [500, 500, 200]
        })
        .await;
        wait_until(Duration::from_secs(10), "the command ran", || {
            std::fs::read_to_string(&out).is_ok_and(|t| t.ends_with('}'))
        })
        .await;
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(doc["receiver"], "script");
        assert_eq!(doc["alerts"][0]["labels"]["alertname"], "attack_suspected");
        assert!(doc["alerts"][0]["annotations"]["description"].as_str().unwrap().contains("198.51.100.0/24 (800 requests)"));
        wait_for(Duration::from_secs(5), "delivery counted", || async {
            let d = admin_json(&l, "/api/dashboard").await;
            d["notifications"]["delivered"].as_u64() == Some(3)
        })
        .await;
        assert_eq!(
            metric(&l, "levee_notifications_total{receiver=\"flaky\",result=\"delivered\"}").await,
            Some(1.0)
        );
        assert_eq!(metric(&l, "levee_journal_dropped_total").await, Some(0.0));
        l.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_ratio_counts_levees_own_502s_for_an_unreachable_server() {
    bounded(Duration::from_secs(30), async {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let tail = "[alerting]\ntime_scale = 0.02\n[[alerts]]\nname = \"error_ratio\"\nfor = \"0s\"\nmin_requests = 10\n";
        let pool = "[pools.web.health_check]\nenabled = false\n[pools.web.outlier]\nconsecutive_failures = 0\n[pools.web.retry]\nattempts = 1\n";
        let l = levee(&config_full(&[dead], pool, tail)).await;
        let c = client();
        for _ in 0..12 {
            assert_eq!(get(&c, &format!("http://{}/", l.addr)).await.unwrap().status, 502);
        }
        assert_eq!(metric(&l, "levee_pool_upstream_errors_total{pool=\"web\"}").await, Some(12.0));
        wait_for(Duration::from_secs(10), "error_ratio firing", || async {
            let a = admin_json(&l, "/api/alerts").await;
            a["alerts"].as_array().unwrap().iter().any(|a| {
                a["labels"]["alertname"] == "error_ratio"
                    && a["annotations"]["description"].as_str().unwrap().contains("12 of 12 requests failed")
                    && a["annotations"]["description"].as_str().unwrap().contains("12 502/504 from levee")
            })
        })
        .await;
        l.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_fires_config_reload_failed_until_a_good_one() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let dir = std::env::temp_dir().join(format!(
            "levee-reloadalert-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("levee.toml");
        let good = config(&[b.addr()], "");
        std::fs::write(&path, &good).unwrap();
        let l = levee_from_file(&path).await;
        std::fs::write(
            &path,
            format!("{good}\n[pools.web.retry]\nattempts = \"many\"\n"),
        )
        .unwrap();
        assert!(l.reload().await.is_err());
        let firing = |want: bool| {
            let l = &l;
            async move {
                let a = admin_json(l, "/api/alerts").await;
                let has = a["alerts"].as_array().unwrap().iter().any(|a| {
                    a["labels"]["alertname"] == "config_reload_failed"
                        && a["state"] == "firing"
                        && a["annotations"]["description"]
                            .as_str()
                            .unwrap()
                            .contains("levee.toml:")
                });
                has == want
            }
        };
        wait_for(
            Duration::from_secs(5),
            "config_reload_failed firing with the problem's location",
            || firing(true),
        )
        .await;
        std::fs::write(&path, &good).unwrap();
        l.reload().await.unwrap();
        wait_for(
            Duration::from_secs(5),
            "config_reload_failed resolved",
            || firing(false),
        )
        .await;
        l.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
