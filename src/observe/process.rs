//! Process metrics read from `/proc` at scrape time: resident memory, open file descriptors,
//! uptime. On a system without `/proc` the memory and descriptor series are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use std::time::Instant;

/// Reads `/proc/self` when scraped.
#[derive(Debug)]
pub struct ProcessCollector {
    started: Instant,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector {
            started: Instant::now(),
        }
    }
}

/// Resident set size in bytes (from `/proc/self/statm`, assuming 4 KiB pages).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Open file descriptors (entries of `/proc/self/fd`).
pub fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

impl ProcessCollector {
    /// Seconds since levee's metrics were created (the process start, near enough).
    pub fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut gauge = |name: &str, help: &str, v: f64| -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(v);
            let me = enc.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(me)
        };
        if let Some(rss) = resident_memory_bytes() {
            gauge(
                "levee_process_resident_memory_bytes",
                "Resident memory of the levee process",
                rss as f64,
            )?;
        }
        if let Some(fds) = open_fds() {
            gauge(
                "levee_process_open_fds",
                "Open file descriptors of the levee process",
                fds as f64,
            )?;
        }
        gauge(
            "levee_process_uptime_seconds",
            "Seconds since levee started",
            self.uptime_secs(),
        )
    }
}
