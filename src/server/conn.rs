//! Per-connection I/O: the wrapper that enforces `header_read_timeout`
//! (answering 408, which hyper's own timer does not), `idle_timeout`, and a
//! write-stall timeout, with one lazily re-armed timer per connection rather
//! than one per request.
//!
//! Parking (plain HTTP/1): when a keep-alive connection is idle (response
//! written, nothing buffered, socket empty) a read reports end-of-stream,
//! hyper finishes, and `serve_h1` keeps only the socket and this wrapper:
//! hyper's 8 KiB buffers and state are freed while the client thinks. A
//! fresh hyper connection costs about a quarter of a request, so only a
//! connection's first request parks at once (many carry one and idle); a
//! reused one parks when its timer fires while idle. The measurements and
//! the rules tried and dropped are in `benches/compare/README.md`.
//!
//! A client that stops reading its response is closed after `idle_timeout`
//! without progress; backpressure bounds what it pins to hyper's write
//! buffer and the socket buffers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::head_scan::HeadScan;
use crate::conn_state::ConnState;

pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Our answer to a request head that never completed; like every response,
/// it carries a request id (SPEC), made for it since no request had one.
fn response_408() -> Vec<u8> {
    let id = crate::proxy::headers::new_request_id();
    let mut r = Vec::with_capacity(160);
    r.extend_from_slice(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n");
    r.extend_from_slice(b"content-length: 16\r\nconnection: close\r\nx-request-id: ");
    r.extend_from_slice(id.as_bytes());
    r.extend_from_slice(b"\r\n\r\nrequest timeout\n");
    r
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Keep-alive, between requests.
    Idle,
}

pub struct TimedIo<S> {
    inner: S,
    state: Arc<ConnState>,
    header_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
    phase_start: Instant,
    head_bytes: bool,
    seen_finished: u32,
    first_read: bool,
    h2: bool,
    sleep: Pin<Box<Sleep>>,
    /// When the current run of pending writes began.
    write_stall: Option<Instant>,
    write_sleep: Option<Pin<Box<Sleep>>>,
    scan: HeadScan,
    /// `finished` when `scan` began its head.
    scan_epoch: u32,
    /// Whether an idle connection may be parked (plain HTTP/1 only).
    park: bool,
    /// Set when a read reported end-of-stream to park the connection.
    parked: bool,
    /// Whether the client has sent a second request on this connection.
    reused: bool,
    /// Bytes hyper had read but not parsed when it was parked (a pipelined
    /// request), handed out again before the socket is read.
    unread: Bytes,
}

impl<S> TimedIo<S> {
    /// `park`: whether idle keep-alive periods may park the connection (see
    /// the module docs); for HTTP/1 over plain TCP, where readiness can be
    /// awaited on the socket itself.
    pub fn new(
        inner: S,
        state: Arc<ConnState>,
        header_timeout: Duration,
        idle_timeout: Duration,
        park: bool,
    ) -> Self {
        let now = Instant::now();
        TimedIo {
            inner,
            state,
            header_timeout,
            idle_timeout,
            phase: Phase::Head,
            phase_start: now,
            head_bytes: false,
            seen_finished: 0,
            first_read: true,
            h2: false,
            sleep: Box::pin(tokio::time::sleep_until(now + header_timeout)),
            write_stall: None,
            write_sleep: None,
            scan: HeadScan::default(),
            scan_epoch: 0,
            park,
            parked: false,
            reused: false,
            unread: Bytes::new(),
        }
    }

    /// Whether the connection just ended because it was parked; clears the
    /// mark, and takes back what hyper had read but not parsed.
    pub fn unpark(&mut self, unread: Bytes) -> bool {
        // An empty remainder still holds hyper's whole read buffer.
        self.unread = if unread.is_empty() {
            Bytes::new()
        } else {
            unread
        };
        std::mem::take(&mut self.parked)
    }

    /// What a parked connection waits on: the stream's readiness, and the
    /// connection's own timer set to its `idle_timeout` (not a second timer
    /// in every parked connection's state).
    pub fn parked_wait(&mut self) -> (&S, Pin<&mut Sleep>) {
        let deadline = self.phase_start + self.idle_timeout;
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        (&self.inner, self.sleep.as_mut())
    }

    /// Whether bytes are waiting to be handed out before the socket is read.
    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// Write-side bookkeeping: progress clears the stall; a stall longer
    /// than `idle_timeout` fails the write, which closes the connection.
    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if !r.is_pending() {
            self.write_stall = None;
            return r;
        }
        let deadline = *self.write_stall.get_or_insert_with(Instant::now) + self.idle_timeout;
        let sleep = self
            .write_sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading: no write progress within idle_timeout",
            )));
        }
        Poll::Pending
    }

    /// Idle with everything written: nothing of hyper's is needed until
    /// the client sends again.
    fn can_park(&self) -> bool {
        self.park
            && self.phase == Phase::Idle
            && self.write_stall.is_none()
            && !self.state.upgrade_seen.load(Ordering::Relaxed)
    }

    /// End-of-stream to hyper, which hands the socket back to be parked.
    fn park_now(&mut self) -> Poll<io::Result<()>> {
        self.parked = true;
        Poll::Ready(Ok(()))
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = if this.unread.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            Poll::Ready(Ok(()))
        };
        match read {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    if this.first_read {
                        this.first_read = false;
                        let n = got.len().min(H2_PREFACE.len());
                        this.h2 = got[..n] == H2_PREFACE[..n];
                    }
                    if this.state.active() == 0 && !this.h2 {
                        let finished = this.state.finished.load(Ordering::Relaxed);
                        if finished != this.scan_epoch {
                            this.scan_epoch = finished;
                            this.scan = HeadScan::default();
                        }
                        if !this.scan.done() && this.scan.feed(got) {
                            this.state
                                .content_length_head
                                .store(finished.wrapping_add(1), Ordering::Relaxed);
                        }
                        if this.phase == Phase::Idle {
                            this.reused = true;
                            this.phase = Phase::Head;
                            this.phase_start = Instant::now();
                        }
                        this.head_bytes = true;
                    }
                }
                return Poll::Ready(Ok(()));
            }
            other => {
                if !matches!(other, Poll::Pending) {
                    return other;
                }
            }
        }
        if this.state.active() > 0 {
            return Poll::Pending;
        }
        let finished = this.state.finished.load(Ordering::Relaxed);
        if finished != this.seen_finished {
            this.seen_finished = finished;
            this.phase = Phase::Idle;
            this.head_bytes = false;
            this.phase_start = Instant::now();
        }
        if !this.reused && this.can_park() {
            return this.park_now();
        }
        let limit = if this.phase == Phase::Head && !this.h2 {
            this.header_timeout
        } else {
            this.idle_timeout
        };
        let deadline = this.phase_start + limit;
        if this.sleep.deadline() > deadline {
            this.sleep.as_mut().reset(deadline);
        }
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if this.can_park() {
                // Gone quiet since: park (the parked wait has its own timer).
                return this.park_now();
            }
            if Instant::now() < deadline {
                // Armed for an earlier phase; move it, lazily, to the real deadline.
                this.sleep.as_mut().reset(deadline);
                continue;
            }
            if this.phase == Phase::Head && this.head_bytes && !this.h2 {
                // Best effort: the head is incomplete, so nothing else is being written.
                this.state.sent_408.store(true, Ordering::Relaxed);
                let _ = Pin::new(&mut this.inner).poll_write(cx, &response_408());
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received within header_read_timeout",
                )));
            }
            // Idle (or a silent new connection): close quietly, as at EOF.
            return Poll::Ready(Ok(()));
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            // hyper closing after our end-of-stream: the socket stays open.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
