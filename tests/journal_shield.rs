//! The journal and the postmortem with the real shield: a flood from one /24 is rate limited,
//! its sources banned and the attack detected by the shield itself; the journal's samples
//! add up to what the clients received and the draft names the subnet and the bans.

mod common;

use common::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_flood_is_journaled_and_drafted_with_its_subnet_and_bans() {
    bounded(Duration::from_secs(90), async {
        let dir = std::env::temp_dir().join(format!("levee-jshield-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("journal.db");
        let b = fast_backend().await;
        let tail = format!(
            "[shield]\nrate = 20\nburst = 40\n[shield.bans]\nthreshold = 20\nduration = \"5m\"\n[shield.attack]\nfactor = 3\nfloor_rps = 50\nfor = \"1s\"\ncooldown = \"2s\"\nbaseline_window = \"10s\"\n[journal]\npath = \"{}\"\n[alerting]\ntime_scale = 0.05\nincident_quiet_period = \"20s\"\n",
            db.display()
        );
        let l = levee(&config_full(&[b.addr()], "max_concurrency = 64", &tail)).await;
        let url = format!("http://{}/", l.addr);
        let ok = Arc::new(AtomicU64::new(0));
        let limited = Arc::new(AtomicU64::new(0));
        let stalled = Arc::new(AtomicU64::new(0));
        // A quiet baseline, then a flood from 127.0.15.0/24.
        let quiet = client_from(Some(ip("127.0.14.1")));
        for _ in 0..30 {
            if get(&quiet, &url).await.unwrap().status == 200 {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut bus = l.shared.events.subscribe();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for k in 1..=30u8 {
            let (url, ok, limited, stalled) = (url.clone(), ok.clone(), limited.clone(), stalled.clone());
            tasks.push(tokio::spawn(async move {
                let c = client_from(Some(ip(&format!("127.0.15.{k}"))));
                while started.elapsed() < Duration::from_secs(4) {
                    // A request that gets no answer within 2 s (seen around the moment its
                    // address is banned, at this session's start too: see the closing note of
                    // 2026-12-01) is given up like a refused one, so the flood ends on time.
                    let Ok(answer) =
                        tokio::time::timeout(Duration::from_secs(2), get(&c, &format!("{url}flood"))).await
                    else {
                        stalled.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    match answer {
                        Ok(a) if a.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        // 429 rate limited, 403 banned on a connection opened before the ban.
                        Ok(a) if a.status == 429 || a.status == 403 => {
                            limited.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(a) => panic!("unexpected {}", a.status),
                        // Banned: refused at accept.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        eprintln!("flood over: {} ok, {} limited, {} stalled", ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed), stalled.load(Ordering::Relaxed));
        let mut kinds = std::collections::BTreeMap::new();
        while let Ok(e) = bus.try_recv() {
            *kinds.entry(e.kind.as_str()).or_insert(0) += 1;
        }
        eprintln!("events: {kinds:?}");
        wait_for(Duration::from_secs(60), "an incident that opened and closed", || async {
            let v = admin_json(&l, "/api/incidents").await;
            v["incidents"][0]["end_ms"].is_i64()
        })
        .await;
        // One more second so the last sample is journaled, then stop (levee_stopped is kept).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let id = admin_json(&l, "/api/incidents").await["incidents"][0]["id"].as_i64().unwrap();
        let r = admin_json(&l, &format!("/api/incidents/{id}")).await;
        let md = get(&client(), &format!("http://{}/api/incidents/{id}/postmortem", l.admin_addr)).await.unwrap().text();
        l.shutdown().await;
        if std::env::var("LEVEE_SHOW_POSTMORTEM").is_ok() {
            eprintln!("{md}");
        }

        let alerts: Vec<&str> = r["alerts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
        assert!(alerts.contains(&"attack_suspected"), "{alerts:?}");
        assert_eq!(r["shield"]["top_subnets"][0][0], "127.0.15.0/24", "{}", r["shield"]);
        assert!(r["shield"]["bans_automatic"].as_u64().unwrap() >= 1, "{}", r["shield"]);
        assert!(md.contains("127.0.15.0/24") && md.contains("banned automatically"), "{md}");

        let c = rusqlite::Connection::open(&db).unwrap();
        let (answered, blocked): (i64, i64) = c
            .query_row("SELECT SUM(answered), SUM(blocked) FROM samples", [], |x| Ok((x.get(0)?, x.get(1)?)))
            .unwrap();
        assert_eq!(answered as u64, ok.load(Ordering::Relaxed), "every answered request is in the samples");
        assert!(blocked as u64 >= limited.load(Ordering::Relaxed), "429s and 403s are counted as blocked");
        let stopped: i64 = c.query_row("SELECT COUNT(*) FROM events WHERE kind = 'levee_stopped'", [], |x| x.get(0)).unwrap();
        assert_eq!(stopped, 1);
        let bans: i64 = c.query_row("SELECT COUNT(*) FROM events WHERE kind = 'ban_added'", [], |x| x.get(0)).unwrap();
        assert!(bans >= 1);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
