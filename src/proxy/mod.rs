//! The request handler: route, pick, rewrite, forward, account.
//!
//! `handle` never fails: every `ProxyError` becomes a response at one place
//! (`error_response`), and every response carries X-Request-Id.

pub mod body;
pub mod client_ip;
pub mod error;
pub mod expect;
pub mod forward;
pub mod headers;
pub mod pool;
pub mod validate;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER, SET_COOKIE,
    TRANSFER_ENCODING,
};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::backend::{InFlight, Registry, ServerState};
use crate::balance::{ewma, PickContext};
use crate::clock::clock_ms;
use crate::conn_state::{ActiveGuard, ConnState};
use crate::health::passive;
use crate::routing::{request_host, RoutingTable, Upstream};
use body::{BodyFlags, Finish, ProxyBody, ReqBody, UpstreamBody};
use error::ProxyError;
use headers::{PROTO_HTTP, PROTO_HTTPS, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};

/// Process-wide state the request path reads.
pub struct Shared {
    pub table: ArcSwap<RoutingTable>,
    pub registry: Arc<Registry>,
    pub shutting_down: AtomicBool,
    /// Pending ACME challenges and issued certificates.
    pub acme: Arc<crate::acme::Store>,
}

/// What a request handler knows about its client connection.
pub struct ConnInfo {
    /// The process-wide state: one handle serves the whole connection task.
    pub shared: Arc<Shared>,
    pub listener: Arc<str>,
    pub client_ip: IpAddr,
    /// `client_ip` as a header value, formatted once per connection.
    pub client_ip_value: HeaderValue,
    pub tls: bool,
    pub state: Arc<ConnState>,
    /// Holds the listener's drain open: an upgrade takes it into its tunnel,
    /// so shutdown waits for tunnels too (up to `shutdown_timeout`).
    pub drain: std::sync::Mutex<Option<hyper_util::server::graceful::Watcher>>,
}

impl ConnInfo {
    fn take_drain(&self) -> Option<hyper_util::server::graceful::Watcher> {
        self.drain.lock().ok().and_then(|mut w| w.take())
    }
}

/// Answers one request. Never fails.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let active = conn.state.begin();
    // hyper's own mark for a request it holds a pending upgrade for (an
    // HTTP/1.1 Upgrade header, or CONNECT): see `ConnState::saw_upgrade`.
    if req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some()
    {
        conn.state.saw_upgrade();
    }
    let http1 = req.version() < Version::HTTP_2;
    let request_id = headers::request_id(req.headers_mut());
    let table = shared.table.load_full();
    // The one client IP for hashing, rate limiting and logs.
    let client_ip = match table.listener(&conn.listener) {
        Some(lt) => {
            client_ip::effective(conn.client_ip, req.headers(), &lt.settings.trusted_proxies)
        }
        None => conn.client_ip,
    };
    let mut access = table
        .config
        .global
        .access_log
        .then(|| AccessRecord::begin(started, &conn.listener, client_ip, &req));
    let mut served = None;
    let (mut resp, stats) = match table.listener(&conn.listener) {
        None => (error_response(&ProxyError::Draining, &request_id), None),
        Some(lt) => {
            let route = match check_request(&conn, &lt.settings, &req) {
                Err(e) => Err(e),
                Ok(()) => lt
                    .route(request_host(&req), req.uri().path())
                    .ok_or(ProxyError::NoRoute),
            };
            match route {
                Err(e) => (error_response(&e, &request_id), Some(&lt.no_route)),
                Ok(route) => {
                    let limited = match &route.rate_limit {
                        Some(l) => l.check(client_ip).await.err(),
                        None => None,
                    };
                    let r = match limited {
                        Some(secs) => {
                            route.stats.metrics.rate_limited.inc();
                            Err(ProxyError::RateLimited(secs))
                        }
                        None => {
                            // Boxed: the forwarding future is most of a
                            // request's state (~8 KB); inline, hyper would
                            // keep a slot that size in every connection,
                            // idle ones included.
                            Box::pin(proxy(
                                &route.upstream,
                                &conn,
                                client_ip,
                                &lt.settings,
                                &request_id,
                                req,
                                &mut served,
                            ))
                            .await
                        }
                    };
                    let resp = r.unwrap_or_else(|e| {
                        if let ProxyError::Connect(_) | ProxyError::UpstreamReset(_) | ProxyError::UpstreamRefused(_) | ProxyError::UpstreamProtocol(_) | ProxyError::UpstreamFraming(_) = &e {
                            tracing::debug!(upstream = %route.upstream.name, error = %e, source = ?std::error::Error::source(&e), "upstream failure");
                        }
                        error_response(&e, &request_id)
                    });
                    (resp, Some(&route.stats))
                }
            }
        }
    };
    let status = resp.status();
    if let Some(stats) = stats {
        stats.metrics.requests.inc(status.as_u16());
        stats
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
    }
    if let Some(a) = access.as_mut() {
        let upstream = stats.map(|s| Arc::from(s.upstream.as_str()));
        a.respond(status.as_u16(), upstream, served, &request_id);
    }
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    if shared.shutting_down.load(Ordering::Relaxed) && http1 {
        // Shutting down: a request that reached us on a live connection is
        // served, and the connection closes after it (HTTP/2 is told by
        // the listener's GOAWAY instead), as nginx and HAProxy do.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The tunnel task holds its own accounting; the response ends here.
        drop(active);
        return resp.map(|b| b.with_access(access));
    }
    resp.map(|b| b.with_guard(active).with_access(access))
}

/// Checks that do not need a route: head size and field count, framing and
/// Host. The admin listener makes them too.
pub fn check_request(
    conn: &ConnInfo,
    settings: &crate::config::ListenerConfig,
    req: &Request<Incoming>,
) -> Result<(), ProxyError> {
    let head = req.uri().path_and_query().map_or(0, |p| p.as_str().len()) + 16;
    // hyper counts HTTP/1 fields itself; this holds HTTP/2 to the same limit.
    if head + headers::head_size(req.headers()) > settings.max_header_bytes
        || req.headers().len() > settings.max_header_count
    {
        return Err(ProxyError::HeadersTooLarge);
    }
    // hyper lets Transfer-Encoding override Content-Length (and closes);
    // SPEC wants 400 for the pair, seen in the raw head by TimedIo.
    if req.headers().contains_key(TRANSFER_ENCODING) && conn.state.head_had_content_length() {
        return Err(ProxyError::BadRequest(
            "Content-Length with Transfer-Encoding",
        ));
    }
    validate::check(req)
}

async fn proxy(
    upstream: &Arc<Upstream>,
    conn: &ConnInfo,
    client_ip: IpAddr,
    settings: &crate::config::ListenerConfig,
    request_id: &HeaderValue,
    req: Request<Incoming>,
    served: &mut Option<std::net::SocketAddr>,
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
    // Only HTTP/1.1 clients wait for 100 Continue (hyper's HTTP/2 server
    // sends none), and only an HTTP/1 server can send one to relay.
    let expect = parts.version == Version::HTTP_11
        && !upstream.config.protocol.is_h2()
        && expect::expects_continue(&parts.headers);
    let client_upgrade =
        upgrade.then(|| hyper::upgrade::on(Request::from_parts(parts.clone(), ())));
    let ctx = upstream.pick_context(&parts, client_ip);
    let sticky = upstream.sticky_target(&parts.headers);
    rewrite_request(&mut parts, conn, request_id, upgrade);
    if !upstream.config.protocol.is_h2()
        && !hyper::body::Body::is_end_stream(&incoming)
        && !parts.headers.contains_key(CONTENT_LENGTH)
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
    let replay = hyper::body::Body::is_end_stream(&incoming).then(|| parts.clone());
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
        match forward::send(server, &upstream.config, req, replay_fn).await {
            Ok((resp, mut conn1)) => {
                if gate.as_ref().is_some_and(|g| g.refuse()) {
                    // Answered on the head: the body was never sent, so the
                    // connection is mid-request and can't be reused.
                    conn1 = None;
                }
                // A 101 is only ever relayed to a WebSocket upgrade the
                // client asked for (and Fulcrum forwarded); any other is an
                // attempt to open a tunnel past routing (h2c smuggling).
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none() {
                    drop((resp, conn1));
                    server.metrics.error(crate::metrics::ErrorKind::Protocol);
                    return Err(invalid_response(
                        upstream,
                        server,
                        ProxyError::UpstreamFraming(
                            "101 Switching Protocols to a request that asked for no upgrade",
                        ),
                    ));
                }
                // hyper's HTTP/1 client enforces the count itself; HTTP/2
                // responses are held to the same limit here.
                if resp.headers().len() > upstream.config.max_header_count {
                    drop((resp, conn1));
                    server.metrics.error(crate::metrics::ErrorKind::Protocol);
                    passive::record(upstream, server, true);
                    return Err(invalid_response(
                        upstream,
                        server,
                        ProxyError::UpstreamFraming("more header fields than max_header_count"),
                    ));
                }
                // hyper lets Transfer-Encoding win over Content-Length in a
                // response; forwarding the pair would leave the client to
                // guess. 502, and the connection is dropped, not pooled.
                if resp.headers().contains_key(TRANSFER_ENCODING)
                    && resp.headers().contains_key(CONTENT_LENGTH)
                {
                    drop((resp, conn1));
                    let e = ProxyError::UpstreamFraming("Content-Length with Transfer-Encoding");
                    server.metrics.error(crate::metrics::ErrorKind::Protocol);
                    passive::record(upstream, server, true);
                    return Err(invalid_response(upstream, server, e));
                }
                let latency = sent_at.elapsed();
                server
                    .metrics
                    .response_seconds
                    .observe(latency.as_secs_f64());
                server.metrics.responses.inc(resp.status().as_u16());
                passive::record(upstream, server, resp.status().is_server_error());
                ewma::record_response(server, latency, resp.status().as_u16(), resp.headers());
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
            Err(f) => {
                let e = body_error(&flags).unwrap_or(f.error);
                if !matches!(e, ProxyError::UpstreamRefused(_)) {
                    server.load.ewma.penalize();
                }
                let e = match e {
                    ProxyError::UpstreamProtocol(_) => invalid_response(upstream, server, e),
                    e => e,
                };
                if let Some(kind) = e.upstream_kind() {
                    server.metrics.error(kind);
                    passive::record(upstream, server, true);
                }
                let next = match f.request {
                    Some(r) if e.never_sent() => Some(r),
                    _ if matches!(
                        e,
                        ProxyError::UpstreamReset(_) | ProxyError::ResponseTimeout
                    ) && !flags.started()
                        && idempotent =>
                    {
                        replay.as_ref().map(|_| rebuild())
                    }
                    _ if matches!(e, ProxyError::UpstreamRefused(_)) => {
                        replay.as_ref().map(|_| rebuild())
                    }
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
    }
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
    headers::strip_hop_by_hop(h, upgrade);
    // Set after the hop-by-hop removal, so a client cannot strip Fulcrum's
    // own headers by naming them in `Connection`.
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
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

/// What a client's upgrade request carries into its tunnel.
struct TunnelHold {
    upgrade: hyper::upgrade::OnUpgrade,
    /// Keeps the client connection marked busy, so its header/idle timer
    /// never fires inside the tunnel.
    active: ActiveGuard,
    /// Keeps the listener's graceful drain waiting for the tunnel.
    drain: Option<hyper_util::server::graceful::Watcher>,
}

fn finish_response(
    resp: Response<Incoming>,
    in_flight: InFlight,
    conn: Option<pool::Upstream1>,
    client_upgrade: Option<TunnelHold>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(hold) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(Response::from_parts(parts.clone(), ()));
            headers::strip_hop_by_hop(&mut parts.headers, true);
            tokio::spawn(tunnel(hold, upstream_upgrade, in_flight, conn));
            return Response::from_parts(parts, ProxyBody::full(bytes::Bytes::new()));
        }
    }
    headers::strip_hop_by_hop(&mut parts.headers, false);
    let finish = Finish { in_flight, conn };
    Response::from_parts(parts, ProxyBody::upstream(UpstreamBody::new(body, finish)))
}

/// Copies bytes both ways between an upgraded client and server connection
/// (with backpressure: each side is read only as fast as the other takes
/// it), counting as in flight until both sides are done.
async fn tunnel(
    hold: TunnelHold,
    upstream: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
    _conn: Option<pool::Upstream1>,
) {
    let TunnelHold {
        upgrade: client,
        active,
        drain,
    } = hold;
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(server = %in_flight.server().label, error = %e, "tunnel ended with error");
    }
    drop(in_flight);
    drop(active);
    drop(drain);
}

/// The one place a `ProxyError` becomes a response.
pub fn error_response(e: &ProxyError, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(e.body()));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    if e.closes_connection() {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if let ProxyError::RateLimited(secs) = e {
        h.insert(RETRY_AFTER, HeaderValue::from(*secs));
    }
    resp
}
