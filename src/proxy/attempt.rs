//! The forwarding phase: prepare the request for the server, pick a server,
//! send, and retry on another when that is safe and the budget allows. Each
//! attempt's outcome is recorded in one place (`record`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONTENT_LENGTH, HOST, SET_COOKIE, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::body::{BodyFlags, ProxyBody, ReqBody};
use super::error::ProxyError;
use super::headers::X_REQUEST_ID;
use super::headers::{self, PROTO_HTTP, PROTO_HTTPS, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use super::tunnel::{finish_response, TunnelHold};
use super::{expect, forward, ConnInfo};
use crate::backend::{InFlight, ServerState};
use crate::balance::{ewma, PickContext};
use crate::clock::clock_ms;
use crate::config::ListenerConfig;
use crate::health::passive;
use crate::routing::Upstream;

/// Sends the request to a server of `upstream`, retrying on another when
/// safe; `served` is the last server tried.
pub(super) async fn forward(
    upstream: &Arc<Upstream>,
    conn: &ConnInfo,
    client_ip: IpAddr,
    settings: &ListenerConfig,
    request_id: &HeaderValue,
    req: Request<Incoming>,
    served: &mut Option<SocketAddr>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if let (Some(limit), Some(len)) = (settings.max_request_body, content_length(&req)) {
        if len > limit {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    // HTTP/1.1 Upgrade (WebSocket) is tunnelled to HTTP/1.1 servers; an h2
    // server gets the request without its hop-by-hop upgrade headers.
    let upgrade = req.version() == Version::HTTP_11
        && headers::wants_upgrade(req.headers())
        && !upstream.config.protocol.is_h2();
    let (mut parts, incoming) = req.into_parts();
    let bodiless = hyper::body::Body::is_end_stream(&incoming);
    // Only HTTP/1.1 clients with a body wait for 100 Continue (hyper's HTTP/2
    // server sends none), and only an HTTP/1 server can send one to relay.
    let expect = !bodiless
        && parts.version == Version::HTTP_11
        && !upstream.config.protocol.is_h2()
        && expect::expects_continue(&parts.headers);
    let client_upgrade =
        upgrade.then(|| hyper::upgrade::on(Request::from_parts(parts.clone(), ())));
    let ctx = upstream.pick_context(&parts, client_ip);
    let sticky = upstream.sticky_target(&parts.headers);
    rewrite_request(&mut parts, conn, request_id, upgrade);
    if !upstream.config.protocol.is_h2() && !bodiless && !parts.headers.contains_key(CONTENT_LENGTH)
    {
        // A body of unknown length (HTTP/2 allows one on any method) is sent
        // chunked: hyper's HTTP/1 client would send a GET's or HEAD's as
        // empty, losing it.
        parts
            .headers
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    // A bodiless request can be sent again: an idempotent one on another
    // server if the first resets or times out before answering, any one
    // when an HTTP/2 server refused its stream unprocessed. Keep its head.
    let idempotent = is_idempotent(&parts.method);
    // (A non-idempotent head is only ever resent to an HTTP/2 server, so
    // only then is it worth the copy.)
    let replay =
        (bodiless && (idempotent || upstream.config.protocol.is_h2())).then(|| parts.clone());
    let (mut body, flags) = ReqBody::new(
        incoming,
        settings.max_request_body,
        settings.body_read_timeout,
    );
    let gate = if expect { body.expect_continue() } else { None };
    let mut req = Request::from_parts(parts, body);
    if let Some(g) = &gate {
        let g = g.clone();
        hyper::ext::on_informational(&mut req, move |res| {
            if res.status() == StatusCode::CONTINUE {
                g.open();
            }
        });
    }

    let mut tried: Vec<&Arc<ServerState>> = Vec::new();
    let mut attempts_left = upstream.config.retries + 1;
    upstream.retry_budget.record_request(clock_ms());
    loop {
        attempts_left -= 1;
        let server = match sticky {
            Some(s) if tried.is_empty() && s.takes_sticky() => s,
            _ => pick_untried(upstream, &ctx, &tried).ok_or(ProxyError::NoHealthyUpstream)?,
        };
        *served = Some(server.addr);
        let in_flight = InFlight::new(server.clone());
        let sent_at = Instant::now();
        let rebuild = || {
            let p = replay
                .as_ref()
                .expect("only offered with a replayable head");
            Request::from_parts(p.clone(), ReqBody::empty())
        };
        let replay_fn = replay.as_ref().map(|_| forward::Replay {
            rebuild: &rebuild,
            idempotent,
        });
        let failed = match forward::send(server, &upstream.config, req, replay_fn).await {
            Ok((resp, mut conn1)) => {
                if gate.as_ref().is_some_and(|g| g.refuse()) {
                    // Answered on the head: the body was never sent, so the
                    // connection is mid-request and can't be reused.
                    conn1 = None;
                }
                if let Err(e) = check_response(&resp, client_upgrade.is_some(), upstream) {
                    // Dropped, not pooled: the connection's framing is unknown.
                    drop((resp, conn1));
                    record(upstream, server, Outcome::Failed(&e));
                    return Err(invalid_response(upstream, server, e));
                }
                record(
                    upstream,
                    server,
                    Outcome::Answered {
                        latency: sent_at.elapsed(),
                        status: resp.status().as_u16(),
                        headers: resp.headers(),
                    },
                );
                let mut resp = finish_response(
                    resp,
                    in_flight,
                    conn1,
                    client_upgrade.map(|u| TunnelHold {
                        upgrade: u,
                        active: conn.state.begin(),
                        drain: conn.take_drain(),
                    }),
                );
                if let Some(c) = upstream.sticky_cookie(sticky, server) {
                    resp.headers_mut().append(SET_COOKIE, c.clone());
                }
                return Ok(resp);
            }
            Err(f) => f,
        };
        let e = body_error(&flags).unwrap_or(failed.error);
        let e = match e {
            ProxyError::UpstreamProtocol(_) => invalid_response(upstream, server, e),
            e => e,
        };
        record(upstream, server, Outcome::Failed(&e));
        let next = match failed.request {
            Some(r) if e.never_sent() => Some(r),
            _ if matches!(
                e,
                ProxyError::UpstreamReset(_) | ProxyError::ResponseTimeout
            ) && !flags.started()
                && idempotent =>
            {
                replay.as_ref().map(|_| rebuild())
            }
            _ if matches!(e, ProxyError::UpstreamRefused(_)) => replay.as_ref().map(|_| rebuild()),
            _ => None,
        };
        match next {
            Some(r)
                if attempts_left > 0
                    && has_untried(upstream, server, &tried)
                    && upstream
                        .retry_budget
                        .try_retry(upstream.config.retry_budget, clock_ms()) =>
            {
                upstream.retries_total.inc();
                tracing::debug!(upstream = %upstream.name, server = %server.addr, error = %e, "retrying on another server");
                tried.push(server);
                req = r;
            }
            _ => return Err(e),
        }
    }
}

/// What one attempt on a server came to.
enum Outcome<'a> {
    Answered {
        latency: Duration,
        status: u16,
        headers: &'a HeaderMap,
    },
    Failed(&'a ProxyError),
}

/// The one place an attempt feeds the server's metrics, passive health and
/// latency estimate.
fn record(upstream: &Upstream, server: &ServerState, outcome: Outcome<'_>) {
    match outcome {
        Outcome::Answered {
            latency,
            status,
            headers,
        } => {
            server
                .metrics
                .response_seconds
                .observe(latency.as_secs_f64());
            server.metrics.responses.inc(status);
            passive::record(upstream, server, status >= 500);
            ewma::record_response(server, latency, status, headers);
        }
        // A stream the server refused unprocessed (its GOAWAY) says
        // nothing bad about the server.
        Outcome::Failed(ProxyError::UpstreamRefused(_)) => {}
        Outcome::Failed(e) => {
            server.load.ewma.penalize();
            if let Some(kind) = e.upstream_kind() {
                server.metrics.error(kind);
                passive::record(upstream, server, true);
            }
        }
    }
}

/// A response hyper accepted but a proxy must not forward.
fn check_response(
    resp: &Response<Incoming>,
    upgrade_asked: bool,
    upstream: &Upstream,
) -> Result<(), ProxyError> {
    // A 101 is only ever relayed to a WebSocket upgrade the client asked for
    // (and Fulcrum forwarded); any other is an attempt to open a tunnel past
    // routing (h2c smuggling).
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !upgrade_asked {
        return Err(ProxyError::UpstreamFraming(
            "101 Switching Protocols to a request that asked for no upgrade",
        ));
    }
    // hyper's HTTP/1 client enforces the count itself; HTTP/2 responses are
    // held to the same limit here.
    if resp.headers().len() > upstream.config.max_header_count {
        return Err(ProxyError::UpstreamFraming(
            "more header fields than max_header_count",
        ));
    }
    // hyper lets Transfer-Encoding win over Content-Length in a response;
    // forwarding the pair would leave the client to guess.
    if resp.headers().contains_key(TRANSFER_ENCODING) && resp.headers().contains_key(CONTENT_LENGTH)
    {
        return Err(ProxyError::UpstreamFraming(
            "Content-Length with Transfer-Encoding",
        ));
    }
    Ok(())
}

/// Logs why a server's response was refused (warn: the operator must be
/// able to see what the 502 hides) and hands the error on.
fn invalid_response(upstream: &Upstream, server: &ServerState, e: ProxyError) -> ProxyError {
    let cause = std::error::Error::source(&e).map(|s| s.to_string());
    tracing::warn!(
        upstream = %upstream.name,
        server = %server.addr,
        reason = %e,
        cause = cause.as_deref().unwrap_or(""),
        "invalid upstream response"
    );
    e
}

fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    *m == Method::GET
        || *m == Method::HEAD
        || *m == Method::OPTIONS
        || *m == Method::PUT
        || *m == Method::DELETE
        || *m == Method::TRACE
}

/// Picks an up server not tried yet for this request. The snapshot's up list
/// can trail a health change by a moment, so a pick is re-checked.
fn pick_untried<'a>(
    upstream: &'a Upstream,
    ctx: &PickContext<'_>,
    tried: &[&Arc<ServerState>],
) -> Option<&'a Arc<ServerState>> {
    let usable = |s: &Arc<ServerState>| s.is_pickable() && !tried.iter().any(|t| Arc::ptr_eq(t, s));
    match upstream.pick(ctx) {
        Some(s) if usable(s) => Some(s),
        _ => upstream.up.iter().find(|s| usable(s)),
    }
}

/// Whether another up server than `failed` is left to try. (A sticky
/// request may have tried a draining server, which is not in `up`.)
fn has_untried(
    upstream: &Upstream,
    failed: &Arc<ServerState>,
    tried: &[&Arc<ServerState>],
) -> bool {
    upstream
        .up
        .iter()
        .any(|s| !Arc::ptr_eq(s, failed) && !tried.iter().any(|t| Arc::ptr_eq(t, s)))
}

fn body_error(flags: &BodyFlags) -> Option<ProxyError> {
    if flags.too_large() {
        Some(ProxyError::BodyTooLarge)
    } else if flags.timed_out() {
        Some(ProxyError::BodyTimeout)
    } else if flags.client_error() {
        Some(ProxyError::BadRequest("invalid request body"))
    } else {
        None
    }
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Request headers for the server: hop-by-hop removed, X-Forwarded-*, Host
/// kept (or made from the HTTP/2 authority), origin-form URI, HTTP/1.1.
fn rewrite_request(
    parts: &mut http::request::Parts,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    upgrade: bool,
) {
    let h = &mut parts.headers;
    // The request id was set when the request was accepted; a client that
    // names it in `Connection` must not strip it, so it is put back. (The
    // X-Forwarded-* headers are set below, after the removal, anyway.)
    if headers::strip_hop_by_hop(h, upgrade) {
        h.insert(X_REQUEST_ID.clone(), request_id.clone());
    }
    headers::append_forwarded_for(h, &conn.client_ip_value);
    h.insert(
        X_FORWARDED_PROTO.clone(),
        if conn.tls {
            PROTO_HTTPS.clone()
        } else {
            PROTO_HTTP.clone()
        },
    );
    match h.get(HOST).cloned() {
        Some(host) => {
            h.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            let authority = parts.uri.authority();
            if let Some(host) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                h.insert(HOST, host.clone());
                h.insert(X_FORWARDED_HOST.clone(), host);
            }
        }
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = Version::HTTP_11;
}
