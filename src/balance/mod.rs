//! Server selection. Strategies are a closed set dispatched by enum: each one
//! precomputes what it needs when a snapshot is built and picks without locks
//! or allocation on the request path.

mod round_robin;
mod weighted;

pub use round_robin::RoundRobin;
pub use weighted::Weighted;

use crate::config::Strategy;

/// What a strategy may look at when picking. It grows with the strategies
/// that need more (client key, in-flight counts).
pub struct PickContext {}

/// A built strategy over one upstream's up servers. `pick` returns an index
/// into the slice of up servers it was built with.
pub enum Balancer {
    RoundRobin(RoundRobin),
    Weighted(Weighted),
}

impl Balancer {
    /// Builds the strategy over the up servers' weights (in server order).
    pub fn build(strategy: Strategy, weights: &[u32]) -> Balancer {
        match strategy {
            Strategy::RoundRobin => Balancer::RoundRobin(RoundRobin::new(weights.len())),
            Strategy::Weighted => Balancer::Weighted(Weighted::new(weights)),
        }
    }

    /// Index of the chosen server among the up servers, or `None` when there
    /// is none.
    #[inline]
    pub fn pick(&self, _ctx: &PickContext) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick(),
            Balancer::Weighted(b) => b.pick(),
        }
    }
}
