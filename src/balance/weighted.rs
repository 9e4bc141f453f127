//! `weighted`: nginx's smooth weighted round-robin.
//!
//! nginx keeps a mutable `current_weight` per server and picks under a lock.
//! The sequence it produces is periodic (period = sum of weights), so we run
//! its algorithm once when the snapshot is built and store one period as a
//! table; `pick` is then one atomic increment and one load.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest table we keep; larger weight sums are scaled down proportionally.
const MAX_PERIOD: u64 = 1 << 16;
/// Above this many build steps (servers × period), use the O(log n) stride
/// scheduler instead of nginx's O(n) scan; both give a smooth interleaving.
const MAX_EXACT_WORK: u64 = 20_000_000;

pub struct Weighted {
    table: Box<[u32]>,
    next: AtomicUsize,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Weighted {
    pub fn new(weights: &[u32]) -> Weighted {
        Weighted {
            table: schedule(weights).into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    #[inline]
    pub fn pick(&self) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.table.len();
        Some(self.table[i] as usize)
    }
}

/// One period of the smooth weighted round-robin sequence.
pub(crate) fn schedule(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights
        .iter()
        .fold(0u64, |g, w| gcd(g, u64::from((*w).max(1))));
    let mut w: Vec<u64> = weights.iter().map(|x| u64::from((*x).max(1)) / g).collect();
    let mut total: u64 = w.iter().sum();
    if total > MAX_PERIOD {
        for x in &mut w {
            *x = ((*x * MAX_PERIOD) / total).max(1);
        }
        total = w.iter().sum();
    }
    if (w.len() as u64) * total <= MAX_EXACT_WORK {
        nginx_sequence(&w, total)
    } else {
        stride_sequence(&w, total)
    }
}

/// nginx `ngx_http_upstream_get_peer`: add each weight to its current value,
/// pick the largest (first on ties), subtract the total from it.
fn nginx_sequence(w: &[u64], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

/// Stride scheduling: each server advances a virtual time by total/weight per
/// pick; the smallest virtual time goes next.
fn stride_sequence(w: &[u64], total: u64) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut heap: BinaryHeap<Reverse<(u128, u32)>> = w
        .iter()
        .enumerate()
        .map(|(i, x)| Reverse(((u128::from(total) << 16) / u128::from(*x) / 2, i as u32)))
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let Reverse((pass, i)) = heap.pop().expect("non-empty");
        out.push(i);
        heap.push(Reverse((
            pass + (u128::from(total) << 16) / u128::from(w[i as usize]),
            i,
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_example_sequence() {
        let w = Weighted::new(&[5, 1, 1]);
        let picks: String = (0..7)
            .map(|_| (b'a' + w.pick().unwrap() as u8) as char)
            .collect();
        assert_eq!(picks, "aabacaa");
    }

    #[test]
    fn shares_match_weights_and_never_burst() {
        let s = schedule(&[3, 1, 1]);
        assert_eq!(s.len(), 5);
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 3);
        // a weight-3 server of 5 never gets three in a row
        let doubled: Vec<_> = s.iter().chain(s.iter()).collect();
        assert!(!doubled.windows(3).any(|w| w.iter().all(|i| **i == 0)));
    }

    #[test]
    fn gcd_and_scaling_keep_tables_small() {
        assert_eq!(schedule(&[100, 200]).len(), 3);
        let big: Vec<u32> = (0..10_000).map(|i| 1 + (i % 1000)).collect();
        let s = schedule(&big);
        assert!(s.len() as u64 <= MAX_PERIOD + 10_000);
        let heavy = s.iter().filter(|i| **i == 999).count();
        let light = s.iter().filter(|i| **i == 0).count();
        assert!(heavy >= 10 * light.max(1), "heavy={heavy} light={light}");
    }
}
