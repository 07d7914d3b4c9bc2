//! Notifiers: webhooks (Alertmanager's webhook JSON, so existing receivers work unchanged), a
//! log line, or a command with the JSON on stdin. Each receiver has its own bounded queue and
//! worker: a slow, hanging or failing receiver delays only itself, never traffic or the other
//! receivers. Failed deliveries are retried with doubling backoff; when a queue is full the new
//! notification is dropped and counted.

use crate::config::observe::{Notifier, NotifierKind};
use crate::events::{Event, EventKind};
use crate::proxy::runtime::Shared;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, watch};

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the receiver answered {0}")]
    Status(u16),
    #[error("{0}")]
    Http(String),
    #[error("cannot run the command: {0}")]
    Spawn(std::io::Error),
    #[error("the command exited with {0}")]
    Exit(std::process::ExitStatus),
}

/// Counters shared by the workers (shown in `/api/dashboard`).
#[derive(Debug, Default)]
pub struct NotifyStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// The Alertmanager webhook document (version 4) for one alert.
pub fn webhook_payload(receiver: &str, alert: &Value, external_url: &str) -> Value {
    let labels = alert.get("labels").cloned().unwrap_or(json!({}));
    let name = labels.get("alertname").cloned().unwrap_or(json!(""));
    let mut a = alert.clone();
    if let Some(o) = a.as_object_mut() {
        o.remove("state");
    }
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname={}}}", name),
        "truncatedAlerts": 0,
        "status": alert.get("status").cloned().unwrap_or(json!("firing")),
        "receiver": receiver,
        "groupLabels": { "alertname": name },
        "commonLabels": labels,
        "commonAnnotations": alert.get("annotations").cloned().unwrap_or(json!({})),
        "externalURL": external_url,
        "alerts": [a],
    })
}

struct Worker {
    cfg: Notifier,
    tx: mpsc::Sender<Value>,
}

/// Runs the dispatcher until `stop`: reads alert events from the bus and queues them for every
/// receiver of the current config (receivers are rebuilt when a reload changes them).
pub async fn run(
    shared: Arc<Shared>,
    mut rx: broadcast::Receiver<Arc<Event>>,
    stats: Arc<NotifyStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut generation = 0;
    let mut workers: Vec<Worker> = Vec::new();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    loop {
        let ev = tokio::select! {
            r = rx.recv() => match r {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "notifier dispatcher fell behind the event bus");
                    continue;
                }
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        if !matches!(ev.kind, EventKind::AlertFiring | EventKind::AlertResolved) {
            continue;
        }
        let snap = shared.snapshot.load();
        if snap.generation != generation {
            generation = snap.generation;
            let cfgs = &snap.cfg.observe.notifiers;
            workers.retain(|w| {
                cfgs.iter()
                    .any(|c| c.name == w.cfg.name && format!("{c:?}") == format!("{:?}", w.cfg))
            });
            for c in cfgs {
                if !workers.iter().any(|w| w.cfg.name == c.name) {
                    let (tx, rx) = mpsc::channel(c.queue_size);
                    tokio::spawn(deliver_loop(
                        c.clone(),
                        rx,
                        client.clone(),
                        stats.clone(),
                        shared.metrics.clone(),
                    ));
                    workers.push(Worker { cfg: c.clone(), tx });
                }
            }
        }
        let external = external_url(&shared);
        let resolved = ev.kind == EventKind::AlertResolved;
        for w in &workers {
            if resolved && !w.cfg.send_resolved {
                continue;
            }
            let doc = webhook_payload(&w.cfg.name, &ev.data, &external);
            if w.tx.try_send(doc).is_err() {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                shared.metrics.notification(&w.cfg.name, "dropped");
                tracing::warn!(receiver = %w.cfg.name, "notification dropped: the receiver's queue is full");
            }
        }
    }
}

/// `[alerting] external_url`, or the admin address.
pub fn external_url(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let u = &snap.cfg.observe.alerting.external_url;
    if u.is_empty() {
        format!("http://{}", snap.cfg.admin.bind)
    } else {
        u.trim_end_matches('/').to_string()
    }
}

async fn deliver_loop(
    cfg: Notifier,
    mut rx: mpsc::Receiver<Value>,
    client: Client<HttpConnector, Full<Bytes>>,
    stats: Arc<NotifyStats>,
    metrics: Arc<super::metrics::Metrics>,
) {
    while let Some(doc) = rx.recv().await {
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            match deliver_once(&cfg, &doc, &client).await {
                Ok(()) => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    metrics.notification(&cfg.name, "delivered");
                    break;
                }
                Err(e) if attempt < cfg.max_retries => {
                    tracing::warn!(receiver = %cfg.name, attempt, error = %e, "notification failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    attempt += 1;
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    metrics.notification(&cfg.name, "failed");
                    tracing::error!(receiver = %cfg.name, error = %e, "notification given up after retries");
                    break;
                }
            }
        }
    }
}

async fn deliver_once(
    cfg: &Notifier,
    doc: &Value,
    client: &Client<HttpConnector, Full<Bytes>>,
) -> Result<(), DeliveryError> {
    let body = doc.to_string();
    let work = async {
        match &cfg.kind {
            NotifierKind::Log => {
                let a = doc
                    .get("alerts")
                    .and_then(|a| a.get(0))
                    .cloned()
                    .unwrap_or_default();
                tracing::warn!(
                    target: "levee::alerts",
                    receiver = %cfg.name,
                    status = %doc["status"],
                    alert = %a["labels"]["alertname"],
                    description = %a["annotations"]["description"],
                    "{}",
                    a["annotations"]["summary"].as_str().unwrap_or("")
                );
                Ok(())
            }
            NotifierKind::Webhook { url } => {
                let req = http::Request::post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::USER_AGENT, "levee")
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| DeliveryError::Http(e.to_string()))?;
                let resp = client
                    .request(req)
                    .await
                    .map_err(|e| DeliveryError::Http(e.to_string()))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(DeliveryError::Status(resp.status().as_u16()))
                }
            }
            NotifierKind::Command { argv } => {
                let Some((program, args)) = argv.split_first() else {
                    return Err(DeliveryError::Http("empty command".into()));
                };
                let mut child = tokio::process::Command::new(program)
                    .args(args)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(DeliveryError::Spawn)?;
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(body.as_bytes()).await;
                }
                let st = child.wait().await.map_err(DeliveryError::Spawn)?;
                if st.success() {
                    Ok(())
                } else {
                    Err(DeliveryError::Exit(st))
                }
            }
        }
    };
    tokio::time::timeout(cfg.timeout, work)
        .await
        .map_err(|_| DeliveryError::Timeout(cfg.timeout))?
}
