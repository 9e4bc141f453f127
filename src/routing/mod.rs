//! The routing snapshot: everything a request needs, immutable, swapped whole.
//!
//! A `RoutingTable` is built from a validated `Config` and the long-lived
//! `Registry`; the request path loads it once per request from one `ArcSwap`.

mod matcher;

pub use matcher::{host_matches, path_matches, request_host};

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::IntCounter;

use crate::backend::{Registry, RouteStats, ServerState};
use crate::balance::{Balancer, PickContext};
use crate::config::{Config, HostMatch, ListenerConfig, UpstreamConfig};
use crate::health::budget::RetryBudget;

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
    pub retries_total: IntCounter,
    pub retry_budget: Arc<RetryBudget>,
}

impl Upstream {
    /// Picks a server that is up, or `None` when none is.
    #[inline]
    pub fn pick(&self, ctx: &PickContext) -> Option<&Arc<ServerState>> {
        self.balancer.pick(ctx).and_then(|i| self.up.get(i))
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
            let up: Vec<Arc<ServerState>> = servers.iter().filter(|s| s.is_up()).cloned().collect();
            let weights: Vec<u32> = u
                .servers
                .iter()
                .zip(&servers)
                .filter(|(_, s)| s.is_up())
                .map(|(c, _)| c.weight)
                .collect();
            let upstream = Arc::new(Upstream {
                name: Arc::from(u.name.as_str()),
                balancer: Balancer::build(u.strategy, &weights),
                config: u.clone(),
                servers,
                up,
                retries_total: metrics.retries_total.with_label_values(&[&u.name]),
                retry_budget: registry.retry_budget(&u.name),
            });
            upstreams.insert(u.name.as_str(), upstream.clone());
            ordered.push(upstream);
        }

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
