//! Long-lived per-server state, kept outside the routing snapshot.
//!
//! A `ServerState` is keyed by (upstream name, address) in the `Registry` and
//! reused by every snapshot that keeps that pair, so in-flight counts, pooled
//! connections and (later) health survive reloads. The snapshot holds strong
//! references; the registry holds weak ones, so a server removed by a reload
//! disappears once the last request on it has finished.

pub mod ewma;
pub mod overrides;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use overrides::{AdminState, MAX_WEIGHT};
pub use state::{Ejection, Health, Load, LoadHook, LoadTree, ServerState};

use crate::cluster::ClusterClient;
use crate::config::ClusterConfig;
use crate::config::RateLimit;
use crate::metrics::ClusterMetrics;
use crate::metrics::{Metrics, RouteMetrics};
use crate::ratelimit::RouteLimiter;
use crate::retry_budget::RetryBudget;

/// Counts a request against a server from pick until the response body ends.
pub struct InFlight(Arc<ServerState>);

impl InFlight {
    pub fn new(server: Arc<ServerState>) -> InFlight {
        server.load.in_flight.fetch_add(1, Ordering::Relaxed);
        server.load.group.fetch_add(1, Ordering::Relaxed);
        server.load_changed();
        InFlight(server)
    }

    pub fn server(&self) -> &Arc<ServerState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.load.group.fetch_sub(1, Ordering::Relaxed);
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

/// The series of one route name (`fulcrum_route_requests_total` and the
/// other per-route 0.2 metrics), shared by every listener the route serves
/// and kept across reloads while the name stays.
pub struct RouteNameStats {
    pub route: String,
    pub metrics: crate::metrics::RouteNameMetrics,
    registry: Weak<Registry>,
}

impl Drop for RouteNameStats {
    fn drop(&mut self) {
        let Some(reg) = self.registry.upgrade() else {
            return;
        };
        let mut inner = reg.lock();
        if inner
            .route_names
            .get(&self.route)
            .is_some_and(|w| w.strong_count() == 0)
        {
            inner.route_names.remove(&self.route);
            self.metrics.remove_series(&reg.metrics, &self.route);
        }
    }
}

#[derive(Default)]
struct Inner {
    /// upstream → address → state (nested so lookups borrow the name).
    servers: HashMap<Arc<str>, HashMap<SocketAddr, Weak<ServerState>>>,
    routes: HashMap<(String, String), Weak<RouteStats>>,
    route_names: HashMap<String, Weak<RouteNameStats>>,
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
    /// Overrides read from the state file at start, applied to each server
    /// as it is first created, then forgotten.
    restored: Mutex<overrides::Saved>,
    /// The state file content last written (serialises writes, and skips
    /// writing unchanged content).
    saved: Mutex<String>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Registry> {
        Arc::new(Registry {
            metrics,
            inner: Mutex::new(Inner::default()),
            health_changed: tokio::sync::Notify::new(),
            restored: Mutex::default(),
            saved: Mutex::default(),
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
        let group_in_flight = match inner.groups.get(upstream).and_then(Weak::upgrade) {
            Some(g) => g,
            None => {
                inner.groups.retain(|_, w| w.strong_count() > 0);
                let g = Arc::new(AtomicUsize::new(0));
                inner.groups.insert(name.clone(), Arc::downgrade(&g));
                g
            }
        };
        let state = Arc::new(ServerState::new(
            self,
            name.clone(),
            addr,
            initial_up,
            group_in_flight,
        ));
        let restored = self
            .restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(upstream.to_string(), addr));
        if let Some(o) = restored {
            state.set_admin_state(o.admin_state);
            state.set_weight_override(o.weight);
            tracing::info!(upstream, server = %addr, admin_state = o.admin_state.as_str(), weight = ?o.weight, "runtime override restored from the state file");
        }
        inner
            .servers
            .entry(name)
            .or_default()
            .insert(addr, Arc::downgrade(&state));
        state
    }

    /// Overrides read from the state file, for the servers created next
    /// (the first snapshot); see `forget_restored`.
    pub fn restore(&self, saved: overrides::Saved) {
        *self.restored.lock().unwrap_or_else(|p| p.into_inner()) = saved;
    }

    /// Drops restored overrides no configured server claimed (an override
    /// belongs to a server in the config); returns how many.
    pub fn forget_restored(&self) -> usize {
        let left = std::mem::take(&mut *self.restored.lock().unwrap_or_else(|p| p.into_inner()));
        for (upstream, addr) in left.keys() {
            tracing::info!(upstream = %upstream, server = %addr, "state file names a server not in the config; override dropped");
        }
        left.len()
    }

    /// Writes the overrides of `servers` (the current snapshot's) to the
    /// state file when they differ from what was last written. Blocking.
    pub fn save_overrides<'a>(
        &self,
        path: &Path,
        servers: impl Iterator<Item = &'a ServerState>,
    ) -> std::io::Result<()> {
        // Rendered under the lock: of two concurrent saves, the one that
        // writes last also read last.
        let mut last = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        let content = overrides::render(servers);
        if *last == content {
            return Ok(());
        }
        overrides::write_atomic(path, &content)?;
        *last = content;
        Ok(())
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

    /// The per-route-name series for `route`.
    pub fn route_name_stats(self: &Arc<Self>, route: &str) -> Arc<RouteNameStats> {
        let mut inner = self.lock();
        if let Some(s) = inner.route_names.get(route).and_then(Weak::upgrade) {
            return s;
        }
        let stats = Arc::new(RouteNameStats {
            route: route.to_string(),
            metrics: crate::metrics::RouteNameMetrics::new(&self.metrics, route),
            registry: Arc::downgrade(self),
        });
        inner
            .route_names
            .insert(route.to_string(), Arc::downgrade(&stats));
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
