//! The process clock: milliseconds since a fixed monotonic epoch, in one
//! `u64` so per-server times (ejection ends, slow-start ramps, EWMA updates)
//! fit in atomics. A leaf: everything may use it, it uses nothing.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds on the process's monotonic clock.
#[inline]
pub fn clock_ms() -> u64 {
    clock_ms_at(Instant::now())
}

/// `t` on the process's monotonic clock, in milliseconds.
pub fn clock_ms_at(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Set in the past so that `up_since` instants a little before the first
    // use still map to distinct times.
    let epoch = *EPOCH.get_or_init(|| {
        let now = Instant::now();
        [86_400, 3_600, 60, 0]
            .into_iter()
            .find_map(|s| now.checked_sub(Duration::from_secs(s)))
            .unwrap_or(now)
    });
    t.saturating_duration_since(epoch).as_millis() as u64
}

/// Seconds since the Unix epoch, for times shown to people (status page).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
