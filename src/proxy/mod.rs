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

use crate::backend::Registry;
use crate::conn_state::ConnState;
use crate::routing::{request_host, ListenerTable, Route, RoutingTable};
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
/// forward (pick, send, retry) → response policy → log and account. A phase
/// that ends the request early hands `finish` its answer. Never fails.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let table = shared.table.load_full();
    let listener = conn.listener_in(&table);
    let mut ctx = RequestCtx::accept(&conn, listener, &table, &mut req);
    let Some(lt) = listener else {
        // A reload removed this connection's listener: it is draining.
        let resp = error_response(&ProxyError::Draining);
        return ctx.finish(&shared, resp, None);
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
        Err(e) => return ctx.finish(&shared, error_response(&e), Some(&lt.no_route)),
    };
    let resp = match request_policy(&ctx, route).await {
        Err(stop) => stop.into_response(),
        // Boxed: the forwarding future is most of a request's state (~8 KB);
        // inline, hyper would keep a slot that size in every connection,
        // idle ones included.
        Ok(()) => Box::pin(attempt::forward(
            &route.upstream,
            &conn,
            ctx.client_ip,
            &lt.settings,
            &ctx.request_id,
            req,
            &mut ctx.served,
        ))
        .await
        .unwrap_or_else(|e| {
            if e.upstream_kind().is_some() {
                tracing::debug!(upstream = %route.upstream.name, error = %e, source = ?std::error::Error::source(&e), "upstream failure");
            }
            error_response(&e)
        }),
    };
    // Response policy: nothing yet (route policy's header rules and
    // compression go here).
    ctx.finish(&shared, resp, Some(&route.stats))
}

/// The route phase: request checks that need no route, then the first
/// route that matches.
fn route<'t>(
    conn: &ConnInfo,
    lt: &'t ListenerTable,
    req: &Request<Incoming>,
) -> Result<&'t Route, ProxyError> {
    check_request(conn, &lt.settings, req)?;
    lt.route(request_host(req), req.uri().path())
        .ok_or(ProxyError::NoRoute)
}

/// The request policy phase: what a route decides before forwarding
/// (today its rate limit).
async fn request_policy(ctx: &RequestCtx, route: &Route) -> Result<(), Stop> {
    if let Some(limit) = &route.rate_limit {
        if let Err(secs) = limit.check(ctx.client_ip).await {
            route.stats.metrics.rate_limited.inc();
            return Err(Stop::Answer(answer::too_many_requests(secs)));
        }
    }
    Ok(())
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
