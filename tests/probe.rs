//! `levee probe` (the real binary) against an in-process simulated server: it finds the
//! capacity and the knee, stops at errors, keeps to its budgets and to loopback.

mod common;

use common::*;
use levee::backend::BackendOptions;
use serde_json::Value;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_levee");

async fn probe(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(BIN)
            .arg("probe")
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(url: &str, extra: &[&str]) -> Vec<String> {
    let mut a = vec![url.to_string()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_capacity_and_knee_of_a_simulated_server() {
    bounded(Duration::from_secs(60), async {
        // 20 requests at a time, 50ms each: 400 requests per second.
        let b = backend(BackendOptions {
            capacity: 20,
            latency: Duration::from_millis(50),
            ..Default::default()
        })
        .await;
        let url = format!("http://{}/", b.addr());
        let (code, out, err) = probe(args(&url, &["--max-time", "12s", "--format", "json"])).await;
        assert_eq!(code, 0, "{out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let r = &v["result"];
        let capacity = r["capacity_rps"].as_f64().unwrap();
        let cap = r["recommended_max_concurrency"].as_u64().unwrap();
        let latency = r["typical_latency_ms"].as_f64().unwrap();
        assert!(
            (320.0..=480.0).contains(&capacity),
            "capacity {capacity} not within 20% of 400: {r:#}"
        );
        assert!(
            (15..=25).contains(&cap),
            "max_concurrency {cap} not within 25% of 20: {r:#}"
        );
        assert!(
            (40.0..=75.0).contains(&latency),
            "typical latency {latency}ms: {r:#}"
        );
        assert!(r["elapsed_ms"].as_u64().unwrap() <= 13_000, "{r:#}");
        // The snippet is TOML to paste: the same numbers.
        let snippet: toml::Value = toml::from_str(v["snippet"].as_str().unwrap()).unwrap();
        let pool = &snippet["pools"]["NAME"];
        assert_eq!(pool["max_concurrency"].as_integer(), Some(cap as i64));
        assert_eq!(
            pool["servers"][0]["address"].as_str(),
            Some(b.addr().to_string().as_str())
        );
        assert!(pool["servers"][0]["capacity_rps"].as_integer().unwrap() > 300);
        assert!(pool["typical_latency"].as_str().unwrap().ends_with("ms"));
        // Nothing else was requested than the URL: the server saw only probe requests.
        assert!(b.stats().served >= r["requests"].as_u64().unwrap() - cap * 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_ends_with_the_snippet() {
    bounded(Duration::from_secs(30), async {
        let b = backend(BackendOptions {
            capacity: 4,
            latency: Duration::from_millis(20),
            ..Default::default()
        })
        .await;
        let (code, out, err) = probe(args(
            &format!("http://{}/", b.addr()),
            &["--max-time", "5s"],
        ))
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("concurrency  requests  errors"), "{out}");
        assert!(out.contains("knee: "), "{out}");
        let snippet = &out[out.find("# measured by levee probe").expect("snippet")..];
        let t: toml::Value = toml::from_str(snippet).unwrap();
        assert!(t["pools"]["NAME"]["max_concurrency"].as_integer().unwrap() >= 2);
        assert!(
            err.contains("concurrency     1:"),
            "progress on stderr: {err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_at_the_first_errors_and_keeps_the_request_budget() {
    bounded(Duration::from_secs(60), async {
        // Crashes when more than 6 requests are in flight.
        let b = backend(BackendOptions {
            capacity: 100,
            latency: Duration::from_millis(20),
            crash_above: Some(6),
            down_for: Duration::from_secs(30),
        })
        .await;
        let url = format!("http://{}/", b.addr());
        let (code, out, err) = probe(args(&url, &["--max-time", "10s", "--format", "json"])).await;
        assert_eq!(code, 0, "{out}{err}");
        let r = &serde_json::from_str::<Value>(&out).unwrap()["result"];
        assert!(
            r["stopped"]
                .as_str()
                .unwrap()
                .contains("errors at concurrency 8"),
            "{r:#}"
        );
        assert!(
            r["recommended_max_concurrency"].as_u64().unwrap() <= 4,
            "{r:#}"
        );
        assert_eq!(b.stats().crashes, 1, "one crash, then the probe stopped");

        let c = backend(BackendOptions::default()).await;
        let (code, out, _) = probe(args(
            &format!("http://{}/", c.addr()),
            &[
                "--max-time",
                "10s",
                "--max-requests",
                "60",
                "--format",
                "json",
            ],
        ))
        .await;
        assert_eq!(code, 0);
        let r = &serde_json::from_str::<Value>(&out).unwrap()["result"];
        assert!(r["requests"].as_u64().unwrap() <= 60, "{r:#}");
        assert!(c.stats().served <= 60, "{:?}", c.stats());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_remote_urls_and_reports_a_failing_server() {
    bounded(Duration::from_secs(30), async {
        let (code, _, err) = probe(args("http://192.0.2.10/", &[])).await;
        assert_eq!(code, 2);
        assert!(
            err.contains("not a loopback address") && err.contains("--allow-remote"),
            "{err}"
        );
        let (code, _, err) = probe(args("ftp://127.0.0.1/", &[])).await;
        assert_eq!(code, 2, "{err}");
        let b = backend(BackendOptions::default()).await;
        b.set_status(500);
        let (code, _, err) = probe(args(
            &format!("http://{}/", b.addr()),
            &["--max-time", "5s"],
        ))
        .await;
        assert_eq!(code, 1);
        assert!(
            err.contains("failed at concurrency 1") && err.contains("500"),
            "{err}"
        );
    })
    .await;
}
