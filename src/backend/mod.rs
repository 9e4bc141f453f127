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
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

pub use crate::balance::clock_ms;
use crate::balance::{clock_ms_at, LoadHook, PeakEwma};

use crate::cluster::ClusterClient;
use crate::config::{ClusterConfig, RateLimit};
use crate::health::budget::RetryBudget;
use crate::metrics::{ClusterMetrics, Metrics, RouteMetrics, ServerMetrics};
use crate::proxy::pool::Pool;
use crate::proxy::ratelimit::RouteLimiter;

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
    /// In-flight requests over every server of this upstream (shared).
    group_in_flight: Arc<AtomicUsize>,
    /// When the server last came up, as `clock_ms + 1`; 0 = not ramping.
    up_since: AtomicU64,
    /// Peak-EWMA of response-head latency (used by `peak-ewma`).
    pub ewma: PeakEwma,
    /// Told about every in-flight change (used by `least-connections`).
    pub(crate) load_hook: ArcSwapOption<LoadHook>,
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
        if changed && !down {
            // Coming back: `slow_start` ramps it up from here.
            self.set_up_since(Some(Instant::now()));
        }
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
            self.set_up_since(Some(Instant::now()));
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

    /// Records when the server came up, which starts its `slow_start` ramp;
    /// `None` means it has been up long enough (full weight).
    pub fn set_up_since(&self, at: Option<Instant>) {
        let v = at.map_or(0, |t| clock_ms_at(t) + 1);
        self.up_since.store(v, Ordering::Relaxed);
    }

    /// `clock_ms` at which the server came up, if a ramp may be running.
    #[inline]
    pub fn up_since_ms(&self) -> Option<u64> {
        match self.up_since.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v - 1),
        }
    }

    /// In-flight requests over every server of this server's upstream.
    #[inline]
    pub fn group_in_flight(&self) -> usize {
        self.group_in_flight.load(Ordering::Relaxed)
    }

    /// The shared upstream-wide in-flight counter.
    pub(crate) fn group_in_flight_handle(&self) -> Arc<AtomicUsize> {
        self.group_in_flight.clone()
    }

    #[inline]
    fn load_changed(&self) {
        if let Some(h) = &*self.load_hook.load() {
            h.update(self);
        }
    }
}

impl Drop for ServerState {
    fn drop(&mut self) {
        let Some(reg) = self.registry.upgrade() else {
            return;
        };
        let mut inner = reg.lock();
        let Some(of_upstream) = inner.servers.get_mut(&*self.upstream) else {
            return;
        };
        // A reload may already have created a successor for the same key; its
        // series are the same series, so only remove them if nobody took over.
        if of_upstream
            .get(&self.addr)
            .is_some_and(|w| w.strong_count() == 0)
        {
            of_upstream.remove(&self.addr);
            if of_upstream.is_empty() {
                inner.servers.remove(&*self.upstream);
            }
            self.metrics.remove_series();
        }
    }
}

/// Counts a request against a server from pick until the response body ends.
pub struct InFlight(Arc<ServerState>);

impl InFlight {
    pub fn new(server: Arc<ServerState>) -> InFlight {
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        server.group_in_flight.fetch_add(1, Ordering::Relaxed);
        server.load_changed();
        InFlight(server)
    }

    pub fn server(&self) -> &Arc<ServerState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.group_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.load_changed();
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
    /// upstream → address → state (nested so lookups borrow the name).
    servers: HashMap<Arc<str>, HashMap<SocketAddr, Weak<ServerState>>>,
    routes: HashMap<(String, String), Weak<RouteStats>>,
    budgets: HashMap<String, Weak<RetryBudget>>,
    groups: HashMap<Arc<str>, Weak<AtomicUsize>>,
    limiters: HashMap<String, Weak<RouteLimiter>>,
    /// The `[cluster]` client of the current config (kept while it is unchanged).
    cluster: Option<Arc<ClusterClient>>,
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
        if let Some(s) = inner
            .servers
            .get(upstream)
            .and_then(|m| m.get(&addr))
            .and_then(Weak::upgrade)
        {
            return s;
        }
        let name: Arc<str> = match inner.servers.get_key_value(upstream) {
            Some((k, _)) => k.clone(),
            None => Arc::from(upstream),
        };
        let label = addr.to_string();
        let group_in_flight = match inner.groups.get(upstream).and_then(Weak::upgrade) {
            Some(g) => g,
            None => {
                inner.groups.retain(|_, w| w.strong_count() > 0);
                let g = Arc::new(AtomicUsize::new(0));
                inner.groups.insert(name.clone(), Arc::downgrade(&g));
                g
            }
        };
        let state = Arc::new(ServerState {
            upstream: name.clone(),
            addr,
            metrics: ServerMetrics::new(&self.metrics, upstream, &label),
            label,
            in_flight: AtomicUsize::new(0),
            checked_down: AtomicBool::new(!initial_up),
            ejected: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            group_in_flight,
            up_since: AtomicU64::new(0),
            ewma: PeakEwma::default(),
            load_hook: ArcSwapOption::empty(),
            pool: Pool::default(),
            registry: Arc::downgrade(self),
        });
        state.metrics.up.set(initial_up as i64);
        inner
            .servers
            .entry(name)
            .or_default()
            .insert(addr, Arc::downgrade(&state));
        state
    }

    /// Every server state still alive: those in the current snapshot, and
    /// removed ones still finishing requests (draining). For the admin
    /// endpoints; never on the request path.
    pub fn live_servers(&self) -> Vec<Arc<ServerState>> {
        let inner = self.lock();
        inner
            .servers
            .values()
            .flat_map(|by_addr| by_addr.values())
            .filter_map(Weak::upgrade)
            .collect()
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

    /// The `[cluster]` Redis client for `config`: the same one (and its
    /// connection) while the config is unchanged; none without `[cluster]`.
    pub fn cluster(&self, config: Option<&ClusterConfig>) -> Option<Arc<ClusterClient>> {
        let mut inner = self.lock();
        match (config, &inner.cluster) {
            (Some(c), Some(client)) if client.config() == c => return Some(client.clone()),
            (None, None) => return None,
            _ => {}
        }
        // The old client's handles stop showing once its series is gone.
        ClusterMetrics::remove_up(&self.metrics);
        inner.cluster = config.map(|c| {
            Arc::new(ClusterClient::new(
                c.clone(),
                ClusterMetrics::new(&self.metrics),
            ))
        });
        inner.cluster.clone()
    }

    /// The rate limiter of the route `identity` (named `route`) enforcing
    /// `limit`: the same one (with every client's bucket) while a snapshot
    /// still holds it.
    pub fn route_limiter(
        &self,
        identity: &str,
        route: &str,
        limit: RateLimit,
        cluster: Option<&Arc<ClusterClient>>,
    ) -> Arc<RouteLimiter> {
        let mut inner = self.lock();
        if let Some(l) = inner.limiters.get(identity).and_then(Weak::upgrade) {
            if l.is_for(limit, route, cluster) {
                return l;
            }
        }
        inner.limiters.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(RouteLimiter::new(limit, route, cluster));
        inner
            .limiters
            .insert(identity.to_string(), Arc::downgrade(&l));
        l
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
