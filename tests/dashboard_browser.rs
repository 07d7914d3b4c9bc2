//! The live dashboard in a real headless browser (Debian's `chromium`) against the real
//! `levee demo`: the page renders pools, servers and charts, its numbers change as traffic
//! flows, and the browser logs no console message at all (the page logs nothing, so any
//! message is an error).

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Loads `url` in a fresh headless chromium, lets the page run for `budget_ms` of virtual
/// time, and returns (DOM, console lines).
fn dump(browser: &str, url: &str, budget_ms: u32) -> (String, Vec<String>) {
    let profile = std::env::temp_dir().join(format!(
        "levee-chromium-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(String::from)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

fn text_of(dom: &str, id: &str) -> String {
    let tag = format!("id=\"{id}\">");
    dom.find(&tag)
        .map(|i| {
            let rest = &dom[i + tag.len()..];
            rest[..rest.find('<').unwrap_or(0)].to_string()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_and_moves_with_traffic_in_a_real_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium (.ci/run does)"
        );
        eprintln!("SKIPPED: no chromium on this machine (apt-get install -y chromium)");
        return;
    };
    bounded(Duration::from_secs(90), async {
        let (_p, url, admin) = start_demo().await;

        let page = format!("{admin}/");
        let b = browser.to_string();
        let p2 = page.clone();
        let (idle, console) = tokio::task::spawn_blocking(move || dump(&b, &p2, 2500))
            .await
            .unwrap();
        assert!(console.is_empty(), "console messages: {console:?}");
        assert!(
            idle.contains("data-polls="),
            "the page polled /api/dashboard:\n{idle}"
        );
        assert_eq!(text_of(&idle, "k-rps"), "0.0", "no traffic yet");
        assert!(
            idle.contains("127.0.0.1:") && idle.contains("3/3 healthy"),
            "pools and servers rendered"
        );
        assert!(idle.contains("<polyline"), "charts drawn");
        assert!(text_of(&idle, "status").starts_with("updated"));

        // Traffic flows while the browser looks again.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let load = tokio::spawn(async move {
            let c = client();
            let mut n = 0u64;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                if get(&c, &format!("{url}/"))
                    .await
                    .is_ok_and(|a| a.status == 200)
                {
                    n += 1;
                }
            }
            n
        });
        let c = client();
        wait_for(
            Duration::from_secs(20),
            "levee sees the traffic",
            || async {
                let d: serde_json::Value = serde_json::from_slice(
                    &get(&c, &format!("{admin}/api/dashboard"))
                        .await
                        .unwrap()
                        .body,
                )
                .unwrap();
                d["totals"]["requests_per_sec"].as_f64().unwrap_or(0.0) > 1.0
            },
        )
        .await;
        let b = browser.to_string();
        let (busy, console) = tokio::task::spawn_blocking(move || dump(&b, &page, 2500))
            .await
            .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = load.await.unwrap();
        assert!(console.is_empty(), "console messages: {console:?}");
        let rps: f64 = text_of(&busy, "k-rps").parse().unwrap();
        assert!(
            rps > 1.0,
            "requests/s moved from 0.0 to {rps} after {sent} requests"
        );
        assert_ne!(
            text_of(&idle, "status"),
            text_of(&busy, "status"),
            "the update time moves"
        );
        let ev = get(&c, &format!("{admin}/api/events")).await.unwrap();
        let ev: serde_json::Value = serde_json::from_slice(&ev.body).unwrap();
        assert_eq!(ev["events"][0]["kind"], "levee_started");
    })
    .await;
}
