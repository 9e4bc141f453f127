//! The admin listener: /health, /ready, /metrics, /status, /status.json and
//! the runtime-control API under /api/v1.
//!
//! It is served through the same accept path as proxy listeners
//! (`server::spawn_with`): header and idle timeouts, 400/431 from the
//! parser, a connection limit, drain on shutdown. It sees the application
//! only through an `AdminHandle`.

pub mod api;
pub mod handle;
mod page;
pub mod status;

pub use api::persist;
pub use handle::{AdminHandle, Host, ReloadOutcome};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::backend::Registry;
use crate::config::ListenerConfig;
use crate::proxy::body::ProxyBody;
use crate::proxy::ConnInfo;
use crate::routing::RoutingTable;
use crate::server::{self, ConnCounters, Handler, RunningListener};
use status::Sampler;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

struct Admin {
    handle: AdminHandle,
    settings: Arc<ListenerConfig>,
    sampler: Arc<Sampler>,
    started: Instant,
}

#[derive(Clone)]
struct AdminHandler(Arc<Admin>);

impl Handler for AdminHandler {
    async fn call(self, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<ProxyBody> {
        // Marks the connection busy (its timers are the request head's and
        // idle timeouts) until the response is written.
        let active = conn.state.begin();
        let resp = handle(&self.0, &conn, req).await;
        resp.map(|b| ProxyBody::full(b).with_guard(active))
    }
}

/// Serves the admin endpoints on `listener` with `settings` (the defaults
/// of a listener, 1024 connections) until drained, and starts the sampler
/// behind the status page's rates.
pub fn spawn(
    listener: std::net::TcpListener,
    settings: Arc<ListenerConfig>,
    handle: AdminHandle,
    drain_timeout: Duration,
) -> std::io::Result<RunningListener> {
    let admin = Arc::new(Admin {
        settings: settings.clone(),
        sampler: Sampler::spawn(handle.clone()),
        handle,
        started: Instant::now(),
    });
    let configured = settings.listen;
    server::spawn_with(
        listener,
        configured,
        settings,
        admin.handle.shared.clone(),
        AdminHandler(admin),
        Box::new(|_: &str| None),
        ConnCounters::unexported(),
        Arc::new(move || drain_timeout),
    )
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Bytes> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn handle(admin: &Admin, conn: &ConnInfo, req: Request<Incoming>) -> Response<Bytes> {
    // The head checks a proxy listener makes beyond hyper's parser (its
    // buffer limit is coarser than max_header_bytes), with the same answers.
    let refused = crate::proxy::check_request(conn, &admin.settings, &req).err();
    if let Some(e) = refused {
        let mut r = respond(e.status(), TEXT, e.body());
        if e.closes_connection() {
            r.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        return r;
    }
    if req.uri().path().starts_with("/api/") {
        let mut r = api::handle(&admin.handle, conn.client_ip, req).await;
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let state = &admin.handle;
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
                page::render(&s, state.shutting_down()),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

/// Liveness: answers while the process serves, with each upstream's
/// up/total server counts.
fn health(state: &AdminHandle) -> serde_json::Value {
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
pub fn readiness(state: &AdminHandle) -> Result<(), String> {
    readiness_of(
        state.shutting_down(),
        state.host.started(),
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
        .filter(|u| !u.servers.iter().any(|s| s.is_pickable()))
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
fn sync_gauges(state: &AdminHandle) {
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
