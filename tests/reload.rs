//! Hot reload: invalid files are rejected with file:line:column and the old config keeps
//! serving; valid ones are swapped atomically with state carried over; no request fails.

mod common;

use common::*;
use levee::backend::BackendOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn post(url: &str) -> Answer {
    let req = http::Request::post(url).body(Default::default()).unwrap();
    send(&client(), req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing() {
    bounded(Duration::from_secs(120), async {
        let opts = BackendOptions {
            capacity: 1000,
            latency: Duration::from_millis(5),
            ..Default::default()
        };
        let a = backend(opts.clone()).await;
        let b = backend(opts).await;
        let dir = tempdir("reload");
        let path = dir.join("levee.toml");
        let valid = |cap: u32| {
            config(
                &[a.addr(), b.addr()],
                &format!("max_concurrency = {cap}\nqueue_size = 256\nqueue_timeout = \"5s\""),
            )
        };
        write(&path, &valid(8));
        let l = levee_from_file(&path).await;
        let url = format!("http://{}/", l.addr);
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut load = Vec::new();
        for _ in 0..8 {
            let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
            load.push(tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    match get(&c, &url).await {
                        Ok(x) if x.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        let admin = format!("http://{}/api/reload", l.admin_addr);
        for i in 0..20u32 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if i % 2 == 0 {
                write(&path, &valid(6 + i % 5));
                let r = post(&admin).await;
                assert_eq!(r.status, 200, "{}", r.text());
            } else {
                write(&path, &format!("{}\nnot_a_key = 1\n", valid(8)));
                let r = post(&admin).await;
                assert_eq!(r.status, 422);
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                let detail = v["details"][0].as_str().unwrap().to_string();
                assert!(
                    detail.contains("levee.toml:") && detail.contains("not_a_key"),
                    "{detail}"
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.await.unwrap();
        }
        assert!(
            ok.load(Ordering::Relaxed) > 200,
            "load ran: {}",
            ok.load(Ordering::Relaxed)
        );
        assert_eq!(
            failed.load(Ordering::Relaxed),
            0,
            "no request failed across 20 reloads"
        );
        assert_eq!(
            metric(&l, "levee_config_reloads_total{result=\"ok\"}").await,
            Some(10.0)
        );
        assert_eq!(
            metric(&l, "levee_config_reloads_total{result=\"failed\"}").await,
            Some(10.0)
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_kept_servers_carries_over_and_bad_reload_keeps_old_config() {
    bounded(Duration::from_secs(60), async {
        let a = backend(BackendOptions {
            capacity: 1000,
            latency: Duration::from_secs(1),
            ..Default::default()
        })
        .await;
        let b = fast_backend().await;
        let dir = tempdir("reload-state");
        let path = dir.join("levee.toml");
        write(
            &path,
            &config(&[a.addr()], "max_concurrency = 2\nqueue_size = 0"),
        );
        let l = levee_from_file(&path).await;
        let url = format!("http://{}/", l.addr);
        // Two slow requests hold both slots of server a.
        let mut slow = Vec::new();
        for _ in 0..2 {
            let url = url.clone();
            slow.push(tokio::spawn(async move {
                get(&client(), &url).await.unwrap().status
            }));
        }
        wait_until(Duration::from_secs(5), "a has 2 in flight", || {
            a.stats().in_flight == 2
        })
        .await;
        // Reload adds server b; a keeps its in-flight count, so it gets nothing more.
        write(
            &path,
            &config(&[a.addr(), b.addr()], "max_concurrency = 2\nqueue_size = 0"),
        );
        l.reload().await.unwrap();
        let st = admin_json(&l, "/api/status").await;
        assert_eq!(
            st["pools"][0]["servers"][0]["in_flight"], 2,
            "in-flight count carried over: {st}"
        );
        for _ in 0..4 {
            assert_eq!(get(&client(), &url).await.unwrap().status, 200);
        }
        assert_eq!(a.stats().max_in_flight, 2, "the cap held across the reload");
        for t in slow {
            assert_eq!(t.await.unwrap(), 200, "in-flight requests finish normally");
        }
        // An invalid file: rejected with its location, the old config keeps serving.
        write(
            &path,
            "[pools.web]\nservers = [\"127.0.0.1:1\"]\nmax_concurrency = 0\n",
        );
        let err = l.reload().await.unwrap_err();
        let details = err.details().join("\n");
        assert!(
            details.contains("levee.toml:3:19") && details.contains("max_concurrency"),
            "{details}"
        );
        assert_eq!(get(&client(), &url).await.unwrap().status, 200);
        assert_eq!(
            admin_json(&l, "/api/status").await["pools"][0]["servers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
