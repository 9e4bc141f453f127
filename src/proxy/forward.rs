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
use crate::proxy::pool::{Sender2, Upstream1, H2};
use crate::tls::client as upstream_tls;

/// A failed attempt; `request` is handed back when it was never sent, so the
/// caller may try another server with it.
pub struct Failed {
    pub error: ProxyError,
    pub request: Option<Request<ReqBody>>,
}

/// A bodiless request's head, to send it again: `idempotent` says whether
/// that is safe after the server may have seen it.
#[derive(Clone, Copy)]
pub struct Replay<'a> {
    pub rebuild: &'a (dyn Fn() -> Request<ReqBody> + Sync),
    pub idempotent: bool,
}

/// Sends `req` to `server` and waits for the response head. The HTTP/1.1
/// connection comes back with the response, to be pooled when its body ends
/// (`None` for HTTP/2, whose connection is shared). `replay` rebuilds a
/// bodiless request.
pub async fn send(
    server: &Arc<ServerState>,
    cfg: &UpstreamConfig,
    req: Request<ReqBody>,
    replay: Option<Replay<'_>>,
) -> Result<(Response<Incoming>, Option<Upstream1>), Failed> {
    if cfg.protocol.is_h2() {
        // Boxed, like every rarely taken path here: the request future lives
        // in a slot hyper keeps per client connection, so what sits inline
        // is paid by every idle connection.
        return Box::pin(send_h2(server, cfg, req, replay))
            .await
            .map(|r| (r, None));
    }
    let replay = replay.filter(|r| r.idempotent).map(|r| r.rebuild);
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
/// A connection that goes away (GOAWAY: hypercorn after 1,000 requests,
/// gRPC's `max_connection_age`) is replaced once, and the streams it
/// refused unprocessed are sent again on the replacement.
async fn send_h2(
    server: &Arc<ServerState>,
    cfg: &UpstreamConfig,
    mut req: Request<ReqBody>,
    replay: Option<Replay<'_>>,
) -> Result<Response<Incoming>, Failed> {
    // Bounds the loop: each pass follows a connection that went away. A
    // burst larger than what one connection takes before its GOAWAY is
    // refused in part again on the next, so this is not 2 or 3; a server
    // that refuses everything still gets a 502 quickly.
    const ATTEMPTS: usize = 32;
    for attempt in 1..=ATTEMPTS {
        to_h2_request(&mut req, cfg, server);
        let (mut sender, generation) = match h2_sender(server, cfg).await {
            Ok(s) => s,
            Err(error) => {
                return Err(Failed {
                    error,
                    request: Some(req),
                })
            }
        };
        match exchange_h2(&mut sender, cfg, req).await {
            // The connection went away (GOAWAY, close) before the request
            // was taken: the next connection gets it.
            Err(Failed {
                request: Some(r),
                error,
            }) => {
                if attempt == ATTEMPTS {
                    return Err(Failed {
                        error,
                        request: Some(r),
                    });
                }
                if server.pool.clear_h2(generation) {
                    log_goaway(server, &error);
                }
                req = r;
            }
            Err(Failed {
                error: ProxyError::UpstreamRefused(e),
                request: None,
            }) => match replay {
                Some(r) if attempt < ATTEMPTS => {
                    if server.pool.clear_h2(generation) {
                        log_goaway(server, &e);
                    }
                    req = (r.rebuild)();
                }
                _ => {
                    tracing::debug!(
                        attempt,
                        replayable = replay.is_some(),
                        "refused stream: giving up"
                    );
                    return Err(Failed {
                        error: ProxyError::UpstreamRefused(e),
                        request: None,
                    });
                }
            },
            other => return other,
        }
    }
    unreachable!("the last attempt returns")
}

/// Once per connection: the server is ending it (GOAWAY, or a close); what
/// it had not processed goes to the next connection.
fn log_goaway(server: &ServerState, why: &dyn std::fmt::Display) {
    tracing::info!(upstream = %server.upstream, server = %server.addr, reason = %why, "upstream HTTP/2 connection going away (GOAWAY); unprocessed requests go to a new connection");
}

/// The server's shared HTTP/2 connection and its generation. Requests that
/// find none open one at a time: the rest wait (at most `connect_timeout`)
/// and share it, so a cold start or a GOAWAY opens one connection, not one
/// per waiting request.
async fn h2_sender(
    server: &ServerState,
    cfg: &UpstreamConfig,
) -> Result<(Sender2, u64), ProxyError> {
    match server.pool.h2_lookup(cfg.protocol) {
        H2::Open(s, g) => return Ok((s, g)),
        H2::Closed => log_goaway(server, &"closed by the server"),
        H2::None => {}
    }
    let _turn = tokio::time::timeout(cfg.connect_timeout, server.pool.h2_connecting().lock())
        .await
        .ok();
    if let Some(s) = server.pool.h2(cfg.protocol) {
        return Ok(s);
    }
    let sender = Box::pin(connect_h2(server, cfg)).await?;
    let generation = server.pool.set_h2(sender.clone(), cfg.protocol);
    Ok((sender, generation))
}

async fn exchange_h2(
    sender: &mut Sender2,
    cfg: &UpstreamConfig,
    req: Request<ReqBody>,
) -> Result<Response<Incoming>, Failed> {
    timed(cfg, sender.try_send_request(req))
        .await
        .map_err(|f| match f.error {
            // Queued for a connection that ended before opening its stream
            // (hyper: canceled, or "dispatch gone"): never on the wire.
            ProxyError::UpstreamReset(e) if e.is_canceled() || dispatch_gone(&e) => Failed {
                error: ProxyError::UpstreamRefused(e),
                request: f.request,
            },
            error => Failed {
                error,
                request: f.request,
            },
        })
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
    // `:authority` only, no `host` (as Envoy, HAProxy and Go send): RFC
    // 9113 allows both when they agree, but nginx up to 1.29.0 answers the
    // pair with 400 "client sent duplicate host header".
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| req.uri().authority().cloned())
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
    let mut b = hyper::client::conn::http1::Builder::new();
    b.writev(false);
    // Any count but hyper's default of 100 costs an allocation per response.
    if cfg.max_header_count != 100 {
        b.max_headers(cfg.max_header_count);
    }
    let (sender, conn) = b
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
    } else if refused_unprocessed(&e) {
        ProxyError::UpstreamRefused(e)
    } else {
        ProxyError::UpstreamReset(e)
    }
}

/// hyper's "runtime dropped the dispatch task": the request was queued for a
/// connection whose task ended. hyper has no accessor for this user error,
/// and other user errors (a failing request body) must not count as it.
fn dispatch_gone(e: &hyper::Error) -> bool {
    e.is_user() && e.to_string().contains("dispatch task")
}

/// An HTTP/2 stream the server never processed: one above the last-stream-id
/// of a graceful (NO_ERROR) GOAWAY, or reset with REFUSED_STREAM. A GOAWAY
/// with an error code is not taken as proof, since h2 then fails streams
/// below its last-stream-id with the same error.
fn refused_unprocessed(e: &hyper::Error) -> bool {
    let mut cur = std::error::Error::source(e);
    while let Some(s) = cur {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return h.is_remote()
                && (h.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (h.is_go_away() && h.reason() == Some(h2::Reason::NO_ERROR)));
        }
        cur = s.source();
    }
    false
}
