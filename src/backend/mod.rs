//! Long-lived per-server state, kept outside the routing snapshot.
//!
//! A `ServerState` is keyed by (upstream name, address) in the `Registry` and
//! reused by every snapshot that keeps that pair, so in-flight counts, pooled
//! connections and (later) health survive reloads. The snapshot holds strong
//! references; the registry holds weak ones, so a server removed by a reload
//! disappears once the last request on it has finished.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::health::budget::RetryBudget;
use crate::metrics::{Metrics, RouteMetrics, ServerMetrics};
use crate::proxy::pool::Pool;

/// State of one server of one upstream.
pub struct ServerState {
    pub upstream: Arc<str>,
    pub addr: SocketAddr,
    /// `ip:port`, the `server` metric label.
    pub label: String,
    in_flight: AtomicUsize,
    /// Down by active health checks.
    checked_down: AtomicBool,
    /// Ejected by passive health; cleared when `ejected_until` passes.
    ejected: AtomicBool,
    /// End of the current ejection, in ms on the process clock.
    ejected_until: AtomicU64,
    /// Live-traffic failures in a row (passive health).
    consecutive_failures: AtomicU32,
    pub pool: Pool,
    pub metrics: ServerMetrics,
    registry: Weak<Registry>,
}

impl ServerState {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Eligible for new requests: not down by active checks, not ejected.
    #[inline]
    pub fn is_up(&self) -> bool {
        !self.checked_down.load(Ordering::Relaxed) && !self.ejected.load(Ordering::Relaxed)
    }

    pub fn is_checked_down(&self) -> bool {
        self.checked_down.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// "up", "down" or "ejected", for people.
    pub fn state_name(&self) -> &'static str {
        if self.is_checked_down() {
            "down"
        } else if self.is_ejected() {
            "ejected"
        } else {
            "up"
        }
    }

    /// Records an active-check verdict; returns true when it changed.
    pub fn set_checked_down(&self, down: bool) -> bool {
        let changed = self.checked_down.swap(down, Ordering::Relaxed) != down;
        if changed {
            self.metrics.up.set(self.is_up() as i64);
            self.health_changed();
        }
        changed
    }

    /// A live request succeeded: the failure streak ends.
    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A live request failed; returns the length of the failure streak.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Takes the server out of rotation for `time`.
    pub fn eject(&self, time: Duration) {
        self.ejected_until
            .store(clock_ms() + time.as_millis() as u64, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if !self.ejected.swap(true, Ordering::Relaxed) {
            self.metrics.ejections.inc();
            self.metrics.up.set(0);
            self.health_changed();
        }
    }

    /// When the ejection ends (process-clock ms), if ejected.
    pub fn ejected_until(&self) -> Option<u64> {
        self.is_ejected()
            .then(|| self.ejected_until.load(Ordering::Relaxed))
    }

    /// Ends an ejection whose time is over; returns true if it did.
    pub fn end_ejection_if_due(&self, now_ms: u64) -> bool {
        if self.is_ejected() && self.ejected_until.load(Ordering::Relaxed) <= now_ms {
            self.ejected.store(false, Ordering::Relaxed);
            self.metrics.up.set(self.is_up() as i64);
            tracing::info!(upstream = %self.upstream, server = %self.addr, "server back from ejection");
            return true;
        }
        false
    }

    fn health_changed(&self) {
        if let Some(r) = self.registry.upgrade() {
            r.health_changed.notify_one();
        }
    }
}

/// Milliseconds on a monotonic process clock.
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Drop for ServerState {
    fn drop(&mut self) {
        let Some(reg) = self.registry.upgrade() else {
            return;
        };
        let mut inner = reg.lock();
        let key = (self.upstream.clone(), self.addr);
        // A reload may already have created a successor for the same key; its
        // series are the same series, so only remove them if nobody took over.
        if inner
            .servers
            .get(&key)
            .is_some_and(|w| w.strong_count() == 0)
        {
            inner.servers.remove(&key);
            self.metrics.remove_series();
        }
    }
}

/// Counts a request against a server from pick until the response body ends.
pub struct InFlight(Arc<ServerState>);

impl InFlight {
    pub fn new(server: Arc<ServerState>) -> InFlight {
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(server)
    }

    pub fn server(&self) -> &Arc<ServerState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-(listener, upstream) request metrics, shared like server state.
pub struct RouteStats {
    pub listener: String,
    pub upstream: String,
    pub metrics: RouteMetrics,
    registry: Weak<Registry>,
}

impl Drop for RouteStats {
    fn drop(&mut self) {
        let Some(reg) = self.registry.upgrade() else {
            return;
        };
        let mut inner = reg.lock();
        let key = (self.listener.clone(), self.upstream.clone());
        if inner
            .routes
            .get(&key)
            .is_some_and(|w| w.strong_count() == 0)
        {
            inner.routes.remove(&key);
            self.metrics
                .remove_series(&reg.metrics, &self.listener, &self.upstream);
        }
    }
}

#[derive(Default)]
struct Inner {
    servers: HashMap<(Arc<str>, SocketAddr), Weak<ServerState>>,
    routes: HashMap<(String, String), Weak<RouteStats>>,
    budgets: HashMap<String, Weak<RetryBudget>>,
}

/// Identity-keyed store of long-lived state. Locked only while a snapshot is
/// built or a server is dropped, never on the request path.
pub struct Registry {
    pub metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    /// Signalled when a server's eligibility changes, so the snapshot is rebuilt.
    pub health_changed: tokio::sync::Notify,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Registry> {
        Arc::new(Registry {
            metrics,
            inner: Mutex::new(Inner::default()),
            health_changed: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state for (upstream, addr): the existing one if any snapshot still
    /// holds it (health and counts carry over), else a fresh one that starts
    /// up, or down when `initial_up` is false.
    pub fn server(
        self: &Arc<Self>,
        upstream: &str,
        addr: SocketAddr,
        initial_up: bool,
    ) -> Arc<ServerState> {
        let mut inner = self.lock();
        let key: (Arc<str>, SocketAddr) = (Arc::from(upstream), addr);
        if let Some(s) = inner.servers.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let label = addr.to_string();
        let state = Arc::new(ServerState {
            upstream: key.0.clone(),
            addr,
            metrics: ServerMetrics::new(&self.metrics, upstream, &label),
            label,
            in_flight: AtomicUsize::new(0),
            checked_down: AtomicBool::new(!initial_up),
            ejected: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            pool: Pool::default(),
            registry: Arc::downgrade(self),
        });
        state.metrics.up.set(initial_up as i64);
        inner.servers.insert(key, Arc::downgrade(&state));
        state
    }

    /// The metrics for a (listener, upstream) pair; `upstream` is "" for
    /// requests that matched no route.
    pub fn route_stats(self: &Arc<Self>, listener: &str, upstream: &str) -> Arc<RouteStats> {
        let mut inner = self.lock();
        let key = (listener.to_string(), upstream.to_string());
        if let Some(s) = inner.routes.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let stats = Arc::new(RouteStats {
            listener: key.0.clone(),
            upstream: key.1.clone(),
            metrics: RouteMetrics::new(&self.metrics, listener, upstream),
            registry: Arc::downgrade(self),
        });
        inner.routes.insert(key, Arc::downgrade(&stats));
        stats
    }

    /// The retry budget of an upstream, kept across snapshots.
    pub fn retry_budget(&self, upstream: &str) -> Arc<RetryBudget> {
        let mut inner = self.lock();
        if let Some(b) = inner.budgets.get(upstream).and_then(Weak::upgrade) {
            return b;
        }
        inner.budgets.retain(|_, w| w.strong_count() > 0);
        let b = Arc::new(RetryBudget::default());
        inner
            .budgets
            .insert(upstream.to_string(), Arc::downgrade(&b));
        b
    }
}
