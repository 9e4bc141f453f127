//! Request checks hyper leaves to the application, so that Fulcrum and the
//! server behind it can never disagree about where a request ends or which
//! host it is for (request smuggling, routing confusion).
//!
//! hyper's HTTP/1 parser already answers 400 to a bad request line, header
//! names with whitespace, obs-fold, CR or NUL in values, conflicting or
//! malformed `Content-Length`, a transfer coding whose last item is not
//! `chunked`, invalid chunk framing, and `Transfer-Encoding` in HTTP/1.0.
//! Its h2 codec rejects connection-specific headers. What is left:
//! - `Transfer-Encoding` must be exactly one `chunked`: any other coding in
//!   front of it (`gzip, chunked`) is 501 like nginx; two header lines are
//!   400 (a middlebox may read either one).
//! - HTTP/1.1 needs exactly one valid `Host` (RFC 9112 §3.2): 400 otherwise.
//! - An absolute-form target (or h2 `:authority`) whose host or port differs
//!   from `Host` is 400: routing reads the target, the server would read
//!   `Host` (HAProxy does the same).

use http::header::{HOST, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{Request, Version};

use super::error::ProxyError;

/// Checks one request's framing and host headers.
pub fn check<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let h = req.headers();
    let mut te = h.get_all(TRANSFER_ENCODING).iter();
    if let Some(v) = te.next() {
        if te.next().is_some() {
            return Err(ProxyError::BadRequest("more than one Transfer-Encoding"));
        }
        if !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(ProxyError::NotImplemented("transfer coding"));
        }
    }
    let mut hosts = h.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host"));
    }
    let host = match host {
        // The common case, a plain name or IPv4 address with an optional
        // port, needs no Authority parse unless it is compared below.
        Some(v) if req.uri().authority().is_none() && is_plain_host(v.as_bytes()) => None,
        Some(v) => Some(
            Authority::try_from(v.as_bytes())
                .ok()
                .filter(|a| !a.as_str().contains('@') && !a.host().is_empty())
                .ok_or(ProxyError::BadRequest("invalid Host"))?,
        ),
        None if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
            return Err(ProxyError::BadRequest("missing Host"));
        }
        None => None,
    };
    if let (Some(target), Some(host)) = (req.uri().authority(), &host) {
        let default = match req.uri().scheme_str() {
            Some("https") => 443,
            _ => 80,
        };
        if !target.host().eq_ignore_ascii_case(host.host())
            || target.port_u16().unwrap_or(default) != host.port_u16().unwrap_or(default)
        {
            return Err(ProxyError::BadRequest(
                "Host differs from the request target",
            ));
        }
    }
    Ok(())
}

/// `name[:port]` with name made of letters, digits, `-` and `.` and a port
/// of 1 to 5 digits: valid for `Authority` too, so it can skip the parse.
fn is_plain_host(b: &[u8]) -> bool {
    let (name, port) = match b.iter().position(|&c| c == b':') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    !name.is_empty()
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        && port.is_none_or(|p| {
            (1..=5).contains(&p.len())
                && p.iter().all(u8::is_ascii_digit)
                && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(uri).version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn status(r: Result<(), ProxyError>) -> u16 {
        r.map_or_else(|e| e.status().as_u16(), |()| 200)
    }

    #[test]
    fn transfer_encoding() {
        let v = Version::HTTP_11;
        let ok = req(v, "/", &[("host", "a"), ("transfer-encoding", "Chunked")]);
        assert_eq!(status(check(&ok)), 200);
        let gz = req(
            v,
            "/",
            &[("host", "a"), ("transfer-encoding", "gzip, chunked")],
        );
        assert_eq!(status(check(&gz)), 501);
        let two = req(
            v,
            "/",
            &[
                ("host", "a"),
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert_eq!(status(check(&two)), 400);
    }

    #[test]
    fn host_rules() {
        let v = Version::HTTP_11;
        assert_eq!(status(check(&req(v, "/", &[]))), 400);
        assert_eq!(status(check(&req(Version::HTTP_10, "/", &[]))), 200);
        assert_eq!(
            status(check(&req(v, "/", &[("host", "a"), ("host", "b")]))),
            400
        );
        assert_eq!(status(check(&req(v, "/", &[("host", "a b")]))), 400);
        assert_eq!(status(check(&req(v, "/", &[("host", "u@a")]))), 400);
        assert_eq!(status(check(&req(v, "/", &[("host", "a:8080")]))), 200);
        assert_eq!(status(check(&req(v, "http://a/", &[]))), 200);
        assert_eq!(
            status(check(&req(v, "http://A/", &[("host", "a:80")]))),
            200
        );
        assert_eq!(status(check(&req(v, "http://a/", &[("host", "b")]))), 400);
        assert_eq!(
            status(check(&req(v, "http://a:81/", &[("host", "a")]))),
            400
        );
    }

    #[test]
    fn plain_host_fast_path_agrees_with_authority() {
        for h in [
            "a",
            "a.b-c.example",
            "10.0.0.1",
            "a:1",
            "a:65535",
            "a:65536",
            "a:",
            ":80",
            "a:8o",
            "a:123456",
            "a b",
            "u@a",
            "[::1]:80",
            "a_b",
            "-a.",
            "A.B:080",
        ] {
            if is_plain_host(h.as_bytes()) {
                let a = Authority::try_from(h.as_bytes()).expect(h);
                assert!(!a.host().is_empty() && !a.as_str().contains('@'), "{h}");
            }
        }
        assert!(is_plain_host(b"example.com:8080"));
        assert!(!is_plain_host(b"a:65536"));
    }
}
