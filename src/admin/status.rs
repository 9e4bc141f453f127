//! What /status and /status.json show: listeners, routes, every upstream's
//! servers with their state, and rates computed from the metric counters.
//!
//! Rates (requests/s, error ratio, latency quantiles) are differences of the
//! same counters /metrics exports, between now and a sample taken up to
//! `WINDOW` ago by a once-a-second background task that runs while someone
//! looks at the status (for 5 minutes after the last view). Nothing here
//! runs on the request path; the sampler holds no server state (only numbers keyed
//! by upstream and address), so a removed server still goes away.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::core::Metric;
use serde::Serialize;

use super::handle::AdminHandle;
use crate::backend::ServerState;
use crate::config::policy::ValueMatch;
use crate::config::{HostMatch, RouteConfig, RouteMatch};
use crate::routing::RoutingTable;

/// How far back rates look.
pub const WINDOW: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_secs(1);

/// Counter readings of one server at one instant.
#[derive(Debug, Clone, Default)]
struct Counts {
    /// Responses received plus failed attempts.
    requests: u64,
    /// 5xx responses plus failed attempts.
    errors: u64,
    lat_count: u64,
    lat_sum: f64,
    /// Cumulative bucket counts of `fulcrum_upstream_response_seconds`.
    buckets: Vec<(f64, u64)>,
}

fn server_counts(s: &ServerState) -> Counts {
    let t = s.metrics.responses.totals();
    let failed = s.metrics.errors_total();
    let proto = s.metrics.response_seconds.metric();
    let h = proto.get_histogram();
    Counts {
        requests: t.all + failed,
        errors: t.server_errors + failed,
        lat_count: h.get_sample_count(),
        lat_sum: h.get_sample_sum(),
        buckets: h
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect(),
    }
}

type ServerKey = (String, SocketAddr);

struct Sample {
    at: Instant,
    servers: HashMap<ServerKey, Counts>,
    /// Requests answered per listener.
    listeners: HashMap<String, u64>,
}

/// Sampling stops when nobody has looked at the status for this long.
const IDLE: Duration = Duration::from_secs(300);

/// Keeps the last `WINDOW` of counter samples, while someone is looking.
pub struct Sampler {
    samples: Mutex<VecDeque<Arc<Sample>>>,
    /// When /status or /status.json was last served.
    viewed: Mutex<Option<Instant>>,
}

impl Sampler {
    /// Samples once a second while the status is being viewed (costs about
    /// 1 µs per server per second; nothing when nobody looks).
    pub fn spawn(state: AdminHandle) -> Arc<Sampler> {
        let sampler = Arc::new(Sampler {
            samples: Mutex::default(),
            viewed: Mutex::new(Some(Instant::now())),
        });
        let s = sampler.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if s.watched() {
                    s.record(take_sample(&state));
                } else {
                    // A stale baseline would average over the idle time.
                    s.lock().clear();
                }
            }
        });
        sampler
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Sample>>> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watched(&self) -> bool {
        let viewed = self.viewed.lock().unwrap_or_else(|p| p.into_inner());
        viewed.is_some_and(|v| v.elapsed() < IDLE)
    }

    /// Notes a view; after an idle spell the first view starts the window.
    fn viewed(&self, state: &AdminHandle) {
        *self.viewed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        if self.lock().is_empty() {
            self.record(take_sample(state));
        }
    }

    fn record(&self, sample: Sample) {
        let mut q = self.lock();
        let now = sample.at;
        q.push_back(Arc::new(sample));
        // Keep one sample at least WINDOW old, so the window is full.
        while q.len() > 2 && now.duration_since(q[1].at) >= WINDOW {
            q.pop_front();
        }
    }

    /// The oldest sample in the window.
    fn baseline(&self) -> Option<Arc<Sample>> {
        self.lock().front().cloned()
    }
}

fn listener_requests(table: &RoutingTable) -> HashMap<String, u64> {
    table
        .listeners
        .iter()
        .map(|l| {
            let mut seen: Vec<&str> = Vec::new();
            let mut n = l.no_route.metrics.requests.totals().all;
            for r in &l.routes {
                if !seen.contains(&r.stats.upstream.as_str()) {
                    seen.push(&r.stats.upstream);
                    n += r.stats.metrics.requests.totals().all;
                }
            }
            (l.name.to_string(), n)
        })
        .collect()
}

fn take_sample(state: &AdminHandle) -> Sample {
    let servers = state
        .shared
        .registry
        .live_servers()
        .iter()
        .map(|s| ((s.upstream.to_string(), s.addr), server_counts(s)))
        .collect();
    let table = state.shared.table.load();
    Sample {
        at: Instant::now(),
        servers,
        listeners: listener_requests(&table),
    }
}

/// The whole status document (`/status.json`).
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub generation: u64,
    pub uptime_seconds: u64,
    pub ready: bool,
    /// Why /ready answers 503, when it does.
    pub not_ready_reason: Option<String>,
    /// The span the rates are computed over.
    pub rate_window_seconds: f64,
    pub reload: ReloadStatus,
    pub listeners: Vec<ListenerStatus>,
    pub routes: Vec<RouteStatus>,
    pub upstreams: Vec<UpstreamStatus>,
    /// ACME-managed certificates (0.2).
    pub acme: Vec<crate::acme::CertStatus>,
}

#[derive(Debug, Serialize)]
pub struct ReloadStatus {
    /// "none" (no reload yet), "success" or "failure".
    pub last_result: &'static str,
    pub last_attempt_unix: Option<f64>,
    pub last_error: Option<String>,
    pub last_success_unix: f64,
    pub successes: u64,
    pub failures: u64,
}

#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    /// The bound address (differs from the configured one with port 0).
    pub listen: String,
    pub active_connections: i64,
    pub connections_total: u64,
    pub requests_per_second: f64,
}

#[derive(Debug, Serialize)]
pub struct RouteStatus {
    /// `name`, or `route<N>`.
    pub name: String,
    /// `None` = every listener.
    pub listeners: Option<Vec<String>>,
    pub host: Option<String>,
    pub path_prefix: String,
    /// `methods`, `headers` and `query`, e.g. `GET,HEAD X-Canary=1 ?preview=true`.
    pub matches: String,
    /// The action: an upstream name, or "split a 95, b 5", "redirect 301",
    /// "respond 503".
    pub upstream: String,
    /// The policy keys in use, in the order they apply.
    pub policy: Vec<String>,
    /// `fulcrum_route_requests_total` of this route, all codes.
    pub requests: u64,
    /// `fulcrum_policy_rejections_total` of this route, all reasons.
    pub rejections: u64,
    /// `fulcrum_compressed_responses_total` of this route.
    pub compressed: u64,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub strategy: String,
    /// Gone from the config; only draining servers are left.
    pub removed: bool,
    pub servers_up: usize,
    pub servers_total: usize,
    pub requests_per_second: f64,
    pub error_ratio: Option<f64>,
    pub servers: Vec<ServerStatus>,
}

#[derive(Debug, Serialize)]
pub struct ServerStatus {
    pub address: String,
    /// Configured weight (`None` for a server a reload removed).
    pub weight: Option<u32>,
    /// The weight strategies use: a runtime override or the configured one.
    pub effective_weight: Option<u32>,
    /// "up", "down", "ejected", "disabled" or "draining".
    pub state: &'static str,
    /// The operator's override: "none", "drain" or "disable".
    pub admin_state: &'static str,
    pub in_flight: usize,
    pub requests_total: u64,
    pub errors_total: u64,
    pub requests_per_second: f64,
    /// Errors / requests over the window; `None` without requests.
    pub error_ratio: Option<f64>,
    pub latency_mean_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub idle_connections: usize,
}

/// A server's state as an operator names it: "up", "down" (active checks),
/// "ejected" (passive health), "disabled" or "draining" (runtime control),
/// or "draining" when only the registry still holds it (a reload removed it
/// and requests are finishing).
pub fn server_state(s: &ServerState, in_table: bool) -> &'static str {
    if in_table {
        s.state_name()
    } else {
        "draining"
    }
}

/// The servers of the current snapshot, by identity (one pass, so checking
/// every live server against it stays linear at 10,000 servers).
pub fn in_table(table: &RoutingTable) -> HashSet<*const ServerState> {
    table
        .upstreams
        .iter()
        .flat_map(|u| u.servers.iter().map(Arc::as_ptr))
        .collect()
}

/// Interpolated quantile from cumulative buckets, as PromQL's
/// `histogram_quantile` does.
fn quantile(q: f64, buckets: &[(f64, u64)], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            let in_bucket = (count - prev.1) as f64;
            if in_bucket == 0.0 {
                return Some(bound);
            }
            return Some(prev.0 + (bound - prev.0) * (rank - prev.1 as f64) / in_bucket);
        }
        prev = (bound, count);
    }
    // In the +Inf bucket: the highest finite bound is all we know.
    Some(prev.0)
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn server_status(
    s: &ServerState,
    weight: Option<u32>,
    in_table: bool,
    base: Option<&Counts>,
    secs: f64,
) -> ServerStatus {
    let now = server_counts(s);
    let zero = Counts::default();
    let base = base.unwrap_or(&zero);
    let requests = now.requests.saturating_sub(base.requests);
    let errors = now.errors.saturating_sub(base.errors);
    let lat_count = now.lat_count.saturating_sub(base.lat_count);
    let lat_sum = (now.lat_sum - base.lat_sum).max(0.0);
    let buckets: Vec<(f64, u64)> = now
        .buckets
        .iter()
        .enumerate()
        .map(|(i, (bound, c))| {
            let before = base.buckets.get(i).map_or(0, |b| b.1);
            (*bound, c.saturating_sub(before))
        })
        .collect();
    let ms = |v: Option<f64>| v.map(|v| (v * 1e6).round() / 1e3);
    ServerStatus {
        address: s.label.clone(),
        weight,
        effective_weight: weight.map(|_| s.effective_weight()),
        state: server_state(s, in_table),
        admin_state: s.admin.state().as_str(),
        in_flight: s.in_flight(),
        requests_total: now.requests,
        errors_total: now.errors,
        requests_per_second: rate(requests, secs),
        error_ratio: ratio(errors, requests),
        latency_mean_ms: ms((lat_count > 0).then(|| lat_sum / lat_count as f64)),
        latency_p50_ms: ms(quantile(0.5, &buckets, lat_count)),
        latency_p99_ms: ms(quantile(0.99, &buckets, lat_count)),
        idle_connections: s.pool.idle_count(),
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    (n as f64 / secs * 100.0).round() / 100.0
}

fn match_str(m: &RouteMatch) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !m.methods.is_empty() {
        let ms: Vec<&str> = m.methods.iter().map(|m| m.as_str()).collect();
        parts.push(ms.join(","));
    }
    let value = |v: &ValueMatch| match v {
        ValueMatch::Any => "*".to_string(),
        ValueMatch::Exact(e) => e.clone(),
    };
    for (name, v) in &m.headers {
        parts.push(format!("{name}={}", value(v)));
    }
    for (name, v) in &m.query {
        parts.push(format!("?{name}={}", value(v)));
    }
    parts.join(" ")
}

/// The route's policy keys in the order they apply to a request.
fn policy_keys(r: &RouteConfig) -> Vec<String> {
    let mut out = Vec::new();
    let p = r.policy.as_deref();
    if let Some(p) = p {
        if !p.deny.is_empty() {
            out.push(format!("deny {}", p.deny.len()));
        }
        if let Some(a) = &p.allow {
            out.push(format!("allow {}", a.len()));
        }
    }
    if let Some(rl) = &r.rate_limit {
        out.push(format!("rate_limit {}/s", rl.requests_per_second));
    }
    let Some(p) = p else {
        return out;
    };
    if let Some(b) = &p.basic_auth {
        out.push(format!("basic_auth {}", b.realm));
    }
    if let Some(f) = &p.forward_auth {
        out.push(format!("forward_auth {}", f.address));
    }
    if p.strip_prefix {
        out.push("strip_prefix".into());
    }
    if let Some(a) = &p.add_prefix {
        out.push(format!("add_prefix {a}"));
    }
    if p.request_headers.is_some() {
        out.push("request_headers".into());
    }
    if p.response_headers.is_some() {
        out.push("response_headers".into());
    }
    if let Some(c) = &p.compress {
        let algs: Vec<&str> = c.algorithms.iter().map(|a| a.as_str()).collect();
        out.push(format!("compress {}", algs.join(",")));
    }
    if let Some(pages) = &p.error_pages {
        let codes: Vec<String> = pages.keys().map(u16::to_string).collect();
        out.push(format!("error_pages {}", codes.join(",")));
    }
    out
}

fn host_str(h: &HostMatch) -> String {
    match h {
        HostMatch::Exact(e) => e.clone(),
        HostMatch::Suffix(s) => format!("*{s}"),
    }
}

/// Builds the status document from the current snapshot, the registry and
/// the sampler's baseline.
pub fn build(
    state: &AdminHandle,
    sampler: &Sampler,
    started: Instant,
    readiness: Result<(), String>,
) -> Status {
    sampler.viewed(state);
    let table = state.shared.table.load_full();
    let m = &state.shared.registry.metrics;
    let base = sampler.baseline();
    let now = Instant::now();
    let secs = base
        .as_ref()
        .map_or(0.0, |b| now.duration_since(b.at).as_secs_f64());
    let base_server = |s: &ServerState| {
        base.as_ref()
            .and_then(|b| b.servers.get(&(s.upstream.to_string(), s.addr)))
    };

    let listener_now = listener_requests(&table);
    let bound = state.host.bound_addrs();
    let listeners = table
        .listeners
        .iter()
        .map(|l| {
            let name = l.name.to_string();
            let before = base
                .as_ref()
                .and_then(|b| b.listeners.get(&name).copied())
                .unwrap_or(0);
            let requests = listener_now.get(&name).copied().unwrap_or(0);
            let listen = bound
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(l.settings.listen, |(_, a)| *a);
            ListenerStatus {
                listen: listen.to_string(),
                active_connections: m.connections_active.with_label_values(&[&name]).get(),
                connections_total: m.connections_total.with_label_values(&[&name]).get(),
                requests_per_second: rate(requests.saturating_sub(before), secs),
                name,
            }
        })
        .collect();

    let routes = table
        .config
        .routes
        .iter()
        .map(|r| {
            let names = table
                .listeners
                .iter()
                .flat_map(|l| &l.routes)
                .find(|lr| *lr.name == *r.name)
                .map(|lr| &lr.names.metrics);
            RouteStatus {
                name: r.name.clone(),
                listeners: r.listeners.clone(),
                host: r.host.as_ref().map(host_str),
                path_prefix: if r.path_prefix.is_empty() {
                    "/".to_string()
                } else {
                    r.path_prefix.clone()
                },
                matches: r.matching.as_ref().map_or_else(String::new, match_str),
                upstream: r.action.describe(),
                policy: policy_keys(r),
                requests: names.map_or(0, |m| m.requests.totals().all),
                rejections: names.map_or(0, |m| {
                    crate::metrics::Rejection::ALL
                        .iter()
                        .map(|why| m.rejections(*why))
                        .sum()
                }),
                compressed: names.map_or(0, |m| m.compressed_total()),
            }
        })
        .collect();

    // Servers still alive that the snapshot no longer has are draining.
    let current = in_table(&table);
    let mut draining: Vec<Arc<ServerState>> = state
        .shared
        .registry
        .live_servers()
        .into_iter()
        .filter(|s| !current.contains(&Arc::as_ptr(s)))
        .collect();
    draining.sort_by(|a, b| (&a.upstream, a.addr).cmp(&(&b.upstream, b.addr)));

    let mut upstreams: Vec<UpstreamStatus> = table
        .upstreams
        .iter()
        .map(|u| {
            let mut servers: Vec<ServerStatus> = u
                .servers
                .iter()
                .zip(&u.config.servers)
                .map(|(s, c)| server_status(s, Some(c.weight), true, base_server(s), secs))
                .collect();
            servers.extend(
                draining
                    .iter()
                    .filter(|s| *s.upstream == *u.name)
                    .map(|s| server_status(s, None, false, base_server(s), secs)),
            );
            UpstreamStatus {
                name: u.name.to_string(),
                strategy: u.config.strategy.as_str().to_string(),
                removed: false,
                servers_up: u.servers.iter().filter(|s| s.is_pickable()).count(),
                servers_total: u.servers.len(),
                requests_per_second: 0.0,
                error_ratio: None,
                servers,
            }
        })
        .collect();
    for s in &draining {
        if table.upstreams.iter().any(|u| *u.name == *s.upstream) {
            continue;
        }
        let status = server_status(s, None, false, base_server(s), secs);
        match upstreams
            .iter_mut()
            .find(|u| u.removed && *u.name == *s.upstream)
        {
            Some(u) => u.servers.push(status),
            None => upstreams.push(UpstreamStatus {
                name: s.upstream.to_string(),
                strategy: String::new(),
                removed: true,
                servers_up: 0,
                servers_total: 0,
                requests_per_second: 0.0,
                error_ratio: None,
                servers: vec![status],
            }),
        }
    }
    for u in &mut upstreams {
        u.requests_per_second =
            (u.servers.iter().map(|s| s.requests_per_second).sum::<f64>() * 100.0).round() / 100.0;
        let (mut req, mut err) = (0.0, 0.0);
        for s in &u.servers {
            if let Some(r) = s.error_ratio {
                req += s.requests_per_second;
                err += s.requests_per_second * r;
            }
        }
        u.error_ratio = (req > 0.0).then(|| err / req);
    }

    let last = state.host.last_reload();
    let reload = ReloadStatus {
        last_result: match &last {
            None => "none",
            Some(l) if l.error.is_none() => "success",
            Some(_) => "failure",
        },
        last_attempt_unix: last.as_ref().map(|l| l.at_unix),
        last_error: last.and_then(|l| l.error),
        last_success_unix: m.config_last_reload_success_timestamp_seconds.get(),
        successes: m.config_reloads_total.with_label_values(&["success"]).get(),
        failures: m.config_reloads_total.with_label_values(&["failure"]).get(),
    };

    Status {
        version: env!("CARGO_PKG_VERSION"),
        generation: table.generation,
        uptime_seconds: started.elapsed().as_secs(),
        ready: readiness.is_ok(),
        not_ready_reason: readiness.err(),
        rate_window_seconds: (secs * 10.0).round() / 10.0,
        reload,
        listeners,
        routes,
        upstreams,
        acme: state.shared.acme.statuses(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_promql() {
        // 10 observations at or below 0.1, 10 more at or below 0.2.
        let b = [(0.1, 10), (0.2, 20), (0.5, 20)];
        assert_eq!(quantile(0.5, &b, 20), Some(0.1));
        assert!((quantile(0.75, &b, 20).unwrap() - 0.15).abs() < 1e-9);
        assert_eq!(quantile(0.5, &b, 0), None);
        // Beyond the last finite bucket: the last bound.
        assert_eq!(quantile(0.99, &[(0.1, 1)], 10), Some(0.1));
    }
}
