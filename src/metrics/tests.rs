//! Every SPEC metric family exists with exactly its labels.
use super::codes::COMMON_CODES;
use super::*;

/// SPEC's metric table, verbatim: name, type, label names.
const SPEC: &[(&str, &str, &[&str])] = &[
    (
        "fulcrum_requests_total",
        "counter",
        &["listener", "upstream", "code"],
    ),
    (
        "fulcrum_request_duration_seconds",
        "histogram",
        &["listener", "upstream"],
    ),
    (
        "fulcrum_upstream_requests_total",
        "counter",
        &["upstream", "server", "code"],
    ),
    (
        "fulcrum_upstream_errors_total",
        "counter",
        &["upstream", "server", "kind"],
    ),
    (
        "fulcrum_upstream_response_seconds",
        "histogram",
        &["upstream", "server"],
    ),
    (
        "fulcrum_upstream_in_flight",
        "gauge",
        &["upstream", "server"],
    ),
    (
        "fulcrum_upstream_server_up",
        "gauge",
        &["upstream", "server"],
    ),
    (
        "fulcrum_health_checks_total",
        "counter",
        &["upstream", "server", "result"],
    ),
    ("fulcrum_retries_total", "counter", &["upstream"]),
    (
        "fulcrum_upstream_ejections_total",
        "counter",
        &["upstream", "server"],
    ),
    ("fulcrum_connections_active", "gauge", &["listener"]),
    ("fulcrum_connections_total", "counter", &["listener"]),
    (
        "fulcrum_connections_rejected_total",
        "counter",
        &["listener", "reason"],
    ),
    (
        "fulcrum_rate_limited_total",
        "counter",
        &["listener", "upstream"],
    ),
    (
        "fulcrum_tls_handshake_errors_total",
        "counter",
        &["listener"],
    ),
    ("fulcrum_config_reloads_total", "counter", &["result"]),
    ("fulcrum_config_last_reload_successful", "gauge", &[]),
    (
        "fulcrum_config_last_reload_success_timestamp_seconds",
        "gauge",
        &[],
    ),
    ("fulcrum_config_generation", "gauge", &[]),
    ("fulcrum_build_info", "gauge", &["version"]),
    (
        "fulcrum_upstream_server_admin_state",
        "gauge",
        &["upstream", "server"],
    ),
    (
        "fulcrum_upstream_server_weight",
        "gauge",
        &["upstream", "server"],
    ),
    (
        "fulcrum_admin_requests_total",
        "counter",
        &["action", "result"],
    ),
    (
        "fulcrum_acme_certificate_expiry_timestamp_seconds",
        "gauge",
        &["name"],
    ),
    ("fulcrum_acme_orders_total", "counter", &["result"]),
    ("fulcrum_cluster_up", "gauge", &[]),
    ("fulcrum_cluster_errors_total", "counter", &["kind"]),
];

#[test]
fn every_spec_family_has_exactly_its_labels() {
    let m = Metrics::new();
    // One series in every family, through the same handles the proxy uses.
    let _route = RouteMetrics::new(&m, "web", "api");
    let server = ServerMetrics::new(&m, "api", "127.0.0.1:1");
    server.responses.inc(200);
    server.error(ErrorKind::Connect);
    m.connections_active.with_label_values(&["web"]);
    m.connections_total.with_label_values(&["web"]);
    m.connections_rejected_total
        .with_label_values(&["web", "proxy_protocol"]);
    m.tls_handshake_errors_total.with_label_values(&["web"]);
    m.retries_total.with_label_values(&["api"]);
    m.admin_requests_total.with_label_values(&["drain", "ok"]);
    m.acme_certificate_expiry
        .with_label_values(&["example.com"])
        .set(1.0);
    _route.requests.inc(200);
    let _cluster = ClusterMetrics::new(&m);
    let text = String::from_utf8(m.render()).unwrap();
    for (name, kind, labels) in SPEC {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is not a {kind}"
        );
        let family = m
            .registry
            .gather()
            .into_iter()
            .find(|f| f.name() == *name)
            .unwrap_or_else(|| panic!("{name} missing"));
        for series in family.get_metric() {
            let mut got: Vec<&str> = series.get_label().iter().map(|l| l.name()).collect();
            let mut want = labels.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "labels of {name}");
        }
    }
    let ours = text
        .lines()
        .filter(|l| l.starts_with("# TYPE fulcrum_"))
        .count();
    assert_eq!(ours, SPEC.len(), "a family that SPEC does not name");
    assert!(text.contains("process_cpu_seconds_total"));
}

#[test]
fn code_counters_count_every_code_and_remove_their_series() {
    let m = Metrics::new();
    let c = CodeCounters::new(
        &m.requests_total,
        &[("listener", "web"), ("upstream", "api")],
    );
    let other = CodeCounters::new(
        &m.requests_total,
        &[("listener", "web"), ("upstream", "other")],
    );
    other.inc(200);
    // 20 common codes, 8 rare slots, then overflow.
    let mut codes: Vec<u16> = COMMON_CODES.to_vec();
    codes.extend(520..540);
    codes.extend(100..103);
    for code in &codes {
        c.inc(*code);
        c.inc(*code);
    }
    let t = c.totals();
    assert_eq!(t.all, 2 * codes.len() as u64);
    let fives = codes.iter().filter(|c| **c >= 500).count() as u64;
    assert_eq!(t.server_errors, 2 * fives);
    for code in &codes {
        let v = m
            .requests_total
            .with_label_values(&["web", "api", &code.to_string()])
            .get();
        assert_eq!(v, 2, "code {code}");
    }
    c.remove();
    let text = String::from_utf8(m.render()).unwrap();
    assert!(!text.contains("upstream=\"api\""), "{text}");
    assert!(text.contains("upstream=\"other\""));
}
