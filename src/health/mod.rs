//! Active health checks: per pool, a GET of `path` on every server each `interval`; `rise`
//! consecutive successes (2xx/3xx) mark a server up, `fall` consecutive failures mark it down.
//! Passive outlier ejection lives with the pool (`proxy::pool::PoolShared::report`).

use crate::events::{Event, EventKind};
use crate::proxy::pool::{PoolShared, ServerState};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::task::JoinHandle;

type CheckClient = Client<HttpConnector, Empty<Bytes>>;

/// Starts the checker of one pool (a no-op task when checks are off).
pub fn spawn(pool: Arc<PoolShared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client: CheckClient = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(conn);
        loop {
            let inner = pool.inner.load_full();
            let Some(hc) = inner.cfg.health_check.clone() else {
                return;
            };
            let mut set = tokio::task::JoinSet::new();
            for s in &inner.servers {
                let (client, s, path) = (client.clone(), s.clone(), hc.path.clone());
                set.spawn(async move {
                    let ok = check(&client, &s, &path, hc.timeout).await;
                    (s, ok)
                });
            }
            while let Some(Ok((s, ok))) = set.join_next().await {
                record(&pool, &s, ok, hc.rise, hc.fall);
            }
            tokio::time::sleep(hc.interval).await;
        }
    })
}

async fn check(
    client: &CheckClient,
    s: &ServerState,
    path: &str,
    timeout: std::time::Duration,
) -> bool {
    let uri = format!("http://{}{}", s.addr, path);
    let Ok(req) = http::Request::get(uri)
        .header(http::header::HOST, s.name.as_ref())
        .header(http::header::USER_AGENT, "levee-health-check")
        .body(Empty::new())
    else {
        return false;
    };
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => {
            let st = resp.status();
            st.is_success() || st.is_redirection()
        }
        _ => false,
    }
}

fn record(pool: &PoolShared, s: &ServerState, ok: bool, rise: u32, fall: u32) {
    if ok {
        s.check_fail.store(0, Ordering::Relaxed);
        let n = s.check_ok.fetch_add(1, Ordering::AcqRel) + 1;
        if !s.checks_up() && n >= rise && s.set_checks_up(true) {
            pool.counters.health_up.inc();
            pool.events.publish(
                Event::new(
                    EventKind::ServerUp,
                    format!(
                        "server {} of pool {} is up: health check passed {n} times in a row",
                        s.name, pool.name
                    ),
                )
                .pool(&pool.name)
                .server(&s.name),
            );
        }
    } else {
        s.check_ok.store(0, Ordering::Relaxed);
        let n = s.check_fail.fetch_add(1, Ordering::AcqRel) + 1;
        if s.checks_up() && n >= fall && s.set_checks_up(false) {
            pool.counters.health_down.inc();
            pool.events.publish(
                Event::new(
                    EventKind::ServerDown,
                    format!(
                        "server {} of pool {} is down: health check failed {n} times in a row",
                        s.name, pool.name
                    ),
                )
                .pool(&pool.name)
                .server(&s.name),
            );
        }
    }
}
