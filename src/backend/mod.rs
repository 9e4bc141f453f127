//! Long-lived per-server state, kept outside the routing snapshot.
//!
//! A `ServerState` is keyed by (upstream name, address) in the `Registry` and
//! reused by every snapshot that keeps that pair, so in-flight counts, pooled
//! connections and (later) health survive reloads. The snapshot holds strong
//! references; the registry holds weak ones, so a server removed by a reload
//! disappears once the last request on it has finished.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use arc_swap::ArcSwapOption;

use crate::balance::{clock_ms_at, LoadHook, PeakEwma};

use crate::metrics::{Metrics, RouteMetrics, ServerMetrics};
use crate::proxy::pool::Pool;

/// State of one server of one upstream.
pub struct ServerState {
    pub upstream: Arc<str>,
    pub addr: SocketAddr,
    /// `ip:port`, the `server` metric label.
    pub label: String,
    in_flight: AtomicUsize,
    /// In-flight requests over every server of this upstream (shared).
    group_in_flight: Arc<AtomicUsize>,
    /// Whether the server may receive traffic (health checks clear it).
    up: AtomicBool,
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

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
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
    servers: HashMap<(Arc<str>, SocketAddr), Weak<ServerState>>,
    routes: HashMap<(String, String), Weak<RouteStats>>,
    groups: HashMap<Arc<str>, Weak<AtomicUsize>>,
}

/// Identity-keyed store of long-lived state. Locked only while a snapshot is
/// built or a server is dropped, never on the request path.
pub struct Registry {
    pub metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Registry> {
        Arc::new(Registry {
            metrics,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state for (upstream, addr): the existing one if any snapshot still
    /// holds it, else a fresh one.
    pub fn server(self: &Arc<Self>, upstream: &str, addr: SocketAddr) -> Arc<ServerState> {
        let mut inner = self.lock();
        let key: (Arc<str>, SocketAddr) = (Arc::from(upstream), addr);
        if let Some(s) = inner.servers.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let label = addr.to_string();
        inner.groups.retain(|_, w| w.strong_count() > 0);
        let group_in_flight = match inner.groups.get(&key.0).and_then(Weak::upgrade) {
            Some(g) => g,
            None => {
                let g = Arc::new(AtomicUsize::new(0));
                inner.groups.insert(key.0.clone(), Arc::downgrade(&g));
                g
            }
        };
        let state = Arc::new(ServerState {
            upstream: key.0.clone(),
            addr,
            metrics: ServerMetrics::new(&self.metrics, upstream, &label),
            label,
            in_flight: AtomicUsize::new(0),
            group_in_flight,
            up: AtomicBool::new(true),
            up_since: AtomicU64::new(0),
            ewma: PeakEwma::default(),
            load_hook: ArcSwapOption::empty(),
            pool: Pool::default(),
            registry: Arc::downgrade(self),
        });
        state.metrics.up.set(1);
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
}
