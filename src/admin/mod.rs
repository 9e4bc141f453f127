//! The admin listener: /health, /ready, /metrics, /status and /status.json.

mod page;
pub mod status;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::backend::Registry;
use crate::reload::AppState;
use crate::routing::RoutingTable;
use status::Sampler;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

struct Admin {
    state: Arc<AppState>,
    sampler: Arc<Sampler>,
    started: Instant,
}

/// Serves the admin endpoints until the process exits, and starts the
/// sampler behind the status page's rates.
pub fn spawn(listener: std::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let admin = Arc::new(Admin {
        sampler: Sampler::spawn(state.clone()),
        state,
        started: Instant::now(),
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(handle(&admin, req)) }
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
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let state = &admin.state;
    match req.uri().path() {
        "/health" => respond(StatusCode::OK, JSON, health(state).to_string()),
        "/ready" => match readiness(state) {
            Ok(()) => respond(StatusCode::OK, TEXT, "ready\n"),
            Err(reason) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
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
        "/status.json" => {
            let s = status::build(state, &admin.sampler, admin.started, readiness(state));
            let body = serde_json::to_string_pretty(&s).unwrap_or_default();
            respond(StatusCode::OK, JSON, body)
        }
        "/status" | "/" => {
            let s = status::build(state, &admin.sampler, admin.started, readiness(state));
            respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page::render(&s, status::shutting_down(state)),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

/// Liveness: answers while the process serves, with each upstream's
/// up/total server counts.
fn health(state: &AppState) -> serde_json::Value {
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
    json!({"status": "ok", "generation": table.generation, "upstreams": upstreams})
}

/// Why the process should not get traffic, if it shouldn't.
pub fn readiness(state: &AppState) -> Result<(), String> {
    readiness_of(
        state.shared.shutting_down.load(Ordering::Relaxed),
        state.started.load(Ordering::Relaxed),
        &state.shared.table.load(),
    )
}

fn readiness_of(shutting_down: bool, started: bool, table: &RoutingTable) -> Result<(), String> {
    if shutting_down {
        return Err("shutting down".into());
    }
    if !started {
        return Err("listeners not bound yet".into());
    }
    let down: Vec<&str> = table
        .upstreams
        .iter()
        .filter(|u| !u.servers.iter().any(|s| s.is_up()))
        .map(|u| &*u.name)
        .collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(format!("no server up in upstream {}", down.join(", ")))
    }
}

/// Gauges that mirror state kept elsewhere are set at scrape time, so the
/// request path pays nothing for them. Draining servers (removed by a
/// reload, still finishing requests) report up=0 until they are gone.
fn sync_gauges(state: &AppState) {
    sync_server_gauges(&state.shared.registry, &state.shared.table.load());
}

fn sync_server_gauges(registry: &Registry, table: &RoutingTable) {
    let current = status::in_table(table);
    for s in registry.live_servers() {
        let in_table = current.contains(&Arc::as_ptr(&s));
        s.metrics.in_flight.set(s.in_flight() as i64);
        s.metrics.up.set((in_table && s.is_up()) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    fn table() -> (Arc<Registry>, RoutingTable) {
        let text = r#"
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "web"
listen = "127.0.0.1:0"
[[route]]
upstream = "api"
[upstream.api]
servers = [{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2" }]
[upstream.web]
servers = [{ address = "127.0.0.1:3" }]
"#;
        let config = Config::from_toml(std::path::Path::new("t.toml"), text).unwrap();
        let registry = Registry::new(Arc::new(Metrics::new()));
        let table = RoutingTable::build(Arc::new(config), &registry, 1);
        (registry, table)
    }

    /// Readiness and the up gauge follow `ServerState::is_up`, whatever
    /// flips it (active health checks, passive ejection).
    #[test]
    fn ready_flips_when_an_upstream_has_no_server_up_and_back() {
        let (registry, t) = table();
        assert_eq!(readiness_of(false, true, &t), Ok(()));
        assert_eq!(
            readiness_of(false, false, &t),
            Err("listeners not bound yet".into())
        );
        assert_eq!(readiness_of(true, true, &t), Err("shutting down".into()));

        let api = &t.upstreams[0];
        api.servers[0].set_checked_down(true);
        assert_eq!(
            readiness_of(false, true, &t),
            Ok(()),
            "one of two is still up"
        );
        api.servers[1].eject(std::time::Duration::from_secs(30));
        assert_eq!(
            readiness_of(false, true, &t),
            Err("no server up in upstream api".into())
        );
        t.upstreams[1].servers[0].set_checked_down(true);
        assert_eq!(
            readiness_of(false, true, &t),
            Err("no server up in upstream api, web".into())
        );

        sync_server_gauges(&registry, &t);
        let text = String::from_utf8(registry.metrics.render()).unwrap();
        assert!(
            text.contains("fulcrum_upstream_server_up{server=\"127.0.0.1:1\",upstream=\"api\"} 0")
        );

        for u in &t.upstreams {
            for s in &u.servers {
                s.set_checked_down(false);
                s.end_ejection_if_due(u64::MAX);
            }
        }
        assert_eq!(readiness_of(false, true, &t), Ok(()));
        sync_server_gauges(&registry, &t);
        let text = String::from_utf8(registry.metrics.render()).unwrap();
        assert!(
            text.contains("fulcrum_upstream_server_up{server=\"127.0.0.1:1\",upstream=\"api\"} 1")
        );
    }
}
