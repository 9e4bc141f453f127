//! Retry budget: retries may add at most `ratio` of the requests seen over
//! the last 10 s, plus a floor of 10 retries per second so that low traffic
//! can always fail over. Lock-free: ten one-second buckets of atomics.

use std::sync::atomic::{AtomicU64, Ordering};

const WINDOW_SECS: u64 = 10;
const FLOOR_PER_SEC: u64 = 10;

#[derive(Default)]
struct Bucket {
    sec: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

#[derive(Default)]
pub struct RetryBudget {
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl RetryBudget {
    fn bucket(&self, sec: u64) -> &Bucket {
        let b = &self.buckets[(sec % WINDOW_SECS) as usize];
        let old = b.sec.load(Ordering::Relaxed);
        if old != sec
            && b.sec
                .compare_exchange(old, sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // First touch this second: the slot held an old second's counts.
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Seconds numbered from 1, so a never-used bucket (second 0) never
    /// counts as part of the window.
    fn second(now_ms: u64) -> u64 {
        now_ms / 1000 + 1
    }

    /// Counts one request (at `now_ms` on the process clock).
    #[inline]
    pub fn record_request(&self, now_ms: u64) {
        self.bucket(Self::second(now_ms))
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if it allows one.
    pub fn try_retry(&self, ratio: f64, now_ms: u64) -> bool {
        let sec = Self::second(now_ms);
        let (mut requests, mut retries, mut retries_now) = (0u64, 0u64, 0u64);
        for b in &self.buckets {
            let s = b.sec.load(Ordering::Relaxed);
            if s + WINDOW_SECS > sec && s <= sec {
                requests += b.requests.load(Ordering::Relaxed);
                let r = b.retries.load(Ordering::Relaxed);
                retries += r;
                if s == sec {
                    retries_now += r;
                }
            }
        }
        let allowed = retries_now < FLOOR_PER_SEC || (retries as f64) < ratio * requests as f64;
        if allowed {
            self.bucket(sec).retries.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_then_ratio() {
        let b = RetryBudget::default();
        let t = 5_000;
        // no traffic: the floor allows 10 in this second
        assert_eq!((0..50).filter(|_| b.try_retry(0.2, t)).count(), 10);
        // 1000 requests: 20% of them (minus the 10 already spent) more
        for _ in 0..1000 {
            b.record_request(t + 1000);
        }
        let more = (0..1000).filter(|_| b.try_retry(0.2, t + 1000)).count();
        assert_eq!(more, 190);
        // ten seconds later the window is empty again: only the floor
        assert_eq!((0..50).filter(|_| b.try_retry(0.2, t + 20_000)).count(), 10);
    }
}
