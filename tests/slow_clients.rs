//! Slow-client attacks with slowhttptest (Debian's package): slowloris (-H), slow body (-B)
//! and slow read (-X) from 127.0.0.1, while legitimate clients from other addresses keep a
//! success rate of at least 99%. Skipped with a notice when slowhttptest is missing outside
//! CI; under CI (`CI` set) it must run (`.ci/run` installs it).

mod common;

use common::*;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn have_slowhttptest() -> bool {
    let ok = Command::new("slowhttptest")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "slowhttptest is missing under CI: .ci/run must install it"
        );
        eprintln!("SKIPPED: slowhttptest is not installed (apt-get install -y slowhttptest)");
    }
    ok
}

/// Runs one slowhttptest mode against levee while legitimate clients work; returns levee and
/// the legitimate (ok, total).
async fn attack(
    mode_args: &[&str],
    path: &str,
    legit_net: u8,
    timers_only: bool,
) -> (levee::proxy::Levee, u64, u64) {
    let b = fast_backend().await;
    // With `timers_only`, the per-client connection, request and rate caps are lifted, so that
    // the slow-client timers (not the caps, which stop slowhttptest first with the defaults)
    // are what is tested.
    let caps = if timers_only {
        "max_connections_per_client = 1000\nmax_requests_per_client = 1000\nrate = 1000\nburst = 1000\n"
    } else {
        ""
    };
    let text = config_full(
        &[b.addr()],
        "max_concurrency = 64",
        &format!("[shield]\n{caps}min_body_rate = \"1KiB\"\nbody_rate_grace = \"2s\"\nsend_timeout = \"2s\""),
    )
    .replace("[admin]", "client_header_timeout = \"2s\"\n[admin]");
    let l = levee(&text).await;
    let url = format!("http://{}{path}", l.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut legit = Vec::new();
    for i in 1..=20u8 {
        let src: IpAddr = format!("127.0.{legit_net}.{i}").parse().unwrap();
        let (url, stop, ok, total) = (
            format!("http://{}/", l.addr),
            stop.clone(),
            ok.clone(),
            total.clone(),
        );
        legit.push(tokio::spawn(async move {
            let c = client_from(Some(src));
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                total.fetch_add(1, Ordering::Relaxed);
                if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(3), get(&c, &url)).await
                    && a.status == 200
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = tokio::time::Instant::now();
    let mut args: Vec<String> = mode_args.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "-c", "400", "-r", "200", "-i", "1", "-l", "10", "-p", "3", "-u",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.push(url);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("slowhttptest")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
    })
    .await
    .unwrap()
    .expect("slowhttptest runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    eprintln!(
        "slowhttptest {mode_args:?} exited with {:?}; last lines: {:?}",
        out.status, tail
    );
    // Legitimate users carry on for 8 s in all, however early slowhttptest gave up.
    tokio::time::sleep_until(started + Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    for t in legit {
        t.await.unwrap();
    }
    (l, ok.load(Ordering::Relaxed), total.load(Ordering::Relaxed))
}

/// With the defaults: legitimate users keep at least 99% and the attacker is banned.
async fn check_defaults(l: &levee::proxy::Levee, ok: u64, total: u64) {
    let rate = ok as f64 / total.max(1) as f64;
    let bans = admin_json(l, "/api/bans").await;
    eprintln!("defaults: legit {ok}/{total}; bans: {}", bans["bans"]);
    assert!(total > 600, "legitimate traffic ran: {total}");
    assert!(
        rate >= 0.99,
        "legitimate success rate {:.2}% ({ok}/{total})",
        rate * 100.0
    );
    assert_eq!(
        bans["bans"][0]["target"], "127.0.0.1/32",
        "the attacker is banned"
    );
}

/// With the caps lifted: the timer for this attack cuts slow connections and bans the
/// attacker for being a slow client; legitimate users still mostly get through.
async fn check_timer(l: &levee::proxy::Levee, ok: u64, total: u64, reason: &str) {
    let rate = ok as f64 / total.max(1) as f64;
    let r = metric(l, &format!("levee_rejections_total{{reason=\"{reason}\"}}"))
        .await
        .unwrap_or(0.0);
    let bans = admin_json(l, "/api/bans").await;
    eprintln!(
        "{reason}: legit {ok}/{total}; {r} connections cut for {reason}; bans: {}",
        bans["bans"]
    );
    assert!(r > 0.0, "levee cut slow connections ({reason})");
    assert_eq!(
        bans["bans"][0]["target"], "127.0.0.1/32",
        "the attacker is banned"
    );
    assert_eq!(bans["bans"][0]["reason"], "slow_client");
    assert!(
        rate >= 0.95,
        "legitimate success rate {:.2}% ({ok}/{total})",
        rate * 100.0
    );
}

macro_rules! slow_test {
    ($name:ident, $args:expr, $path:expr, $net:expr, $reason:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if !have_slowhttptest() {
                return;
            }
            bounded(Duration::from_secs(90), async {
                let (l, ok, total) = attack($args, $path, $net, false).await;
                check_defaults(&l, ok, total).await;
                let (l, ok, total) = attack($args, $path, $net + 10, true).await;
                check_timer(&l, ok, total, $reason).await;
            })
            .await;
        }
    };
}

slow_test!(slowloris_slow_headers, &["-H"], "/", 41, "header_timeout");
slow_test!(slow_body_post, &["-B", "-s", "65536"], "/", 42, "slow_body");
// A large answer (more than the socket buffers hold) read 32 bytes a second through a tiny
// receive window.
slow_test!(
    slow_read,
    &[
        "-X", "-k", "3", "-n", "1", "-z", "32", "-w", "512", "-y", "1024"
    ],
    "/?size=8388608",
    43,
    "slow_read"
);
