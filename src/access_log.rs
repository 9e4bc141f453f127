//! The access log: one structured event per request (target
//! `fulcrum::access`), when `[global] access_log = true`.
//!
//! A request's record rides on its response body and is emitted when that
//! body is finished or dropped, so `duration_ms` and `bytes` cover the whole
//! response, and a client that goes away mid-response still gets its line
//! (with `complete=false`). The event goes through the non-blocking log
//! writer (see `logging`), so the request never waits for stderr. With the
//! access log off nothing here runs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Uri, Version};

/// Everything one access log line says about a request.
pub struct AccessRecord {
    started: Instant,
    listener: Arc<str>,
    client: IpAddr,
    method: Method,
    host: Option<HeaderValue>,
    uri: Uri,
    version: Version,
    status: u16,
    upstream: Option<Arc<str>>,
    server: Option<SocketAddr>,
    request_id: HeaderValue,
    bytes: u64,
    complete: bool,
}

impl AccessRecord {
    /// Captures the request line before the request is consumed.
    pub fn begin<B>(
        started: Instant,
        listener: &Arc<str>,
        client: IpAddr,
        req: &Request<B>,
    ) -> Box<AccessRecord> {
        let host = req.headers().get(http::header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        Box::new(AccessRecord {
            started,
            listener: listener.clone(),
            client,
            method: req.method().clone(),
            host,
            uri: req.uri().clone(),
            version: req.version(),
            status: 0,
            upstream: None,
            server: None,
            request_id: HeaderValue::from_static(""),
            bytes: 0,
            complete: false,
        })
    }

    /// A response to a request that never parsed (hyper's own 400/414/431,
    /// or a 408 for a head that never arrived): method and path are `-`.
    pub fn unparsed(listener: &Arc<str>, client: IpAddr, status: u16) -> AccessRecord {
        AccessRecord {
            started: Instant::now(),
            listener: listener.clone(),
            client,
            method: Method::from_bytes(b"-").expect("a token"),
            host: None,
            uri: Uri::from_static("/"),
            version: Version::HTTP_11,
            status,
            upstream: None,
            server: None,
            request_id: HeaderValue::from_static(""),
            bytes: 0,
            complete: true,
        }
    }

    /// Fills in what the response head decided.
    pub fn respond(
        &mut self,
        status: u16,
        upstream: Option<Arc<str>>,
        server: Option<SocketAddr>,
        request_id: &HeaderValue,
    ) {
        self.status = status;
        self.upstream = upstream;
        self.server = server;
        self.request_id = request_id.clone();
    }

    /// Counts response body bytes sent to the client.
    #[inline]
    pub fn add_bytes(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// The response body reached its end.
    pub fn complete(&mut self) {
        self.complete = true;
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let micros = self.started.elapsed().as_micros() as u64;
        let server = self.server.map(|s| s.to_string()).unwrap_or_default();
        tracing::info!(
            target: "fulcrum::access",
            listener = %self.listener,
            client = %self.client,
            method = %self.method,
            host = %self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
            path = %if self.method.as_str() == "-" { "-" } else { self.uri.path() },
            version = %version_str(self.version),
            status = self.status,
            upstream = %self.upstream.as_deref().unwrap_or(""),
            server = %server,
            duration_ms = micros as f64 / 1000.0,
            bytes = self.bytes,
            complete = self.complete,
            request_id = %self.request_id.to_str().unwrap_or(""),
            "request"
        );
    }
}
