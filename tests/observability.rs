//! Observability: exact counter deltas with SPEC's labels, histogram series,
//! gauges that follow server state and reloads, /health, /ready, /status.json,
//! the access log and JSON logs, and `promtool check metrics` on a real scrape.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tokio::sync::{mpsc, Semaphore};

/// A backend that reports each arrival and holds it until a permit is added.
async fn gated(name: &'static str) -> (Backend, mpsc::UnboundedReceiver<()>, Arc<Semaphore>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let b = Backend::start(move |_req| {
        let (tx, g) = (tx.clone(), g.clone());
        async move {
            let _ = tx.send(());
            g.acquire().await.unwrap().forget();
            Response::new(full(name))
        }
    })
    .await;
    (b, rx, gate)
}

async fn status_json(f: &Fulcrum) -> serde_json::Value {
    serde_json::from_str(&get(f.admin, "/status.json").await.text()).unwrap()
}

fn server<'a>(
    status: &'a serde_json::Value,
    upstream: &str,
    addr: &str,
) -> Option<&'a serde_json::Value> {
    status["upstreams"]
        .as_array()?
        .iter()
        .filter(|u| u["name"] == upstream)
        .flat_map(|u| u["servers"].as_array().unwrap())
        .find(|s| s["address"] == addr)
}

fn n(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or(0.0)
}

/// A loopback port nobody listens on.
fn dead_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn counters_rise_by_exactly_n_with_the_right_labels() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let bad = Backend::start(|_req| async {
        let mut r = Response::new(full("boom"));
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
    .await;
    let dead = dead_addr();
    let f = Fulcrum::start(&config(&format!(
        r#"
[[route]]
host = "api.test"
upstream = "api"
[[route]]
host = "bad.test"
upstream = "bad"
[[route]]
host = "dead.test"
upstream = "dead"
[upstream.api]
{}
[upstream.bad]
{}
[upstream.dead]
retries = 0
servers = [{{ address = "{dead}" }}]
"#,
        servers(&[&a, &b]),
        servers(&[&bad]),
    )));
    let before = scrape(&f).await;
    let web = f.addr("web");
    let mut c = Client::connect(web).await;
    for _ in 0..10 {
        assert_eq!(c.get("/", "api.test").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(c.get("/", "bad.test").await.status, 500);
    }
    for _ in 0..2 {
        assert_eq!(c.get("/", "nothing.test").await.status, 404);
    }
    for _ in 0..4 {
        assert_eq!(get_host(web, "/", "dead.test").await.status, 502);
    }
    let after = scrape(&f).await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| n(&after, name, labels) - n(&before, name, labels);

    let route = |up: &'static str, code: &'static str| {
        [("listener", "web"), ("upstream", up), ("code", code)]
    };
    assert_eq!(delta("fulcrum_requests_total", &route("api", "200")), 10.0);
    assert_eq!(delta("fulcrum_requests_total", &route("bad", "500")), 3.0);
    assert_eq!(delta("fulcrum_requests_total", &route("", "404")), 2.0);
    assert_eq!(delta("fulcrum_requests_total", &route("dead", "502")), 4.0);
    assert_eq!(
        metric(&after, "fulcrum_requests_total", &route("api", "500")),
        None
    );

    // Round-robin: each server got exactly half, under its own ip:port.
    for s in [&a, &b] {
        let l = [
            ("upstream", "api"),
            ("server", &*s.addr.to_string()),
            ("code", "200"),
        ];
        assert_eq!(
            delta("fulcrum_upstream_requests_total", &l),
            5.0,
            "{}",
            s.addr
        );
    }
    let bad_l = [
        ("upstream", "bad"),
        ("server", &*bad.addr.to_string()),
        ("code", "500"),
    ];
    assert_eq!(delta("fulcrum_upstream_requests_total", &bad_l), 3.0);
    let dead_s = dead.to_string();
    let conn_err = [
        ("upstream", "dead"),
        ("server", &*dead_s),
        ("kind", "connect"),
    ];
    assert_eq!(delta("fulcrum_upstream_errors_total", &conn_err), 4.0);
    for kind in ["timeout", "reset", "protocol", "tls"] {
        let l = [("upstream", "dead"), ("server", &*dead_s), ("kind", kind)];
        assert_eq!(
            metric(&after, "fulcrum_upstream_errors_total", &l),
            Some(0.0),
            "{kind}"
        );
    }

    // Histograms: buckets, sum and count, consistent with each other.
    let h = [("listener", "web"), ("upstream", "api")];
    assert_eq!(delta("fulcrum_request_duration_seconds_count", &h), 10.0);
    assert!(n(&after, "fulcrum_request_duration_seconds_sum", &h) > 0.0);
    let inf = [("listener", "web"), ("upstream", "api"), ("le", "+Inf")];
    assert_eq!(
        n(&after, "fulcrum_request_duration_seconds_bucket", &inf),
        n(&after, "fulcrum_request_duration_seconds_count", &h)
    );
    let buckets: Vec<f64> = after
        .lines()
        .filter(|l| {
            l.starts_with("fulcrum_request_duration_seconds_bucket{")
                && l.contains("upstream=\"api\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.len() > 10);
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative buckets"
    );
    let a_s = a.addr.to_string();
    let sh = [("upstream", "api"), ("server", &*a_s)];
    assert_eq!(delta("fulcrum_upstream_response_seconds_count", &sh), 5.0);
    assert!(metric(&after, "fulcrum_upstream_response_seconds_sum", &sh).is_some());
    assert!(metric(
        &after,
        "fulcrum_upstream_response_seconds_bucket",
        &[("server", &*a_s), ("le", "0.005")]
    )
    .is_some());

    // Connections, reload state, build info, process metrics.
    assert!(n(&after, "fulcrum_connections_total", &[("listener", "web")]) >= 5.0);
    assert_eq!(n(&after, "fulcrum_config_generation", &[]), 1.0);
    assert_eq!(n(&after, "fulcrum_config_last_reload_successful", &[]), 1.0);
    assert_eq!(
        metric(
            &after,
            "fulcrum_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(0.0)
    );
    assert_eq!(
        n(
            &after,
            "fulcrum_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(after.contains("\nprocess_resident_memory_bytes "));
    assert_eq!(delta("fulcrum_retries_total", &[("upstream", "dead")]), 0.0);

    // The status page's numbers come from the same counters.
    let st = status_json(&f).await;
    let sa = server(&st, "api", &a_s).unwrap();
    assert_eq!(sa["requests_total"], 5);
    assert_eq!(sa["state"], "up");
    let sd = server(&st, "dead", &dead_s).unwrap();
    assert_eq!(sd["errors_total"], 4);
    assert_eq!(
        server(&st, "bad", &bad.addr.to_string()).unwrap()["errors_total"],
        3
    );
}

#[tokio::test]
async fn gauges_follow_in_flight_draining_and_removed_servers() {
    let (slow, mut arrived, gate) = gated("slow").await;
    let other = Backend::named("other").await;
    let two = config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"round-robin\"\n{}\n",
        servers(&[&slow, &other])
    ));
    let f = Fulcrum::start(&two);
    let (slow_s, other_s) = (slow.addr.to_string(), other.addr.to_string());
    let sl = [("upstream", "u"), ("server", slow_s.as_str())];
    let ol = [("upstream", "u"), ("server", other_s.as_str())];

    let m = scrape(&f).await;
    assert_eq!(metric(&m, "fulcrum_upstream_server_up", &sl), Some(1.0));
    assert_eq!(metric(&m, "fulcrum_upstream_server_up", &ol), Some(1.0));
    assert_eq!(metric(&m, "fulcrum_upstream_in_flight", &sl), Some(0.0));

    // Round-robin sends the first request to the slow server; hold it there.
    let web = f.addr("web");
    let held = tokio::spawn(async move { get(web, "/").await });
    arrived.recv().await.unwrap();
    let m = scrape(&f).await;
    assert_eq!(metric(&m, "fulcrum_upstream_in_flight", &sl), Some(1.0));
    assert_eq!(metric(&m, "fulcrum_upstream_in_flight", &ol), Some(0.0));
    assert_eq!(
        metric(&m, "fulcrum_connections_active", &[("listener", "web")]),
        Some(1.0)
    );

    // Reload without the slow server: it drains, the other stays.
    let one = config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"round-robin\"\n{}\n",
        servers(&[&other])
    ));
    assert!(f.reload(&one).contains("config reloaded"));
    let m = scrape(&f).await;
    assert_eq!(
        metric(&m, "fulcrum_upstream_server_up", &sl),
        Some(0.0),
        "draining is not up"
    );
    assert_eq!(metric(&m, "fulcrum_upstream_in_flight", &sl), Some(1.0));
    assert_eq!(metric(&m, "fulcrum_config_generation", &[]), Some(2.0));
    assert_eq!(
        metric(&m, "fulcrum_config_reloads_total", &[("result", "success")]),
        Some(1.0)
    );
    let st = status_json(&f).await;
    assert_eq!(server(&st, "u", &slow_s).unwrap()["state"], "draining");
    assert_eq!(server(&st, "u", &slow_s).unwrap()["in_flight"], 1);
    assert_eq!(server(&st, "u", &other_s).unwrap()["state"], "up");
    assert_eq!(st["generation"], 2);
    assert_eq!(st["reload"]["last_result"], "success");

    // The held request finishes normally; then the server is gone everywhere.
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().text(), "slow");
    // The client can see the body's last byte a moment before the proxy drops
    // the body (and with it the server's last reference): poll, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = scrape(&f).await;
        if !m.contains(&slow_s) || std::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!m.contains(&slow_s), "removed server still exported:\n{m}");
    assert_eq!(metric(&m, "fulcrum_upstream_server_up", &ol), Some(1.0));
    assert!(server(&status_json(&f).await, "u", &slow_s).is_none());

    // A failed reload keeps generation 2 and says so.
    let r = f.reload("this is not toml = = =");
    assert!(r.contains("config reload failed"), "{r}");
    let m = scrape(&f).await;
    assert_eq!(
        metric(&m, "fulcrum_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "fulcrum_config_reloads_total", &[("result", "failure")]),
        Some(1.0)
    );
    assert_eq!(metric(&m, "fulcrum_config_generation", &[]), Some(2.0));
    let st = status_json(&f).await;
    assert_eq!(st["reload"]["last_result"], "failure");
    assert!(st["reload"]["last_error"]
        .as_str()
        .unwrap()
        .contains("fulcrum.toml"));
    let page = get(f.admin, "/status").await;
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains("Last reload failed"));
}

#[tokio::test]
async fn health_and_ready_and_ready_flips_on_shutdown() {
    let (slow, mut arrived, gate) = gated("slow").await;
    let f = Fulcrum::start(&config(&format!(
        "[global]\nshutdown_timeout = \"10s\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\n{}\n",
        servers(&[&slow])
    )));
    let h = get(f.admin, "/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&h.text()).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["upstreams"]["u"]["up"], 1);
    assert_eq!(v["upstreams"]["u"]["total"], 1);
    let r = get(f.admin, "/ready").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ready\n"));
    let m = get(f.admin, "/metrics").await;
    assert_eq!(
        m.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(get(f.admin, "/nope").await.status, 404);

    // In-flight request keeps the process draining; /ready answers 503 at once.
    let web = f.addr("web");
    let held = tokio::spawn(async move { get(web, "/").await });
    arrived.recv().await.unwrap();
    f.signal("TERM");
    f.wait_log("SIGTERM", Duration::from_secs(5));
    let r = get(f.admin, "/ready").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "not ready: shutting down\n");
    assert_eq!(
        get(f.admin, "/health").await.status,
        200,
        "still alive while draining"
    );
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().text(), "slow");
}

#[tokio::test]
async fn access_log_and_json_logs() {
    let a = Backend::named("hello").await;
    let f = Fulcrum::start_with_args(
        &config(&format!(
            "[global]\naccess_log = true\n[[route]]\nhost = \"app.test\"\nupstream = \"app\"\n[upstream.app]\n{}\n",
            servers(&[&a])
        )),
        &["--log-format", "json"],
    );
    let web = f.addr("web");
    let mut c = Client::connect(web).await;
    let ok = c.get("/greet?secret=1", "app.test").await;
    assert_eq!(ok.text(), "hello");
    let id = ok.header("x-request-id").unwrap().to_string();
    let missing = c.get("/x", "other.test").await;
    assert_eq!(missing.status, 404);

    let first = f.wait_log("fulcrum::access", Duration::from_secs(5));
    let second = f.wait_log("fulcrum::access", Duration::from_secs(5));
    let ev: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(ev["message"], "request");
    assert_eq!(ev["listener"], "web");
    assert_eq!(ev["client"], "127.0.0.1");
    assert_eq!(ev["method"], "GET");
    assert_eq!(ev["host"], "app.test");
    assert_eq!(
        ev["path"], "/greet",
        "the query string stays out of the log"
    );
    assert_eq!(ev["status"], 200);
    assert_eq!(ev["upstream"], "app");
    assert_eq!(ev["server"], a.addr.to_string());
    assert_eq!(ev["bytes"], 5);
    assert_eq!(ev["complete"], true);
    assert_eq!(ev["request_id"], id);
    assert!(ev["duration_ms"].as_f64().unwrap() > 0.0);
    let ev: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(
        (ev["status"].as_u64(), ev["upstream"].as_str()),
        (Some(404), Some(""))
    );
    assert_eq!(ev["bytes"], "no route\n".len());
    assert_eq!(ev["server"], "");

    drop(c);
    let logs = f.logs();
    assert_eq!(f.terminate(), Some(0));
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
}

#[tokio::test]
async fn no_access_log_unless_enabled() {
    let a = Backend::named("a").await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"a\"\n[upstream.a]\n{}\n",
        servers(&[&a])
    )));
    assert_eq!(get(f.addr("web"), "/").await.text(), "a");
    // The shutdown line comes after anything the request could have logged.
    let logs = {
        let logs = f.logs.clone();
        assert_eq!(f.terminate(), Some(0));
        let l = logs.lock().unwrap().join("\n");
        l
    };
    assert!(logs.contains("shutdown complete"), "{logs}");
    assert!(!logs.contains("fulcrum::access"), "{logs}");
}

fn promtool(args: &[&str], stdin: &[u8]) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn promtool_accepts_a_real_scrape_and_the_example_config() {
    let Some(_) = tool(&["promtool"], "prometheus") else {
        return;
    };
    let a = Backend::named("a").await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nhost = \"a.test\"\nupstream = \"a\"\n[upstream.a]\n{}\n[upstream.dead]\nservers = [{{ address = \"{}\" }}]\n[[route]]\nhost = \"d.test\"\nupstream = \"dead\"\n",
        servers(&[&a]),
        dead_addr()
    )));
    let web = f.addr("web");
    get_host(web, "/", "a.test").await;
    get_host(web, "/", "d.test").await;
    get_host(web, "/", "none.test").await;
    let text = scrape(&f).await;
    assert!(text.contains("fulcrum_upstream_errors_total"));
    let (ok, out) = promtool(&["check", "metrics"], text.as_bytes());
    assert!(ok, "promtool check metrics:\n{out}\n--- scrape:\n{text}");
    assert!(out.trim().is_empty(), "promtool lint findings:\n{out}");

    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let cfg = examples.join("prometheus.yml");
    let (ok, out) = promtool(&["check", "config", cfg.to_str().unwrap()], b"");
    assert!(ok, "promtool check config:\n{out}");
}

#[test]
fn grafana_dashboard_queries_are_valid_promql_on_our_metrics() {
    let Some(_) = tool(&["promtool"], "prometheus") else {
        return;
    };
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    exprs.extend(
        dash["annotations"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["expr"].as_str().unwrap().to_string()),
    );
    assert!(exprs.len() > 15);
    // Every fulcrum_ name used is one SPEC defines (or a histogram's series).
    let families = [
        "requests_total",
        "request_duration_seconds",
        "upstream_requests_total",
        "upstream_errors_total",
        "upstream_response_seconds",
        "upstream_in_flight",
        "upstream_server_up",
        "health_checks_total",
        "retries_total",
        "upstream_ejections_total",
        "connections_active",
        "connections_total",
        "connections_rejected_total",
        "rate_limited_total",
        "tls_handshake_errors_total",
        "config_reloads_total",
        "config_last_reload_successful",
        "config_last_reload_success_timestamp_seconds",
        "config_generation",
        "build_info",
    ];
    for e in &exprs {
        for (i, _) in e.match_indices("fulcrum_") {
            let name: String = e[i + 8..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let base = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                families.contains(&base),
                "unknown metric fulcrum_{name} in {e}"
            );
        }
    }
    // promtool parses each query as a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$upstream", ".*")
            .replace("$job", ".*");
        rules += &format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    let file = temp_dir().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", file.to_str().unwrap()], b"");
    assert!(ok, "promtool check rules:\n{out}");
    let alerts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fulcrum-alerts.yml");
    let (ok, out) = promtool(&["check", "rules", alerts.to_str().unwrap()], b"");
    assert!(ok, "promtool check rules (alerts):\n{out}");
}

#[tokio::test]
async fn ready_and_gauges_follow_active_health_down_and_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let b = Backend::start(move |req| {
        let ok = h.load(Ordering::SeqCst);
        async move {
            let mut r = Response::new(full("b"));
            if req.uri().path() == "/healthz" && !ok {
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\n{}\n[upstream.u.health_check]\npath = \"/healthz\"\n\
         interval = \"100ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\njitter = \"0%\"\n",
        servers(&[&b])
    )));
    let s = b.addr.to_string();
    let l = [("upstream", "u"), ("server", s.as_str())];
    let ready = |f: &Fulcrum| {
        let admin = f.admin;
        async move { get(admin, "/ready").await }
    };
    assert_eq!(ready(&f).await.status, 200);
    assert_eq!(
        metric(&scrape(&f).await, "fulcrum_upstream_server_up", &l),
        Some(1.0)
    );

    healthy.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "/ready 503", || async {
        ready(&f).await.status == 503
    })
    .await;
    let r = ready(&f).await;
    assert_eq!(r.text(), "not ready: no server up in upstream u\n");
    let m = scrape(&f).await;
    assert_eq!(metric(&m, "fulcrum_upstream_server_up", &l), Some(0.0));
    let fails = [
        ("upstream", "u"),
        ("server", s.as_str()),
        ("result", "fail"),
    ];
    assert!(n(&m, "fulcrum_health_checks_total", &fails) >= 1.0);
    let h: serde_json::Value = serde_json::from_str(&get(f.admin, "/health").await.text()).unwrap();
    assert_eq!(
        (
            h["upstreams"]["u"]["up"].as_u64(),
            h["upstreams"]["u"]["total"].as_u64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(server_state(&f, "u", b.addr).await, "down");
    assert_eq!(get(f.addr("web"), "/").await.status, 503);
    let st = status_json(&f).await;
    assert_eq!(st["ready"], false);
    assert_eq!(st["not_ready_reason"], "no server up in upstream u");

    healthy.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "/ready 200 again", || async {
        ready(&f).await.status == 200
    })
    .await;
    let m = scrape(&f).await;
    assert_eq!(metric(&m, "fulcrum_upstream_server_up", &l), Some(1.0));
    let passes = [
        ("upstream", "u"),
        ("server", s.as_str()),
        ("result", "pass"),
    ];
    assert!(n(&m, "fulcrum_health_checks_total", &passes) >= 1.0);
    assert_eq!(server_state(&f, "u", b.addr).await, "up");
    assert_eq!(get(f.addr("web"), "/").await.text(), "b");
}

/// A stderr nobody reads (a stalled log shipper, a full pipe) must not stall
/// requests: the access log goes through the non-blocking writer. 3,000
/// access lines are far more than a 64 KiB pipe holds, so a blocking writer
/// would hang after a few hundred requests.
#[tokio::test]
async fn a_stalled_stderr_does_not_block_requests() {
    use std::io::BufRead;
    let a = Backend::named("a").await;
    let dir = temp_dir();
    let path = dir.join("fulcrum.toml");
    std::fs::write(
        &path,
        config(&format!(
            "[global]\naccess_log = true\n[[route]]\nupstream = \"a\"\n[upstream.a]\n{}\n",
            servers(&[&a])
        )),
    )
    .unwrap();
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read up to "fulcrum ready" (for the port), then never read again.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut web = None;
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if line.contains("listener=web") {
            let addr = line
                .split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            web = Some(addr.parse::<std::net::SocketAddr>().unwrap());
        }
        if line.contains("fulcrum ready") {
            break;
        }
        line.clear();
    }
    let web = web.expect("listener address logged");
    let run = async {
        let mut c = Client::connect(web).await;
        for _ in 0..3000 {
            assert_eq!(
                c.get("/a/fairly/long/path/for/a/longer/log/line", "x")
                    .await
                    .status,
                200
            );
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(30), run).await;
    let _ = child.kill();
    let _ = child.wait();
    drop(stderr);
    assert!(done.is_ok(), "requests stalled behind a full stderr pipe");
    assert_eq!(a.hits(), 3000);
}
