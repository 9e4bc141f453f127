//! A forwarded response on its way to the client: hop-by-hop headers off,
//! and either a streamed body that releases the server when it ends, or,
//! for a WebSocket upgrade the server accepted, a byte tunnel.

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::body::{Finish, ProxyBody, UpstreamBody};
use super::headers;
use super::pool::Upstream1;
use crate::backend::InFlight;
use crate::conn_state::ActiveGuard;

/// What a client's upgrade request carries into its tunnel.
pub(super) struct TunnelHold {
    pub(super) upgrade: hyper::upgrade::OnUpgrade,
    /// Keeps the client connection marked busy, so its header/idle timer
    /// never fires inside the tunnel.
    pub(super) active: ActiveGuard,
    /// Keeps the listener's graceful drain waiting for the tunnel.
    pub(super) drain: Option<hyper_util::server::graceful::Watcher>,
}

pub(super) fn finish_response(
    resp: Response<Incoming>,
    in_flight: InFlight,
    conn: Option<Upstream1>,
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
    _conn: Option<Upstream1>,
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
