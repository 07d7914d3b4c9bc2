//! The journal's SQLite schema and queries. Writes happen on the journal thread only
//! (`writer.rs`); readers (admin API, `levee postmortem`) open their own connection, which WAL
//! mode lets run alongside the writer.

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use std::path::Path;

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("no incident {0} in the journal")]
    NoIncident(i64),
    #[error("the journal has no incidents yet")]
    Empty,
}

pub(crate) fn err(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |source| JournalError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events(
  id INTEGER PRIMARY KEY,
  t_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  pool TEXT, server TEXT, client TEXT,
  message TEXT NOT NULL,
  data TEXT NOT NULL,
  incident INTEGER
);
CREATE INDEX IF NOT EXISTS events_t ON events(t_ms);
CREATE INDEX IF NOT EXISTS events_incident ON events(incident);
CREATE TABLE IF NOT EXISTS samples(
  t INTEGER PRIMARY KEY,
  answered INTEGER NOT NULL,
  errors INTEGER NOT NULL,
  upstream_errors INTEGER NOT NULL,
  shed INTEGER NOT NULL,
  blocked INTEGER NOT NULL,
  max_load REAL NOT NULL,
  latency TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents(
  id INTEGER PRIMARY KEY,
  start_ms INTEGER NOT NULL,
  end_ms INTEGER,
  title TEXT NOT NULL
);
";

/// Opens (creating) the journal for writing: WAL, the given sync level, the schema.
pub fn open_write(path: &Path, sync_full: bool) -> Result<Connection, JournalError> {
    let conn = Connection::open(path).map_err(err(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err(path))?;
    let _: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(err(path))?;
    conn.execute_batch(if sync_full {
        "PRAGMA synchronous=FULL;"
    } else {
        "PRAGMA synchronous=NORMAL;"
    })
    .map_err(err(path))?;
    conn.execute_batch(SCHEMA).map_err(err(path))?;
    Ok(conn)
}

/// Opens the journal read-only.
pub fn open_read(path: &Path) -> Result<Connection, JournalError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err(path))?;
    Ok(conn)
}

/// One stored event.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub t_ms: i64,
    pub kind: String,
    pub pool: Option<String>,
    pub server: Option<String>,
    pub client: Option<String>,
    pub message: String,
    pub data: serde_json::Value,
    pub incident: Option<i64>,
}

/// One second of traffic (counts during that second).
#[derive(Debug, Clone, Serialize)]
pub struct SampleRow {
    pub t: i64,
    pub answered: u64,
    pub errors: u64,
    pub upstream_errors: u64,
    pub shed: u64,
    pub blocked: u64,
    /// Highest in-flight / cap over the servers at that second.
    pub max_load: f64,
    #[serde(skip)]
    pub latency: crate::observe::latency::Buckets,
}

/// One incident.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentRow {
    pub id: i64,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub title: String,
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    let data: String = r.get(7)?;
    Ok(EventRow {
        id: r.get(0)?,
        t_ms: r.get(1)?,
        kind: r.get(2)?,
        pool: r.get(3)?,
        server: r.get(4)?,
        client: r.get(5)?,
        message: r.get(6)?,
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
        incident: r.get(8)?,
    })
}

const EVENT_COLS: &str = "id, t_ms, kind, pool, server, client, message, data, incident";

/// The last `limit` events, oldest first.
pub fn recent_events(c: &Connection, limit: u32) -> rusqlite::Result<Vec<EventRow>> {
    let mut st = c.prepare(&format!(
        "SELECT {EVENT_COLS} FROM (SELECT * FROM events ORDER BY id DESC LIMIT ?1) ORDER BY id"
    ))?;
    st.query_map([limit], event_row)?.collect()
}

/// The events of an incident, in order.
pub fn incident_events(c: &Connection, id: i64) -> rusqlite::Result<Vec<EventRow>> {
    let mut st = c.prepare(&format!(
        "SELECT {EVENT_COLS} FROM events WHERE incident = ?1 ORDER BY t_ms, id"
    ))?;
    st.query_map([id], event_row)?.collect()
}

/// Samples with `from <= t <= to`.
pub fn samples(c: &Connection, from: i64, to: i64) -> rusqlite::Result<Vec<SampleRow>> {
    let mut st = c.prepare(
        "SELECT t, answered, errors, upstream_errors, shed, blocked, max_load, latency
         FROM samples WHERE t >= ?1 AND t <= ?2 ORDER BY t",
    )?;
    st.query_map([from, to], |r| {
        let lat: String = r.get(7)?;
        let mut latency = [0u64; crate::observe::latency::NB];
        for (slot, v) in latency.iter_mut().zip(lat.split(',')) {
            *slot = v.parse().unwrap_or(0);
        }
        Ok(SampleRow {
            t: r.get(0)?,
            answered: r.get::<_, i64>(1)?.max(0) as u64,
            errors: r.get::<_, i64>(2)?.max(0) as u64,
            upstream_errors: r.get::<_, i64>(3)?.max(0) as u64,
            shed: r.get::<_, i64>(4)?.max(0) as u64,
            blocked: r.get::<_, i64>(5)?.max(0) as u64,
            max_load: r.get(6)?,
            latency,
        })
    })?
    .collect()
}

/// Inserts one sample (replacing one for the same second).
pub fn insert_sample(c: &Connection, s: &SampleRow) -> rusqlite::Result<()> {
    let lat: Vec<String> = s.latency.iter().map(u64::to_string).collect();
    c.execute(
        "INSERT OR REPLACE INTO samples(t, answered, errors, upstream_errors, shed, blocked, max_load, latency)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            s.t,
            s.answered as i64,
            s.errors as i64,
            s.upstream_errors as i64,
            s.shed as i64,
            s.blocked as i64,
            s.max_load,
            lat.join(",")
        ],
    )?;
    Ok(())
}

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IncidentRow> {
    Ok(IncidentRow {
        id: r.get(0)?,
        start_ms: r.get(1)?,
        end_ms: r.get(2)?,
        title: r.get(3)?,
    })
}

/// Every incident, newest first.
pub fn incidents(c: &Connection) -> rusqlite::Result<Vec<IncidentRow>> {
    let mut st =
        c.prepare("SELECT id, start_ms, end_ms, title FROM incidents ORDER BY id DESC LIMIT 1000")?;
    st.query_map([], incident_row)?.collect()
}

/// One incident.
pub fn incident(c: &Connection, id: i64) -> rusqlite::Result<Option<IncidentRow>> {
    c.query_row(
        "SELECT id, start_ms, end_ms, title FROM incidents WHERE id = ?1",
        [id],
        incident_row,
    )
    .optional()
}

/// The open incident, if any.
pub fn open_incident(c: &Connection) -> rusqlite::Result<Option<IncidentRow>> {
    c.query_row(
        "SELECT id, start_ms, end_ms, title FROM incidents WHERE end_ms IS NULL ORDER BY id DESC LIMIT 1",
        [],
        incident_row,
    )
    .optional()
}
