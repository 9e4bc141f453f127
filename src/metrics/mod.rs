//! Prometheus metric families (names and labels fixed by SPEC) and the typed
//! handles the request path uses.
//!
//! Label lookups (hashing, string formatting) happen when a routing snapshot
//! is built, never per request: the snapshot keeps the resolved handles.

use std::collections::HashMap;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

mod codes;
pub use codes::{CodeCounters, CodeTotals};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Every metric family Fulcrum exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_requests_total: IntCounterVec,
    pub upstream_errors_total: IntCounterVec,
    pub upstream_response_seconds: HistogramVec,
    pub upstream_in_flight: IntGaugeVec,
    pub upstream_server_up: IntGaugeVec,
    pub health_checks_total: IntCounterVec,
    pub retries_total: IntCounterVec,
    pub upstream_ejections_total: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub connections_rejected_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub tls_handshake_errors_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    pub config_last_reload_successful: IntGauge,
    pub config_last_reload_success_timestamp_seconds: Gauge,
    pub config_generation: IntGauge,
    pub build_info: IntGaugeVec,
    /// 0 none, 1 drain, 2 disable (runtime control).
    pub upstream_server_admin_state: IntGaugeVec,
    /// The weight strategies use: the runtime override or the configured one.
    pub upstream_server_weight: IntGaugeVec,
    pub admin_requests_total: IntCounterVec,
    /// ACME: expiry of each managed certificate, by its first name.
    pub acme_certificate_expiry: GaugeVec,
    /// ACME: finished orders, by result.
    pub acme_orders_total: IntCounterVec,
    /// No labels; its one series exists only while `[cluster]` does.
    pub cluster_up: IntGaugeVec,
    pub cluster_errors_total: IntCounterVec,
    pub route_requests_total: IntCounterVec,
    pub policy_rejections_total: IntCounterVec,
    pub compressed_responses_total: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(pc));
        }
        let m = Metrics {
            requests_total: counter(
                &r,
                "fulcrum_requests_total",
                "Requests answered, by listener, upstream and status code.",
                &["listener", "upstream", "code"],
            ),
            request_duration: histogram(
                &r,
                "fulcrum_request_duration_seconds",
                "Time from request head to response head.",
                &["listener", "upstream"],
            ),
            upstream_requests_total: counter(
                &r,
                "fulcrum_upstream_requests_total",
                "Responses received from servers, by status code.",
                &["upstream", "server", "code"],
            ),
            upstream_errors_total: counter(
                &r,
                "fulcrum_upstream_errors_total",
                "Failed attempts to servers, by kind.",
                &["upstream", "server", "kind"],
            ),
            upstream_response_seconds: histogram(
                &r,
                "fulcrum_upstream_response_seconds",
                "Time from sending to a server to its response head.",
                &["upstream", "server"],
            ),
            upstream_in_flight: gauge(
                &r,
                "fulcrum_upstream_in_flight",
                "Requests in flight to each server.",
                &["upstream", "server"],
            ),
            upstream_server_up: gauge(
                &r,
                "fulcrum_upstream_server_up",
                "1 when the server is eligible for traffic.",
                &["upstream", "server"],
            ),
            health_checks_total: counter(
                &r,
                "fulcrum_health_checks_total",
                "Active health check results.",
                &["upstream", "server", "result"],
            ),
            retries_total: counter(
                &r,
                "fulcrum_retries_total",
                "Retried attempts.",
                &["upstream"],
            ),
            upstream_ejections_total: counter(
                &r,
                "fulcrum_upstream_ejections_total",
                "Passive-health ejections.",
                &["upstream", "server"],
            ),
            connections_active: gauge(
                &r,
                "fulcrum_connections_active",
                "Open client connections.",
                &["listener"],
            ),
            connections_total: counter(
                &r,
                "fulcrum_connections_total",
                "Accepted client connections.",
                &["listener"],
            ),
            connections_rejected_total: counter(
                &r,
                "fulcrum_connections_rejected_total",
                "Client connections closed at accept.",
                &["listener", "reason"],
            ),
            rate_limited_total: counter(
                &r,
                "fulcrum_rate_limited_total",
                "Requests answered 429 by a rate limit.",
                &["listener", "upstream"],
            ),
            tls_handshake_errors_total: counter(
                &r,
                "fulcrum_tls_handshake_errors_total",
                "Failed TLS handshakes.",
                &["listener"],
            ),
            config_reloads_total: counter(
                &r,
                "fulcrum_config_reloads_total",
                "Config reloads, by result.",
                &["result"],
            ),
            config_last_reload_successful: {
                let g = IntGauge::new(
                    "fulcrum_config_last_reload_successful",
                    "1 if the last reload succeeded.",
                )
                .expect("valid");
                r.register(Box::new(g.clone())).expect("unique");
                g
            },
            config_last_reload_success_timestamp_seconds: {
                let g = Gauge::new(
                    "fulcrum_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful config load.",
                )
                .expect("valid");
                r.register(Box::new(g.clone())).expect("unique");
                g
            },
            config_generation: {
                let g = IntGauge::new(
                    "fulcrum_config_generation",
                    "1 at start, +1 per successful reload.",
                )
                .expect("valid");
                r.register(Box::new(g.clone())).expect("unique");
                g
            },
            build_info: gauge(
                &r,
                "fulcrum_build_info",
                "Always 1; the version label says which build runs.",
                &["version"],
            ),
            upstream_server_admin_state: gauge(
                &r,
                "fulcrum_upstream_server_admin_state",
                "Runtime override of a server: 0 none, 1 drain, 2 disable.",
                &["upstream", "server"],
            ),
            upstream_server_weight: gauge(
                &r,
                "fulcrum_upstream_server_weight",
                "Effective weight of a server (runtime override or configured).",
                &["upstream", "server"],
            ),
            admin_requests_total: counter(
                &r,
                "fulcrum_admin_requests_total",
                "Admin API requests, by action and result.",
                &["action", "result"],
            ),
            acme_certificate_expiry: {
                let g = GaugeVec::new(
                    Opts::new(
                        "fulcrum_acme_certificate_expiry_timestamp_seconds",
                        "Unix time when an ACME certificate expires, by its first name.",
                    ),
                    &["name"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            route_requests_total: counter(
                &r,
                "fulcrum_route_requests_total",
                "Requests answered, by route name and status code.",
                &["route", "code"],
            ),
            policy_rejections_total: counter(
                &r,
                "fulcrum_policy_rejections_total",
                "Requests a route's policy refused, by reason.",
                &["route", "reason"],
            ),
            compressed_responses_total: counter(
                &r,
                "fulcrum_compressed_responses_total",
                "Responses compressed, by route and algorithm.",
                &["route", "algorithm"],
            ),
            acme_orders_total: counter(
                &r,
                "fulcrum_acme_orders_total",
                "ACME certificate orders, by result.",
                &["result"],
            ),
            cluster_up: gauge(
                &r,
                "fulcrum_cluster_up",
                "1 while the [cluster] Redis answers, 0 while it does not.",
                &[],
            ),
            cluster_errors_total: counter(
                &r,
                "fulcrum_cluster_errors_total",
                "Failed Redis calls for cluster rate limits, by kind.",
                &["kind"],
            ),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.config_last_reload_successful.set(1);
        // Both results exist from the start, so increase() works on the first reload.
        for result in ["success", "failure"] {
            m.config_reloads_total.with_label_values(&[result]);
            m.acme_orders_total.with_label_values(&[result]);
        }
        m
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Removes every series of `vec` whose labels include all of `labels`.
pub fn remove_matching<T: MetricVecBuilder>(vec: &MetricVec<T>, labels: &[(&str, &str)]) {
    let families = vec.collect();
    for m in families.iter().flat_map(|f| f.get_metric()) {
        let pairs = m.get_label();
        let matches = labels
            .iter()
            .all(|(k, v)| pairs.iter().any(|p| p.name() == *k && p.value() == *v));
        if matches {
            let all: HashMap<&str, &str> = pairs.iter().map(|p| (p.name(), p.value())).collect();
            let _ = vec.remove(&all);
        }
    }
}

/// Handles for one (listener, upstream) pair.
pub struct RouteMetrics {
    pub requests: CodeCounters,
    pub duration: Histogram,
    /// `fulcrum_rate_limited_total{listener, upstream}`.
    pub rate_limited: IntCounter,
}

impl RouteMetrics {
    /// Removes this pair's series (the listener or upstream left the config).
    pub fn remove_series(&self, m: &Metrics, listener: &str, upstream: &str) {
        self.requests.remove();
        let _ = m
            .request_duration
            .remove_label_values(&[listener, upstream]);
        let _ = m
            .rate_limited_total
            .remove_label_values(&[listener, upstream]);
    }

    pub fn new(m: &Metrics, listener: &str, upstream: &str) -> RouteMetrics {
        RouteMetrics {
            requests: CodeCounters::new(
                &m.requests_total,
                &[("listener", listener), ("upstream", upstream)],
            ),
            duration: m.request_duration.with_label_values(&[listener, upstream]),
            rate_limited: m
                .rate_limited_total
                .with_label_values(&[listener, upstream]),
        }
    }
}

/// Why a route's policy refused a request (`fulcrum_policy_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A deny match or an allow miss.
    Deny,
    BasicAuth,
    /// The auth service answered other than 2xx.
    ForwardAuth,
    /// The auth service was unreachable or timed out.
    ForwardAuthError,
}

impl Rejection {
    pub const ALL: [Rejection; 4] = [
        Rejection::Deny,
        Rejection::BasicAuth,
        Rejection::ForwardAuth,
        Rejection::ForwardAuthError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Deny => "deny",
            Rejection::BasicAuth => "basic_auth",
            Rejection::ForwardAuth => "forward_auth",
            Rejection::ForwardAuthError => "forward_auth_error",
        }
    }
}

/// The per-route-name series (0.2): requests by code, policy rejections,
/// compressed responses. Label handles resolve once.
pub struct RouteNameMetrics {
    pub requests: CodeCounters,
    rejections: [IntCounter; 4],
    /// br, gzip, zstd (the order of `compressed_index`).
    compressed: [IntCounter; 3],
}

impl RouteNameMetrics {
    pub fn new(m: &Metrics, route: &str) -> RouteNameMetrics {
        RouteNameMetrics {
            requests: CodeCounters::new(&m.route_requests_total, &[("route", route)]),
            rejections: Rejection::ALL.map(|r| {
                m.policy_rejections_total
                    .with_label_values(&[route, r.as_str()])
            }),
            compressed: ["br", "gzip", "zstd"]
                .map(|a| m.compressed_responses_total.with_label_values(&[route, a])),
        }
    }

    #[inline]
    pub fn rejected(&self, why: Rejection) {
        self.rejections[why as usize].inc();
    }

    pub fn rejections(&self, why: Rejection) -> u64 {
        self.rejections[why as usize].get()
    }

    /// `algorithm` is "br", "gzip" or "zstd".
    #[inline]
    pub fn compressed(&self, algorithm: &str) {
        if let Some(i) = ["br", "gzip", "zstd"].iter().position(|a| *a == algorithm) {
            self.compressed[i].inc();
        }
    }

    pub fn compressed_total(&self) -> u64 {
        self.compressed.iter().map(IntCounter::get).sum()
    }

    pub fn remove_series(&self, m: &Metrics, route: &str) {
        self.requests.remove();
        for r in Rejection::ALL {
            let _ = m
                .policy_rejections_total
                .remove_label_values(&[route, r.as_str()]);
        }
        for a in ["br", "gzip", "zstd"] {
            let _ = m
                .compressed_responses_total
                .remove_label_values(&[route, a]);
        }
    }
}

/// Handles of the `[cluster]` Redis client.
pub struct ClusterMetrics {
    /// `fulcrum_cluster_up`.
    pub up: IntGauge,
    /// `fulcrum_cluster_errors_total{kind="timeout"}`: no answer in `timeout`.
    pub timeout: IntCounter,
    /// `kind="connection"`: connecting failed or the connection broke.
    pub connection: IntCounter,
    /// `kind="script"`: Redis answered with an error.
    pub script: IntCounter,
}

impl ClusterMetrics {
    /// Creates the series (`fulcrum_cluster_up` starts at 0, each error
    /// kind at its running total).
    pub fn new(m: &Metrics) -> ClusterMetrics {
        let kind = |k: &str| m.cluster_errors_total.with_label_values(&[k]);
        let up = m.cluster_up.with_label_values::<&str>(&[]);
        up.set(0);
        ClusterMetrics {
            up,
            timeout: kind("timeout"),
            connection: kind("connection"),
            script: kind("script"),
        }
    }

    /// Removes `fulcrum_cluster_up` (the config has no `[cluster]` any more);
    /// handles held by an old client then update nothing visible.
    pub fn remove_up(m: &Metrics) {
        let _ = m.cluster_up.remove_label_values::<&str>(&[]);
    }
}

/// Error kinds for `fulcrum_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
    Tls,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Protocol,
        ErrorKind::Tls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Tls => "tls",
        }
    }
}

/// Handles for one server of one upstream.
pub struct ServerMetrics {
    upstream: String,
    server: String,
    families: ServerFamilies,
    pub responses: CodeCounters,
    pub errors: [IntCounter; 5],
    pub response_seconds: Histogram,
    pub in_flight: IntGauge,
    pub up: IntGauge,
    pub ejections: IntCounter,
    pub checks_pass: IntCounter,
    pub checks_fail: IntCounter,
    pub admin_state: IntGauge,
    pub weight: IntGauge,
}

struct ServerFamilies {
    errors: IntCounterVec,
    response_seconds: HistogramVec,
    in_flight: IntGaugeVec,
    up: IntGaugeVec,
    ejections: IntCounterVec,
    checks: IntCounterVec,
    admin_state: IntGaugeVec,
    weight: IntGaugeVec,
}

impl ServerMetrics {
    pub fn new(m: &Metrics, upstream: &str, server: &str) -> ServerMetrics {
        let l = [upstream, server];
        ServerMetrics {
            upstream: upstream.to_string(),
            server: server.to_string(),
            families: ServerFamilies {
                errors: m.upstream_errors_total.clone(),
                response_seconds: m.upstream_response_seconds.clone(),
                in_flight: m.upstream_in_flight.clone(),
                up: m.upstream_server_up.clone(),
                ejections: m.upstream_ejections_total.clone(),
                checks: m.health_checks_total.clone(),
                admin_state: m.upstream_server_admin_state.clone(),
                weight: m.upstream_server_weight.clone(),
            },
            responses: CodeCounters::new(
                &m.upstream_requests_total,
                &[("upstream", upstream), ("server", server)],
            ),
            errors: ErrorKind::ALL.map(|k| {
                m.upstream_errors_total
                    .with_label_values(&[upstream, server, k.as_str()])
            }),
            response_seconds: m.upstream_response_seconds.with_label_values(&l),
            in_flight: m.upstream_in_flight.with_label_values(&l),
            up: m.upstream_server_up.with_label_values(&l),
            ejections: m.upstream_ejections_total.with_label_values(&l),
            checks_pass: m
                .health_checks_total
                .with_label_values(&[upstream, server, "pass"]),
            checks_fail: m
                .health_checks_total
                .with_label_values(&[upstream, server, "fail"]),
            admin_state: m.upstream_server_admin_state.with_label_values(&l),
            weight: m.upstream_server_weight.with_label_values(&l),
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// Failed attempts of every kind so far.
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().map(IntCounter::get).sum()
    }
}

impl ServerMetrics {
    /// Removes this server's series from every family (it left the config).
    pub fn remove_series(&self) {
        let l = [self.upstream.as_str(), self.server.as_str()];
        let f = &self.families;
        self.responses.remove();
        for k in ErrorKind::ALL {
            let _ = f.errors.remove_label_values(&[l[0], l[1], k.as_str()]);
        }
        let _ = f.response_seconds.remove_label_values(&l);
        let _ = f.in_flight.remove_label_values(&l);
        let _ = f.up.remove_label_values(&l);
        let _ = f.ejections.remove_label_values(&l);
        let _ = f.checks.remove_label_values(&[l[0], l[1], "pass"]);
        let _ = f.checks.remove_label_values(&[l[0], l[1], "fail"]);
        let _ = f.admin_state.remove_label_values(&l);
        let _ = f.weight.remove_label_values(&l);
    }
}

#[cfg(test)]
mod tests;
