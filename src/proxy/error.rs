//! `ProxyError`: every way a proxied request can fail, and its one mapping to
//! a status code and a short plain-text body.

use http::StatusCode;

use crate::metrics::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route")]
    NoRoute,
    /// A route's `deny`/`allow` refused the client's IP.
    #[error("forbidden")]
    Forbidden,
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request header fields too large")]
    HeadersTooLarge,
    #[error("request body timeout")]
    BodyTimeout,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A request framing Fulcrum does not implement (a transfer coding other
    /// than a single `chunked`), answered 501 like nginx.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("upstream connect failed")]
    Connect(#[source] std::io::Error),
    #[error("upstream connect timed out")]
    ConnectTimeout,
    #[error("upstream handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("upstream TLS handshake failed")]
    UpstreamTls(#[source] std::io::Error),
    #[error("upstream response timed out")]
    ResponseTimeout,
    #[error("upstream reset or closed the connection")]
    UpstreamReset(#[source] hyper::Error),
    /// An HTTP/2 stream the server refused unprocessed (above a GOAWAY's
    /// last-stream-id, or REFUSED_STREAM): safe to send again, whatever
    /// the method (RFC 9113 §6.8, §8.7), and no sign of a failing server.
    #[error("upstream refused the stream unprocessed")]
    UpstreamRefused(#[source] hyper::Error),
    #[error("invalid upstream response")]
    UpstreamProtocol(#[source] hyper::Error),
    /// A response hyper accepts but a proxy must not forward (framing that
    /// two parsers could read differently).
    #[error("invalid upstream response: {0}")]
    UpstreamFraming(&'static str),
    #[error("listener is draining")]
    Draining,
}

impl ProxyError {
    /// The status code SPEC assigns; the one place this mapping exists.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::NoHealthyUpstream | ProxyError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Connect(_)
            | ProxyError::ConnectTimeout
            | ProxyError::Handshake(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamRefused(_)
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::UpstreamFraming(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The short plain-text body sent to the client.
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route\n",
            ProxyError::Forbidden => "forbidden\n",
            ProxyError::NoHealthyUpstream => "no healthy upstream\n",
            ProxyError::BodyTooLarge => "request body too large\n",
            ProxyError::HeadersTooLarge => "request header fields too large\n",
            ProxyError::BodyTimeout => "request body timeout\n",
            ProxyError::BadRequest(_) => "bad request\n",
            ProxyError::NotImplemented(_) => "not implemented\n",
            ProxyError::Connect(_)
            | ProxyError::ConnectTimeout
            | ProxyError::Handshake(_)
            | ProxyError::UpstreamTls(_) => "upstream connect error\n",
            ProxyError::UpstreamReset(_) | ProxyError::UpstreamRefused(_) => {
                "upstream connection reset\n"
            }
            ProxyError::UpstreamProtocol(_) | ProxyError::UpstreamFraming(_) => {
                "invalid upstream response\n"
            }
            ProxyError::ResponseTimeout => "upstream response timeout\n",
            ProxyError::Draining => "shutting down\n",
        }
    }

    /// Whether the client connection must be closed after this answer
    /// (the request stream may be in an unknown state).
    pub fn closes_connection(&self) -> bool {
        match self {
            ProxyError::BodyTooLarge
            | ProxyError::BodyTimeout
            | ProxyError::BadRequest(_)
            | ProxyError::NotImplemented(_)
            | ProxyError::HeadersTooLarge
            | ProxyError::Draining => true,
            ProxyError::NoRoute
            | ProxyError::Forbidden
            | ProxyError::NoHealthyUpstream
            | ProxyError::Connect(_)
            | ProxyError::ConnectTimeout
            | ProxyError::Handshake(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamRefused(_)
            | ProxyError::ResponseTimeout
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::UpstreamFraming(_) => false,
        }
    }

    /// The `kind` label of `fulcrum_upstream_errors_total`, for failures that
    /// are a server's fault.
    pub fn upstream_kind(&self) -> Option<ErrorKind> {
        match self {
            ProxyError::Connect(_) | ProxyError::Handshake(_) => Some(ErrorKind::Connect),
            ProxyError::UpstreamTls(_) => Some(ErrorKind::Tls),
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout => Some(ErrorKind::Timeout),
            ProxyError::UpstreamReset(_) => Some(ErrorKind::Reset),
            ProxyError::UpstreamProtocol(_) | ProxyError::UpstreamFraming(_) => {
                Some(ErrorKind::Protocol)
            }
            ProxyError::NoRoute
            | ProxyError::Forbidden
            | ProxyError::NoHealthyUpstream
            | ProxyError::BodyTooLarge
            | ProxyError::HeadersTooLarge
            | ProxyError::BodyTimeout
            | ProxyError::BadRequest(_)
            | ProxyError::NotImplemented(_)
            | ProxyError::UpstreamRefused(_)
            | ProxyError::Draining => None,
        }
    }

    /// True when the request never reached the server, so another server may
    /// safely get it.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect(_)
                | ProxyError::ConnectTimeout
                | ProxyError::Handshake(_)
                | ProxyError::UpstreamTls(_)
        )
    }
}
