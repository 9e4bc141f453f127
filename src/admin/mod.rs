//! The admin listener: /health, /ready, /metrics, /status and /status.json.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::app::AppState;

/// Serves the admin endpoints until the process exits.
pub fn spawn(listener: std::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn handle(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/health" => {
            let table = state.shared.table.load();
            let upstreams: serde_json::Map<String, serde_json::Value> = table
                .upstreams
                .iter()
                .map(|u| {
                    let up = u.servers.iter().filter(|s| s.is_up()).count();
                    (
                        u.name.to_string(),
                        json!({"up": up, "total": u.servers.len()}),
                    )
                })
                .collect();
            let body = json!({"status": "ok", "upstreams": upstreams});
            respond(StatusCode::OK, "application/json", body.to_string())
        }
        "/ready" => match readiness(state) {
            Ok(()) => respond(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
            Err(reason) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {reason}\n"),
            ),
        },
        "/metrics" => {
            sync_gauges(state);
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                state.shared.registry.metrics.render(),
            )
        }
        "/status.json" => respond(
            StatusCode::OK,
            "application/json",
            status_json(state).to_string(),
        ),
        "/status" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status_html(&status_json(state)),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    }
}

/// Why the process should not get traffic, if it shouldn't.
fn readiness(state: &AppState) -> Result<(), String> {
    if state.shared.shutting_down.load(Ordering::Relaxed) {
        return Err("shutting down".into());
    }
    if !state.started.load(Ordering::Relaxed) {
        return Err("listeners not bound yet".into());
    }
    let table = state.shared.table.load();
    let down: Vec<&str> = table
        .upstreams
        .iter()
        .filter(|u| !u.servers.iter().any(|s| s.is_up()))
        .map(|u| &*u.name)
        .collect();
    if !down.is_empty() {
        return Err(format!("no server up in upstream {}", down.join(", ")));
    }
    Ok(())
}

/// Gauges that mirror state kept elsewhere are set at scrape time, so the
/// request path pays nothing for them.
fn sync_gauges(state: &AppState) {
    let table = state.shared.table.load();
    for u in &table.upstreams {
        for s in &u.servers {
            s.metrics.in_flight.set(s.in_flight() as i64);
            s.metrics.up.set(s.is_up() as i64);
        }
    }
}

fn status_json(state: &AppState) -> serde_json::Value {
    let table = state.shared.table.load();
    let m = &state.shared.registry.metrics;
    let listeners: Vec<_> = table
        .listeners
        .iter()
        .map(|l| json!({"name": &*l.name, "listen": l.settings.listen.to_string()}))
        .collect();
    let routes: Vec<_> = table
        .config
        .routes
        .iter()
        .map(|r| {
            json!({
                "listeners": r.listeners,
                "host": r.host.as_ref().map(|h| match h {
                    crate::config::HostMatch::Exact(e) => e.clone(),
                    crate::config::HostMatch::Suffix(s) => format!("*{s}"),
                }),
                "path_prefix": if r.path_prefix.is_empty() { "/" } else { &r.path_prefix },
                "upstream": r.upstream,
            })
        })
        .collect();
    let upstreams: Vec<_> = table
        .upstreams
        .iter()
        .map(|u| {
            let servers: Vec<_> = u
                .servers
                .iter()
                .map(|s| {
                    let responses = sum_counter(&m.upstream_requests_total, &u.name, &s.label);
                    let errors = sum_counter(&m.upstream_errors_total, &u.name, &s.label);
                    let h = &s.metrics.response_seconds;
                    let (count, sum) = (h.get_sample_count(), h.get_sample_sum());
                    json!({
                        "address": s.label,
                        "state": s.state_name(),
                        "in_flight": s.in_flight(),
                        "responses": responses,
                        "errors": errors,
                        "mean_latency_ms": if count > 0 { sum / count as f64 * 1000.0 } else { 0.0 },
                        "idle_connections": s.pool.idle_count(),
                    })
                })
                .collect();
            json!({"name": &*u.name, "strategy": u.config.strategy.as_str(), "servers": servers})
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generation": table.generation,
        "last_reload_successful": m.config_last_reload_successful.get() == 1,
        "listeners": listeners,
        "routes": routes,
        "upstreams": upstreams,
    })
}

/// Sum of a counter family's series whose `upstream` and `server` labels match.
fn sum_counter(vec: &prometheus::IntCounterVec, upstream: &str, server: &str) -> u64 {
    use prometheus::core::Collector;
    vec.collect()
        .iter()
        .flat_map(|mf| mf.get_metric())
        .filter(|m| {
            let mut ok = 0;
            for l in m.get_label() {
                match l.name() {
                    "upstream" if l.value() == upstream => ok += 1,
                    "server" if l.value() == server => ok += 1,
                    _ => {}
                }
            }
            ok == 2
        })
        .map(|m| m.get_counter().value() as u64)
        .sum()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn status_html(v: &serde_json::Value) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>\
         <title>Fulcrum status</title><style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}\
         th{background:#f3f3f3}.up{color:#0a0;font-weight:bold}.down{color:#c00;font-weight:bold}</style></head><body>",
    );
    h += &format!(
        "<h1>Fulcrum {}</h1><p>config generation {} &middot; last reload {}</p>",
        esc(v["version"].as_str().unwrap_or("")),
        v["generation"],
        if v["last_reload_successful"].as_bool() == Some(true) {
            "succeeded"
        } else {
            "<span class=down>failed</span>"
        }
    );
    h += "<h2>Listeners</h2><table><tr><th>name</th><th>address</th></tr>";
    for l in v["listeners"].as_array().into_iter().flatten() {
        h += &format!(
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(l["name"].as_str().unwrap_or("")),
            esc(l["listen"].as_str().unwrap_or(""))
        );
    }
    h +=
        "</table><h2>Routes</h2><table><tr><th>host</th><th>path prefix</th><th>upstream</th></tr>";
    for r in v["routes"].as_array().into_iter().flatten() {
        h += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(r["host"].as_str().unwrap_or("*")),
            esc(r["path_prefix"].as_str().unwrap_or("/")),
            esc(r["upstream"].as_str().unwrap_or(""))
        );
    }
    h += "</table>";
    for u in v["upstreams"].as_array().into_iter().flatten() {
        h += &format!(
            "<h2>Upstream {} <small>({})</small></h2><table><tr><th>server</th><th>state</th><th>in flight</th><th>responses</th><th>errors</th><th>mean latency</th></tr>",
            esc(u["name"].as_str().unwrap_or("")),
            esc(u["strategy"].as_str().unwrap_or(""))
        );
        for s in u["servers"].as_array().into_iter().flatten() {
            let st = s["state"].as_str().unwrap_or("");
            h += &format!(
                "<tr><td>{}</td><td class={st}>{st}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2} ms</td></tr>",
                esc(s["address"].as_str().unwrap_or("")),
                s["in_flight"],
                s["responses"],
                s["errors"],
                s["mean_latency_ms"].as_f64().unwrap_or(0.0)
            );
        }
        h += "</table>";
    }
    h += "</body></html>";
    h
}
