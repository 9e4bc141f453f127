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
use crate::proxy::body::ReqBody;

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

struct Shared2 {
    sender: Sender2,
    last_used: Instant,
    protocol: UpstreamProtocol,
}

/// Idle connections to one server. The mutex guards a push or a pop, never
/// I/O or an await.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<Shared2>>,
}

impl Pool {
    /// The most recently returned connection that is still open and younger
    /// than `idle_timeout`.
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

    /// A handle on the server's open HTTP/2 connection, if there is one.
    pub fn h2(&self, protocol: UpstreamProtocol) -> Option<Sender2> {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        match h2.as_mut() {
            Some(s) if !s.sender.is_closed() && s.protocol == protocol => {
                s.last_used = Instant::now();
                Some(s.sender.clone())
            }
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    /// Makes `sender` the server's shared HTTP/2 connection.
    pub fn set_h2(&self, sender: Sender2, protocol: UpstreamProtocol) {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        *h2 = Some(Shared2 {
            sender,
            last_used: Instant::now(),
            protocol,
        });
    }

    /// Forgets the shared HTTP/2 connection (it failed).
    pub fn clear_h2(&self) {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        *h2 = None;
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}
