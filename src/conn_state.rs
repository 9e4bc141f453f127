//! What a client connection and the requests on it share: how many requests
//! are active, and what the head scanner saw. The server's connection task
//! reads it to decide when a connection may be parked or closed; the proxy
//! holds an `ActiveGuard` until a response body ends. A leaf, so the proxy
//! need not depend on the server.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// Shared between a connection's I/O wrapper and its request handler.
#[derive(Default)]
pub struct ConnState {
    pub(crate) active: AtomicU32,
    pub(crate) finished: AtomicU32,
    /// `finished + 1` as of the request head in which a Content-Length line
    /// was seen (0: none); see `head_scan`.
    pub(crate) content_length_head: AtomicU32,
    /// Set once a request could upgrade (an HTTP/1.1 `Upgrade` header, or
    /// CONNECT): hyper then holds a pending upgrade until the connection
    /// ends and hands it the socket (even after a plain response), so this
    /// connection is never parked.
    pub(crate) upgrade_seen: AtomicBool,
    /// Set when `TimedIo` answered 408 to a slow request head.
    pub(crate) sent_408: AtomicBool,
}

impl ConnState {
    /// Marks a request active until the returned guard drops (response done).
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Whether the head of the request now being handled had a
    /// Content-Length line (HTTP/1; hyper hides it when Transfer-Encoding
    /// is present too).
    pub fn head_had_content_length(&self) -> bool {
        self.content_length_head.load(Ordering::Relaxed)
            == self.finished.load(Ordering::Relaxed).wrapping_add(1)
    }

    /// Records a request hyper keeps a pending upgrade for (see
    /// `upgrade_seen`).
    pub fn saw_upgrade(&self) {
        self.upgrade_seen.store(true, Ordering::Relaxed);
    }

    /// Whether this connection ended with our own 408 for a slow head.
    pub fn sent_408(&self) -> bool {
        self.sent_408.load(Ordering::Relaxed)
    }

    pub(crate) fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
}

pub struct ActiveGuard(Arc<ConnState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
