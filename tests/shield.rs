//! The shield: identity, per-client limits, bans (automatic and manual), allow/deny lists,
//! detect mode, attack detection, metrics. Many clients are played by binding distinct
//! 127.x.y.z source addresses.

mod common;

use common::*;
use levee::events::EventKind;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn shield_config(servers: &[SocketAddr], shield: &str) -> String {
    config_full(
        servers,
        "max_concurrency = 64",
        &format!("[shield]\n{shield}\n"),
    )
}

async fn get_with(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Default::default()).unwrap()).await
}

async fn connect_from(src: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(src, 0))?;
    s.connect(to).await
}

/// True when levee closes the connection without answering (read returns 0 or an error).
async fn closed_without_answer(mut s: TcpStream) -> bool {
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarded_for_never_changes_identity() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let text = shield_config(
            &[b.addr()],
            "rate = 5\nburst = 5\n[shield.bans]\nenabled = false",
        )
        .replace("[admin]", "trusted_proxies = [\"127.0.7.2/32\"]\n[admin]");
        let l = levee(&text).await;
        let url = format!("http://{}/", l.addr);
        // An untrusted peer rotating X-Forwarded-For is still one client: limited after 5.
        let c = client_from(Some(ip("127.0.7.1")));
        let mut statuses = Vec::new();
        for i in 0..10 {
            let fake = format!("198.51.100.{i}");
            statuses.push(
                get_with(&c, &url, &[("x-forwarded-for", fake.as_str())])
                    .await
                    .unwrap()
                    .status,
            );
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            5,
            "{statuses:?}"
        );
        assert!(statuses.contains(&429));
        // A trusted proxy's forwarded addresses are distinct clients: none is limited.
        let p = client_from(Some(ip("127.0.7.2")));
        for i in 0..10 {
            let real = format!("198.51.100.{i}");
            assert_eq!(
                get_with(&p, &url, &[("x-forwarded-for", real.as_str())])
                    .await
                    .unwrap()
                    .status,
                200
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after_and_never_reach_a_server() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let text = shield_config(&[b.addr()], "rate = 20\nburst = 10\n[shield.bans]\nenabled = false\n[[shield.routes]]\npath_prefix = \"/login\"\nrate = 2\nburst = 2");
        let l = levee(&text).await;
        let c = client_from(Some(ip("127.0.8.1")));
        let (mut ok, mut limited) = (0u64, 0u64);
        for _ in 0..30 {
            let a = get(&c, &format!("http://{}/page", l.addr)).await.unwrap();
            match a.status {
                200 => ok += 1,
                429 => {
                    limited += 1;
                    let ra: u64 = a.header("retry-after").unwrap().parse().unwrap();
                    assert!(ra >= 1);
                }
                s => panic!("status {s}"),
            }
        }
        assert!((10..=13).contains(&ok), "burst 10 plus what the rate refills: {ok}");
        assert_eq!(ok + limited, 30);
        // /login has its own, tighter limit.
        let c2 = client_from(Some(ip("127.0.8.2")));
        let login: Vec<u16> = {
            let mut v = Vec::new();
            for _ in 0..5 {
                v.push(get(&c2, &format!("http://{}/login", l.addr)).await.unwrap().status);
            }
            v
        };
        assert_eq!(login.iter().filter(|s| **s == 200).count(), 2, "{login:?}");
        assert_eq!(b.stats().served, ok + 2, "429s never reached the server");
        assert_eq!(metric(&l, "levee_rejections_total{reason=\"rate_limited\"}").await, Some((limited + 3) as f64));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_closes_extra_connections_at_accept() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(&shield_config(
            &[b.addr()],
            "max_connections_per_client = 4\n[shield.bans]\nenabled = false",
        ))
        .await;
        let src = ip("127.0.9.1");
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(connect_from(src, l.addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..3 {
            let s = connect_from(src, l.addr).await.unwrap();
            assert!(
                closed_without_answer(s).await,
                "a fifth connection is closed at accept"
            );
        }
        // Another client is unaffected.
        assert_eq!(
            get(
                &client_from(Some(ip("127.0.9.2"))),
                &format!("http://{}/", l.addr)
            )
            .await
            .unwrap()
            .status,
            200
        );
        assert_eq!(
            metric(
                &l,
                "levee_rejections_total{reason=\"too_many_connections\"}"
            )
            .await,
            Some(3.0)
        );
        drop(held);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_client_is_banned_and_its_connections_closed_allowlisted_never() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let text = shield_config(&[b.addr()], "rate = 10\nburst = 5\nallow = [\"127.0.10.9\"]\ndeny = [\"127.0.10.66\"]\n[shield.bans]\nthreshold = 10\nduration = \"1m\"");
        let l = levee(&text).await;
        let url = format!("http://{}/", l.addr);
        let mut events = l.shared.events.subscribe();
        // An idle keep-alive connection of the attacker, open before the ban.
        let mut idle = connect_from(ip("127.0.10.1"), l.addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let attacker = client_from(Some(ip("127.0.10.1")));
        let t = Instant::now();
        let mut banned_at = None;
        for _ in 0..200 {
            match get(&attacker, &url).await {
                Ok(a) if a.status == 403 => {
                    banned_at = Some(t.elapsed());
                    break;
                }
                Err(_) => {
                    banned_at = Some(t.elapsed());
                    break;
                }
                _ => {}
            }
        }
        assert!(banned_at.is_some(), "the attacker was banned");
        // New connections are closed at accept, the idle one is closed too.
        let s = connect_from(ip("127.0.10.1"), l.addr).await.unwrap();
        assert!(closed_without_answer(s).await);
        let n = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf)).await.expect("idle connection closed").unwrap_or(0);
        assert_eq!(n, 0);
        let ev = loop {
            let e = events.recv().await.unwrap();
            if e.kind == EventKind::BanAdded {
                break e;
            }
        };
        assert_eq!(ev.client.as_deref(), Some("127.0.10.1/32"));
        assert_eq!(ev.data["reason"], "rate_limit");
        assert_eq!(admin_json(&l, "/api/bans").await["bans"][0]["target"], "127.0.10.1/32");
        // The allowlisted client does the same and is never limited nor banned.
        let friend = client_from(Some(ip("127.0.10.9")));
        for _ in 0..100 {
            assert_eq!(get(&friend, &url).await.unwrap().status, 200);
        }
        // The denied client is refused at accept.
        let s = connect_from(ip("127.0.10.66"), l.addr).await.unwrap();
        assert!(closed_without_answer(s).await);
        for (series, v) in [
            ("levee_shield_bans_total{reason=\"rate_limit\"}", 1.0),
            ("levee_rejections_total{reason=\"denied\"}", 1.0),
        ] {
            assert_eq!(metric(&l, series).await, Some(v), "{series}");
        }
        wait_for(Duration::from_secs(3), "bans_active gauge", || async { metric(&l, "levee_shield_bans_active").await == Some(1.0) }).await;
        assert!(metric(&l, "levee_shield_tracked_clients").await.unwrap() >= 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_bans_through_the_api_take_effect_on_the_next_request() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(&shield_config(&[b.addr()], "")).await;
        let url = format!("http://{}/", l.addr);
        let c = client_from(Some(ip("127.0.11.5")));
        assert_eq!(get(&c, &url).await.unwrap().status, 200);
        let admin = format!("http://{}/api/bans", l.admin_addr);
        let post = |body: &'static str| {
            let admin = admin.clone();
            async move {
                send(
                    &client(),
                    http::Request::post(&admin)
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(
                            body.as_bytes(),
                        )))
                        .unwrap(),
                )
                .await
                .unwrap()
            }
        };
        let r = post(
            r#"{"target": "127.0.11.0/24", "duration": "1h", "reason": "seen in the WAF logs"}"#,
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
        // The same keep-alive client's next request is refused.
        let a = get(&c, &url).await;
        assert!(
            matches!(&a, Ok(x) if x.status == 403) || a.is_err(),
            "{a:?}"
        );
        let list = admin_json(&l, "/api/bans").await;
        assert_eq!(list["bans"][0]["target"], "127.0.11.0/24");
        assert_eq!(list["bans"][0]["manual"], true);
        assert_eq!(list["bans"][0]["note"], "seen in the WAF logs");
        // Bad input gets a clear error.
        let r = post(r#"{"target": "not-an-ip"}"#).await;
        assert_eq!(r.status, 400);
        assert!(r.text().contains("not-an-ip"));
        let r = post(r#"{"target": "127.0.12.1", "duration": "forever"}"#).await;
        assert_eq!(r.status, 400);
        // Lift it.
        let d = send(
            &client(),
            http::Request::delete(format!("{admin}/127.0.11.0%2F24"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(d.status, 200, "{}", d.text());
        assert_eq!(
            get(&client_from(Some(ip("127.0.11.5"))), &url)
                .await
                .unwrap()
                .status,
            200
        );
        let d = send(
            &client(),
            http::Request::delete(format!("{admin}/127.0.11.0/24"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(d.status, 404);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_mode_blocks_nothing_and_counts_what_it_would_block() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let l = levee(&shield_config(
            &[b.addr()],
            "mode = \"detect\"\nrate = 5\nburst = 5\n[shield.bans]\nthreshold = 5",
        ))
        .await;
        let c = client_from(Some(ip("127.0.13.1")));
        for _ in 0..50 {
            assert_eq!(
                get(&c, &format!("http://{}/", l.addr))
                    .await
                    .unwrap()
                    .status,
                200
            );
        }
        assert_eq!(b.stats().served, 50);
        assert!(
            metric(
                &l,
                "levee_shield_would_block_total{reason=\"rate_limited\"}"
            )
            .await
            .unwrap()
                >= 40.0
        );
        assert!(
            metric(&l, "levee_shield_would_block_total{reason=\"banned\"}")
                .await
                .unwrap()
                >= 1.0
        );
        assert_eq!(admin_json(&l, "/api/bans").await["active"], 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_is_reported_as_an_attack_with_its_top_sources() {
    bounded(Duration::from_secs(60), async {
        let b = fast_backend().await;
        let text = shield_config(&[b.addr()], "rate = 100\nburst = 100\n[shield.bans]\nenabled = false\n[shield.attack]\nfactor = 3\nfloor_rps = 50\nfor = \"2s\"\ncooldown = \"2s\"\nbaseline_window = \"10s\"");
        let l = levee(&text).await;
        let url = format!("http://{}/", l.addr);
        let mut events = l.shared.events.subscribe();
        // A quiet baseline: ~10 requests/s for 3 s.
        let quiet = client_from(Some(ip("127.0.14.1")));
        for _ in 0..30 {
            get(&quiet, &url).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A flood, mostly from 127.0.15.7.
        let started = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..8u8 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let src = if k < 6 { ip("127.0.15.7") } else { ip(&format!("127.0.16.{k}")) };
                let c = client_from(Some(src));
                while started.elapsed() < Duration::from_secs(5) {
                    let _ = get(&c, &format!("{url}flood")).await;
                }
            }));
        }
        let ev = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let e = events.recv().await.unwrap();
                if e.kind == EventKind::AttackStarted {
                    break e;
                }
            }
        })
        .await
        .expect("attack_started within 10 s");
        assert_eq!(ev.data["top_sources"][0]["client"], "127.0.15.7");
        assert!(ev.data["peak_rps"].as_f64().unwrap() > 50.0);
        assert!(ev.data["baseline_rps"].as_f64().unwrap() < 20.0);
        assert!(ev.data["sources"].as_u64().unwrap() >= 2);
        assert_eq!(ev.data["top_subnets"][0]["subnet"], "127.0.15.0/24");
        assert_eq!(metric(&l, "levee_shield_attack_active").await, Some(1.0));
        // Under attack, per-client limits tighten (under_attack_rate_factor 0.5): a burst of
        // 60 requests (under the 64-connection cap), within the peacetime burst of 100, now meets
        // a burst of 50.
        let probe = client_from(Some(ip("127.0.17.1")));
        let mut burst = Vec::new();
        for _ in 0..60 {
            let (c, url) = (probe.clone(), url.clone());
            burst.push(tokio::spawn(async move { get(&c, &url).await.map(|a| a.status) }));
        }
        let mut limited = 0;
        for b in burst {
            if b.await.unwrap() == Ok(429) {
                limited += 1;
            }
        }
        assert!(limited >= 5, "under attack, a burst past the halved limit is refused: {limited} of 60");
        for t in tasks {
            t.await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if events.recv().await.unwrap().kind == EventKind::AttackEnded {
                    break;
                }
            }
        })
        .await
        .expect("attack_ended after the flood stops");
        // In peacetime the same burst from a fresh client passes whole.
        let calm = client_from(Some(ip("127.0.17.2")));
        let mut burst = Vec::new();
        for _ in 0..60 {
            let (c, url) = (calm.clone(), url.clone());
            burst.push(tokio::spawn(async move { get(&c, &url).await.map(|a| a.status) }));
        }
        for b in burst {
            assert_eq!(b.await.unwrap(), Ok(200));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_and_allow_files_are_read_again_on_reload() {
    bounded(Duration::from_secs(30), async {
        let b = fast_backend().await;
        let dir = std::env::temp_dir().join(format!(
            "levee-lists-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("deny.txt"), "# abusive ranges\n127.0.18.0/24\n").unwrap();
        let path = dir.join("levee.toml");
        std::fs::write(
            &path,
            shield_config(&[b.addr()], "deny_file = \"deny.txt\""),
        )
        .unwrap();
        let l = levee_from_file(&path).await;
        let s = connect_from(ip("127.0.18.5"), l.addr).await.unwrap();
        assert!(
            closed_without_answer(s).await,
            "a denied range is refused at accept"
        );
        assert_eq!(
            get(
                &client_from(Some(ip("127.0.19.5"))),
                &format!("http://{}/", l.addr)
            )
            .await
            .unwrap()
            .status,
            200
        );
        // The file changes: the next reload takes the new list.
        std::fs::write(dir.join("deny.txt"), "127.0.19.0/24\n").unwrap();
        l.reload().await.unwrap();
        assert_eq!(
            get(
                &client_from(Some(ip("127.0.18.5"))),
                &format!("http://{}/", l.addr)
            )
            .await
            .unwrap()
            .status,
            200
        );
        let s = connect_from(ip("127.0.19.5"), l.addr).await.unwrap();
        assert!(closed_without_answer(s).await);
        // A bad line is a config error with the file and line; the old list keeps working.
        std::fs::write(dir.join("deny.txt"), "127.0.19.0/24\nnot-a-range\n").unwrap();
        let err = l.reload().await.unwrap_err().details().join("\n");
        assert!(
            err.contains("deny.txt:2") && err.contains("not-a-range"),
            "{err}"
        );
        let s = connect_from(ip("127.0.19.5"), l.addr).await.unwrap();
        assert!(closed_without_answer(s).await);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
