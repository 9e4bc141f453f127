//! The routing snapshot: everything a request needs, immutable, swapped whole.
//!
//! A `RoutingTable` is built from a validated `Config` and the long-lived
//! `Registry`; the request path loads it once per request from one `ArcSwap`.

mod matcher;

pub use matcher::{host_matches, path_matches, request_host, request_matches};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use prometheus::IntCounter;

use crate::backend::{Registry, RouteNameStats, RouteStats, ServerState};
use crate::balance::{key, Balancer, PickContext, Sticky};
use crate::config::policy::{RedirectConfig, RespondConfig};
use crate::config::{
    Config, HostMatch, ListenerConfig, RouteAction, RouteConfig, RouteMatch, Strategy,
    UpstreamConfig,
};
use crate::policy::split::Split;
use crate::policy::Policy;
use crate::ratelimit::RouteLimiter;
use crate::retry_budget::RetryBudget;

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
    pub name: Arc<str>,
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    /// `methods`, `headers`, `query`; `None` = host and path decide.
    pub matching: Option<Box<RouteMatch>>,
    pub target: Target,
    /// The `upstream=""` series for answers and errors of this route's
    /// listener, or its one upstream's.
    pub stats: Arc<RouteStats>,
    /// The route-name series (0.2 metrics).
    pub names: Arc<RouteNameStats>,
    /// Per-client-IP limit, shared by every listener the route serves.
    pub rate_limit: Option<Arc<RouteLimiter>>,
    /// Everything else the route does; `None` when it uses no policy key.
    pub policy: Option<Arc<Policy>>,
}

/// What a matched route does with the request.
pub enum Target {
    Upstream(Arc<Upstream>),
    /// Arms index `RoutingTable::upstreams` (stable across health rebuilds,
    /// so the schedule survives them).
    Split(Arc<Split<SplitArm>>),
    Redirect(Arc<RedirectConfig>),
    Respond(Arc<RespondConfig>),
}

pub struct SplitArm {
    pub upstream: usize,
    pub stats: Arc<RouteStats>,
}

/// An upstream pool as this generation sees it.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    /// Every configured server (including ones that are not up).
    pub servers: Vec<Arc<ServerState>>,
    /// The servers the balancer chooses among, in server order: healthy,
    /// and neither drained nor disabled by an operator.
    pub up: Vec<Arc<ServerState>>,
    pub balancer: Balancer,
    /// The servers a sticky cookie may still name: `up` plus healthy
    /// draining ones (a drain keeps its sticky clients).
    pub sticky_servers: Vec<Arc<ServerState>>,
    /// Cookie affinity over `sticky_servers`, when configured.
    pub sticky: Option<Sticky>,
    pub retries_total: IntCounter,
    pub retry_budget: Arc<RetryBudget>,
}

impl Upstream {
    /// Builds the balancer and sticky table over the servers up right now.
    fn build(
        config: &UpstreamConfig,
        servers: Vec<Arc<ServerState>>,
        retries_total: IntCounter,
        retry_budget: Arc<RetryBudget>,
    ) -> Upstream {
        let up_idx: Vec<usize> = (0..servers.len())
            .filter(|i| servers[*i].is_pickable())
            .collect();
        let up: Vec<Arc<ServerState>> = up_idx.iter().map(|i| servers[*i].clone()).collect();
        let sticky_servers: Vec<Arc<ServerState>> = match config.sticky {
            Some(_) => servers
                .iter()
                .filter(|s| s.takes_sticky())
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Upstream {
            name: Arc::from(config.name.as_str()),
            balancer: Balancer::build(config, &servers, &up_idx),
            sticky: config
                .sticky
                .as_ref()
                .map(|c| Sticky::new(c, &config.name, &sticky_servers)),
            sticky_servers,
            config: config.clone(),
            servers,
            up,
            retries_total,
            retry_budget,
        }
    }

    /// Whether the servers pickable now (and those taking sticky requests)
    /// are the ones this balancer was built over.
    fn up_unchanged(&self) -> bool {
        fn same<'a>(
            built: &[Arc<ServerState>],
            mut now: impl Iterator<Item = &'a Arc<ServerState>>,
        ) -> bool {
            built
                .iter()
                .all(|s| now.next().is_some_and(|n| Arc::ptr_eq(s, n)))
                && now.next().is_none()
        }
        same(&self.up, self.servers.iter().filter(|s| s.is_pickable()))
            && (self.sticky.is_none()
                || same(
                    &self.sticky_servers,
                    self.servers.iter().filter(|s| s.takes_sticky()),
                ))
    }

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

    /// The server a sticky cookie in `headers` names, if it takes sticky
    /// requests (up, possibly draining, not disabled).
    #[inline]
    pub fn sticky_target(&self, headers: &http::HeaderMap) -> Option<&Arc<ServerState>> {
        self.sticky
            .as_ref()?
            .lookup(headers)
            .map(|i| &self.sticky_servers[i])
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
                    let state = registry.server(&u.name, s.address, initial_up);
                    state.set_configured_weight(s.weight);
                    state
                })
                .collect();
            let upstream = Arc::new(Upstream::build(
                u,
                servers,
                metrics.retries_total.with_label_values(&[&u.name]),
                registry.retry_budget(&u.name),
            ));
            upstreams.insert(u.name.as_str(), upstream.clone());
            ordered.push(upstream);
        }

        let cluster = registry.cluster(config.cluster.as_ref());
        let index: HashMap<&str, usize> = ordered
            .iter()
            .enumerate()
            .map(|(i, u)| (&*u.name, i))
            .collect();
        // Per route, not per listener: a policy's caches and pools are
        // shared by every listener the route serves.
        let policies: Vec<Option<Arc<Policy>>> = config
            .routes
            .iter()
            .map(|r| r.policy.as_deref().map(|p| Arc::new(Policy::new(p))))
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let routes = config
                    .routes
                    .iter()
                    .zip(&policies)
                    .filter(|(r, _)| r.listeners.as_ref().is_none_or(|ls| ls.contains(&l.name)))
                    .filter_map(|(r, policy)| {
                        let no_upstream = || registry.route_stats(&l.name, "");
                        let (target, stats) = match &r.action {
                            RouteAction::Upstream(name) => {
                                let upstream = upstreams.get(name.as_str())?.clone();
                                (
                                    Target::Upstream(upstream),
                                    registry.route_stats(&l.name, name),
                                )
                            }
                            RouteAction::Split(s) => {
                                let arms = s
                                    .targets
                                    .iter()
                                    .map(|t| {
                                        let arm = SplitArm {
                                            upstream: *index.get(t.upstream.as_str())?,
                                            stats: registry.route_stats(&l.name, &t.upstream),
                                        };
                                        Some((arm, t.weight))
                                    })
                                    .collect::<Option<Vec<_>>>()?;
                                (
                                    Target::Split(Arc::new(Split::new(arms, s.by.clone()))),
                                    no_upstream(),
                                )
                            }
                            RouteAction::Redirect(rd) => {
                                (Target::Redirect(Arc::new(rd.clone())), no_upstream())
                            }
                            RouteAction::Respond(rs) => {
                                (Target::Respond(Arc::new(rs.clone())), no_upstream())
                            }
                        };
                        Some(Route {
                            name: Arc::from(r.name.as_str()),
                            host: r.host.clone(),
                            path_prefix: r.path_prefix.clone(),
                            matching: r.matching.clone().map(Box::new),
                            target,
                            stats,
                            names: registry.route_name_stats(&r.name),
                            rate_limit: r.rate_limit.map(|limit| {
                                registry.route_limiter(
                                    &limiter_identity(r),
                                    &r.name,
                                    limit,
                                    cluster.as_ref(),
                                )
                            }),
                            policy: policy.clone(),
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

    /// The snapshot after servers went up or down, with the same config:
    /// only the upstreams whose up servers changed get a new balancer (a
    /// Maglev table is 65,537 slots; rebuilding every upstream's on each
    /// health change made one flapping server cost all of them). Every
    /// other upstream is shared with `self`. `None` when nothing changed.
    pub fn after_health_change(&self) -> Option<RoutingTable> {
        let mut rebuilt: HashMap<&str, Arc<Upstream>> = HashMap::new();
        let upstreams: Vec<Arc<Upstream>> = self
            .upstreams
            .iter()
            .map(|u| {
                if u.up_unchanged() {
                    return u.clone();
                }
                let next = Arc::new(Upstream::build(
                    &u.config,
                    u.servers.clone(),
                    u.retries_total.clone(),
                    u.retry_budget.clone(),
                ));
                rebuilt.insert(&u.name, next.clone());
                next
            })
            .collect();
        if rebuilt.is_empty() {
            return None;
        }
        let listeners = self
            .listeners
            .iter()
            .map(|l| ListenerTable {
                name: l.name.clone(),
                settings: l.settings.clone(),
                no_route: l.no_route.clone(),
                routes: l
                    .routes
                    .iter()
                    .map(|r| Route {
                        name: r.name.clone(),
                        host: r.host.clone(),
                        path_prefix: r.path_prefix.clone(),
                        matching: r.matching.clone(),
                        target: match &r.target {
                            Target::Upstream(u) => {
                                Target::Upstream(rebuilt.get(&*u.name).unwrap_or(u).clone())
                            }
                            Target::Split(s) => Target::Split(s.clone()),
                            Target::Redirect(rd) => Target::Redirect(rd.clone()),
                            Target::Respond(rs) => Target::Respond(rs.clone()),
                        },
                        stats: r.stats.clone(),
                        names: r.names.clone(),
                        rate_limit: r.rate_limit.clone(),
                        policy: r.policy.clone(),
                    })
                    .collect(),
            })
            .collect();
        Some(RoutingTable {
            generation: self.generation,
            config: self.config.clone(),
            listeners,
            upstreams,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerTable> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

impl ListenerTable {
    /// First route in file order whose host, path and match keys match.
    #[inline]
    pub fn route<B>(&self, req: &http::Request<B>) -> Option<&Route> {
        let host = request_host(req);
        let path = req.uri().path();
        self.routes.iter().find(|r| {
            r.host
                .as_ref()
                .is_none_or(|h| host.is_some_and(|host| host_matches(h, host)))
                && path_matches(&r.path_prefix, path)
                && r.matching.as_ref().is_none_or(|m| request_matches(m, req))
        })
    }
}

/// Identifies a rate limit across reloads: the same route keeps its buckets.
fn limiter_identity(r: &RouteConfig) -> String {
    format!(
        "{:?} {:?} {} {}",
        r.listeners,
        r.host,
        r.path_prefix,
        r.action.describe()
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::metrics::Metrics;

    const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:9901"
[[listener]]
name = "web"
listen = "127.0.0.1:8080"
[[route]]
host = "a.example"
upstream = "a"
[[route]]
upstream = "b"
[upstream.a]
strategy = "consistent-hash"
servers = [{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2" }]
[upstream.b]
strategy = "least-connections"
servers = [{ address = "127.0.0.1:3" }, { address = "127.0.0.1:4" }]
"#;

    fn up_addrs(u: &Upstream) -> Vec<std::net::SocketAddr> {
        u.up.iter().map(|s| s.addr).collect()
    }

    #[test]
    fn a_health_change_rebuilds_only_its_upstream() {
        let config = Arc::new(Config::from_toml(Path::new("t.toml"), CONFIG).unwrap());
        let registry = Registry::new(Arc::new(Metrics::new()));
        let table = RoutingTable::build(config.clone(), &registry, 7);
        assert!(table.after_health_change().is_none(), "nothing changed");

        table.upstreams[1].servers[0].set_checked_down(true);
        let next = table.after_health_change().expect("b changed");
        assert_eq!(next.generation, 7);
        assert!(
            Arc::ptr_eq(&next.upstreams[0], &table.upstreams[0]),
            "a is shared"
        );
        assert!(!Arc::ptr_eq(&next.upstreams[1], &table.upstreams[1]));
        // The same up servers a full build sees, and the routes follow.
        let full = RoutingTable::build(config, &registry, 7);
        for (inc, full) in next.upstreams.iter().zip(&full.upstreams) {
            assert_eq!(up_addrs(inc), up_addrs(full));
        }
        assert_eq!(
            up_addrs(&next.upstreams[1]),
            ["127.0.0.1:4".parse().unwrap()]
        );
        let routes = &next.listeners[0].routes;
        let upstream = |r: &Route| match &r.target {
            Target::Upstream(u) => u.clone(),
            _ => unreachable!("both routes forward"),
        };
        assert!(Arc::ptr_eq(&upstream(&routes[0]), &next.upstreams[0]));
        assert!(Arc::ptr_eq(&upstream(&routes[1]), &next.upstreams[1]));
        assert!(Arc::ptr_eq(
            &routes[1].stats,
            &table.listeners[0].routes[1].stats
        ));
        assert!(next.after_health_change().is_none());

        // Back up: rebuilt again, over both servers.
        next.upstreams[1].servers[0].set_checked_down(false);
        let back = next.after_health_change().expect("b changed back");
        assert_eq!(up_addrs(&back.upstreams[1]).len(), 2);
        assert!(Arc::ptr_eq(&back.upstreams[0], &table.upstreams[0]));
    }
}
