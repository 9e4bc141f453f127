//! Sending one request to one server: pooled connection or a new one,
//! connect and response timeouts, error classification. HTTP/1.1 over TCP or
//! TLS uses the per-server keep-alive pool; `h2`/`h2c` share one multiplexed
//! connection per server.

use std::sync::Arc;

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::backend::ServerState;
use crate::config::UpstreamConfig;
use crate::proxy::body::ReqBody;
use crate::proxy::error::ProxyError;
use crate::proxy::pool::{Sender2, Upstream1};
use crate::proxy::upstream_tls;

/// A failed attempt; `request` is handed back when it was never sent, so the
/// caller may try another server with it.
pub struct Failed {
    pub error: ProxyError,
    pub request: Option<Request<ReqBody>>,
}

/// Sends `req` to `server` and waits for the response head. The HTTP/1.1
/// connection comes back with the response, to be pooled when its body ends
/// (`None` for HTTP/2, whose connection is shared). `replay` rebuilds the
/// request when it is safe to send again (bodiless and idempotent).
pub async fn send(
    server: &Arc<ServerState>,
    cfg: &UpstreamConfig,
    req: Request<ReqBody>,
    replay: Option<&(dyn Fn() -> Request<ReqBody> + Sync)>,
) -> Result<(Response<Incoming>, Option<Upstream1>), Failed> {
    if cfg.protocol.is_h2() {
        // Boxed, like every rarely taken path here: the request future lives
        // in a slot hyper keeps per client connection, so what sits inline
        // is paid by every idle connection.
        return Box::pin(send_h2(server, cfg, req)).await.map(|r| (r, None));
    }
    send_h1(server, cfg, req, replay)
        .await
        .map(|(r, c)| (r, Some(c)))
}

async fn send_h1(
    server: &Arc<ServerState>,
    cfg: &UpstreamConfig,
    mut req: Request<ReqBody>,
    replay: Option<&(dyn Fn() -> Request<ReqBody> + Sync)>,
) -> Result<(Response<Incoming>, Upstream1), Failed> {
    while let Some(mut conn) = server.pool.checkout(cfg.pool_idle_timeout, cfg.protocol) {
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
    let mut conn = match Box::pin(connect_h1(server, cfg)).await {
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
    timed(cfg, conn.sender.try_send_request(req)).await
}

/// Waits up to `response_timeout` for the response head of one send (HTTP/1
/// or HTTP/2: both hand the request back when it never left).
async fn timed(
    cfg: &UpstreamConfig,
    send: impl std::future::Future<Output = Result<Response<Incoming>, TrySendError<Request<ReqBody>>>>,
) -> Result<Response<Incoming>, Failed> {
    match tokio::time::timeout(cfg.response_timeout, send).await {
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

/// Sends on the server's shared HTTP/2 connection, opening it if needed.
async fn send_h2(
    server: &Arc<ServerState>,
    cfg: &UpstreamConfig,
    mut req: Request<ReqBody>,
) -> Result<Response<Incoming>, Failed> {
    to_h2_request(&mut req, cfg, server);
    if let Some(mut sender) = server.pool.h2(cfg.protocol) {
        match exchange_h2(&mut sender, cfg, req).await {
            Ok(resp) => return Ok(resp),
            // The connection went away (GOAWAY, close) before the request
            // was taken: a fresh connection gets it.
            Err(Failed {
                request: Some(r), ..
            }) => {
                server.pool.clear_h2();
                req = r;
            }
            Err(f) => return Err(f),
        }
    }
    let mut sender = match Box::pin(connect_h2(server, cfg)).await {
        Ok(s) => s,
        Err(error) => {
            return Err(Failed {
                error,
                request: Some(req),
            })
        }
    };
    server.pool.set_h2(sender.clone(), cfg.protocol);
    exchange_h2(&mut sender, cfg, req).await
}

async fn exchange_h2(
    sender: &mut Sender2,
    cfg: &UpstreamConfig,
    req: Request<ReqBody>,
) -> Result<Response<Incoming>, Failed> {
    timed(cfg, sender.try_send_request(req)).await
}

/// HTTP/2 wants the scheme and authority as pseudo-headers: the request
/// gets an absolute URI built from its Host (or the server address).
fn to_h2_request(req: &mut Request<ReqBody>, cfg: &UpstreamConfig, server: &ServerState) {
    *req.version_mut() = Version::HTTP_2;
    let scheme = if cfg.protocol.uses_tls() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let authority = req
        .headers()
        .get(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(server.label.as_str()).ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(scheme);
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// TCP connect (and TLS handshake, when the protocol uses TLS), bounded by
/// `connect_timeout` as a whole.
async fn open<F, Fut, T>(
    server: &ServerState,
    cfg: &UpstreamConfig,
    then: F,
) -> Result<T, ProxyError>
where
    F: FnOnce(Stream) -> Fut,
    Fut: std::future::Future<Output = Result<T, ProxyError>>,
{
    let stream = tokio::time::timeout(cfg.connect_timeout, async {
        let tcp = TcpStream::connect(server.addr)
            .await
            .map_err(ProxyError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &cfg.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let name = cfg.tls_name_for(server.addr).ok_or_else(|| {
            ProxyError::UpstreamTls(std::io::Error::other("no TLS server name for this server"))
        })?;
        let tls_stream = upstream_tls::connect(tls.client.clone(), name, tcp)
            .await
            .map_err(ProxyError::UpstreamTls)?;
        if cfg.protocol.is_h2() && tls_stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ProxyError::UpstreamTls(std::io::Error::other(
                "server did not negotiate h2 with ALPN",
            )));
        }
        Ok(Stream::Tls(Box::new(tls_stream)))
    })
    .await
    .map_err(|_| ProxyError::ConnectTimeout)??;
    then(stream).await
}

/// A connection to a server: plain TCP or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn connect_h2(server: &ServerState, cfg: &UpstreamConfig) -> Result<Sender2, ProxyError> {
    open(server, cfg, |s| async move {
        match s {
            Stream::Plain(s) => handshake_h2(server, s).await,
            Stream::Tls(s) => handshake_h2(server, s).await,
        }
    })
    .await
}

async fn handshake_h2<S>(server: &ServerState, stream: S) -> Result<Sender2, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ProxyError::Handshake)?;
    let upstream = server.upstream.clone();
    let addr = server.addr;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(upstream = %upstream, server = %addr, error = %e, "upstream h2 connection ended with error");
        }
    });
    Ok(sender)
}

async fn connect_h1(server: &ServerState, cfg: &UpstreamConfig) -> Result<Upstream1, ProxyError> {
    open(server, cfg, |s| async move {
        match s {
            Stream::Plain(s) => handshake_h1(server, cfg, s).await,
            Stream::Tls(s) => handshake_h1(server, cfg, s).await,
        }
    })
    .await
}

async fn handshake_h1<S>(
    server: &ServerState,
    cfg: &UpstreamConfig,
    stream: S,
) -> Result<Upstream1, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
        protocol: cfg.protocol,
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
