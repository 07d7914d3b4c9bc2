//! A cheap monotonic clock in milliseconds since the process started, for atomics.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the process started (monotonic). Never 0 after the first call, so 0 can
/// mean "never" in atomics.
pub fn now_ms() -> u64 {
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}
