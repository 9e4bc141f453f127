//! Long-lived per-server state, kept outside the routing snapshot.
//!
//! A `ServerState` is keyed by (upstream name, address) in the `Registry` and
//! reused by every snapshot that keeps that pair, so in-flight counts, pooled
//! connections and (later) health survive reloads. The snapshot holds strong
//! references; the registry holds weak ones, so a server removed by a reload
//! disappears once the last request on it has finished.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::metrics::{Metrics, RouteMetrics, ServerMetrics};
use crate::proxy::pool::Pool;

/// State of one server of one upstream.
pub struct ServerState {
    pub upstream: Arc<str>,
    pub addr: SocketAddr,
    /// `ip:port`, the `server` metric label.
    pub label: String,
    in_flight: AtomicUsize,
    /// Whether the server may receive traffic (health checks clear it).
    up: AtomicBool,
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
        let state = Arc::new(ServerState {
            upstream: key.0.clone(),
            addr,
            metrics: ServerMetrics::new(&self.metrics, upstream, &label),
            label,
            in_flight: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            pool: Pool::default(),
            registry: Arc::downgrade(self),
        });
        state.metrics.up.set(1);
        inner.servers.insert(key, Arc::downgrade(&state));
        state
    }

    /// Every server state still alive: those in the current snapshot, and
    /// removed ones still finishing requests (draining). For the admin
    /// endpoints; never on the request path.
    pub fn live_servers(&self) -> Vec<Arc<ServerState>> {
        let inner = self.lock();
        inner.servers.values().filter_map(Weak::upgrade).collect()
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
