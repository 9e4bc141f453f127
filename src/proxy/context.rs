//! One request's state through its phases: what the accept phase learns
//! (request id, effective client IP, the access-log record, the connection's
//! busy mark) and the last phase, which logs and accounts for the response.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::headers::{self, X_REQUEST_ID};
use super::{client_ip, ConnInfo, Shared};
use crate::access_log::AccessRecord;
use crate::backend::RouteStats;
use crate::conn_state::ActiveGuard;
use crate::routing::{ListenerTable, RoutingTable};

pub(super) struct RequestCtx {
    started: Instant,
    /// Marks the connection busy until the response body ends.
    active: ActiveGuard,
    http1: bool,
    pub(super) request_id: HeaderValue,
    /// The one client IP for hashing, rate limiting and logs.
    pub(super) client_ip: IpAddr,
    access: Option<Box<AccessRecord>>,
    /// The server that answered (or the last one tried).
    pub(super) served: Option<SocketAddr>,
}

impl RequestCtx {
    /// The accept phase: what every request gets before routing.
    pub(super) fn accept(
        conn: &ConnInfo,
        listener: Option<&ListenerTable>,
        table: &RoutingTable,
        req: &mut Request<Incoming>,
    ) -> RequestCtx {
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
        let request_id = headers::request_id(req.headers_mut());
        let client_ip = match listener {
            Some(lt) => {
                client_ip::effective(conn.client_ip, req.headers(), &lt.settings.trusted_proxies)
            }
            None => conn.client_ip,
        };
        let access = table
            .config
            .global
            .access_log
            .then(|| AccessRecord::begin(started, &conn.listener, client_ip, req));
        RequestCtx {
            started,
            active,
            http1: req.version() < Version::HTTP_2,
            request_id,
            client_ip,
            access,
            served: None,
        }
    }

    /// The last phase: count and log the response (under `stats`, the
    /// route's or the listener's `upstream=""`), add X-Request-Id, and tie
    /// the connection's busy mark and the log line to the response body.
    pub(super) fn finish(
        mut self,
        shared: &Shared,
        mut resp: Response<ProxyBody>,
        stats: Option<&RouteStats>,
    ) -> Response<ProxyBody> {
        let status = resp.status();
        if let Some(stats) = stats {
            stats.metrics.requests.inc(status.as_u16());
            stats
                .metrics
                .duration
                .observe(self.started.elapsed().as_secs_f64());
        }
        if let Some(a) = self.access.as_mut() {
            let upstream = stats.map(|s| Arc::from(s.upstream.as_str()));
            a.respond(status.as_u16(), upstream, self.served, &self.request_id);
        }
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), self.request_id);
        if self.http1 && shared.shutting_down.load(Ordering::Relaxed) {
            // Shutting down: a request that reached us on a live connection
            // is served, and the connection closes after it (HTTP/2 is told
            // by the listener's GOAWAY instead), as nginx and HAProxy do.
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The tunnel task holds its own accounting; the response ends here.
            drop(self.active);
            return resp.map(|b| b.with_access(self.access));
        }
        resp.map(|b| b.with_guard(self.active).with_access(self.access))
    }
}
