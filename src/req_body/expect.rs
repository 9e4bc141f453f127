//! `Expect: 100-continue` carried through to the server.
//!
//! hyper's server answers `100 Continue` the moment the request body is
//! first read, and Fulcrum reads it as soon as the request goes upstream, so
//! a client would upload its whole body even when the server refuses it on
//! its head. Instead the body waits behind a `Continue` gate: the server's
//! own `100 Continue` opens it (and only then does hyper send ours), a final
//! answer first refuses it (the body is never read, the client sends none),
//! and a server that says nothing within `WAIT` (an HTTP/1.0 server, or one
//! that ignores the expectation) gets the body anyway, as RFC 9110 §10.1.1
//! lets a client do.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::header::EXPECT;
use http::HeaderMap;

/// How long the body waits for the server's interim answer.
pub const WAIT: Duration = Duration::from_secs(1);

const WAITING: u8 = 0;
const OPEN: u8 = 1;
const REFUSED: u8 = 2;

/// Whether the request carries `Expect: 100-continue`.
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Opened by the server's `100 Continue`, refused by its final answer.
#[derive(Default)]
pub struct Continue {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl Continue {
    /// The server asked for the body (or the wait is over).
    pub fn open(&self) {
        self.settle(OPEN);
    }

    /// The server answered before asking for the body; true when the body
    /// was still waiting (so it was never sent, and the upstream connection
    /// can't be reused).
    pub fn refuse(&self) -> bool {
        self.settle(REFUSED)
    }

    fn settle(&self, to: u8) -> bool {
        let won = self
            .state
            .compare_exchange(WAITING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
                w.wake();
            }
        }
        won
    }

    /// Ready(true) once open, Ready(false) once refused.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<bool> {
        match self.state.load(Ordering::Acquire) {
            OPEN => return Poll::Ready(true),
            REFUSED => return Poll::Ready(false),
            _ => {}
        }
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        // Settled between the load and the registration: don't sleep on it.
        match self.state.load(Ordering::Acquire) {
            OPEN => Poll::Ready(true),
            REFUSED => Poll::Ready(false),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_once() {
        let c = Continue::default();
        c.open();
        assert!(!c.refuse(), "already open");
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(c.poll(&mut cx), Poll::Ready(true));
        let c = Continue::default();
        assert_eq!(c.poll(&mut cx), Poll::Pending);
        assert!(c.refuse());
        assert_eq!(c.poll(&mut cx), Poll::Ready(false));
    }

    #[test]
    fn only_100_continue() {
        let mut h = HeaderMap::new();
        assert!(!expects_continue(&h));
        h.insert(EXPECT, "100-Continue".parse().unwrap());
        assert!(expects_continue(&h));
        h.insert(EXPECT, "something-else".parse().unwrap());
        assert!(!expects_continue(&h));
    }
}
