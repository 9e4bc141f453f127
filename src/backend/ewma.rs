//! The peak-EWMA latency estimate each server carries (the `peak-ewma`
//! strategy reads it; see balance/ewma.rs). Per-server state, so it lives
//! here, below the balancers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::clock_ms;

/// Decay time constant of the estimate.
pub const DECAY: Duration = Duration::from_secs(10);
/// Estimate a new server starts with (it decays like any other).
pub const SEED: Duration = Duration::from_millis(30);
/// What a 503/429 with `Retry-After`, or a failed attempt, counts as.
pub const PENALTY: Duration = Duration::from_secs(1);

const TAU_MS: f64 = DECAY.as_millis() as f64;

/// Lock-free peak-EWMA latency estimate: one atomic word holding the
/// estimate (f32 microseconds) and the time of the last update (ms on the
/// process clock, wrapping every 49 days).
pub struct PeakEwma(AtomicU64);

fn pack(us: f32, at_ms: u32) -> u64 {
    (u64::from(us.to_bits()) << 32) | u64::from(at_ms)
}

fn unpack(v: u64) -> (f32, u32) {
    (f32::from_bits((v >> 32) as u32), v as u32)
}

fn decay(elapsed_ms: u32) -> f64 {
    (-f64::from(elapsed_ms) / TAU_MS).exp()
}

impl Default for PeakEwma {
    fn default() -> PeakEwma {
        PeakEwma(AtomicU64::new(pack(
            SEED.as_micros() as f32,
            clock_ms() as u32,
        )))
    }
}

impl PeakEwma {
    /// Records one response-head latency sample.
    pub fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, clock_ms() as u32);
    }

    pub(crate) fn observe_at(&self, rtt: Duration, now_ms: u32) {
        let rtt_us = rtt.as_micros().min(u128::from(u32::MAX)) as f64;
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                let (est, at) = unpack(v);
                let est = f64::from(est);
                let next = if rtt_us > est {
                    rtt_us
                } else {
                    let d = decay(now_ms.wrapping_sub(at));
                    est * d + rtt_us * (1.0 - d)
                };
                Some(pack(next as f32, now_ms))
            });
    }

    /// Records a penalty sample (failure, or 503/429 with `Retry-After`).
    pub fn penalize(&self) {
        self.observe(PENALTY);
    }

    /// The estimate in microseconds as of `now_ms`, decayed since its last update.
    #[inline]
    pub fn estimate_us(&self, now_ms: u32) -> f64 {
        let (est, at) = unpack(self.0.load(Ordering::Relaxed));
        f64::from(est) * decay(now_ms.wrapping_sub(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_then_decay() {
        let e = PeakEwma(AtomicU64::new(pack(1000.0, 0)));
        e.observe_at(Duration::from_millis(50), 0);
        assert_eq!(
            e.estimate_us(0),
            50_000.0,
            "a higher sample replaces the estimate"
        );
        // a lower sample 10 s later is blended in with weight 1 - 1/e
        e.observe_at(Duration::from_millis(10), 10_000);
        let v = e.estimate_us(10_000);
        let want = 50_000.0 / std::f64::consts::E + 10_000.0 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((v - want).abs() < 1.0, "{v} vs {want}");
        // reading decays towards zero
        assert!(e.estimate_us(20_000) < v / 2.0);
    }
}
