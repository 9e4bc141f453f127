//! Sending one request to one server: pooled connection or a new one,
//! connect and response timeouts, error classification.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::backend::ServerState;
use crate::config::UpstreamConfig;
use crate::proxy::body::ReqBody;
use crate::proxy::error::ProxyError;
use crate::proxy::pool::Upstream1;

/// A failed attempt; `request` is handed back when it was never sent, so the
/// caller may try another server with it.
pub struct Failed {
    pub error: ProxyError,
    pub request: Option<Request<ReqBody>>,
}

/// Sends `req` to `server` and waits for the response head. `replay`
/// rebuilds the request when it is safe to send again (bodiless and
/// idempotent).
pub async fn send(
    server: &Arc<ServerState>,
    cfg: &UpstreamConfig,
    mut req: Request<ReqBody>,
    replay: Option<&(dyn Fn() -> Request<ReqBody> + Sync)>,
) -> Result<(Response<Incoming>, Upstream1), Failed> {
    while let Some(mut conn) = server.pool.checkout(cfg.pool_idle_timeout) {
        if conn.sender.ready().await.is_err() {
            continue;
        }
        match exchange(&mut conn, cfg, req).await {
            Ok(resp) => return Ok((resp, conn)),
            // The pooled connection died before our request went out: a
            // fresh one gets it, no retry budget involved.
            Err(Failed {
                request: Some(r), ..
            }) => req = r,
            // The server closed the idle connection as we reused it (the
            // keep-alive race): a replayable request goes on a fresh one.
            Err(Failed {
                error: ProxyError::UpstreamReset(e),
                request: None,
            }) if replay.is_some() => {
                tracing::debug!(server = %server.addr, error = %e, "pooled connection closed under us; resending");
                req = replay.map(|f| f()).expect("checked");
                break;
            }
            Err(f) => return Err(f),
        }
    }
    let mut conn = match connect(server, cfg).await {
        Ok(c) => c,
        Err(error) => {
            return Err(Failed {
                error,
                request: Some(req),
            })
        }
    };
    let resp = exchange(&mut conn, cfg, req).await?;
    Ok((resp, conn))
}

async fn exchange(
    conn: &mut Upstream1,
    cfg: &UpstreamConfig,
    req: Request<ReqBody>,
) -> Result<Response<Incoming>, Failed> {
    match tokio::time::timeout(cfg.response_timeout, conn.sender.try_send_request(req)).await {
        Err(_) => Err(Failed {
            error: ProxyError::ResponseTimeout,
            request: None,
        }),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(mut e)) => {
            let request = e.take_message();
            Err(Failed {
                error: classify(e.into_error()),
                request,
            })
        }
    }
}

async fn connect(server: &ServerState, cfg: &UpstreamConfig) -> Result<Upstream1, ProxyError> {
    let stream =
        match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(server.addr)).await {
            Err(_) => return Err(ProxyError::ConnectTimeout),
            Ok(Err(e)) => return Err(ProxyError::Connect(e)),
            Ok(Ok(s)) => s,
        };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ProxyError::Handshake)?;
    let upstream = server.upstream.clone();
    let addr = server.addr;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(upstream = %upstream, server = %addr, error = %e, "upstream connection ended with error");
        }
    });
    Ok(Upstream1 {
        sender,
        max_idle: cfg.pool_max_idle_per_server,
    })
}

/// Maps a client-side hyper error to what it means for the request.
fn classify(e: hyper::Error) -> ProxyError {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        ProxyError::UpstreamProtocol(e)
    } else {
        ProxyError::UpstreamReset(e)
    }
}
