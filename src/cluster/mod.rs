//! The `[cluster]` Redis client behind `scope = "cluster"` rate limits.
//!
//! One multiplexed connection is shared by every request (one `EVALSHA`
//! round trip each, bounded by `timeout`). The request path never connects:
//! a background task does, with backoff, after a call times out or the
//! connection breaks, and pings once a second while idle so an outage shows
//! in `fulcrum_cluster_up` without traffic. While there is no connection,
//! calls fail at once (no wait) and the caller applies `on_error`.
//!
//! The client lives in the `Registry` and is kept by a reload whose
//! `[cluster]` is unchanged, so its connection survives.

pub mod gcra;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError};
use tokio::sync::Notify;

use crate::config::{ClusterConfig, OnError};
use crate::metrics::ClusterMetrics;

/// First reconnect delay; doubled per failure up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle connection is checked.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Connecting, loading the script and pings may take at least this long:
/// a TLS handshake does not fit a 50 ms request budget, and nothing waits
/// on them.
const BACKGROUND_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// Why a cluster decision could not be had from Redis.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no connection to Redis")]
    Down,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis connection failed: {0}")]
    Connection(#[source] RedisError),
    #[error("Redis answered with an error: {0}")]
    Script(#[source] RedisError),
}

/// The shared Redis connection and its supervisor.
pub struct ClusterClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    /// `None` only when the URL does not parse (validation prevents it).
    client: Option<redis::Client>,
    /// The connection requests use; `None` while (re)connecting.
    live: ArcSwapOption<Live>,
    /// Wakes the supervisor: the connection was lost, or the client closed.
    wake: Notify,
    closed: AtomicBool,
    metrics: ClusterMetrics,
}

struct Live {
    conn: MultiplexedConnection,
    /// SHA1 of `gcra::SCRIPT`, as `SCRIPT LOAD` answered.
    sha: String,
}

impl ClusterClient {
    /// Starts connecting in the background (when a tokio runtime runs).
    pub fn new(config: ClusterConfig, metrics: ClusterMetrics) -> ClusterClient {
        let client = redis::Client::open(config.redis.as_str())
            .inspect_err(|e| tracing::error!(redis = %config.redis_redacted(), error = %e, "invalid Redis URL"))
            .ok();
        metrics.up.set(0);
        let inner = Arc::new(Inner {
            config,
            client,
            live: ArcSwapOption::empty(),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            metrics,
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(supervise(inner.clone()));
            }
            Err(_) => tracing::warn!("no async runtime: the cluster client stays disconnected"),
        }
        ClusterClient { inner }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    pub fn on_error(&self) -> OnError {
        self.inner.config.on_error
    }

    /// Connected, as far as the last call or ping knows.
    pub fn is_up(&self) -> bool {
        self.inner.live.load().is_some()
    }

    /// Takes one request from `client`'s bucket in Redis: `Ok(Ok(()))`
    /// allowed, `Ok(Err(secs))` denied with Retry-After. Costs at most
    /// `timeout`, and nothing while disconnected.
    pub async fn take(
        &self,
        limit: &gcra::Limit,
        client: IpAddr,
    ) -> Result<Result<(), u64>, ClusterError> {
        let inner = &self.inner;
        let Some(live) = inner.live.load_full() else {
            return Err(ClusterError::Down);
        };
        let key = limit.key(client);
        let mut conn = live.conn.clone();
        let call = async {
            match evalsha(&mut conn, &live.sha, &key, limit).await {
                // The script cache was emptied under a live connection
                // (SCRIPT FLUSH, a failover): load it again and retry once.
                Err(e) if e.kind() == ErrorKind::NoScriptError => {
                    let sha = load_script(&mut conn).await?;
                    evalsha(&mut conn, &sha, &key, limit).await
                }
                r => r,
            }
        };
        let timeout = inner.config.timeout;
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok((allowed, wait_ms))) => Ok(gcra::verdict(allowed, wait_ms)),
            Ok(Err(e)) if is_connection_error(&e) => {
                inner.metrics.connection.inc();
                inner.lost(&live, &e);
                Err(ClusterError::Connection(e))
            }
            Ok(Err(e)) => {
                inner.metrics.script.inc();
                tracing::debug!(error = %e, "cluster rate limit script failed");
                Err(ClusterError::Script(e))
            }
            Err(_) => {
                inner.metrics.timeout.inc();
                inner.lost(&live, &format!("no answer within {timeout:?}"));
                Err(ClusterError::Timeout(timeout))
            }
        }
    }
}

impl Drop for ClusterClient {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.live.store(None);
        self.inner.wake.notify_one();
    }
}

impl Inner {
    /// Drops `live` (if it is still the current connection) and wakes the
    /// supervisor. Requests go to `on_error` at once until it reconnects.
    fn lost(&self, live: &Arc<Live>, why: &dyn std::fmt::Display) {
        let prev = self.live.compare_and_swap(live, None);
        if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, live)) {
            self.metrics.up.set(0);
            tracing::warn!(redis = %self.config.redis_redacted(), error = %why, on_error = self.config.on_error.as_str(), "cluster Redis lost; reconnecting");
            self.wake.notify_one();
        }
    }

    fn background_timeout(&self) -> Duration {
        self.config.timeout.max(BACKGROUND_TIMEOUT_MIN)
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_unrecoverable_error()
}

async fn evalsha(
    conn: &mut MultiplexedConnection,
    sha: &str,
    key: &str,
    limit: &gcra::Limit,
) -> Result<(i64, i64), RedisError> {
    redis::cmd("EVALSHA")
        .arg(sha)
        .arg(1)
        .arg(key)
        .arg(&limit.interval_us)
        .arg(&limit.burst)
        .query_async(conn)
        .await
}

async fn load_script(conn: &mut MultiplexedConnection) -> Result<String, RedisError> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(gcra::SCRIPT)
        .query_async(conn)
        .await
}

/// Connects and loads the script, within `limit`.
async fn connect(client: &redis::Client, limit: Duration) -> Result<Live, String> {
    let setup = async {
        let config = AsyncConnectionConfig::new().set_connection_timeout(limit);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let sha = load_script(&mut conn).await?;
        Ok::<_, RedisError>(Live { conn, sha })
    };
    match tokio::time::timeout(limit, setup).await {
        Ok(Ok(live)) => Ok(live),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Keeps a connection while the client exists: connects with backoff when
/// there is none, pings it while idle.
async fn supervise(inner: Arc<Inner>) {
    let Some(client) = inner.client.clone() else {
        return;
    };
    let limit = inner.background_timeout();
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    while !inner.closed.load(Ordering::Relaxed) {
        let Some(live) = inner.live.load_full() else {
            match connect(&client, limit).await {
                Ok(live) if !inner.closed.load(Ordering::Relaxed) => {
                    inner.live.store(Some(Arc::new(live)));
                    inner.metrics.up.set(1);
                    tracing::info!(redis = %inner.config.redis_redacted(), after_failures = failures, "cluster Redis connected");
                    backoff = BACKOFF_MIN;
                    failures = 0;
                }
                Ok(_) => return,
                Err(e) => {
                    inner.metrics.connection.inc();
                    if failures == 0 {
                        tracing::warn!(redis = %inner.config.redis_redacted(), error = %e, "cannot connect to cluster Redis; retrying with backoff");
                    } else {
                        tracing::debug!(error = %e, failures, "cluster Redis connect failed");
                    }
                    failures += 1;
                    // Spread the reconnects of many instances a little.
                    let jitter = Duration::from_millis(u64::from(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.subsec_micros())
                            % 50,
                    ));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff + jitter) => {}
                        _ = inner.wake.notified() => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        };
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(PING_EVERY) => {
                let mut conn = live.conn.clone();
                let ping = redis::cmd("PING");
                match tokio::time::timeout(limit, ping.query_async::<String>(&mut conn)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if !is_connection_error(&e) => {
                        tracing::debug!(error = %e, "cluster Redis ping answered with an error");
                    }
                    Ok(Err(e)) => {
                        inner.metrics.connection.inc();
                        inner.lost(&live, &e);
                    }
                    Err(_) => {
                        inner.metrics.timeout.inc();
                        inner.lost(&live, &format!("ping: no answer within {limit:?}"));
                    }
                }
            }
        }
    }
}
