//! Per-server keep-alive pool of HTTP/1.1 connections.
//!
//! A connection is a `SendRequest` handle (its I/O runs in its own task). It
//! is taken out for one exchange and put back only when the response body has
//! ended cleanly, so a pooled handle is always ready for the next request.
//! Most recently used first: warm connections stay warm, the rest age out.

use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use crate::proxy::body::ReqBody;

/// One upstream HTTP/1.1 connection handle.
pub struct Upstream1 {
    pub sender: SendRequest<ReqBody>,
    /// Pool settings of the upstream this was opened for.
    pub max_idle: usize,
}

struct Idle {
    conn: Upstream1,
    since: Instant,
}

/// Idle connections to one server. The mutex guards a push or a pop, never
/// I/O or an await.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    /// The most recently returned connection that is still open and younger
    /// than `idle_timeout`.
    pub fn checkout(&self, idle_timeout: Duration) -> Option<Upstream1> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            if now.duration_since(i.since) < idle_timeout && !i.conn.sender.is_closed() {
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
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}
