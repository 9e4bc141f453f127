//! `power-of-two`: draw two distinct servers at random in proportion to their
//! weights and send to the one with fewer in-flight requests (ties go to the
//! first draw, which keeps idle traffic weight-proportional). O(1) per pick.
//!
//! `P2c` is also the engine of `peak-ewma`, with a different cost.

use super::alias::Alias;
use super::{clock_ms, PickContext, SlowStart};
use crate::backend::ServerState;

/// Draws per candidate before giving up on finding a distinct or
/// non-ramping one.
const MAX_DRAWS: usize = 8;

pub(crate) struct P2c {
    alias: Alias,
    slow: SlowStart,
}

impl P2c {
    pub(crate) fn new(weights: &[u32], slow: SlowStart) -> P2c {
        P2c {
            alias: Alias::new(weights),
            slow,
        }
    }

    /// One weighted draw, skipping a ramping server with probability
    /// 1 - its slow-start factor, and `not` when possible.
    #[inline]
    fn draw(&self, up: &[std::sync::Arc<ServerState>], not: usize, now: u64) -> usize {
        let mut i = self.alias.draw();
        for _ in 0..MAX_DRAWS {
            if i != not && (!self.slow.enabled() || self.slow.accept(&up[i], now)) {
                return i;
            }
            i = self.alias.draw();
        }
        if i == not {
            // Heavily skewed weights: take the neighbour instead.
            (i + 1) % self.alias.len()
        } else {
            i
        }
    }

    /// Picks the cheaper of two distinct weighted draws.
    #[inline]
    pub(crate) fn pick(
        &self,
        ctx: &PickContext<'_>,
        cost: impl Fn(&ServerState) -> f64,
    ) -> Option<usize> {
        let n = self.alias.len().min(ctx.up.len());
        match n {
            0 => None,
            1 => Some(0),
            _ => {
                let now = if self.slow.enabled() { clock_ms() } else { 0 };
                let a = self.draw(ctx.up, usize::MAX, now);
                let b = self.draw(ctx.up, a, now);
                Some(if cost(&ctx.up[b]) < cost(&ctx.up[a]) {
                    b
                } else {
                    a
                })
            }
        }
    }
}

pub struct PowerOfTwo(P2c);

impl PowerOfTwo {
    pub fn new(weights: &[u32], slow: SlowStart) -> PowerOfTwo {
        PowerOfTwo(P2c::new(weights, slow))
    }

    #[inline]
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.0.pick(ctx, |s| s.in_flight() as f64)
    }
}
