//! `round-robin`: rotate through the up servers in order; weights ignored.

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct RoundRobin {
    len: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(len: usize) -> RoundRobin {
        RoundRobin {
            len,
            next: AtomicUsize::new(0),
        }
    }

    #[inline]
    pub fn pick(&self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_in_order() {
        let rr = RoundRobin::new(3);
        let picks: Vec<_> = (0..7).map(|_| rr.pick().unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(RoundRobin::new(0).pick(), None);
    }
}
