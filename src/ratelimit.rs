//! Per-client-IP request rate limits on routes (`rate_limit`).
//!
//! One GCRA limiter (the `governor` crate: a token bucket refilled at
//! `requests_per_second`, holding at most `burst`) per route, keyed by the
//! effective client IP. A limiter is owned by the `Registry` by route
//! identity, so a reload that keeps a route and its limit keeps every
//! client's bucket; a changed limit starts fresh.
//!
//! Memory: a key holds one entry (~50 bytes) only while its bucket is not
//! full again; every second at most, one request triggers a sweep
//! (`retain_recent`) on a blocking thread that drops the entries of clients
//! whose bucket has refilled. The map therefore holds the clients seen
//! within the last `burst / requests_per_second` seconds (plus one second).
//!
//! `scope = "cluster"`: the bucket lives in Redis (`crate::cluster`), one
//! round trip per request. With `on_error = "local"` the local limiter is
//! fed every request too, so it is already warm when Redis fails.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::cluster::{gcra, ClusterClient};
use crate::config::{OnError, RateLimit, RateScope};

/// How often, at most, old keys are swept.
const SWEEP_EVERY_MS: u64 = 1000;

/// A route's limiter.
pub struct RouteLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    /// The limit this limiter enforces (for reuse across reloads).
    pub config: RateLimit,
    started: std::time::Instant,
    last_sweep_ms: AtomicU64,
    sweeping: Arc<AtomicBool>,
    cluster: Option<ClusterLimit>,
}

/// A cluster-scoped limit: the shared client and the script's arguments.
struct ClusterLimit {
    client: Arc<ClusterClient>,
    limit: gcra::Limit,
}

impl RouteLimiter {
    /// A limiter for `config`; with `scope = "cluster"` and a client, the
    /// bucket of (`route`, client IP) lives in Redis.
    pub fn new(
        config: RateLimit,
        route: &str,
        cluster: Option<&Arc<ClusterClient>>,
    ) -> RouteLimiter {
        let cluster = cluster
            .filter(|_| config.scope == RateScope::Cluster)
            .map(|client| ClusterLimit {
                limit: gcra::Limit::new(
                    &client.config().key_prefix,
                    route,
                    config.requests_per_second,
                    config.burst,
                ),
                client: client.clone(),
            });
        let period =
            Duration::from_secs_f64(1.0 / config.requests_per_second).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("the period is non-zero")
            .allow_burst(NonZeroU32::new(config.burst.max(1)).expect("burst >= 1"));
        RouteLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            config,
            started: std::time::Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
            sweeping: Arc::new(AtomicBool::new(false)),
            cluster,
        }
    }

    /// Whether this limiter enforces `config` for `route` through `cluster`
    /// (a reload may keep it, buckets and all).
    pub fn is_for(
        &self,
        config: RateLimit,
        route: &str,
        cluster: Option<&Arc<ClusterClient>>,
    ) -> bool {
        let wanted = cluster.filter(|_| config.scope == RateScope::Cluster);
        self.config == config
            && match (&self.cluster, wanted) {
                (None, None) => true,
                (Some(c), Some(w)) => {
                    Arc::ptr_eq(&c.client, w)
                        && c.limit
                            == gcra::Limit::new(
                                &w.config().key_prefix,
                                route,
                                config.requests_per_second,
                                config.burst,
                            )
                }
                _ => false,
            }
    }

    /// Takes one request from `client`'s bucket. `Err` carries the
    /// Retry-After in whole seconds (at least 1). Never fails for want of
    /// Redis: `on_error` answers then.
    pub async fn check(self: &Arc<Self>, client: IpAddr) -> Result<(), u64> {
        match &self.cluster {
            None => self.check_local(client),
            // Boxed: the Redis call's state stays out of the request future
            // of routes that never call Redis.
            Some(c) => Box::pin(self.check_cluster(c, client)).await,
        }
    }

    async fn check_cluster(self: &Arc<Self>, c: &ClusterLimit, client: IpAddr) -> Result<(), u64> {
        let on_error = c.client.on_error();
        let local = (on_error == OnError::Local).then(|| self.check_local(client));
        match c.client.take(&c.limit, client).await {
            Ok(verdict) => verdict,
            Err(_) => match on_error {
                OnError::Local => local.unwrap_or(Ok(())),
                OnError::Allow => Ok(()),
                OnError::Deny => Err(1),
            },
        }
    }

    /// Takes one request from `client`'s bucket in this instance.
    pub fn check_local(self: &Arc<Self>, client: IpAddr) -> Result<(), u64> {
        self.maybe_sweep();
        match self.limiter.check_key(&client) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
            }
        }
    }

    /// Clients currently holding state (for tests and the memory bound).
    pub fn tracked_clients(&self) -> usize {
        self.limiter.len()
    }

    /// Drops the state of clients whose bucket is full again, at most once
    /// per `SWEEP_EVERY_MS`, off the request's task.
    fn maybe_sweep(self: &Arc<Self>) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY_MS
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            || self.sweeping.swap(true, Ordering::Acquire)
        {
            return;
        }
        let this = self.clone();
        let sweep = move || {
            this.limiter.retain_recent();
            this.limiter.shrink_to_fit();
            this.sweeping.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(sweep);
            }
            Err(_) => sweep(),
        }
    }

    /// Sweeps now (tests).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(n.into())
    }

    fn local(requests_per_second: f64, burst: u32) -> Arc<RouteLimiter> {
        let limit = RateLimit {
            requests_per_second,
            burst,
            scope: RateScope::Instance,
        };
        Arc::new(RouteLimiter::new(limit, "r", None))
    }

    #[test]
    fn burst_then_limited_with_retry_after() {
        let l = local(1.0, 3);
        for _ in 0..3 {
            assert_eq!(l.check_local(ip(1)), Ok(()));
        }
        assert_eq!(l.check_local(ip(1)), Err(1));
        // Other clients have their own bucket.
        assert_eq!(l.check_local(ip(2)), Ok(()));
    }

    #[test]
    fn slow_rate_gives_longer_retry_after() {
        let l = local(0.1, 1);
        assert_eq!(l.check_local(ip(1)), Ok(()));
        let secs = l.check_local(ip(1)).unwrap_err();
        assert!((9..=10).contains(&secs), "{secs}");
    }

    #[test]
    fn refilled_clients_are_swept() {
        let l = local(1000.0, 1);
        for n in 0..10_000 {
            let _ = l.check_local(ip(n));
        }
        assert!(l.tracked_clients() >= 9_000);
        std::thread::sleep(Duration::from_millis(5));
        l.sweep();
        assert_eq!(l.tracked_clients(), 0);
    }
}
