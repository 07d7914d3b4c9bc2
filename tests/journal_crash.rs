//! The journal survives kill -9: the real binary writes events (one per admin reload), is
//! killed with SIGKILL, and the file passes `PRAGMA integrity_check` with every event published
//! more than a second before the kill in it.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const BIN: &str = env!("CARGO_BIN_EXE_levee");

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_at_most_the_last_second_and_never_corrupts() {
    bounded(Duration::from_secs(60), async {
        let dir = std::env::temp_dir().join(format!("levee-jcrash-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let b = fast_backend().await;
        let cfg = dir.join("levee.toml");
        std::fs::write(
            &cfg,
            format!(
                "[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[pools.web]\nservers = [\"{}\"]\n[journal]\npath = \"journal.db\"\n",
                b.addr()
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let admin = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(err).lines();
            loop {
                let l = lines.next().expect("serving banner").unwrap();
                if let Some(i) = l.find("(admin http://") {
                    let rest = &l[i + "(admin http://".len()..];
                    let a = rest.trim_end_matches(')').to_string();
                    std::thread::spawn(move || for _ in lines.by_ref() {});
                    return a;
                }
            }
        })
        .await
        .unwrap();
        // Publish events as fast as reloads go, recording when each one was acknowledged.
        let c = client();
        let mut acked: Vec<i64> = Vec::new();
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            let req = http::Request::post(format!("http://{admin}/api/reload"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let a = send(&c, req).await.unwrap();
            assert_eq!(a.status, 200, "{}", a.text());
            acked.push(unix_ms());
        }
        let killed_at = unix_ms();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(acked.len() > 5, "only {} reloads", acked.len());

        let db = rusqlite::Connection::open(dir.join("journal.db")).unwrap();
        let ok: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok");
        let started: i64 = db
            .query_row("SELECT COUNT(*) FROM events WHERE kind = 'levee_started'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(started, 1);
        let stored: i64 = db
            .query_row("SELECT COUNT(*) FROM events WHERE kind = 'config_reloaded'", [], |r| r.get(0))
            .unwrap();
        let old_enough = acked.iter().filter(|t| **t <= killed_at - 1000).count() as i64;
        assert!(
            stored >= old_enough,
            "{stored} reload events stored, but {old_enough} were acknowledged more than 1 s before the kill"
        );
        assert!(stored <= acked.len() as i64);
        let samples: i64 = db.query_row("SELECT COUNT(*) FROM samples", [], |r| r.get(0)).unwrap();
        assert!(samples >= 1, "per-second samples are journaled");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
