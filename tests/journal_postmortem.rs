//! Incidents and postmortem drafts against a recorded run: real traffic (served, 5xx, shed,
//! blocked) and shield events published on the bus drive a levee with a journal; the figures
//! of the incident, the API's postmortem and `levee postmortem` must equal what the test
//! counted.

mod common;

use common::*;
use levee::events::{Event, EventKind};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_levee");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmortem_figures_match_what_the_test_sent() {
    bounded(Duration::from_secs(90), async {
        let dir = std::env::temp_dir().join(format!("levee-pm-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("journal.db");
        let b = fast_backend().await;
        let tail = format!(
            r#"
[[routes]]
path_prefix = "/app"
pool = "web"
[journal]
path = "{}"
[alerting]
time_scale = 0.02
incident_quiet_period = "50s"
[[alerts]]
name = "slo_availability"
enabled = false
[[alerts]]
name = "latency"
enabled = false
[[alerts]]
name = "saturation"
enabled = false
"#,
            db.display()
        );
        let l = levee(&config_full(
            &[b.addr()],
            "max_concurrency = 1\nqueue_size = 0\n[pools.web.outlier]\nconsecutive_failures = 0\n",
            &tail,
        ))
        .await;
        let base = format!("http://{}", l.addr);
        let attack = serde_json::json!({
            "start": "2026-11-24T02:00:00Z", "peak_rps": 5400.0, "baseline_rps": 120.0, "sources": 2143,
            "top_sources": [{"client": "203.0.113.7", "count": 1234}],
            "top_subnets": [{"subnet": "203.0.113.0/24", "count": 4567}],
            "top_paths": [{"path": "/login", "count": 99}]
        });
        l.shared.events.publish(Event::new(EventKind::AttackStarted, "flood on pool web").pool("web").data(attack.clone()));
        wait_for(Duration::from_secs(10), "an open incident", || async {
            let v = admin_json(&l, "/api/incidents").await;
            v["incidents"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;

        // The traffic, counted by the test.
        let c = client();
        let (mut ok, mut failed, mut shed, mut blocked) = (0u64, 0u64, 0u64, 0u64);
        for i in 0..40 {
            let q = if i % 4 == 0 { "?status=500" } else { "" };
            let a = get(&c, &format!("{base}/app/{i}{q}")).await.unwrap();
            match a.status {
                200 => ok += 1,
                500 => failed += 1,
                s => panic!("unexpected {s}"),
            }
        }
        for i in 0..7 {
            let a = get(&c, &format!("{base}/elsewhere/{i}")).await.unwrap();
            assert_eq!(a.status, 404);
            blocked += 1;
        }
        let slow = {
            let c = c.clone();
            let url = format!("{base}/app/slow?sleep=1500ms");
            tokio::spawn(async move { get(&c, &url).await.unwrap().status })
        };
        wait_until(Duration::from_secs(5), "the slow request in flight", || b.stats().in_flight == 1).await;
        let c2 = client();
        for i in 0..5 {
            let a = get(&c2, &format!("{base}/app/shed{i}")).await.unwrap();
            assert_eq!(a.status, 503);
            shed += 1;
        }
        assert_eq!(slow.await.unwrap(), 200);
        ok += 1;
        for (i, manual) in [(1, false), (2, false), (3, true)] {
            l.shared.events.publish(
                Event::new(EventKind::BanAdded, "banned")
                    .client(format!("203.0.113.{i}"))
                    .data(serde_json::json!({"reason": if manual {"manual"} else {"rate_limit"}, "duration_secs": 600, "score": 9.5, "manual": manual})),
            );
        }
        l.shared.events.publish(Event::new(EventKind::AttackEnded, "flood over").pool("web").data(attack));

        wait_for(Duration::from_secs(60), "the incident closed", || async {
            let v = admin_json(&l, "/api/incidents").await;
            v["incidents"][0]["end_ms"].is_i64()
        })
        .await;
        let list = admin_json(&l, "/api/incidents").await;
        assert_eq!(list["incidents"].as_array().unwrap().len(), 1, "one incident: {list}");
        let id = list["incidents"][0]["id"].as_i64().unwrap();
        let r = admin_json(&l, &format!("/api/incidents/{id}")).await;
        let i = &r["impact"];
        assert_eq!(i["answered"], ok + failed, "{i}");
        assert_eq!(i["server_5xx"], failed, "{i}");
        assert_eq!(i["failed"], failed, "{i}");
        assert_eq!(i["shed"], shed, "{i}");
        assert_eq!(i["blocked"], blocked, "{i}");
        assert_eq!(i["requests_total"], ok + failed + shed + blocked, "{i}");
        assert!(i["peak_rps"].as_u64().unwrap() >= 1);
        assert!(i["p99_during_secs"].as_f64().unwrap() >= 1.0, "the slow request is the p99: {i}");
        assert!(i["max_server_load"].as_f64().unwrap() <= 1.0);
        assert_eq!(r["shield"]["sources"], 2143);
        assert_eq!(r["shield"]["bans_automatic"], 2);
        assert_eq!(r["shield"]["bans_manual"], 1);
        assert_eq!(r["shield"]["banned"], 3);
        let alerts: Vec<&str> = r["alerts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
        assert!(alerts.contains(&"attack_suspected") && alerts.contains(&"error_ratio"), "{alerts:?}");
        assert!(r["alerts"].as_array().unwrap().iter().all(|a| a["resolved_ms"].is_i64()));
        let series_total: i64 = r["series"].as_array().unwrap().iter().map(|s| s[1].as_i64().unwrap() + s[3].as_i64().unwrap() + s[4].as_i64().unwrap()).sum();
        assert_eq!(series_total as u64, ok + failed + shed + blocked, "the chart's series add up");

        // The API's draft and the CLI's (offline, from the file) say the same figures.
        let api = get(&client(), &format!("http://{}/api/incidents/{id}/postmortem", l.admin_addr)).await.unwrap();
        assert_eq!(api.status, 200);
        let out = Command::new(BIN).args(["postmortem", "--journal"]).arg(&db).arg("--last").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let md = String::from_utf8(out.stdout).unwrap();
        for section in ["## Issue Summary", "## Timeline", "## Root Cause and Resolution", "## Corrective and Preventative Measures", "<svg"] {
            assert!(md.contains(section), "{section} missing:\n{md}");
        }
        let total = ok + failed + shed + blocked;
        let impact = format!(
            "**Impact:** {total} requests during the incident: {} answered by servers, {failed} failed ({failed} 5xx from servers, 0 upstream errors), {shed} shed, {blocked} blocked.",
            ok + failed
        );
        assert!(md.contains(&impact), "expected {impact:?} in\n{md}");
        assert!(md.contains("UTC"), "times carry their zone");
        assert!(md.contains("ban_added ×3: 203.0.113.1, 203.0.113.2, 203.0.113.3"), "{md}");
        assert!(md.contains("A flood from 2,143 sources"), "{md}");
        assert!(md.contains("2 sources banned automatically"), "{md}");
        assert!(md.contains("permanent deny for 203.0.113.0/24"), "{md}");
        assert!(md.contains(&format!("{shed} requests were shed")), "{md}");
        assert!(md.contains("shedding_started") && md.contains("shedding_ended"), "{md}");
        if std::env::var("LEVEE_SHOW_POSTMORTEM").is_ok() {
            eprintln!("{md}");
        }
        let api_md = api.text();
        assert!(api_md.contains(&impact));
        let json = Command::new(BIN).args(["postmortem", "--journal"]).arg(&db).args(["--incident", &id.to_string(), "--format", "json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(v["impact"], r["impact"]);
        let none = Command::new(BIN).args(["postmortem", "--journal"]).arg(&db).args(["--incident", "999"]).output().unwrap();
        assert_eq!(none.status.code(), Some(1));
        let missing = Command::new(BIN).args(["postmortem", "--journal", "/nonexistent/j.db"]).output().unwrap();
        assert_eq!(missing.status.code(), Some(2));
        l.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
