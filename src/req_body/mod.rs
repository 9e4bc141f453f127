//! The client's request body on its way to a server (`ReqBody`): streamed
//! frame by frame, it enforces `max_request_body` and `body_read_timeout`,
//! and holds back for `Expect: 100-continue` (see `expect`). A leaf below
//! the proxy and the connection pool, whose handles carry it.

pub mod expect;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use expect::Continue;

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
    #[inline]
    fn get(&self, bit: u8) -> bool {
        self.0
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed) & bit != 0)
    }
    #[inline]
    pub fn too_large(&self) -> bool {
        self.get(Self::TOO_LARGE)
    }
    #[inline]
    pub fn timed_out(&self) -> bool {
        self.get(Self::TIMED_OUT)
    }
    /// Whether any part of the body was read (then it can't be replayed).
    #[inline]
    pub fn started(&self) -> bool {
        self.get(Self::STARTED)
    }
    /// The client's body itself failed (invalid chunking, connection lost):
    /// the client's fault, never the server's.
    #[inline]
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
    #[inline]
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
        body.expect = Some((gate.clone(), Box::pin(tokio::time::sleep(expect::WAIT))));
        Some(gate)
    }

    /// An empty body (a bodiless request, or one replayed on another server).
    #[inline]
    pub fn empty() -> ReqBody {
        ReqBody(None)
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
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

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.inner.is_end_stream())
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or(SizeHint::with_exact(0), |b| b.inner.size_hint())
    }
}
