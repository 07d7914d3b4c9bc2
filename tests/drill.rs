//! `levee drill --quick`: the protected drill passes its verdict, the unprotected one (like
//! the misconfigured load balancer) fails it — servers crash, legitimate users are not served.
//! Both run the real binary, one after the other (each floods the machine for ~15 s).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_levee");

fn drill(extra: &[&str]) -> (i32, serde_json::Value, std::path::PathBuf) {
    let out = std::env::temp_dir().join(format!(
        "levee-drill-{}-{}",
        std::process::id(),
        extra.len()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let mut args = vec!["drill", "--quick", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = Command::new(BIN)
        .args(&args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("VERDICT"),
        "the drill prints its verdict:\n{err}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("verdict.json")).unwrap()).unwrap();
    (o.status.code().unwrap_or(-1), v, out)
}

/// Whether the only checks a verdict failed are latency ones.
fn failed_only_on_latency(v: &serde_json::Value) -> bool {
    let failed: Vec<&str> = v["verdict"]["checks"]
        .as_array()
        .map(|checks| {
            checks
                .iter()
                .filter(|c| c["passed"] != true)
                .filter_map(|c| c["what"].as_str())
                .collect()
        })
        .unwrap_or_default();
    !failed.is_empty() && failed.iter().all(|w| w.contains("p99"))
}

#[test]
fn quick_protected_drill_passes_and_unprotected_fails() {
    let (mut code, mut v, mut out) = drill(&[]);
    // The test binary is a dev build (opt-level 1, about the CPU of a release build here: its
    // p99 under the flood is ~215 ms on an idle 2-core VM against the drill's 1 s limit), but a
    // busy moment of a shared machine has pushed it past 1 s. A protected drill that failed on
    // latency alone is run once more; every other check must pass the first time, and the
    // second run must pass whole.
    if code != 0 && failed_only_on_latency(&v) {
        eprintln!(
            "protected drill failed on latency only, running it again: {:#}",
            v["verdict"]["checks"]
        );
        (code, v, out) = drill(&[]);
    }
    let verdict = &v["verdict"];
    assert_eq!(code, 0, "protected verdict: {verdict:#}");
    assert_eq!(verdict["passed"], true);
    assert!(verdict["legit_success_rate"].as_f64().unwrap() >= 0.99);
    assert_eq!(verdict["backend_crashes"], 0);
    assert!(
        verdict["backend_max_in_flight"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.as_u64().unwrap() <= 8)
    );
    assert!(
        verdict["flood_offered_rps"].as_f64().unwrap()
            >= 20.0 * verdict["pool_capacity_rps"].as_f64().unwrap()
    );
    assert!(verdict["time_to_block_s"].as_f64().unwrap() <= 5.0);
    assert!(
        verdict["dangerous_reload"]
            .as_str()
            .unwrap()
            .starts_with("rejected")
    );
    // The files a person reads afterwards, with the same numbers.
    let pm = std::fs::read_to_string(out.join("postmortem.md")).unwrap();
    for section in [
        "## Issue Summary",
        "## Timeline",
        "## Root Cause and Resolution",
        "## Corrective and Preventative Measures",
    ] {
        assert!(pm.contains(section), "postmortem lacks {section}");
    }
    assert!(pm.contains("attack_started"), "the timeline has the attack");
    let served = format!(
        "{:.2}% served",
        verdict["legit_success_rate"].as_f64().unwrap() * 100.0
    );
    assert!(pm.contains(&served), "postmortem states {served}:\n{pm}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("PASS"),
        "report with its chart and verdict"
    );
    assert!(
        !html.contains("src=") && !html.contains("href=") && !html.contains("@import"),
        "self-contained: nothing fetched from elsewhere"
    );
    assert!(
        std::fs::read_to_string(out.join("timeline.jsonl"))
            .unwrap()
            .lines()
            .count()
            > 100
    );
    let _ = std::fs::remove_dir_all(&out);

    let (code, v, out) = drill(&["--unprotected"]);
    let verdict = &v["verdict"];
    assert_eq!(code, 1, "unprotected verdict: {verdict:#}");
    assert_eq!(verdict["passed"], false);
    assert!(
        verdict["backend_crashes"].as_u64().unwrap() >= 1,
        "servers crash without levee's caps"
    );
    assert!(
        verdict["legit_success_rate"].as_f64().unwrap() < 0.9,
        "legitimate users are not served"
    );
    let _ = std::fs::remove_dir_all(&out);
}
