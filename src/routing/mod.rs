//! The routing snapshot: everything a request needs, immutable, swapped whole.
//!
//! A `RoutingTable` is built from a validated `Config` and the long-lived
//! `Registry`; the request path loads it once per request from one `ArcSwap`.

mod matcher;

pub use matcher::{host_matches, path_matches, request_host};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use prometheus::IntCounter;

use crate::backend::{Registry, RouteStats, ServerState};
use crate::balance::{key, Balancer, PickContext, Sticky};
use crate::config::{Config, HostMatch, ListenerConfig, Strategy, UpstreamConfig};
use crate::health::budget::RetryBudget;
use crate::proxy::ratelimit::RouteLimiter;

/// One immutable generation of the routing configuration.
pub struct RoutingTable {
    pub generation: u64,
    pub config: Arc<Config>,
    pub listeners: Vec<ListenerTable>,
    pub upstreams: Vec<Arc<Upstream>>,
}

/// The routes and per-request limits of one listener.
pub struct ListenerTable {
    pub name: Arc<str>,
    pub settings: Arc<ListenerConfig>,
    /// Only the routes that apply to this listener, in file order.
    pub routes: Vec<Route>,
    /// Metrics for requests that match no route (`upstream=""`).
    pub no_route: Arc<RouteStats>,
}

pub struct Route {
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub upstream: Arc<Upstream>,
    pub stats: Arc<RouteStats>,
    /// Per-client-IP limit, shared by every listener the route serves.
    pub rate_limit: Option<Arc<RouteLimiter>>,
}

/// An upstream pool as this generation sees it.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    /// Every configured server (including ones that are not up).
    pub servers: Vec<Arc<ServerState>>,
    /// The servers the balancer chooses among, in server order.
    pub up: Vec<Arc<ServerState>>,
    pub balancer: Balancer,
    /// Cookie affinity over `up`, when configured.
    pub sticky: Option<Sticky>,
    pub retries_total: IntCounter,
    pub retry_budget: Arc<RetryBudget>,
}

impl Upstream {
    /// Picks a server that is up, or `None` when none is.
    #[inline]
    pub fn pick(&self, ctx: &PickContext) -> Option<&Arc<ServerState>> {
        self.balancer.pick(ctx).and_then(|i| self.up.get(i))
    }

    /// What the strategy needs to know about this request. Hashes the
    /// `hash_key` only for the hashing strategies.
    #[inline]
    pub fn pick_context(&self, parts: &http::request::Parts, client_ip: IpAddr) -> PickContext<'_> {
        let key = match self.config.strategy {
            Strategy::ConsistentHash => key::request_hash(&self.config.hash_key, parts, client_ip),
            Strategy::IpHash => key::hash_ip(client_ip),
            _ => 0,
        };
        PickContext { up: &self.up, key }
    }

    /// The up server a sticky cookie in `headers` names, if any.
    #[inline]
    pub fn sticky_target(&self, headers: &http::HeaderMap) -> Option<&Arc<ServerState>> {
        self.sticky.as_ref()?.lookup(headers).map(|i| &self.up[i])
    }

    /// The `Set-Cookie` to add to a response from `server`: none without
    /// sticky sessions or when the request already stuck to that server.
    pub fn sticky_cookie(
        &self,
        target: Option<&Arc<ServerState>>,
        server: &Arc<ServerState>,
    ) -> Option<&http::HeaderValue> {
        let sticky = self.sticky.as_ref()?;
        if target.is_some_and(|t| Arc::ptr_eq(t, server)) {
            return None;
        }
        sticky.set_cookie_for(&self.name, server)
    }
}

impl RoutingTable {
    /// Builds a snapshot. Cheap enough to run on every reload; the expensive
    /// per-strategy tables are built here, never per request.
    pub fn build(config: Arc<Config>, registry: &Arc<Registry>, generation: u64) -> RoutingTable {
        let metrics = &registry.metrics;
        let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
        let mut ordered = Vec::new();
        for u in &config.upstreams {
            let servers: Vec<Arc<ServerState>> = u
                .servers
                .iter()
                .map(|s| {
                    let initial_up = u.health_check.as_ref().is_none_or(|h| h.initial_up);
                    registry.server(&u.name, s.address, initial_up)
                })
                .collect();
            let up_idx: Vec<usize> = (0..servers.len()).filter(|i| servers[*i].is_up()).collect();
            let up: Vec<Arc<ServerState>> = up_idx.iter().map(|i| servers[*i].clone()).collect();
            let upstream = Arc::new(Upstream {
                name: Arc::from(u.name.as_str()),
                balancer: Balancer::build(u, &servers, &up_idx),
                sticky: u.sticky.as_ref().map(|c| Sticky::new(c, &u.name, &up)),
                config: u.clone(),
                servers,
                up,
                retries_total: metrics.retries_total.with_label_values(&[&u.name]),
                retry_budget: registry.retry_budget(&u.name),
            });
            upstreams.insert(u.name.as_str(), upstream.clone());
            ordered.push(upstream);
        }

        let cluster = registry.cluster(config.cluster.as_ref());
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let routes = config
                    .routes
                    .iter()
                    .filter(|r| r.listeners.as_ref().is_none_or(|ls| ls.contains(&l.name)))
                    .filter_map(|r| {
                        let upstream = upstreams.get(r.upstream.as_str())?.clone();
                        Some(Route {
                            host: r.host.clone(),
                            path_prefix: r.path_prefix.clone(),
                            stats: registry.route_stats(&l.name, &r.upstream),
                            rate_limit: r.rate_limit.map(|limit| {
                                let identity = format!(
                                    "{:?} {:?} {} {}",
                                    r.listeners, r.host, r.path_prefix, r.upstream
                                );
                                registry.route_limiter(&identity, &r.name, limit, cluster.as_ref())
                            }),
                            upstream,
                        })
                    })
                    .collect();
                ListenerTable {
                    name: Arc::from(l.name.as_str()),
                    settings: Arc::new(l.clone()),
                    routes,
                    no_route: registry.route_stats(&l.name, ""),
                }
            })
            .collect();

        RoutingTable {
            generation,
            config,
            listeners,
            upstreams: ordered,
        }
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerTable> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

impl ListenerTable {
    /// First route in file order whose host and path match.
    #[inline]
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.host
                .as_ref()
                .is_none_or(|h| host.is_some_and(|host| host_matches(h, host)))
                && path_matches(&r.path_prefix, path)
        })
    }
}
