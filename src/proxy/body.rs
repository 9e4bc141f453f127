//! Body wrappers. Bodies stream frame by frame in both directions; these
//! wrappers only count, time and clean up.
//!
//! - `ReqBody`: the client's body on its way upstream; enforces
//!   `max_request_body` and `body_read_timeout`.
//! - `ProxyBody`: what the client receives; for proxied responses it holds
//!   the in-flight guard and the pooled connection until the body ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::access_log::AccessRecord;
use crate::backend::InFlight;
use crate::conn_state::ActiveGuard;
use crate::proxy::expect::Continue;
use crate::proxy::pool::Upstream1;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body stopped, shared with the request handler so it can
/// answer 413/408 instead of a generic upstream error. A bodiless request
/// shares nothing (`None`): nothing can go wrong with its body, and that
/// saves an allocation on most requests.
#[derive(Clone, Default)]
pub struct BodyFlags(Option<Arc<AtomicU8>>);

impl BodyFlags {
    const TOO_LARGE: u8 = 1;
    const TIMED_OUT: u8 = 2;
    const STARTED: u8 = 4;
    const CLIENT_ERROR: u8 = 8;

    fn shared() -> BodyFlags {
        BodyFlags(Some(Arc::new(AtomicU8::new(0))))
    }
    fn get(&self, bit: u8) -> bool {
        self.0
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed) & bit != 0)
    }
    pub fn too_large(&self) -> bool {
        self.get(Self::TOO_LARGE)
    }
    pub fn timed_out(&self) -> bool {
        self.get(Self::TIMED_OUT)
    }
    /// Whether any part of the body was read (then it can't be replayed).
    pub fn started(&self) -> bool {
        self.get(Self::STARTED)
    }
    /// The client's body itself failed (invalid chunking, connection lost):
    /// the client's fault, never the server's.
    pub fn client_error(&self) -> bool {
        self.get(Self::CLIENT_ERROR)
    }
    fn set(&self, bit: u8) {
        if let Some(f) = &self.0 {
            f.fetch_or(bit, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyError(&'static str);

/// The client's request body, streamed upstream.
///
/// A bodiless request (most) carries `None`: nothing to count or time, and
/// the whole request stays small. hyper's client queues each request in a
/// per-connection channel that allocates 32 request slots at a time, so the
/// request's size is paid 32 times over by every upstream connection.
pub struct ReqBody(Option<Box<Streaming>>);

struct Streaming {
    inner: Incoming,
    remaining: u64,
    timeout: Duration,
    last_progress: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    flags: BodyFlags,
    /// `Expect: 100-continue`: the body is not read until this opens.
    expect: Option<(Arc<Continue>, Pin<Box<Sleep>>)>,
}

impl ReqBody {
    pub fn new(inner: Incoming, limit: Option<u64>, timeout: Duration) -> (ReqBody, BodyFlags) {
        if inner.is_end_stream() {
            // Nothing left to read: an HTTP/1 bodiless request's body is
            // hyper's empty one, an HTTP/2 one has its stream end already.
            return (ReqBody::empty(), BodyFlags::default());
        }
        let flags = BodyFlags::shared();
        let body = Streaming {
            inner,
            remaining: limit.unwrap_or(u64::MAX),
            timeout,
            last_progress: Instant::now(),
            sleep: None,
            flags: flags.clone(),
            expect: None,
        };
        (ReqBody(Some(Box::new(body))), flags)
    }

    /// Holds the body back until the returned gate opens (see `expect`).
    /// `None` for a bodiless request: there is nothing to hold.
    pub fn expect_continue(&mut self) -> Option<Arc<Continue>> {
        let body = self.0.as_deref_mut()?;
        let gate = Arc::new(Continue::default());
        body.expect = Some((
            gate.clone(),
            Box::pin(tokio::time::sleep(crate::proxy::expect::WAIT)),
        ));
        Some(gate)
    }

    /// An empty body (a bodiless request, or one replayed on another server).
    pub fn empty() -> ReqBody {
        ReqBody(None)
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(this) = self.0.as_deref_mut() else {
            return Poll::Ready(None);
        };
        if let Some((gate, wait)) = &mut this.expect {
            let open = match gate.poll(cx) {
                Poll::Ready(open) => open,
                Poll::Pending => {
                    ready!(wait.as_mut().poll(cx));
                    gate.open();
                    true
                }
            };
            if !open {
                // The server answered on the head: the body is not wanted,
                // and this upstream connection is not reused.
                return Poll::Ready(Some(Err(Box::new(BodyError(
                    "server answered before 100 Continue",
                )))));
            }
            this.expect = None;
            this.last_progress = Instant::now();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.flags.set(BodyFlags::STARTED);
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.flags.set(BodyFlags::TOO_LARGE);
                        return Poll::Ready(Some(Err(Box::new(BodyError(
                            "request body too large",
                        )))));
                    }
                    this.remaining -= n;
                }
                this.last_progress = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.flags.set(BodyFlags::CLIENT_ERROR);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // The timer is armed once and only moved when it fires early,
                // so a fast body costs no timer work per frame.
                let deadline = this.last_progress + this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                loop {
                    ready!(sleep.as_mut().poll(cx));
                    let deadline = this.last_progress + this.timeout;
                    if Instant::now() >= deadline {
                        this.flags.set(BodyFlags::TIMED_OUT);
                        return Poll::Ready(Some(Err(Box::new(BodyError("request body timeout")))));
                    }
                    sleep.as_mut().reset(deadline);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or(SizeHint::with_exact(0), |b| b.inner.size_hint())
    }
}

/// What to release when a proxied response body ends.
pub struct Finish {
    pub in_flight: InFlight,
    /// The upstream connection, returned to its pool only after a clean end.
    pub conn: Option<Upstream1>,
}

/// A response body from a server, on its way to the client.
pub struct UpstreamBody {
    inner: Option<Incoming>,
    finish: Option<Finish>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, finish: Finish) -> UpstreamBody {
        UpstreamBody {
            inner: Some(inner),
            finish: Some(finish),
        }
    }

    fn complete(&mut self) {
        if let Some(f) = self.finish.take() {
            if let Some(conn) = f.conn {
                f.in_flight.server().pool.checkin(conn);
            }
        }
    }
}

/// A client that goes away mid-response should not cost us the upstream
/// connection: read the rest (bounded) in the background, then pool it.
const DRAIN_MAX_BYTES: usize = 1 << 20;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let (Some(finish), Some(mut inner)) = (self.finish.take(), self.inner.take()) else {
            return;
        };
        let Some(conn) = finish.conn else { return };
        if inner.is_end_stream() {
            finish.in_flight.server().pool.checkin(conn);
            return;
        }
        let server = finish.in_flight.server().clone();
        drop(finish.in_flight);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let drained = tokio::time::timeout(DRAIN_MAX_TIME, async {
                let mut seen = 0usize;
                while let Some(frame) = inner.frame().await {
                    match frame {
                        Ok(f) => {
                            seen += f.data_ref().map_or(0, |d| d.len());
                            if seen > DRAIN_MAX_BYTES {
                                return false;
                            }
                        }
                        Err(_) => return false,
                    }
                }
                true
            })
            .await;
            if drained == Ok(true) {
                server.pool.checkin(conn);
            }
        });
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

/// The body of every response Fulcrum sends to a client.
pub struct ProxyBody {
    kind: Kind,
    /// Marks the client connection busy until the response is done.
    _active: Option<ActiveGuard>,
    /// The access log line, emitted when this body is dropped.
    access: Option<Box<AccessRecord>>,
    /// The server broke off mid-body.
    broken: bool,
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(b.into())),
            _active: None,
            access: None,
            broken: false,
        }
    }

    pub fn upstream(b: UpstreamBody) -> ProxyBody {
        ProxyBody {
            kind: Kind::Upstream(b),
            _active: None,
            access: None,
            broken: false,
        }
    }

    pub fn with_guard(mut self, g: ActiveGuard) -> ProxyBody {
        self._active = Some(g);
        self
    }

    /// Attaches the request's access log record (emitted when the body ends).
    pub fn with_access(mut self, a: Option<Box<AccessRecord>>) -> ProxyBody {
        self.access = a;
        self
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if self.access.is_some() && !self.broken && self.is_end_stream() {
            if let Some(a) = self.access.as_mut() {
                a.complete();
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Upstream(u) => {
                let Some(inner) = u.inner.as_mut() else {
                    return Poll::Ready(None);
                };
                match ready!(Pin::new(inner).poll_frame(cx)) {
                    Some(Ok(f)) => Poll::Ready(Some(Ok(f))),
                    Some(Err(e)) => {
                        // The server broke off mid-body: drop the connection and
                        // make the client see an aborted response, not a clean end.
                        u.finish.take();
                        u.inner.take();
                        this.broken = true;
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                    None => {
                        u.complete();
                        Poll::Ready(None)
                    }
                }
            }
        };
        if let (Some(a), Poll::Ready(Some(Ok(f)))) = (this.access.as_mut(), &frame) {
            if let Some(d) = f.data_ref() {
                a.add_bytes(d.len());
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Kind::Upstream(u) => u.inner.as_ref().is_none_or(|i| i.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(u) => u
                .inner
                .as_ref()
                .map_or(SizeHint::with_exact(0), |i| i.size_hint()),
        }
    }
}
