//! The access log: one structured line per request, written by a dedicated thread so the
//! request path never blocks on I/O. When the writer falls behind, lines are dropped and
//! counted (`levee_access_log_dropped_total`), never queued without bound.

use crate::config::{AccessLog as AccessLogConfig, LogFormat};
use crate::observe::metrics::Reason;
use prometheus_client::metrics::counter::Counter;
use std::io::Write;
use std::net::IpAddr;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

/// One request, as logged.
#[derive(Debug)]
pub struct Entry {
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: http::Method,
    pub path: http::Uri,
    pub status: u16,
    pub pool: Option<std::sync::Arc<str>>,
    pub server: Option<std::sync::Arc<str>>,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    pub bytes: u64,
    pub request_id: Option<http::HeaderValue>,
    pub reason: Option<Reason>,
}

/// A handle that hands entries to the writer thread.
#[derive(Debug, Clone)]
pub struct AccessLogger {
    tx: SyncSender<Entry>,
    dropped: Counter,
}

impl AccessLogger {
    /// Starts the writer thread for this config; `None` when the access log is off.
    pub fn start(cfg: &AccessLogConfig, dropped: Counter) -> std::io::Result<Option<AccessLogger>> {
        if !cfg.enabled {
            return Ok(None);
        }
        let mut out: Box<dyn Write + Send> = match &cfg.path {
            None => Box::new(std::io::stdout()),
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let format = cfg.format;
        let (tx, rx) = sync_channel::<Entry>(16 * 1024);
        std::thread::Builder::new()
            .name("levee-access-log".into())
            .spawn(move || {
                let mut buf = String::with_capacity(512);
                while let Ok(e) = rx.recv() {
                    buf.clear();
                    render(&mut buf, &e, format);
                    let mut ok = out.write_all(buf.as_bytes()).is_ok();
                    // Batch whatever else is waiting before flushing.
                    while let Ok(e) = rx.try_recv() {
                        buf.clear();
                        render(&mut buf, &e, format);
                        ok &= out.write_all(buf.as_bytes()).is_ok();
                    }
                    if !ok || out.flush().is_err() {
                        tracing::warn!("access log write failed");
                    }
                }
            })?;
        Ok(Some(AccessLogger { tx, dropped }))
    }

    /// Queues an entry; drops it (and counts it) when the writer is behind.
    pub fn log(&self, e: Entry) {
        match self.tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

fn render(buf: &mut String, e: &Entry, format: LogFormat) {
    let time = humantime::format_rfc3339_millis(e.time).to_string();
    let rid = e
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match format {
        LogFormat::Json => {
            let v = serde_json::json!({
                "time": time,
                "client": e.client.to_string(),
                "method": e.method.as_str(),
                "path": e.path.to_string(),
                "status": e.status,
                "pool": e.pool.as_deref(),
                "server": e.server.as_deref(),
                "upstream_ms": e.upstream_ms.map(|v| (v * 1000.0).round() / 1000.0),
                "total_ms": (e.total_ms * 1000.0).round() / 1000.0,
                "bytes": e.bytes,
                "request_id": rid,
                "reason": e.reason.map(Reason::as_str),
            });
            buf.push_str(&v.to_string());
        }
        LogFormat::Text => {
            use std::fmt::Write as _;
            let _ = write!(
                buf,
                "{time} {} \"{} {}\" {} pool={} server={} upstream_ms={} total_ms={:.3} bytes={} request_id={} reason={}",
                e.client,
                e.method,
                e.path,
                e.status,
                e.pool.as_deref().unwrap_or("-"),
                e.server.as_deref().unwrap_or("-"),
                e.upstream_ms.map_or("-".to_string(), |v| format!("{v:.3}")),
                e.total_ms,
                e.bytes,
                if rid.is_empty() { "-" } else { rid },
                e.reason.map_or("-", Reason::as_str),
            );
        }
    }
    buf.push('\n');
}
