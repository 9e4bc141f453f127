//! The request handler: route, pick, rewrite, forward, account.
//!
//! `handle` never fails: a request ends in a response from the server, an
//! answer a phase chose, or a `ProxyError` turned into a response in one
//! place (`answer`), and every response carries X-Request-Id.

pub mod answer;
mod attempt;
mod auth;
pub mod body;
pub mod client_ip;
mod compress;
mod context;
pub mod error;
mod policy;
pub use crate::req_body::expect;
pub mod forward;
pub mod headers;
pub use crate::pool;
mod tunnel;
pub mod validate;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{HeaderValue, TRANSFER_ENCODING};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::backend::{Registry, RouteStats};
use crate::config::policy::{Encoding, ErrorPages};
use crate::conn_state::ConnState;
use crate::metrics::Rejection;
use crate::routing::{ListenerTable, Route, RoutingTable, Target};
use answer::{error_response, Stop};
use body::ProxyBody;
use context::RequestCtx;
use error::ProxyError;

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
    /// Where this connection's listener sits in the snapshot's list, so a
    /// request finds it without a search (re-found after a reload moves it).
    pub listener_hint: AtomicUsize,
}

impl ConnInfo {
    /// This connection's listener in `table`, if the table still has it.
    fn listener_in<'t>(&self, table: &'t RoutingTable) -> Option<&'t ListenerTable> {
        let hint = self.listener_hint.load(Ordering::Relaxed);
        if let Some(lt) = table.listeners.get(hint) {
            if *lt.name == *self.listener {
                return Some(lt);
            }
        }
        let i = table
            .listeners
            .iter()
            .position(|l| *l.name == *self.listener)?;
        self.listener_hint.store(i, Ordering::Relaxed);
        table.listeners.get(i)
    }

    fn take_drain(&self) -> Option<hyper_util::server::graceful::Watcher> {
        self.drain.lock().ok().and_then(|mut w| w.take())
    }
}

/// Answers one request, in phases: accept → route → request policy →
/// action (forward: pick, send, retry; or the route's own answer) →
/// response policy → log and account. A phase that ends the request early
/// hands `finish` its answer. Never fails.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let table = shared.table.load_full();
    let listener = conn.listener_in(&table);
    let mut ctx = RequestCtx::accept(&conn, listener, &table, &mut req);
    let global_pages = &table.config.global.error_pages;
    let Some(lt) = listener else {
        // A reload removed this connection's listener: it is draining.
        let resp = error_response(&ProxyError::Draining);
        return ctx.finish(&shared, policy::error_page(global_pages, resp), None);
    };
    // ACME http-01 comes before routing, on plain listeners only (so a
    // listener that only redirects still answers the CA).
    if !conn.tls {
        if let Some(answer) = answer::acme_http01(&shared, &req) {
            return ctx.finish(&shared, answer, Some(&lt.no_route));
        }
    }
    let route = match route(&conn, lt, &req) {
        Ok(route) => route,
        Err(e) => {
            let resp = policy::error_page(global_pages, error_response(&e));
            return ctx.finish(&shared, resp, Some(&lt.no_route));
        }
    };
    let pages = route
        .policy
        .as_ref()
        .and_then(|p| p.config.error_pages.as_ref())
        .unwrap_or(global_pages);
    // A route with neither policy nor rate limit skips the phase's future.
    let checked = if route.policy.is_some() || route.rate_limit.is_some() {
        request_policy(&ctx, &conn, route, &mut req).await
    } else {
        Ok(())
    };
    let (resp, stats) = match checked {
        Err(Stop::Error(e)) => (policy::error_page(pages, error_response(&e)), &*route.stats),
        Err(Stop::Answer(resp)) => (policy::error_page(pages, resp), &*route.stats),
        Err(Stop::Relay(resp)) => (resp, &*route.stats),
        Ok(()) => action(&table, &conn, lt, route, pages, &mut ctx, req).await,
    };
    route.names.metrics.requests.inc(resp.status().as_u16());
    ctx.finish(&shared, resp, Some(stats))
}

/// The route phase: request checks that need no route, then the first
/// route that matches.
fn route<'t>(
    conn: &ConnInfo,
    lt: &'t ListenerTable,
    req: &Request<Incoming>,
) -> Result<&'t Route, ProxyError> {
    check_request(conn, &lt.settings, req)?;
    lt.route(req).ok_or(ProxyError::NoRoute)
}

/// The request policy phase, in SPEC's order: deny/allow → rate_limit →
/// basic_auth → forward_auth.
async fn request_policy(
    ctx: &RequestCtx,
    conn: &ConnInfo,
    route: &Route,
    req: &mut Request<Incoming>,
) -> Result<(), Stop> {
    if let Some(p) = &route.policy {
        if !policy::access_allowed(&p.config, ctx.client_ip) {
            route.names.metrics.rejected(Rejection::Deny);
            return Err(Stop::Error(ProxyError::Forbidden));
        }
    }
    if let Some(limit) = &route.rate_limit {
        if let Err(secs) = limit.check(ctx.client_ip).await {
            route.stats.metrics.rate_limited.inc();
            return Err(Stop::Answer(answer::too_many_requests(secs)));
        }
    }
    let Some(p) = &route.policy else {
        return Ok(());
    };
    // Boxed: only routes with auth pay for these futures' state.
    if let Some(basic) = &p.basic_auth {
        Box::pin(auth::basic_auth(basic, req, &route.names)).await?;
    }
    if let Some(fwd) = &p.forward_auth {
        Box::pin(auth::forward_auth(
            fwd,
            req,
            ctx.client_ip,
            conn.tls,
            &route.names,
        ))
        .await?;
    }
    Ok(())
}

/// The action phase and the response policy: the route's own answer, or
/// the request forwarded (after rewrites) and its response with header
/// rules and compression applied. Returns the series to count it under.
async fn action<'r>(
    table: &'r RoutingTable,
    conn: &ConnInfo,
    lt: &ListenerTable,
    route: &'r Route,
    pages: &ErrorPages,
    ctx: &mut RequestCtx,
    mut req: Request<Incoming>,
) -> (Response<ProxyBody>, &'r RouteStats) {
    let (upstream, stats) = match &route.target {
        Target::Upstream(u) => (u, &*route.stats),
        Target::Split(split) => {
            let arm = split.pick(req.headers(), ctx.client_ip);
            (&table.upstreams[arm.upstream], &*arm.stats)
        }
        Target::Redirect(rd) => {
            let resp = policy::redirect(rd, &route.path_prefix, &req, conn.tls)
                .unwrap_or_else(|e| policy::error_page(pages, error_response(&e)));
            return (resp, &*route.stats);
        }
        Target::Respond(rs) => {
            let resp = policy::respond(rs);
            let enc = route.policy.as_ref().and_then(|p| {
                let c = p.config.compress.as_ref()?;
                compress::negotiate(c, &req)
            });
            return (response_policy(route, enc, resp), &*route.stats);
        }
    };
    let mut enc = None;
    if let Some(p) = &route.policy {
        policy::rewrite_path(&p.config, &route.path_prefix, &mut req);
        if let Some(rules) = &p.config.request_headers {
            policy::apply_header_rules(rules, req.headers_mut());
        }
        enc = p
            .config
            .compress
            .as_ref()
            .and_then(|c| compress::negotiate(c, &req));
    }
    // Boxed: the forwarding future is most of a request's state (~8 KB);
    // inline, hyper would keep a slot that size in every connection,
    // idle ones included.
    let forwarded = Box::pin(attempt::forward(
        upstream,
        conn,
        ctx.client_ip,
        &lt.settings,
        &ctx.request_id,
        req,
        &mut ctx.served,
    ))
    .await;
    let resp = match forwarded {
        Ok(resp) => resp,
        Err(e) => {
            if e.upstream_kind().is_some() {
                tracing::debug!(upstream = %upstream.name, error = %e, source = ?std::error::Error::source(&e), "upstream failure");
            }
            return (policy::error_page(pages, error_response(&e)), stats);
        }
    };
    if route.policy.is_none() || resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return (resp, stats);
    }
    (response_policy(route, enc, resp), stats)
}

/// Response header rules, then compression.
fn response_policy(
    route: &Route,
    enc: Option<Encoding>,
    mut resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let Some(p) = &route.policy else {
        return resp;
    };
    if let Some(rules) = &p.config.response_headers {
        policy::apply_header_rules(rules, resp.headers_mut());
    }
    if let (Some(cfg), Some(enc)) = (&p.config.compress, enc) {
        let (compressed, used) = compress::apply(cfg, enc, resp);
        if let Some(used) = used {
            route.names.metrics.compressed(used.as_str());
        }
        return compressed;
    }
    resp
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
