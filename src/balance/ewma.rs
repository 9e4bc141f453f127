//! `peak-ewma`: power-of-two-choices over the cost
//! `peak-EWMA response latency × (in-flight + 1)`, as in Finagle and Linkerd.
//!
//! The latency estimate lives in `ServerState` (so it survives reloads). It
//! is "peak" sensitive: a sample above the estimate replaces it at once; a
//! lower one is blended in with weight `1 - e^(-Δt/τ)`, τ = 10 s. Reading
//! decays the estimate towards zero with the same τ, so a server that has
//! not answered for a while looks cheap again and gets probed.

use std::time::Duration;

use super::p2c::P2c;
use super::{clock_ms, PickContext, SlowStart};
use crate::backend::ServerState;

pub use crate::backend::ewma::{PeakEwma, DECAY, PENALTY, SEED};

/// Feeds one response head into the server's estimate: its latency, or a
/// penalty for a 503/429 carrying `Retry-After`.
#[inline]
pub fn record_response(s: &ServerState, latency: Duration, status: u16, headers: &http::HeaderMap) {
    if (status == 503 || status == 429) && headers.contains_key(http::header::RETRY_AFTER) {
        s.load.ewma.observe(latency.max(PENALTY));
    } else {
        s.load.ewma.observe(latency);
    }
}

/// The built `peak-ewma` strategy.
pub struct PeakEwmaBalancer {
    p2c: P2c,
}

impl PeakEwmaBalancer {
    pub fn new(weights: &[u32], slow: SlowStart) -> PeakEwmaBalancer {
        PeakEwmaBalancer {
            p2c: P2c::new(weights, slow),
        }
    }

    #[inline]
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let now = clock_ms() as u32;
        self.p2c.pick(ctx, |s| {
            // +1 µs keeps an idle zero-latency server's in-flight count relevant.
            (s.load.ewma.estimate_us(now) + 1.0) * (s.in_flight() as f64 + 1.0)
        })
    }
}
