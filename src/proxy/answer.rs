//! How a request ends before it is forwarded: an error (`ProxyError`, whose
//! status and body are fixed by SPEC), an answer a phase chose on purpose
//! (a 429 with `Retry-After`, a 401 with its challenge, a 503 when the auth
//! service fails), or another service's answer relayed as it is (a
//! forward-auth denial). The errors and chosen answers are built here; a
//! route's own `redirect` and `respond` answers are its action, built in
//! `policy`.

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::body::ProxyBody;
use super::error::ProxyError;

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Why a phase ended the request early.
pub enum Stop {
    Error(ProxyError),
    /// An answer Fulcrum made (a 429, a 401): error pages apply.
    Answer(Response<ProxyBody>),
    /// Another service's answer passed on as it is (a forward-auth denial).
    Relay(Response<ProxyBody>),
}

impl From<ProxyError> for Stop {
    fn from(e: ProxyError) -> Stop {
        Stop::Error(e)
    }
}

impl Stop {
    pub fn into_response(self) -> Response<ProxyBody> {
        match self {
            Stop::Error(e) => error_response(&e),
            Stop::Answer(r) | Stop::Relay(r) => r,
        }
    }
}

/// The one place a `ProxyError` becomes a response: SPEC's status, a short
/// plain-text body, and `Connection: close` when the request stream may be
/// in an unknown state.
pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = plain(e.status(), e.body());
    if e.closes_connection() {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Over a route's `rate_limit`: 429, and when to come back.
pub fn too_many_requests(retry_after_secs: u64) -> Response<ProxyBody> {
    let mut resp = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

/// The key authorization for a pending ACME http-01 challenge, when `req`
/// asks for one.
pub fn acme_http01<B>(
    shared: &super::Shared,
    req: &http::Request<B>,
) -> Option<Response<ProxyBody>> {
    let token = req.uri().path().strip_prefix(crate::acme::HTTP01_PREFIX)?;
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return None;
    }
    let key_authorization = shared.acme.http01(token)?;
    let mut resp = Response::new(ProxyBody::full(key_authorization));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

fn plain(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, TEXT);
    resp
}

/// Missing or wrong `basic_auth` credentials: 401 with the route's
/// `WWW-Authenticate: Basic realm="..."`.
pub fn unauthorized(challenge: &HeaderValue) -> Response<ProxyBody> {
    let mut resp = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
    resp.headers_mut()
        .insert(http::header::WWW_AUTHENTICATE, challenge.clone());
    resp
}

/// The `forward_auth` service was unreachable, timed out, or gave no
/// usable answer: 503.
pub fn auth_unavailable() -> Response<ProxyBody> {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "authentication service unavailable\n",
    )
}
