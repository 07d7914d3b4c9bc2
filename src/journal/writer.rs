//! The journal thread: the only writer. Fed through a bounded channel (events from the bus,
//! one sample a second); commits a batch at least every 250 ms, so a kill -9 loses at most the
//! last quarter second, and WAL mode means a crash never corrupts the file. It also opens and
//! closes incidents: the first firing alert opens one, every event while it is open attaches
//! to it, and it closes once every alert has resolved and the quiet period has passed.

use super::store::{self, JournalError, SampleRow};
use crate::config::observe::Journal as JournalCfg;
use crate::events::{Event, EventKind};
use prometheus_client::metrics::counter::Counter;
use rusqlite::{Connection, params};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Longest time between commits.
pub const COMMIT_EVERY: Duration = Duration::from_millis(250);
const QUEUE: usize = 65_536;

enum Msg {
    Event(Arc<Event>),
    Sample(SampleRow),
    Stop,
}

/// A handle to the journal thread. Sending never blocks: when the queue is full the message is
/// dropped and counted.
#[derive(Debug)]
pub struct Journal {
    tx: SyncSender<Msg>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    pub path: std::path::PathBuf,
    dropped: Counter,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Journal {
    /// Opens the file (creating it) and starts the thread. `quiet` is the incident quiet period.
    /// `dropped` counts messages lost to a full queue, `errors` failed batches.
    pub fn start(
        cfg: &JournalCfg,
        quiet: Duration,
        dropped: Counter,
        errors: Counter,
    ) -> Result<Journal, JournalError> {
        let conn = store::open_write(&cfg.path, cfg.sync_full)?;
        let (tx, rx) = sync_channel(QUEUE);
        let cfg2 = cfg.clone();
        let thread = std::thread::Builder::new()
            .name("levee-journal".into())
            .spawn(move || run(conn, rx, cfg2, quiet, errors))
            .map_err(|e| JournalError::Sqlite {
                path: cfg.path.display().to_string(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Journal {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
            path: cfg.path.clone(),
            dropped,
        })
    }

    fn send(&self, m: Msg) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(m) {
            self.dropped.inc();
        }
    }

    pub fn event(&self, e: Arc<Event>) {
        self.send(Msg::Event(e));
    }

    pub fn sample(&self, s: SampleRow) {
        self.send(Msg::Sample(s));
    }

    /// Commits what is queued and stops the thread (waits for it).
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        let t = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

struct Open {
    id: i64,
    firing: HashSet<String>,
    quiet_since: Option<Instant>,
    last_resolved_ms: i64,
}

struct Writer {
    conn: Connection,
    cfg: JournalCfg,
    quiet: Duration,
    open: Option<Open>,
}

fn run(conn: Connection, rx: Receiver<Msg>, cfg: JournalCfg, quiet: Duration, errors: Counter) {
    let mut w = Writer {
        conn,
        cfg,
        quiet,
        open: None,
    };
    w.close_stale();
    let mut batch: Vec<Msg> = Vec::new();
    let mut last_commit = Instant::now();
    let mut last_retention = Instant::now();
    loop {
        let wait = COMMIT_EVERY.saturating_sub(last_commit.elapsed());
        let stop = match rx.recv_timeout(wait) {
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => true,
            Ok(m) => {
                batch.push(m);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
        };
        if stop || last_commit.elapsed() >= COMMIT_EVERY || batch.len() >= 2000 {
            if let Err(e) = w.commit(&mut batch) {
                errors.inc();
                tracing::error!(error = %e, "journal write failed");
                batch.clear();
            }
            last_commit = Instant::now();
        }
        if last_retention.elapsed() >= Duration::from_secs(60) {
            last_retention = Instant::now();
            if let Err(e) = w.retention() {
                tracing::warn!(error = %e, "journal retention failed");
            }
        }
        if stop {
            return;
        }
    }
}

impl Writer {
    /// An incident left open by a previous run is closed at its last event.
    fn close_stale(&mut self) {
        let r = self.conn.execute(
            "UPDATE incidents SET end_ms = COALESCE((SELECT MAX(t_ms) FROM events WHERE incident = incidents.id), start_ms)
             WHERE end_ms IS NULL",
            [],
        );
        if let Err(e) = r {
            tracing::warn!(error = %e, "journal: cannot close stale incidents");
        }
    }

    fn commit(&mut self, batch: &mut Vec<Msg>) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for m in batch.drain(..) {
            match m {
                Msg::Event(e) => {
                    let t = ms(e.time);
                    incident_step(&tx, &mut self.open, &e, t, self.quiet)?;
                    tx.execute(
                        "INSERT INTO events(t_ms, kind, pool, server, client, message, data, incident)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        params![
                            t,
                            e.kind.as_str(),
                            e.pool,
                            e.server,
                            e.client,
                            e.message,
                            e.data.to_string(),
                            self.open.as_ref().map(|o| o.id)
                        ],
                    )?;
                }
                Msg::Sample(s) => store::insert_sample(&tx, &s)?,
                Msg::Stop => {}
            }
        }
        // Close an incident whose quiet period has passed.
        if let Some(o) = &self.open
            && o.firing.is_empty()
            && o.quiet_since.is_some_and(|q| q.elapsed() >= self.quiet)
        {
            tx.execute(
                "UPDATE incidents SET end_ms = ?1 WHERE id = ?2",
                params![o.last_resolved_ms, o.id],
            )?;
            self.open = None;
        }
        tx.commit()
    }

    fn retention(&mut self) -> rusqlite::Result<()> {
        let cutoff_ms = ms(SystemTime::now())
            - i64::try_from(self.cfg.max_age.as_millis()).unwrap_or(i64::MAX / 2);
        self.conn
            .execute("DELETE FROM events WHERE t_ms < ?1", [cutoff_ms])?;
        self.conn
            .execute("DELETE FROM samples WHERE t < ?1", [cutoff_ms / 1000])?;
        self.conn.execute(
            "DELETE FROM incidents WHERE end_ms IS NOT NULL AND end_ms < ?1",
            [cutoff_ms],
        )?;
        let max = i64::try_from(self.cfg.max_events).unwrap_or(i64::MAX);
        self.conn.execute(
            "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1",
            [max],
        )?;
        Ok(())
    }
}

fn incident_step(
    tx: &rusqlite::Transaction<'_>,
    open: &mut Option<Open>,
    e: &Event,
    t: i64,
    quiet: Duration,
) -> rusqlite::Result<()> {
    let fp = e
        .data
        .get("fingerprint")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    match e.kind {
        EventKind::AlertFiring => {
            if open.is_none() {
                let title = e
                    .data
                    .pointer("/annotations/summary")
                    .and_then(|v| v.as_str())
                    .unwrap_or(&e.message)
                    .to_string();
                tx.execute(
                    "INSERT INTO incidents(start_ms, title) VALUES (?1, ?2)",
                    params![t, title],
                )?;
                let id = tx.last_insert_rowid();
                // Events that led up to it (within the quiet period before) belong to it too.
                let lookback = i64::try_from(quiet.as_millis()).unwrap_or(0).max(60_000);
                tx.execute(
                    "UPDATE events SET incident = ?1 WHERE incident IS NULL AND t_ms >= ?2
                     AND kind NOT IN ('levee_started', 'levee_stopped')",
                    params![id, t - lookback],
                )?;
                *open = Some(Open {
                    id,
                    firing: HashSet::new(),
                    quiet_since: None,
                    last_resolved_ms: t,
                });
            }
            if let Some(o) = open {
                o.firing.insert(fp);
                o.quiet_since = None;
            }
        }
        EventKind::AlertResolved => {
            if let Some(o) = open {
                o.firing.remove(&fp);
                o.last_resolved_ms = t;
                if o.firing.is_empty() {
                    o.quiet_since = Some(Instant::now());
                }
            }
        }
        EventKind::LeveeStopped => {
            if let Some(o) = open.take() {
                tx.execute(
                    "UPDATE incidents SET end_ms = ?1 WHERE id = ?2",
                    params![t, o.id],
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_at_most_max_events_and_nothing_older_than_max_age() {
        let dir = std::env::temp_dir().join(format!(
            "levee-jret-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = JournalCfg {
            path: dir.join("j.db"),
            max_age: Duration::from_secs(3600),
            max_events: 10,
            sync_full: false,
        };
        let conn = store::open_write(&cfg.path, false).unwrap();
        let mut w = Writer {
            conn,
            cfg: cfg.clone(),
            quiet: Duration::from_secs(1),
            open: None,
        };
        let mut batch: Vec<Msg> = Vec::new();
        let mut old = Event::new(EventKind::ServerDown, "long ago");
        old.time = SystemTime::now() - Duration::from_secs(7200);
        batch.push(Msg::Event(Arc::new(old)));
        for i in 0..25 {
            batch.push(Msg::Event(Arc::new(Event::new(
                EventKind::BanAdded,
                format!("ban {i}"),
            ))));
        }
        w.commit(&mut batch).unwrap();
        w.retention().unwrap();
        let n: i64 = w
            .conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 10);
        let oldest: String = w
            .conn
            .query_row("SELECT message FROM events ORDER BY id LIMIT 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(oldest, "ban 15");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
