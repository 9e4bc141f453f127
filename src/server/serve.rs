//! Serving one accepted connection: which HTTP it speaks, hyper's settings
//! for it, and the HTTP/1 loop that parks idle keep-alive connections.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::conn::{TimedIo, H2_PREFACE};
use super::proxy_protocol::PrefixedIo;
use super::Handler;
use crate::config::ListenerConfig;
use crate::proxy::{self, ConnInfo};

/// What serving one connection needs besides its stream and settings.
pub(super) struct Serving<H> {
    pub(super) handler: H,
    pub(super) info: Arc<ConnInfo>,
    /// Keeps the listener's drain waiting for this connection.
    pub(super) watcher: Watcher,
    pub(super) stop: watch::Receiver<bool>,
}

/// Which HTTP a connection speaks. Decided before hyper sees the bytes
/// (peeked, or by ALPN) so that hyper reads the first request whole:
/// hyper-util's auto-detection hands its first 24 bytes back as a short
/// read, which doubles every connection's read buffer to 16 KiB. `Detect`
/// (a first segment too short to tell, TLS without ALPN) falls back to it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Proto {
    H1,
    H2,
    Detect,
}

impl Proto {
    pub(super) fn of(first: &[u8]) -> Proto {
        let n = first.len().min(H2_PREFACE.len());
        if first[..n] != H2_PREFACE[..n] {
            Proto::H1
        } else if n == H2_PREFACE.len() {
            Proto::H2
        } else {
            Proto::Detect
        }
    }
}

/// Peeks at the first bytes without consuming them; `None` when the peer
/// sends nothing within `timeout` or closes.
pub(super) async fn sniff(stream: &TcpStream, timeout: Duration) -> Option<Proto> {
    let mut buf = [0u8; 24];
    match tokio::time::timeout(timeout, stream.peek(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(Proto::of(&buf[..n])),
        _ => None,
    }
}

/// HTTP/1 settings, for hyper's builder and hyper-util's alike.
macro_rules! http1_settings {
    ($b:expr, $s:expr) => {
        $b.timer(TokioTimer::new())
            // Our TimedIo enforces header and idle timeouts and answers 408.
            .header_read_timeout(None)
            .max_buf_size($s.max_header_bytes.max(8192))
            // A client may shut its write side after the request and still
            // get the response (RFC 9112 §9.6), as with HAProxy without
            // `abortonclose`. It also spares hyper a read while the request
            // is in flight, which costs a fresh 8 KiB buffer per request
            // (the old one is still shared with the request head).
            .half_close(true)
            .writev(false);
        // hyper's default is 100, parsed on the stack; any other count
        // costs a heap allocation per request, so it is only set when asked.
        if $s.max_header_count != 100 {
            $b.max_headers($s.max_header_count);
        }
    };
}

/// HTTP/2 settings, for hyper's builder and hyper-util's alike.
macro_rules! http2_settings {
    ($b:expr, $s:expr) => {
        $b.timer(TokioTimer::new())
            // Flood limits (Rapid Reset CVE-2023-44487, CONTINUATION floods):
            // bounded streams, header list, pending and locally caused resets.
            .max_concurrent_streams(100)
            .max_header_list_size($s.max_header_bytes as u32)
            .max_pending_accept_reset_streams(Some(50))
            .max_local_error_reset_streams(Some(256))
            // Bounded per-stream and per-connection buffering.
            .initial_stream_window_size(256 * 1024)
            .initial_connection_window_size(1024 * 1024)
            .max_send_buf_size(256 * 1024)
            .max_frame_size(16 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10))
    };
}

/// Serves HTTP/1.1 and HTTP/2 on one accepted (and possibly decrypted)
/// connection. `TimedIo` wraps the plain-text stream, so its 408 is written
/// through TLS like any other response.
#[allow(clippy::manual_async_fn)] // on purpose, see inside
pub(super) fn serve<S, H: Handler>(
    stream: S,
    proto: Proto,
    settings: &ListenerConfig,
    serving: Serving<H>,
) -> impl Future<Output = ()> + Send + '_
where
    S: AsyncRead + AsyncWrite + ParkSocket + Unpin + Send + 'static,
{
    let Serving {
        handler,
        info,
        watcher,
        mut stop,
    } = serving;
    let park = proto == Proto::H1 && stream.socket().is_some();
    // The connection is built inside the future, in one expression: what a
    // future is made from stays in its state even after it is moved on
    // (rust-lang/rust#62958), and the stream is smaller than the connection
    // made of it.
    async move {
        let io = TokioIo::new(TimedIo::new(
            stream,
            info.state.clone(),
            settings.header_read_timeout,
            settings.idle_timeout,
            park,
        ));
        // Kept for counting what hyper answers itself (a parse error).
        let (conn_handler, conn_info) = (handler.clone(), info.clone());
        let svc = service_fn(move |req| {
            let fut = handler.clone().call(info.clone(), req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let result = match proto {
            Proto::H1 => {
                let r = serve_h1(io, svc, settings, &mut stop).await;
                drop(watcher);
                r
            }
            Proto::H2 => {
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                http2_settings!(b, settings);
                Box::pin(watcher.watch(b.serve_connection(io, svc)))
                    .await
                    .map_err(Into::into)
            }
            Proto::Detect => {
                let mut b = auto::Builder::new(TokioExecutor::new());
                http1_settings!(b.http1(), settings);
                http2_settings!(b.http2(), settings);
                let conn = b.serve_connection_with_upgrades(io, svc).into_owned();
                Box::pin(watcher.watch(conn)).await
            }
        };
        let status = if conn_info.state.sent_408() {
            Some(408)
        } else {
            result.as_ref().err().and_then(|e| automatic_status(&**e))
        };
        if let Some(code) = status {
            conn_handler.unparsed(&conn_info, code);
        }
        if let Err(e) = result {
            tracing::trace!(error = %e, "client connection ended with error");
        }
    }
}

/// The status hyper answered on its own when a request head did not parse
/// (its `on_error`: 431 too large, 414 URI too long, else 400), found in a
/// connection's error.
fn automatic_status(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                let uri = h.to_string().contains("URI");
                return Some(if uri { 414 } else { 431 });
            }
            // An HTTP/2 preface on an HTTP/1 connection gets no answer.
            if h.is_parse() && !h.to_string().contains("HTTP/2") {
                return Some(400);
            }
            return None;
        }
        cur = e.source();
    }
    None
}

/// Counts (and logs, with the access log on) a response Fulcrum sent for a
/// request that never reached the handler, under `upstream=""`.
pub(super) fn count_unparsed(shared: &proxy::Shared, info: &proxy::ConnInfo, code: u16) {
    let table = shared.table.load();
    if let Some(lt) = table.listener(&info.listener) {
        lt.no_route.metrics.requests.inc(code);
        if table.config.global.access_log {
            drop(crate::access_log::AccessRecord::unparsed(
                &info.listener,
                info.client_ip,
                code,
            ));
        }
    }
}

/// A stream a parked connection can wait on without hyper: the TCP socket
/// when nothing sits above it that could hold bytes of its own.
pub(super) trait ParkSocket {
    fn socket(&self) -> Option<&TcpStream>;
}

impl ParkSocket for PrefixedIo<TcpStream> {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.get_ref())
    }
}

/// TLS is not parked: rustls may hold decrypted bytes the socket's
/// readiness does not show.
impl<S> ParkSocket for tokio_rustls::server::TlsStream<S> {
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// HTTP/1.1 on one connection, parked between requests when `TimedIo`
/// allows it: each busy period gets a fresh hyper connection, and an idle
/// one holds only its socket, its timers and the service handle.
///
/// The parked state is what every idle connection pays for, so it is kept
/// lean: an `async` block rather than an `async fn`, which would keep a
/// second copy of its arguments in its state (rust-lang/rust#62958), and
/// nothing from hyper's connection (its box, its parts) lives across the
/// park.
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn serve_h1<'a, S, F>(
    mut io: TokioIo<TimedIo<S>>,
    mut svc: F,
    settings: &'a ListenerConfig,
    stop: &'a mut watch::Receiver<bool>,
) -> impl Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send + 'a
where
    S: AsyncRead + AsyncWrite + ParkSocket + Unpin + Send + 'static,
    F: hyper::service::HttpService<hyper::body::Incoming, ResBody = proxy::body::ProxyBody>
        + Unpin
        + Send
        + 'static,
    F::Future: Send + 'static,
    F::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async move {
        let mut b = hyper::server::conn::http1::Builder::new();
        http1_settings!(b, settings);
        loop {
            let r;
            let read_buf;
            // Taken apart inside the block: nothing of hyper's connection
            // (its box, its parts) may stay in this future's parked state.
            (r, io, read_buf, svc) = {
                // Boxed so that a parked connection does not keep a slot of
                // its size.
                let mut conn = Box::new(b.serve_connection(io, svc).with_upgrades());
                // hyper-util's Watcher takes no HTTP/1 upgradeable
                // connection: the same graceful shutdown, driven by the
                // listener's stop.
                let r = tokio::select! {
                    r = &mut *conn => r,
                    _ = stop.changed() => {
                        std::pin::Pin::new(&mut *conn).graceful_shutdown();
                        (&mut *conn).await
                    }
                };
                match conn.into_parts() {
                    Some(p) => (r, p.io, p.read_buf, p.service),
                    // Upgraded: the tunnel has the socket.
                    None => return r.map_err(Into::into),
                }
            };
            // Not parked (hyper ended it), or parked just as the listener
            // stopped (a stop already seen by the select above won't fire
            // again).
            if !io.inner_mut().unpark(read_buf) || *stop.borrow() {
                return r.map_err(Into::into);
            }
            if io.inner().has_unread() {
                continue;
            }
            let (stream, idle_timeout) = io.inner_mut().parked_wait();
            let Some(socket) = stream.socket() else {
                return Ok(());
            };
            tokio::select! {
                r = socket.readable() => if r.is_err() { return Ok(()) },
                // Idle past idle_timeout, or draining: closed quietly, as
                // hyper closes an idle keep-alive connection.
                _ = idle_timeout => return Ok(()),
                _ = stop.changed() => return Ok(()),
            }
        }
    }
}
