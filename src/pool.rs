//! Per-server keep-alive pool of HTTP/1.1 connections.
//!
//! A connection is a `SendRequest` handle (its I/O runs in its own task). It
//! is taken out for one exchange and put back only when the response body has
//! ended cleanly, so a pooled handle is always ready for the next request.
//! Most recently used first: warm connections stay warm, the rest age out.
//!
//! HTTP/2 upstreams (`h2`, `h2c`) multiplex: one shared connection per server,
//! whose cloned `SendRequest` handles serve any number of concurrent requests.

use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use crate::config::UpstreamProtocol;
use crate::req_body::ReqBody;

/// One upstream HTTP/1.1 connection handle.
pub struct Upstream1 {
    pub sender: SendRequest<ReqBody>,
    /// Pool settings of the upstream this was opened for.
    pub max_idle: usize,
    /// Plain or TLS: a reload that changes an upstream's protocol must not
    /// reuse connections opened for the old one.
    pub protocol: UpstreamProtocol,
}

struct Idle {
    conn: Upstream1,
    since: Instant,
}

/// A handle on a shared HTTP/2 connection to a server.
pub type Sender2 = hyper::client::conn::http2::SendRequest<ReqBody>;

/// What `Pool::h2_lookup` found.
pub enum H2 {
    Open(Sender2, u64),
    /// There was one, and it has closed since its last use.
    Closed,
    None,
}

struct Shared2 {
    sender: Sender2,
    last_used: Instant,
    protocol: UpstreamProtocol,
    /// Which connection this is, so that a request that saw an old one fail
    /// does not forget its replacement.
    generation: u64,
}

/// Idle connections to one server. The mutex guards a push or a pop, never
/// I/O or an await.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<Shared2>>,
    h2_generation: std::sync::atomic::AtomicU64,
    /// Held while a new HTTP/2 connection is being opened: requests that
    /// find none wait behind it and share it, rather than each opening
    /// their own.
    h2_connecting: tokio::sync::Mutex<()>,
}

impl Pool {
    /// The most recently returned connection that is still open and younger
    /// than `idle_timeout`.
    #[inline]
    pub fn checkout(
        &self,
        idle_timeout: Duration,
        protocol: UpstreamProtocol,
    ) -> Option<Upstream1> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            if now.duration_since(i.since) < idle_timeout
                && !i.conn.sender.is_closed()
                && i.conn.protocol == protocol
            {
                return Some(i.conn);
            }
        }
        None
    }

    #[inline]
    pub fn checkin(&self, conn: Upstream1) {
        if conn.sender.is_closed() || conn.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= conn.max_idle {
            // Drop the oldest: it is the likeliest to be closed by the server.
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes connections idle longer than `idle_timeout` (run periodically).
    pub fn evict(&self, idle_timeout: Duration) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|i| now.duration_since(i.since) < idle_timeout && !i.conn.sender.is_closed());
        drop(idle);
        // Dropping the last handle closes the HTTP/2 connection once its
        // streams (requests still in flight hold their own handles) end.
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        if h2.as_ref().is_some_and(|s| {
            now.duration_since(s.last_used) >= idle_timeout || s.sender.is_closed()
        }) {
            *h2 = None;
        }
    }

    /// A handle on the server's open HTTP/2 connection, if there is one,
    /// with its generation.
    pub fn h2(&self, protocol: UpstreamProtocol) -> Option<(Sender2, u64)> {
        match self.h2_lookup(protocol) {
            H2::Open(s, g) => Some((s, g)),
            H2::Closed | H2::None => None,
        }
    }

    /// Like `h2`, but tells a connection that was just found closed (the
    /// server's GOAWAY, or its close) from none at all.
    pub fn h2_lookup(&self, protocol: UpstreamProtocol) -> H2 {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        match h2.as_mut() {
            Some(s) if !s.sender.is_closed() && s.protocol == protocol => {
                s.last_used = Instant::now();
                H2::Open(s.sender.clone(), s.generation)
            }
            Some(s) => {
                let closed = s.sender.is_closed();
                *h2 = None;
                if closed {
                    H2::Closed
                } else {
                    H2::None
                }
            }
            None => H2::None,
        }
    }

    /// The lock to hold while opening the server's HTTP/2 connection.
    pub fn h2_connecting(&self) -> &tokio::sync::Mutex<()> {
        &self.h2_connecting
    }

    /// Makes `sender` the server's shared HTTP/2 connection; returns its
    /// generation.
    pub fn set_h2(&self, sender: Sender2, protocol: UpstreamProtocol) -> u64 {
        let generation = 1 + self
            .h2_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        *h2 = Some(Shared2 {
            sender,
            last_used: Instant::now(),
            protocol,
            generation,
        });
        generation
    }

    /// Forgets the shared HTTP/2 connection of `generation` (it failed or
    /// is going away); a newer one is kept. True when this call forgot it.
    pub fn clear_h2(&self, generation: u64) -> bool {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        let current = h2.as_ref().is_some_and(|s| s.generation == generation);
        if current {
            *h2 = None;
        }
        current
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}
