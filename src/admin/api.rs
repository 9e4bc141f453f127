//! `/api/v1`: runtime control of servers (SPEC "Runtime control").
//!
//! Order of checks: API disabled (no `token_file`) → 403; an `Origin`
//! header (a browser; no cross-site request may change anything) → 403;
//! bearer token, compared in constant time → 401; path and method → 404 /
//! 405; upstream and server → 404; body → 400. Only then does anything
//! change. Every request is counted in `fulcrum_admin_requests_total` and
//! logged on the `fulcrum::audit` target.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, ORIGIN, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;

use super::handle::AdminHandle;
use crate::backend::{AdminState, ServerState, MAX_WEIGHT};
use crate::routing::{RoutingTable, Upstream};

/// Largest request body read.
pub const MAX_BODY: usize = 4096;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request with a missing or wrong token waits for its 401.
const UNAUTHORIZED_DELAY: Duration = Duration::from_millis(100);

/// `action` label values.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Servers,
    Server,
    Drain,
    Disable,
    Enable,
    Weight,
    WeightReset,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Servers => "servers",
            Action::Server => "server",
            Action::Drain => "drain",
            Action::Disable => "disable",
            Action::Enable => "enable",
            Action::Weight => "weight",
            Action::WeightReset => "weight_reset",
        }
    }
}

/// `result` label values, each with its status code.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Ok,
    Unauthorized,
    Forbidden,
    NotFound,
    BadRequest,
    MethodNotAllowed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::NotFound => "not_found",
            Outcome::BadRequest => "bad_request",
            Outcome::MethodNotAllowed => "method_not_allowed",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Outcome::Ok => StatusCode::OK,
            Outcome::Unauthorized => StatusCode::UNAUTHORIZED,
            Outcome::Forbidden => StatusCode::FORBIDDEN,
            Outcome::NotFound => StatusCode::NOT_FOUND,
            Outcome::BadRequest => StatusCode::BAD_REQUEST,
            Outcome::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// A refusal: its result and message.
struct Refusal(Outcome, String);

fn refuse(o: Outcome, msg: impl Into<String>) -> Refusal {
    Refusal(o, msg.into())
}

/// What the path names.
struct Target {
    action: Action,
    /// Methods the path allows (for 405's `Allow`).
    allow: &'static str,
    /// (upstream, address text) for per-server paths.
    server: Option<(String, String)>,
}

/// Parses `/api/v1/...` (percent-decoded segments); `Err` = no such path,
/// reported with the closest action.
fn parse_path(path: &str, method: &Method) -> Result<Target, Action> {
    let rest = path.strip_prefix("/api/v1/").ok_or(Action::Servers)?;
    if rest == "servers" {
        return Ok(Target {
            action: Action::Servers,
            allow: "GET, HEAD",
            server: None,
        });
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let (upstream, address, tail) = match segs.as_slice() {
        ["upstreams", u, "servers", a] => (*u, *a, None),
        ["upstreams", u, "servers", a, t] => (*u, *a, Some(*t)),
        _ => return Err(Action::Server),
    };
    let (action, allow) = match tail {
        None => (Action::Server, "GET, HEAD"),
        Some("drain") => (Action::Drain, "POST"),
        Some("disable") => (Action::Disable, "POST"),
        Some("enable") => (Action::Enable, "POST"),
        Some("weight") if *method == Method::DELETE => (Action::WeightReset, "PUT, DELETE"),
        Some("weight") => (Action::Weight, "PUT, DELETE"),
        Some(_) => return Err(Action::Server),
    };
    let (Some(u), Some(a)) = (percent_decode(upstream), percent_decode(address)) else {
        return Err(action);
    };
    Ok(Target {
        action,
        allow,
        server: Some((u, a)),
    })
}

/// `%XX` decoding of one path segment; `None` when malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One server as the API shows it.
#[derive(Debug, Serialize)]
pub struct ServerView {
    pub upstream: String,
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    pub effective_weight: u32,
    pub state: &'static str,
    pub admin_state: &'static str,
    pub in_flight: usize,
}

pub fn server_view(s: &ServerState) -> ServerView {
    ServerView {
        upstream: s.upstream.to_string(),
        address: s.label.clone(),
        weight: s.admin.configured(),
        effective_weight: s.effective_weight(),
        state: s.state_name(),
        admin_state: s.admin.state().as_str(),
        in_flight: s.in_flight(),
    }
}

fn all_servers(table: &RoutingTable) -> serde_json::Value {
    let upstreams: Vec<serde_json::Value> = table
        .upstreams
        .iter()
        .map(|u| {
            let servers: Vec<ServerView> = u.servers.iter().map(|s| server_view(s)).collect();
            json!({"name": &*u.name, "strategy": u.config.strategy.as_str(), "servers": servers})
        })
        .collect();
    json!({ "upstreams": upstreams })
}

fn find<'a>(
    table: &'a RoutingTable,
    upstream: &str,
    address: &str,
) -> Result<(&'a Arc<Upstream>, &'a Arc<ServerState>), Refusal> {
    let u = table
        .upstreams
        .iter()
        .find(|u| &*u.name == upstream)
        .ok_or_else(|| {
            refuse(
                Outcome::NotFound,
                format!("unknown upstream \"{upstream}\""),
            )
        })?;
    let not_found = || {
        refuse(
            Outcome::NotFound,
            format!("upstream \"{upstream}\" has no server {address}"),
        )
    };
    let addr: SocketAddr = address.parse().map_err(|_| not_found())?;
    let s = u
        .servers
        .iter()
        .find(|s| s.addr == addr)
        .ok_or_else(not_found)?;
    Ok((u, s))
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(
        serde_json::to_string_pretty(body).unwrap_or_default() + "\n",
    ));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Answers one `/api/v1` request, counts it and writes the audit event.
pub async fn handle(admin: &AdminHandle, peer: IpAddr, req: Request<Incoming>) -> Response<Bytes> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let target = parse_path(&path, &method);
    let action = match &target {
        Ok(t) => t.action,
        Err(a) => *a,
    };
    let (upstream, server) = match &target {
        Ok(Target {
            server: Some((u, a)),
            ..
        }) => (u.clone(), a.clone()),
        _ => (String::new(), String::new()),
    };
    let result = answer(admin, req, target).await;
    let outcome = match &result {
        Ok(_) => Outcome::Ok,
        Err((Refusal(o, _), _)) => *o,
    };
    admin
        .shared
        .registry
        .metrics
        .admin_requests_total
        .with_label_values(&[action.as_str(), outcome.as_str()])
        .inc();
    tracing::info!(
        target: "fulcrum::audit",
        peer = %peer,
        method = %method,
        action = %action.as_str(),
        upstream = %upstream,
        server = %server,
        result = %outcome.as_str(),
        "admin api"
    );
    if outcome == Outcome::Unauthorized {
        // A wrong token costs the sender time, not us CPU: a connection
        // guessing in a loop gets at most ten answers a second (and the
        // listener holds at most 1024 connections), so a flood of guesses
        // cannot take the CPU the proxy listeners need.
        tokio::time::sleep(UNAUTHORIZED_DELAY).await;
    }
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err((Refusal(o, msg), allow)) => {
            let mut r = json_response(o.status(), &json!({ "error": msg }));
            if o == Outcome::Unauthorized {
                r.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            if let (Outcome::MethodNotAllowed, Some(allow)) = (o, allow) {
                r.headers_mut()
                    .insert(http::header::ALLOW, HeaderValue::from_static(allow));
            }
            r
        }
    }
}

type Answer = Result<serde_json::Value, (Refusal, Option<&'static str>)>;

async fn answer(
    admin: &AdminHandle,
    req: Request<Incoming>,
    target: Result<Target, Action>,
) -> Answer {
    let plain = |r: Refusal| (r, None);
    // The token of the current config: a reload re-reads the file.
    let token = admin.shared.table.load().config.admin.token.clone();
    let Some(token) = token else {
        return Err(plain(refuse(Outcome::Forbidden, "admin API disabled")));
    };
    if req.headers().contains_key(ORIGIN) {
        return Err(plain(refuse(
            Outcome::Forbidden,
            "requests from browsers (with an Origin header) are refused",
        )));
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if !token.matches(presented) {
        return Err(plain(refuse(
            Outcome::Unauthorized,
            "missing or wrong bearer token",
        )));
    }
    let target = target.map_err(|_| plain(refuse(Outcome::NotFound, "no such API path")))?;
    let method = req.method().clone();
    let read = matches!(method, Method::GET | Method::HEAD);
    let allowed = match target.action {
        Action::Servers | Action::Server => read,
        Action::Drain | Action::Disable | Action::Enable => method == Method::POST,
        Action::Weight => method == Method::PUT,
        Action::WeightReset => method == Method::DELETE,
    };
    if !allowed {
        return Err((
            refuse(
                Outcome::MethodNotAllowed,
                format!("{method} is not allowed here (allowed: {})", target.allow),
            ),
            Some(target.allow),
        ));
    }
    let body = read_body(req.into_body()).await.map_err(plain)?;
    let table = admin.shared.table.load_full();
    let Some((upstream, address)) = &target.server else {
        return Ok(all_servers(&table));
    };
    let (_, server) = find(&table, upstream, address).map_err(plain)?;
    let changed = match target.action {
        Action::Servers | Action::Server => return Ok(json!(server_view(server))),
        Action::Drain => server.set_admin_state(AdminState::Drain),
        Action::Disable => server.set_admin_state(AdminState::Disable),
        Action::Enable => server.set_admin_state(AdminState::None),
        Action::Weight => server.set_weight_override(Some(parse_weight(&body).map_err(plain)?)),
        Action::WeightReset => server.set_weight_override(None),
    };
    if changed {
        // Picks follow from the next snapshot, built now (off the request
        // path) and swapped in before we answer.
        admin.host.republish().await;
        if let Err(e) = persist(admin).await {
            tracing::error!(error = %e, "cannot write the state file; the override applies until restart");
        }
    }
    Ok(json!(server_view(server)))
}

async fn read_body(body: Incoming) -> Result<Bytes, Refusal> {
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| refuse(Outcome::BadRequest, "request body timed out"))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(refuse(
            Outcome::BadRequest,
            format!("request body over {MAX_BODY} bytes"),
        )),
        Err(e) => Err(refuse(Outcome::BadRequest, format!("request body: {e}"))),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

fn parse_weight(body: &[u8]) -> Result<u32, Refusal> {
    let w = serde_json::from_slice::<WeightBody>(body)
        .map_err(|e| {
            refuse(
                Outcome::BadRequest,
                format!("body must be {{\"weight\": N}} with N in 1..={MAX_WEIGHT}: {e}"),
            )
        })?
        .weight;
    if !(1..=MAX_WEIGHT).contains(&w) {
        return Err(refuse(
            Outcome::BadRequest,
            format!("weight {w} is out of range 1..={MAX_WEIGHT}"),
        ));
    }
    Ok(w)
}

/// Writes the overrides of the current snapshot's servers to the state
/// file, when one is configured (off the runtime: it fsyncs).
pub async fn persist(admin: &AdminHandle) -> std::io::Result<()> {
    let table = admin.shared.table.load_full();
    let Some(path) = table.config.admin.state_file.clone() else {
        return Ok(());
    };
    let registry = admin.shared.registry.clone();
    tokio::task::spawn_blocking(move || {
        let servers = table.upstreams.iter().flat_map(|u| u.servers.iter());
        registry.save_overrides(&path, servers.map(|s| &**s))
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_percent_encoded_addresses() {
        let t = parse_path("/api/v1/servers", &Method::GET).ok().unwrap();
        assert_eq!(t.action, Action::Servers);
        let t = parse_path(
            "/api/v1/upstreams/api/servers/%5B%3A%3A1%5D%3A8080/drain",
            &Method::POST,
        )
        .ok()
        .unwrap();
        assert_eq!(t.action, Action::Drain);
        assert_eq!(
            t.server,
            Some(("api".to_string(), "[::1]:8080".to_string()))
        );
        let t = parse_path(
            "/api/v1/upstreams/a/servers/1.2.3.4:5/weight",
            &Method::DELETE,
        )
        .ok()
        .unwrap();
        assert_eq!(t.action, Action::WeightReset);
        assert!(parse_path("/api/v1/upstreams/a/servers/x/reboot", &Method::POST).is_err());
        assert!(parse_path("/api/v1/nope", &Method::GET).is_err());
        assert!(parse_path("/api/v1/upstreams/a/servers/%zz/drain", &Method::POST).is_err());
    }

    #[test]
    fn weight_bodies() {
        assert_eq!(parse_weight(br#"{"weight": 5}"#).ok(), Some(5));
        assert_eq!(parse_weight(br#"{"weight": 1000}"#).ok(), Some(1000));
        for bad in [
            &br#"{"weight": 0}"#[..],
            br#"{"weight": 1001}"#,
            br#"{"weight": "5"}"#,
            br#"{"weight": -1}"#,
            br#"{"weight": 2.5}"#,
            br#"{}"#,
            br#"{"weight": 5, "x": 1}"#,
            b"",
        ] {
            assert!(
                parse_weight(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
