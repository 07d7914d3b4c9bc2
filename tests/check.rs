//! `levee check`: every rule against its fixture (tests/fixtures/check/), exit codes, the text
//! and JSON reports, and `levee serve` / `POST /api/reload` refusing unsafe configs.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_levee");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/check")
        .join(name)
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_json(path: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "check",
        "--config",
        path.to_str().unwrap(),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run(&args);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    (code, v)
}

/// (fixture, rule id, severity, text found on the line the finding points at)
const RULE_FIXTURES: &[(&str, &str, &str, &str)] = &[
    (
        "L001_max_concurrency_implicit.toml",
        "L001",
        "warning",
        "[pools.web]",
    ),
    (
        "L002_max_concurrency_unbounded.toml",
        "L002",
        "error",
        "max_concurrency = 50000",
    ),
    (
        "L003_queue_unbounded.toml",
        "L003",
        "error",
        "queue_size = 100000",
    ),
    (
        "L004_queue_timeout.toml",
        "L004",
        "warning",
        "queue_timeout = \"30s\"",
    ),
    (
        "L005_retry_budget_unbounded.toml",
        "L005",
        "error",
        "budget_ratio = 1.0",
    ),
    (
        "L007_health_check_off.toml",
        "L007",
        "warning",
        "enabled = false",
    ),
    (
        "L008_health_check_slow.toml",
        "L008",
        "warning",
        "interval = \"15s\"",
    ),
    (
        "L009_health_check_aggressive.toml",
        "L009",
        "warning",
        "interval = \"50ms\"",
    ),
    (
        "L010_request_timeout_too_long.toml",
        "L010",
        "warning",
        "request_timeout = \"5m\"",
    ),
    (
        "L011_header_timeout_above_request_timeout.toml",
        "L011",
        "warning",
        "response_header_timeout = \"45s\"",
    ),
    ("L012_single_server.toml", "L012", "warning", "servers = ["),
    (
        "L013_weight_above_capacity_share.toml",
        "L013",
        "error",
        "weight = 3",
    ),
    (
        "L014_trusted_proxies_too_wide.toml",
        "L014",
        "error",
        "0.0.0.0/0",
    ),
    (
        "L015_admin_not_loopback.toml",
        "L015",
        "warning",
        "bind = \"0.0.0.0:0\"",
    ),
    (
        "L016_shield_off_on_public_listener.toml",
        "L016",
        "error",
        "enabled = false",
    ),
    (
        "L017_client_rate_above_capacity.toml",
        "L017",
        "warning",
        "rate = 2000",
    ),
    ("L018_alerts_off.toml", "L018", "warning", "enabled = false"),
    (
        "L019_journal_off.toml",
        "L019",
        "warning",
        "# A reviewed config",
    ),
    (
        "L101_capacity_model_incomplete.toml",
        "L101",
        "warning",
        "servers = [",
    ),
    (
        "L102_peak_above_capacity.toml",
        "L102",
        "error",
        "peak_rps = 2000",
    ),
    (
        "L103_low_headroom.toml",
        "L103",
        "warning",
        "peak_rps = 1300",
    ),
    ("L104_no_n_plus_1.toml", "L104", "warning", "servers = ["),
    (
        "L105_retry_storm.toml",
        "L105",
        "error",
        "[pools.web.retry]",
    ),
    (
        "L106_max_concurrency_vs_littles_law.toml",
        "L106",
        "error",
        "max_concurrency = 500",
    ),
];

#[test]
fn every_rule_fires_on_its_fixture_at_the_line_of_its_key() {
    for (file, id, severity, line_text) in RULE_FIXTURES {
        let path = fixture(file);
        let (code, v) = check_json(&path, &[]);
        let findings = v["findings"].as_array().unwrap();
        let f = findings
            .iter()
            .find(|f| f["id"] == *id)
            .unwrap_or_else(|| panic!("{file}: no {id} in {v:#}"));
        assert_eq!(f["severity"], *severity, "{file}: {f:#}");
        let text = std::fs::read_to_string(&path).unwrap();
        let line = f["line"].as_u64().unwrap() as usize;
        let at = text.lines().nth(line - 1).unwrap_or("");
        assert!(
            at.contains(line_text),
            "{file}:{line} is {at:?}, expected {line_text:?}"
        );
        for k in ["message", "why", "fix", "key", "rule"] {
            assert!(
                f[k].as_str().is_some_and(|s| s.len() > 3),
                "{file}: {id} has no {k}"
            );
        }
        // Exit 1 exactly when an error finding is there (default --fail-on error).
        let has_error = findings.iter().any(|f| f["severity"] == "error");
        assert_eq!(code, if has_error { 1 } else { 0 }, "{file}");
        assert_eq!(v["ok"], !has_error, "{file}");
    }
}

#[test]
fn the_clean_fixture_and_the_example_have_no_findings() {
    let (code, v) = check_json(&fixture("clean.toml"), &["--fail-on", "warning"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["findings"].as_array().unwrap().len(), 0, "{v:#}");
    let cap = &v["capacity"][0];
    assert_eq!(cap["capacity_rps"], 1500.0);
    assert!(cap["n_plus_1"]["survives"].as_bool().unwrap());
    assert!((cap["headroom"].as_f64().unwrap() - (1.0 - 800.0 / 1500.0)).abs() < 1e-9);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/levee.toml");
    let (code, out, err) = run(&["check", "--config", example, "--fail-on", "warning"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn fail_on_warning_and_bad_input_exit_codes() {
    let warn = fixture("L012_single_server.toml");
    let (code, out, _) = run(&["check", "--config", warn.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(&[
        "check",
        "--config",
        warn.to_str().unwrap(),
        "--fail-on",
        "warning",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not ok: 1 finding at or above warning"),
        "{out}"
    );
    let dir = std::env::temp_dir().join(format!("levee-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[pools.web]\nservers = [\"127.0.0.1:1\"]\nmax_concurrency = \"lots\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml:3:") && err.contains("auto"), "{err}");
    let (code, _, err) = run(&[
        "check",
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
    let (code, _, _) = run(&[
        "check",
        "--config",
        warn.to_str().unwrap(),
        "--fail-on",
        "info",
    ]);
    assert_eq!(code, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn text_report_reads_like_a_review_with_a_capacity_table() {
    let path = fixture("L105_retry_storm.toml");
    let (code, out, _) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    let p = path.display().to_string();
    assert!(
        out.starts_with(&format!("{p}: 1 error, 1 warning")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{p}:20: error[L105] pools.web.retry: with retries"
        )),
        "{out}"
    );
    assert!(
        out.contains("    why: Retries add load")
            && out.contains("    fix: Lower retry.budget_ratio"),
        "{out}"
    );
    // The capacity table: one row per pool with its numbers.
    let table = out
        .split("capacity at peak:")
        .nth(1)
        .expect("capacity table");
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("web"))
        .expect("row for web");
    for cell in [
        "1500/s",
        "1100/s",
        "27%",
        "FAILS (1000/s left)",
        "(110%)",
        "24 / 20 (1.2x)",
    ] {
        assert!(row.contains(cell), "{cell} missing from {row:?}");
    }
    // A default that applies is said so.
    let implicit = fixture("L001_max_concurrency_implicit.toml");
    let (_, out, _) = run(&["check", "--config", implicit.to_str().unwrap()]);
    assert!(
        out.contains("the key is not in the file: its default applies"),
        "{out}"
    );
}

#[test]
fn json_report_follows_the_documented_schema() {
    let (_, v) = check_json(&fixture("L013_weight_above_capacity_share.toml"), &[]);
    assert_eq!(v["schema"], 1);
    assert_eq!(v["fail_on"], "error");
    assert_eq!(v["errors"], 1);
    assert!(
        v["file"]
            .as_str()
            .unwrap()
            .ends_with("L013_weight_above_capacity_share.toml")
    );
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "L013")
        .unwrap();
    assert_eq!(f["key"], "pools.web.servers[1].weight");
    assert_eq!(f["key_written"], true);
    assert_eq!(f["rule"], "weight-above-capacity-share");
    assert!((f["data"]["share"].as_f64().unwrap() - 0.75).abs() < 1e-9);
    let c = &v["capacity"][0];
    for k in [
        "pool",
        "servers",
        "capacity_rps",
        "peak_rps",
        "headroom",
        "n_plus_1",
        "worst_server",
        "peak_with_retries_rps",
        "little",
    ] {
        assert!(c.get(k).is_some(), "capacity.{k} missing: {c:#}");
    }
    // An invalid file in JSON mode still answers JSON (for CI) and exits 2.
    let dir = std::env::temp_dir().join(format!("levee-checkj-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[pools.web]\nservers = []\n").unwrap();
    let (code, v) = check_json(&bad, &[]);
    assert_eq!(code, 2);
    assert_eq!(v["invalid"], true);
    assert!(
        v["problems"][0].as_str().unwrap().contains("no servers"),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn list_rules_names_every_rule_and_the_planned_ones() {
    let (code, out, _) = run(&["check", "--list-rules"]);
    assert_eq!(code, 0);
    for (_, id, _, _) in RULE_FIXTURES {
        assert!(out.contains(id), "{id} missing");
    }
    assert!(out.contains("L006") && out.contains("n/a"));
    for planned in [
        "shield-off-on-public-listener",
        "client-rate-above-capacity",
        "alerts-off",
        "journal-off",
    ] {
        assert!(out.contains(planned), "{planned} missing");
    }
}

/// The configs the other suites run (harness defaults and the extras they use) and the demo's
/// must not trip an error finding, or `serve` and reloads would refuse them.
#[test]
fn configs_of_the_test_suites_and_the_demo_have_no_error_findings() {
    let addrs: Vec<std::net::SocketAddr> = vec![
        "127.0.0.1:9001".parse().unwrap(),
        "127.0.0.1:9002".parse().unwrap(),
    ];
    let extras = [
        "",
        "max_concurrency = 7",
        "max_concurrency = 4\nqueue_size = 16\nqueue_timeout = \"200ms\"",
        "max_concurrency = 1\nqueue_size = 0",
        "request_timeout = \"400ms\"\n[pools.web.retry]\nattempts = 1",
        "algorithm = \"round_robin\"\n[pools.web.health_check]\nenabled = false\n[pools.web.outlier]\nconsecutive_failures = 0\n[pools.web.retry]\nattempts = 2\nbudget_min_per_second = 100",
        "[pools.web.outlier]\nconsecutive_failures = 0\n[pools.web.retry]\nattempts = 3\nbudget_ratio = 0.2\nbudget_min_per_second = 0",
        "[pools.web.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 1\nrise = 1",
        "max_concurrency = \"auto\"\n[pools.web.adaptive]\nmin = 2\nmax = 200",
    ];
    for extra in extras {
        for servers in [&addrs[..1], &addrs[..]] {
            let text = config(servers, extra);
            let cfg = levee::config::Config::parse(&text, "t.toml", None).unwrap();
            let r = levee::check::review(&cfg);
            assert!(
                !r.has_errors(),
                "{:?}\n{text}",
                r.lines(levee::check::Severity::Error)
            );
        }
    }
    let (_, out, _) = run(&["demo", "--print-config"]);
    let cfg = levee::config::Config::parse(&out, "demo", None).unwrap();
    assert!(!levee::check::review(&cfg).has_errors());
}

#[test]
fn serve_refuses_error_findings_with_exit_2() {
    let path = fixture("L014_trusted_proxies_too_wide.toml");
    let (code, _, err) = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not safe to serve"), "{err}");
    assert!(
        err.contains(
            "L014_trusted_proxies_too_wide.toml:3: error[L014] listener.trusted_proxies[1]"
        ),
        "{err}"
    );
}

#[test]
fn serve_starts_with_warnings_and_logs_them() {
    let path = fixture("L012_single_server.toml");
    let mut child = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|l: &String| l.contains("serving on")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = seen.join("\n");
    assert!(all.contains("serving on"), "{all}");
    assert!(
        all.contains("warning[L012]") && all.contains("single server"),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rejects_error_findings_and_returns_warnings() {
    bounded(Duration::from_secs(30), async {
        let a = fast_backend().await;
        let b = fast_backend().await;
        let dir = std::env::temp_dir().join(format!(
            "levee-check-reload-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("levee.toml");
        std::fs::write(&path, config(&[a.addr(), b.addr()], "max_concurrency = 8")).unwrap();
        let l = levee_from_file(&path).await;
        let post = || async {
            let req = http::Request::post(format!("http://{}/api/reload", l.admin_addr))
                .body(Default::default())
                .unwrap();
            send(&client(), req).await.unwrap()
        };
        // An error finding: rejected with the finding, the old config keeps serving.
        let wide = config(&[a.addr(), b.addr()], "max_concurrency = 9")
            .replace("[admin]", "trusted_proxies = [\"0.0.0.0/0\"]\n[admin]");
        std::fs::write(&path, wide).unwrap();
        let r = post().await;
        assert_eq!(r.status, 422, "{}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            v["details"][0].as_str().unwrap().contains("error[L014]"),
            "{v:#}"
        );
        assert_eq!(v["findings"][0]["id"], "L014");
        let status = admin_json(&l, "/api/status").await;
        assert_eq!(status["generation"], 1);
        assert_eq!(status["pools"][0]["servers"][0]["max_concurrency"], 8);
        assert_eq!(
            get(&client(), &format!("http://{}/", l.addr))
                .await
                .unwrap()
                .status,
            200
        );
        // Warnings only: applied, and the warnings come back.
        std::fs::write(&path, config(&[a.addr()], "max_concurrency = 9")).unwrap();
        let r = post().await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["generation"], 2);
        assert!(
            v["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w.as_str().unwrap().contains("warning[L012]")),
            "{v:#}"
        );
        assert!(
            v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == "L012"),
            "{v:#}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
