//! Slowloris: connections that send their request head one byte at a time and never finish it,
//! holding the server's connection slots. Each connection is recorded when it ends: how long it
//! was held (as its latency), and the server's answer if any (often `408`, or a plain close).
//! Connections still held when the run ends are counted apart, their hold time in the latency.
//! A connection the server closed is opened again, as a real attacker would.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::conn::Connector;
use super::engine::{Span, StopSignal, drain};
use super::plan::Plan;
use super::stats::{ErrorKind, Outcome, Recorder};

/// Runs `connections` slowloris connections until the scenario's duration ends or a stop.
pub async fn run(
    plan: Arc<Plan>,
    connections: u32,
    byte_interval: Duration,
    recorder: Arc<Recorder>,
    stop: Arc<StopSignal>,
) -> Span {
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let connector = Connector::new(&plan);
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: levee-loadtest-slowloris\r\n",
        "GET",
        plan.target.path,
        plan.target.host.to_str().unwrap_or("localhost")
    );
    let head: Arc<[u8]> = head.into_bytes().into();
    let mut workers = JoinSet::new();
    for id in 0..connections as usize {
        let (connector, recorder, stop, head) = (
            connector.clone(),
            recorder.clone(),
            stop.clone(),
            head.clone(),
        );
        workers.spawn(async move {
            loop {
                if stop.is_stopped() || deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                let ended = hold(
                    id,
                    &connector,
                    &head,
                    byte_interval,
                    &recorder,
                    &stop,
                    deadline,
                );
                if ended.await == Held::RunOver {
                    return;
                }
            }
        });
    }
    let end = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = end => {}
        _ = stop.wait() => {}
    }
    drain(&mut workers, Duration::from_millis(500)).await;
    Span {
        start,
        end: Instant::now(),
    }
}

#[derive(PartialEq, Eq)]
enum Held {
    /// The server ended the connection (or it failed): open another.
    Ended,
    /// The run is over.
    RunOver,
}

/// One connection: send the head a byte at a time, then endless header lines, until the server
/// answers or closes, or the run ends.
async fn hold(
    id: usize,
    connector: &Connector,
    head: &[u8],
    byte_interval: Duration,
    recorder: &Recorder,
    stop: &StopSignal,
    deadline: Option<Instant>,
) -> Held {
    let opened = Instant::now();
    let stream = match connector.tcp().await {
        Ok(s) => s,
        Err(_) => {
            let e = opened.elapsed();
            recorder.record(id, e, e, Outcome::Error(ErrorKind::Connect), 0);
            // Do not spin on a refused connection.
            tokio::time::sleep(byte_interval.min(Duration::from_secs(1))).await;
            return Held::Ended;
        }
    };
    recorder.connection_opened(id);
    let (mut reader, mut writer) = stream.into_split();
    let mut sent: u64 = 0;
    let mut answer = [0u8; 64];
    let mut answered = 0usize;
    let run_over = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(run_over);
    let mut next_byte = Instant::now();
    let filler = b"X-a: b\r\n";
    let outcome = loop {
        tokio::select! {
            _ = &mut run_over => break None,
            _ = stop.wait() => break None,
            read = reader.read(&mut answer[answered..]) => match read {
                Ok(0) => break Some(closed_outcome(&answer[..answered])),
                Ok(n) => {
                    answered += n;
                    if answered == answer.len() || answer[..answered].contains(&b'\n') {
                        break Some(closed_outcome(&answer[..answered]));
                    }
                }
                Err(e) => break Some(Outcome::Error(ErrorKind::of_io(&e))),
            },
            _ = tokio::time::sleep_until(next_byte) => {
                let i = sent as usize;
                let byte = if i < head.len() {
                    head[i]
                } else {
                    filler[(i - head.len()) % filler.len()]
                };
                if let Err(e) = writer.write_all(&[byte]).await {
                    break Some(Outcome::Error(ErrorKind::of_io(&e)));
                }
                sent += 1;
                recorder.sent(id, 1);
                next_byte += byte_interval;
            }
        }
    };
    match outcome {
        Some(outcome) => {
            recorder.record_held(id, opened.elapsed(), outcome);
            Held::Ended
        }
        None => {
            recorder.record_held_at_end(id, opened.elapsed());
            Held::RunOver
        }
    }
}

/// What the server's first bytes (or its silence before closing) say.
fn closed_outcome(answer: &[u8]) -> Outcome {
    let status = std::str::from_utf8(answer)
        .ok()
        .and_then(|s| s.strip_prefix("HTTP/1."))
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(status) => Outcome::Response {
            status,
            bytes: answer.len() as u64,
        },
        None if answer.is_empty() => Outcome::Error(ErrorKind::Closed),
        None => Outcome::Error(ErrorKind::Protocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_of_an_answer() {
        assert!(matches!(
            closed_outcome(b"HTTP/1.1 408 Request Timeout\r\n"),
            Outcome::Response { status: 408, .. }
        ));
        assert!(matches!(
            closed_outcome(b""),
            Outcome::Error(ErrorKind::Closed)
        ));
        assert!(matches!(
            closed_outcome(b"garbage\n"),
            Outcome::Error(ErrorKind::Protocol)
        ));
    }
}
