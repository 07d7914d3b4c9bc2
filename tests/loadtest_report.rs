//! `levee loadtest` reports through the real binary: the JSON document and the HTML report
//! rendered in headless Chromium.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_holds_the_full_results_and_the_progress_stays_out_of_logs() {
    let b = fast_backend().await;
    let dir = tempdir("json");
    let json = dir.join("r.json");
    let url = format!("http://{}/", b.addr());
    let (code, out, err) = levee_bin(strings(&[
        "loadtest",
        &url,
        "--rate",
        "100",
        "-d",
        "2s",
        "-X",
        "POST",
        "-H",
        "X-Test: 1",
        "--body",
        "hello",
        "--threshold",
        "p99 < 5s",
        "--json",
        &json.display().to_string(),
    ]))
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        !err.contains("req/s"),
        "no progress line when stderr is not a terminal: {err}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    assert_eq!(v["schema"], "levee-loadtest/1");
    assert_eq!(v["passed"], true);
    let s = &v["scenarios"][0];
    assert_eq!(s["model"], "open");
    assert_eq!(s["requests"], 200);
    assert_eq!(s["statuses"]["200"], 200);
    assert_eq!(s["bytes_sent"], 200 * 5);
    assert_eq!(s["config"]["method"], "POST");
    assert!(s["latency"]["p99_ms"].as_f64().is_some());
    assert!(s["latency_uncorrected"]["p99_ms"].as_f64().is_some());
    let timeline = s["timeline"].as_array().expect("timeline");
    assert!(timeline.len() >= 2, "{timeline:?}");
    let sum: u64 = timeline.iter().filter_map(|p| p["requests"].as_u64()).sum();
    assert_eq!(sum, 200);
    let hist: u64 = s["histogram"]
        .as_array()
        .expect("histogram")
        .iter()
        .filter_map(|b| b["count"].as_u64())
        .sum();
    assert_eq!(hist, 200);
    assert_eq!(s["thresholds"][0]["passed"], true);
    assert_eq!(s["thresholds"][0]["threshold"], "p99 < 5s");
}

/// Headless Chromium renders the HTML report: the SVG charts are in the DOM with the run's
/// numbers. Skipped (with a notice) only when Chromium is absent and CI is not set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_its_charts_in_a_real_browser() {
    let chromium = std::path::Path::new("/usr/bin/chromium");
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if !chromium.exists() {
        if ci {
            panic!("CI is set but /usr/bin/chromium is missing (.ci/run installs it)");
        }
        eprintln!("NOTICE: skipping the HTML browser test: /usr/bin/chromium is absent (CI unset)");
        return;
    }
    let b = fast_backend().await;
    let dir = tempdir("html");
    let (html, json) = (dir.join("report.html"), dir.join("r.json"));
    let url = format!("http://{}/", b.addr());
    let (code, out, err) = levee_bin(strings(&[
        "loadtest",
        &url,
        "--rate",
        "80",
        "-d",
        "3s",
        "--threshold",
        "p99 < 5s",
        "--html",
        &html.display().to_string(),
        "--json",
        &json.display().to_string(),
    ]))
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("json");
    let requests = v["scenarios"][0]["requests"].as_u64().expect("requests");
    let seconds = v["scenarios"][0]["timeline"].as_array().map_or(0, Vec::len);
    let source = std::fs::read_to_string(&html).expect("html");
    assert!(
        !source.contains("http://") || !source.contains("src=\"http"),
        "nothing fetched"
    );
    assert!(!source.contains("<script"), "no scripts");

    let profile = tempdir("chromium-profile");
    let file_url = format!("file://{}", html.display());
    let dom = bounded(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("/usr/bin/chromium")
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    &format!("--user-data-dir={}", profile.display()),
                    "--dump-dom",
                    &file_url,
                ])
                .output()
        }),
    )
    .await
    .expect("join")
    .expect("chromium runs");
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains("levee loadtest report"), "{dom}");
    for id in [
        "chart-rps-default",
        "chart-latency-default",
        "chart-status-default",
        "chart-distribution-default",
    ] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "{id} missing from the rendered DOM"
        );
    }
    assert_eq!(dom.matches("<svg").count(), 4, "four charts");
    assert!(
        dom.contains(&format!("data-requests=\"{requests}\"")),
        "scenario request count"
    );
    assert!(dom.contains(&format!("<td class=\"requests\">{requests}</td>")));
    assert!(
        dom.contains(&format!(
            "data-name=\"requests/s\" data-points=\"{seconds}\""
        )),
        "one point per second of the timeline ({seconds})"
    );
    // The legend shows the peak second's rate: 80/s, give or take the responses that land on
    // the other side of a second's boundary (each second counts completions).
    let peak: f64 = dom
        .split("requests/s (peak ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|v| v.trim().trim_end_matches("/s").parse().ok())
        .unwrap_or_else(|| panic!("no rps legend with a peak like \"80.7/s\" in the DOM"));
    assert!(
        (78.0..=84.0).contains(&peak),
        "the rps legend shows the rate: peak {peak}"
    );
    assert!(dom.contains("class=\"pass\">PASS</td>"));
}
