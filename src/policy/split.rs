//! `split`: which side of a traffic split a request goes to.
//!
//! By request, the shares are exact: a schedule of `sum(weights)` slots
//! (reduced by their gcd) laid out by smooth weighted round-robin (nginx's
//! interleaving: 95/5 gives one canary request every 20, not five in a row)
//! and walked by one atomic counter. By key, a fixed-key SipHash of the key
//! picks a point on the cumulative weights, so every instance with the same
//! config sends a client to the same side.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;

use crate::balance::key;
use crate::config::policy::SplitBy;

pub struct Split<T> {
    arms: Vec<T>,
    /// Cumulative weights, for keyed picks.
    cumulative: Vec<u64>,
    by: SplitBy,
    /// Arm index per slot, for `SplitBy::Request`.
    schedule: Box<[u16]>,
    next: AtomicUsize,
}

impl<T> Split<T> {
    /// `arms` with their weights (at least one above 0, at most 1000 each).
    pub fn new(arms: Vec<(T, u32)>, by: SplitBy) -> Split<T> {
        let weights: Vec<u32> = arms.iter().map(|a| a.1).collect();
        let g = weights
            .iter()
            .copied()
            .filter(|w| *w > 0)
            .fold(0, gcd)
            .max(1);
        let reduced: Vec<i64> = weights.iter().map(|w| (w / g) as i64).collect();
        let total: i64 = reduced.iter().sum();
        // Smooth weighted round-robin: each step every arm gains its weight,
        // the largest current value is chosen and loses the total.
        let mut current = vec![0i64; reduced.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..reduced.len() {
                current[i] += reduced[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            schedule.push(best as u16);
        }
        let mut acc = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += u64::from(*w);
                acc
            })
            .collect();
        Split {
            arms: arms.into_iter().map(|a| a.0).collect(),
            cumulative,
            by,
            schedule: schedule.into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn arms(&self) -> &[T] {
        &self.arms
    }

    /// The arm for this request.
    #[inline]
    pub fn pick(&self, headers: &HeaderMap, client_ip: IpAddr) -> &T {
        let hash = match &self.by {
            SplitBy::Request => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                return &self.arms[self.schedule[n % self.schedule.len()] as usize];
            }
            SplitBy::ClientIp => key::hash_ip(client_ip),
            SplitBy::Cookie(name) => {
                key::cookie(headers, name).map_or_else(|| key::hash_ip(client_ip), key::hash_bytes)
            }
            SplitBy::Header(name) => headers.get(name).map_or_else(
                || key::hash_ip(client_ip),
                |v| key::hash_bytes(v.as_bytes()),
            ),
        };
        self.by_hash(hash)
    }

    fn by_hash(&self, hash: u64) -> &T {
        let total = *self.cumulative.last().unwrap_or(&1);
        // Multiply-shift maps the hash onto 0..total without modulo bias.
        let point = ((u128::from(hash) * u128::from(total)) >> 64) as u64;
        let i = self.cumulative.partition_point(|c| *c <= point);
        &self.arms[i.min(self.arms.len() - 1)]
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn by_request_shares_are_exact_and_interleaved() {
        let s = Split::new(vec![("stable", 95), ("canary", 5)], SplitBy::Request);
        let p = parts(&[]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let picks: Vec<&str> = (0..200).map(|_| *s.pick(&p, ip)).collect();
        for window in picks.chunks(100) {
            assert_eq!(window.iter().filter(|a| **a == "canary").count(), 5);
        }
        // Never two canary requests closer than the share allows.
        let canary: Vec<usize> = (0..200).filter(|i| picks[*i] == "canary").collect();
        assert!(canary.windows(2).all(|w| w[1] - w[0] == 20), "{canary:?}");
    }

    #[test]
    fn a_zero_weight_arm_gets_nothing() {
        let s = Split::new(vec![("a", 3), ("b", 0), ("c", 1)], SplitBy::Request);
        let p = parts(&[]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let picks: Vec<&str> = (0..400).map(|_| *s.pick(&p, ip)).collect();
        assert_eq!(picks.iter().filter(|a| **a == "b").count(), 0);
        assert_eq!(picks.iter().filter(|a| **a == "c").count(), 100);
        // keyed too
        let k = Split::new(vec![("a", 3), ("b", 0), ("c", 1)], SplitBy::ClientIp);
        for i in 0..=255u8 {
            assert_ne!(*k.pick(&p, IpAddr::from([10, 0, 0, i])), "b");
        }
    }

    #[test]
    fn keyed_splits_pin_a_key_and_agree_across_instances() {
        let a = Split::new(
            vec![("stable", 50), ("canary", 50)],
            SplitBy::Cookie("uid".into()),
        );
        let b = Split::new(
            vec![("stable", 50), ("canary", 50)],
            SplitBy::Cookie("uid".into()),
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut sides = std::collections::HashSet::new();
        for u in 0..100 {
            let p = parts(&[("cookie", &format!("uid=user{u}"))]);
            let first = *a.pick(&p, ip);
            assert_eq!(first, *a.pick(&p, ip));
            assert_eq!(first, *b.pick(&p, ip));
            sides.insert(first);
        }
        assert_eq!(sides.len(), 2, "both sides get some users");
        // A request without the cookie falls back to its client IP.
        let p = parts(&[]);
        let c = Split::new(vec![("stable", 50), ("canary", 50)], SplitBy::ClientIp);
        assert_eq!(*a.pick(&p, ip), *c.pick(&p, ip));
    }
}
