//! Walker/Vose alias table: a weighted random draw in O(1), built once per
//! snapshot.

use super::{below, rand_u64};

pub(crate) struct Alias {
    /// Probability (scaled to 2^32) of keeping column `i` rather than its alias.
    keep: Box<[u32]>,
    alias: Box<[u32]>,
}

impl Alias {
    pub(crate) fn new(weights: &[u32]) -> Alias {
        let n = weights.len();
        let total: f64 = weights.iter().map(|w| f64::from((*w).max(1))).sum();
        let mut p: Vec<f64> = weights
            .iter()
            .map(|w| f64::from((*w).max(1)) * n as f64 / total)
            .collect();
        let mut keep = vec![u32::MAX; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| p[*i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = (p[s] * 4_294_967_296.0).min(u32::MAX as f64) as u32;
            alias[s] = l as u32;
            p[l] -= 1.0 - p[s];
            if p[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Alias {
            keep: keep.into_boxed_slice(),
            alias: alias.into_boxed_slice(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.keep.len()
    }

    /// One weighted draw; the table must not be empty.
    #[inline]
    pub(crate) fn draw(&self) -> usize {
        let r = rand_u64();
        let i = below(r, self.keep.len());
        if (r as u32) < self.keep[i] || self.keep[i] == u32::MAX {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_weights() {
        let a = Alias::new(&[1, 3, 6]);
        let mut n = [0usize; 3];
        for _ in 0..100_000 {
            n[a.draw()] += 1;
        }
        for (i, w) in [0.1, 0.3, 0.6].iter().enumerate() {
            let share = n[i] as f64 / 100_000.0;
            assert!((share - w).abs() < 0.01, "{n:?}");
        }
    }
}
