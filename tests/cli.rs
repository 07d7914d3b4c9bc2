//! The real binary: help, exit codes, error messages, demo, graceful shutdown, SIGHUP,
//! streaming 1 GiB each way with flat memory.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_levee");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_subcommand() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["serve", "check", "demo", "backend"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from\n{out}"
        );
    }
}

#[test]
fn bad_config_and_bad_arguments_exit_2_with_locations() {
    let dir = tempdir("bad");
    let f = dir.join("bad.toml");
    std::fs::write(&f, "[listener]\nbind = \"127.0.0.1:8080\"\n[pools.web]\nservers = [\"127.0.0.1:9001\"]\nqueue_sise = 10\n").unwrap();
    let (code, _, err) = run(&["serve", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml:5:1") && err.contains("queue_sise"),
        "{err}"
    );
    let (code, _, err) = run(&["check", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    // Several problems at once, each with its location.
    std::fs::write(
        &f,
        "[pools.web]\nservers = [\"nowhere\"]\nalgorithm = \"fastest\"\nqueue_timeout = \"soon\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml:4:17") && err.contains("soon"),
        "{err}"
    );
    std::fs::write(
        &f,
        "[pools.web]\nservers = [\"nowhere\"]\nalgorithm = \"fastest\"\n",
    )
    .unwrap();
    let (_, _, err) = run(&["check", "--config", f.to_str().unwrap()]);
    assert!(
        err.contains("2 problems")
            && err.contains("bad.toml:2:11")
            && err.contains("bad.toml:3:13: pools.web.algorithm"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "serve",
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("missing.toml") && err.contains("cannot read"),
        "{err}"
    );
    let (code, _, err) = run(&["serve", "--bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("--bogus"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn example_config_and_demo_config_are_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/levee.toml");
    let (code, out, err) = run(&["check", "--config", example]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&["demo", "--print-config"]);
    assert_eq!(code, 0);
    let cfg = levee::config::Config::parse(&out, "demo", None).unwrap();
    assert_eq!(cfg.pools[0].servers.len(), 3);
    assert!(cfg.pools[0].health_check.is_some());
}

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &p.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Starts `levee serve` on port 0 and reads the bound addresses from its stderr.
fn serve(config: &std::path::Path) -> (Proc, String, String) {
    let (p, url, admin, _) = serve_watched(config);
    (p, url, admin)
}

/// Like [`serve`], and the thread reading levee's stderr returns every line that reports a
/// panic (of any task) once the process has exited.
fn serve_watched(
    config: &std::path::Path,
) -> (Proc, String, String, std::thread::JoinHandle<Vec<String>>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let line = loop {
        let l = lines.next().expect("levee printed its addresses").unwrap();
        if l.contains("serving on") {
            break l;
        }
    };
    let panics = std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
    });
    let words: Vec<&str> = line.split_whitespace().collect();
    let url = words
        .iter()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let admin = words
        .iter()
        .rev()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    (Proc(child), url, admin, panics)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    bounded(Duration::from_secs(60), async {
        let b = backend(levee::backend::BackendOptions {
            capacity: 100,
            latency: Duration::from_millis(1500),
            ..Default::default()
        })
        .await;
        let dir = tempdir("term");
        let f = dir.join("levee.toml");
        std::fs::write(&f, config(&[b.addr()], "")).unwrap();
        let (mut p, url, _) = serve(&f);
        let mut reqs = Vec::new();
        for _ in 0..10 {
            let url = url.clone();
            reqs.push(tokio::spawn(async move {
                get(&client(), &url).await.map(|a| a.status)
            }));
        }
        wait_until(Duration::from_secs(5), "10 requests in flight", || {
            b.stats().in_flight == 10
        })
        .await;
        signal(&p, "TERM");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            tokio::net::TcpStream::connect(url.trim_start_matches("http://").trim_end_matches('/'))
                .await
                .is_err(),
            "no new connections while draining"
        );
        for r in reqs {
            assert_eq!(r.await.unwrap(), Ok(200), "in-flight request finished");
        }
        let status = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(s) = p.0.try_wait().unwrap() {
                    return s;
                }
                assert!(Instant::now() < deadline, "levee did not exit");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        assert_eq!(status.code(), Some(0));
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_bad_file_keeps_serving() {
    bounded(Duration::from_secs(60), async {
        let a = fast_backend().await;
        let dir = tempdir("hup");
        let f = dir.join("levee.toml");
        std::fs::write(&f, config(&[a.addr()], "max_concurrency = 5")).unwrap();
        let (p, url, admin) = serve(&f);
        let status = || async {
            serde_json::from_slice::<serde_json::Value>(
                &get(&client(), &format!("{admin}/api/status"))
                    .await
                    .unwrap()
                    .body,
            )
            .unwrap()
        };
        assert_eq!(
            status().await["pools"][0]["servers"][0]["max_concurrency"],
            5
        );
        std::fs::write(&f, config(&[a.addr()], "max_concurrency = 9")).unwrap();
        signal(&p, "HUP");
        wait_for(Duration::from_secs(5), "cap 9 after SIGHUP", || async {
            status().await["pools"][0]["servers"][0]["max_concurrency"] == 9
        })
        .await;
        std::fs::write(&f, "this is = = not toml").unwrap();
        signal(&p, "HUP");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(get(&client(), &url).await.unwrap().status, 200);
        assert_eq!(status().await["generation"], 2);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_streams_with_flat_memory() {
    use http_body_util::BodyExt;
    bounded(Duration::from_secs(300), async {
        let b = fast_backend().await;
        let dir = tempdir("gib");
        let f = dir.join("levee.toml");
        std::fs::write(
            &f,
            config(&[b.addr()], "").replace("[admin]", "max_body_size = \"2GiB\"\n[admin]"),
        )
        .unwrap();
        let (p, url, _, panics) = serve_watched(&f);
        let pid = p.0.id();
        let base = rss_kib(pid);
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        const GIB: u64 = 1 << 30;
        // Download.
        let resp =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>()
                .get(format!("{url}?size={GIB}").parse().unwrap())
                .await
                .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(fr) = body.frame().await {
            if let Ok(d) = fr.unwrap().into_data() {
                got += d.len() as u64;
            }
        }
        assert_eq!(got, GIB);
        // Upload.
        let body = Upload {
            remaining: GIB,
            chunk: bytes::Bytes::from(vec![b'u'; 256 * 1024]),
        };
        let req = http::Request::post(&url)
            .header("content-length", GIB.to_string())
            .body(body)
            .unwrap();
        let resp =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http()
                .request(req)
                .await
                .unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["received_bytes"], GIB);
        sampler.abort();
        let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("levee RSS: start {base} KiB, peak {peak} KiB while moving 2 GiB");
        assert!(
            peak < base + 64 * 1024,
            "memory stays flat: start {base} KiB, peak {peak} KiB"
        );
        // Every connection has closed by now; a graceful stop waits for their tasks, and none
        // of them may have panicked.
        signal(&p, "TERM");
        let panics = panics.join().unwrap();
        assert!(panics.is_empty(), "levee panicked: {panics:?}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// A generated request body of `remaining` bytes.
struct Upload {
    remaining: u64,
    chunk: bytes::Bytes,
}
impl http_body::Body for Upload {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(
            self.chunk.slice(..n as usize),
        ))))
    }
}

/// Reads stderr (or stdout) lines of a child until one contains `needle`.
fn line_with(r: impl std::io::Read + Send + 'static, needle: &str) -> String {
    let mut lines = BufReader::new(r).lines();
    let found = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(needle) => break l,
            Some(Ok(_)) => {}
            _ => panic!("no line with {needle:?}"),
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_through_three_backends() {
    bounded(Duration::from_secs(60), async {
        let (p, url, admin) = start_demo().await;
        let c = client();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..30 {
            let a = get(&c, &format!("{url}/")).await.unwrap();
            assert_eq!(a.status, 200);
            seen.insert(a.header("x-backend").unwrap().to_string());
        }
        assert_eq!(
            seen.len(),
            3,
            "the demo balances over three backends: {seen:?}"
        );
        let st: serde_json::Value =
            serde_json::from_slice(&get(&c, &format!("{admin}/api/status")).await.unwrap().body)
                .unwrap();
        assert_eq!(st["pools"][0]["servers"].as_array().unwrap().len(), 3);
        signal(&p, "INT");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_command_serves_stats() {
    bounded(Duration::from_secs(30), async {
        let mut child = Command::new(BIN)
            .args([
                "backend",
                "--listen",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--capacity",
                "4",
                "--latency",
                "5ms",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let _p = Proc(child);
        let line = tokio::task::spawn_blocking(move || line_with(out, "listening on"))
            .await
            .unwrap();
        let url = url_in(&line);
        let c = client();
        assert_eq!(get(&c, &format!("{url}/")).await.unwrap().status, 200);
        let st: serde_json::Value =
            serde_json::from_slice(&get(&c, &format!("{url}/stats")).await.unwrap().body).unwrap();
        assert_eq!(st["served"], 1);
        assert_eq!(st["crashes"], 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_command_adds_lists_and_lifts_bans() {
    bounded(Duration::from_secs(60), async {
        let b = fast_backend().await;
        let dir = tempdir("ban");
        let f = dir.join("levee.toml");
        std::fs::write(&f, config_full(&[b.addr()], "", "[shield]\nenabled = true")).unwrap();
        let (_p, url, admin) = serve(&f);
        let ban = |args: Vec<String>| {
            let admin = admin.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut a = vec!["ban".to_string(), "--admin".into(), admin];
                    a.extend(args);
                    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                    run(&refs)
                })
                .await
                .unwrap()
            }
        };
        let c = client_from(Some("127.0.50.1".parse().unwrap()));
        assert_eq!(get(&c, &format!("{url}/")).await.unwrap().status, 200);
        let (code, out, err) = ban(vec![
            "add".into(),
            "127.0.50.0/24".into(),
            "--duration".into(),
            "1h".into(),
            "--reason".into(),
            "credential stuffing".into(),
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("banned 127.0.50.0/24"), "{out}");
        let a = get(&c, &format!("{url}/")).await;
        assert!(
            matches!(&a, Ok(x) if x.status == 403) || a.is_err(),
            "the next request is refused: {a:?}"
        );
        let (code, out, _) = ban(vec!["list".into()]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("127.0.50.0/24")
                && out.contains("manual")
                && out.contains("credential stuffing")
                && out.contains("1 ban in force"),
            "{out}"
        );
        let (code, out, _) = ban(vec!["remove".into(), "127.0.50.0/24".into()]).await;
        assert_eq!(code, 0);
        assert!(out.contains("lifted"), "{out}");
        assert_eq!(
            get(
                &client_from(Some("127.0.50.1".parse().unwrap())),
                &format!("{url}/")
            )
            .await
            .unwrap()
            .status,
            200
        );
        // Bad input and an unreachable admin API.
        let (code, _, err) = ban(vec!["add".into(), "nonsense".into()]).await;
        assert_eq!(code, 2);
        assert!(err.contains("nonsense"), "{err}");
        let (code, _, err) = ban(vec!["remove".into(), "127.0.51.1".into()]).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("no ban on 127.0.51.1/32"), "{err}");
        let (code, _, err) = run(&["ban", "--admin", "http://127.0.0.1:1", "list"]);
        assert_eq!(code, 1);
        assert!(err.contains("cannot reach the admin API"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
