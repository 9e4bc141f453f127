//! The response body on its way to the client (`ProxyBody`): for proxied
//! responses it holds the in-flight guard and the pooled connection until
//! the body ends. The request body going the other way is `req_body`.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::compress::Compressor;
use crate::access_log::AccessRecord;
use crate::backend::InFlight;
use crate::conn_state::ActiveGuard;
use crate::pool::Upstream1;

pub use crate::req_body::{BodyFlags, BoxError, ReqBody};

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
    /// `compress`: the inner body goes out encoded.
    Compressed(Box<Compressed>),
}

struct Compressed {
    encoder: Compressor,
    inner: Kind,
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

    /// Sends the body through `encoder` (the headers are the caller's).
    pub(super) fn compressed(mut self, encoder: Compressor) -> ProxyBody {
        let inner = std::mem::replace(&mut self.kind, Kind::Full(None));
        self.kind = Kind::Compressed(Box::new(Compressed { encoder, inner }));
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
        let frame = poll_kind(&mut this.kind, &mut this.broken, cx);
        if let (Some(a), Poll::Ready(Some(Ok(f)))) = (this.access.as_mut(), &frame) {
            if let Some(d) = f.data_ref() {
                a.add_bytes(d.len());
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
    }
}

impl Kind {
    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Kind::Upstream(u) => u.inner.as_ref().is_none_or(|i| i.is_end_stream()),
            Kind::Compressed(c) => c.encoder.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(u) => u
                .inner
                .as_ref()
                .map_or(SizeHint::with_exact(0), |i| i.size_hint()),
            Kind::Compressed(_) => SizeHint::default(),
        }
    }
}

/// The body's next frame; a server error mid-body sets `broken`.
fn poll_kind(
    kind: &mut Kind,
    broken: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    match kind {
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
                    *broken = true;
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                None => {
                    u.complete();
                    Poll::Ready(None)
                }
            }
        }
        Kind::Compressed(c) => {
            let Compressed { encoder, inner } = &mut **c;
            encoder.poll_frame(cx, |cx| {
                poll_kind(inner, broken, cx).map(|f| (f, inner.is_end_stream()))
            })
        }
    }
}
