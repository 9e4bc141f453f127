//! Server selection. Strategies are a closed set dispatched by enum: each one
//! precomputes what it needs when a snapshot is built and picks without locks
//! or allocation on the request path.
//!
//! Every strategy is built over the servers that are up when the snapshot is
//! built and `pick` returns an index into that list (`Upstream::up`), so it
//! can never choose a server that is down, ejected, drained or disabled.

mod alias;
pub mod ewma;
pub mod key;
mod least;
pub mod maglev;
mod p2c;
#[cfg(test)]
mod proptests;
mod round_robin;
pub mod sticky;
mod weighted;

pub use ewma::{PeakEwma, PeakEwmaBalancer};
pub use least::LeastConn;
pub use maglev::Maglev;
pub use p2c::PowerOfTwo;
pub use round_robin::RoundRobin;
pub use sticky::Sticky;
pub use weighted::Weighted;

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::clock_ms;

use crate::backend::ServerState;
use crate::config::{Strategy, UpstreamConfig};

/// What a strategy may look at when picking.
pub struct PickContext<'a> {
    /// The up servers the balancer was built over (`Upstream::up`).
    pub up: &'a [Arc<ServerState>],
    /// Hash of the request's `hash_key` (client IP when missing); only the
    /// hashing strategies read it.
    pub key: u64,
}

/// A built strategy over one upstream's up servers. `pick` returns an index
/// into the slice of up servers it was built with.
pub enum Balancer {
    RoundRobin(RoundRobin, SlowStart),
    Weighted(Weighted, SlowStart),
    LeastConnections(LeastConn),
    PowerOfTwo(PowerOfTwo),
    PeakEwma(PeakEwmaBalancer),
    /// `ip-hash` and `consistent-hash` (they differ only in the key).
    Maglev(Box<Maglev>),
}

impl Balancer {
    /// Builds the strategy of `cfg`. `servers` are all configured servers (in
    /// `cfg.servers` order) and `up` the indices of those that are up; `pick`
    /// then returns a position in `up`.
    ///
    /// Weights are effective weights: an operator's runtime override (admin
    /// API) wins over the configured weight, so a change applies from the
    /// first pick of the next snapshot.
    pub fn build(cfg: &UpstreamConfig, servers: &[Arc<ServerState>], up: &[usize]) -> Balancer {
        let weight_of = |i: usize| servers[i].admin.weight().unwrap_or(cfg.servers[i].weight);
        let weights: Vec<u32> = up.iter().map(|i| weight_of(*i)).collect();
        let up_servers: Vec<Arc<ServerState>> = up.iter().map(|i| servers[*i].clone()).collect();
        let slow = SlowStart::new(cfg.slow_start);
        // Only a least-connections tree listens to in-flight changes; it
        // registers itself on its up servers below.
        for s in servers {
            s.load.hook.store(None);
        }
        match cfg.strategy {
            Strategy::RoundRobin => Balancer::RoundRobin(RoundRobin::new(up.len()), slow),
            Strategy::Weighted => Balancer::Weighted(Weighted::new(&weights), slow),
            Strategy::LeastConnections => {
                Balancer::LeastConnections(LeastConn::new(&up_servers, &weights, slow))
            }
            Strategy::PowerOfTwo => Balancer::PowerOfTwo(PowerOfTwo::new(&weights, slow)),
            Strategy::PeakEwma => Balancer::PeakEwma(PeakEwmaBalancer::new(&weights, slow)),
            Strategy::IpHash | Strategy::ConsistentHash => {
                let all_weights: Vec<u32> = (0..servers.len()).map(weight_of).collect();
                Balancer::Maglev(Box::new(Maglev::new(
                    servers,
                    &all_weights,
                    up,
                    cfg.hash_balance_factor,
                    slow,
                )))
            }
        }
    }

    /// Index of the chosen server among the up servers, or `None` when there
    /// is none.
    #[inline]
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b, slow) => slow.retry(ctx, || b.pick()),
            Balancer::Weighted(b, slow) => slow.retry(ctx, || b.pick()),
            Balancer::LeastConnections(b) => b.pick(),
            Balancer::PowerOfTwo(b) => b.pick(ctx),
            Balancer::PeakEwma(b) => b.pick(ctx),
            Balancer::Maglev(b) => b.pick(ctx),
        }
    }
}

/// A fast per-thread pseudo-random number (xorshift64*); not for secrets.
#[inline]
pub(crate) fn rand_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(clock_ms());
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A uniform number in `0..n` from 64 random bits (Lemire's reduction).
#[inline]
pub(crate) fn below(r: u64, n: usize) -> usize {
    ((u128::from(r) * n as u128) >> 64) as usize
}

/// Lowest share of its weight a server gets at the start of its ramp.
pub const SLOW_START_FLOOR: f64 = 0.1;

/// `slow_start`: a server that came up less than `window` ago gets a share
/// of its weight that grows linearly from 10% to 100% over the window.
#[derive(Clone, Copy)]
pub struct SlowStart {
    window_ms: u64,
}

impl SlowStart {
    pub fn new(window: Duration) -> SlowStart {
        SlowStart {
            window_ms: window.as_millis() as u64,
        }
    }

    #[inline]
    pub fn enabled(self) -> bool {
        self.window_ms > 0
    }

    /// The server's weight factor in `0.1..=1.0` at `now_ms`.
    #[inline]
    pub fn factor(self, s: &ServerState, now_ms: u64) -> f64 {
        if self.window_ms == 0 {
            return 1.0;
        }
        match s.up_since_ms() {
            Some(since) if now_ms < since + self.window_ms => {
                let t = now_ms.saturating_sub(since) as f64 / self.window_ms as f64;
                SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * t
            }
            _ => 1.0,
        }
    }

    /// Whether a candidate survives its ramp (probability = its factor).
    #[inline]
    pub(crate) fn accept(self, s: &ServerState, now_ms: u64) -> bool {
        let f = self.factor(s, now_ms);
        f >= 1.0 || (rand_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) < f
    }

    /// For the rotating strategies: a ramping candidate is skipped with
    /// probability 1 - factor and the next one in the rotation is taken.
    #[inline]
    fn retry(
        self,
        ctx: &PickContext<'_>,
        mut pick: impl FnMut() -> Option<usize>,
    ) -> Option<usize> {
        let first = pick()?;
        if !self.enabled() {
            return Some(first);
        }
        let now = clock_ms();
        let mut i = first;
        for _ in 0..8 {
            if ctx.up.get(i).is_none_or(|s| self.accept(s, now)) {
                return Some(i);
            }
            i = pick()?;
        }
        Some(i)
    }
}
