//! The wall clock as telemetry carries it: nanoseconds since the Unix epoch.
//! One place, so the publisher's send time, the sink's received time and the
//! bench's latency are read the same way.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
