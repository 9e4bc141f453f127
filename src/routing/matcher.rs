//! Host and path matching, allocation-free.

use http::header::HOST;
use http::Request;

use crate::config::policy::ValueMatch;
use crate::config::{HostMatch, RouteMatch};

/// The request's host without port or trailing dot: the Host header (HTTP/1)
/// or the URI authority (HTTP/2 `:authority`, absolute-form HTTP/1).
#[inline]
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content
        return rest.split(']').next().unwrap_or(rest);
    }
    // Byte loops rather than `rfind`/`rsplit`: this runs on every request.
    let b = h.as_bytes();
    let mut end = b.len();
    while end > 0 && b[end - 1].is_ascii_digit() {
        end -= 1;
    }
    let end = if end > 0 && b[end - 1] == b':' {
        end - 1
    } else {
        b.len()
    };
    // userinfo@host is not valid in Host, but tolerate it in absolute-form
    let start = b[..end]
        .iter()
        .rposition(|&c| c == b'@')
        .map_or(0, |i| i + 1);
    let h = &h[start..end];
    h.strip_suffix('.').unwrap_or(h)
}

/// Case-insensitive exact or `*.suffix` match; the port is already removed.
#[inline]
pub fn host_matches(m: &HostMatch, host: &str) -> bool {
    match m {
        HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
        HostMatch::Suffix(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// The `methods`, `headers` and `query` keys of a route.
pub fn request_matches<B>(m: &RouteMatch, req: &Request<B>) -> bool {
    if !m.methods.is_empty() && !m.methods.contains(req.method()) {
        return false;
    }
    let value_ok = |want: &ValueMatch, got: &[u8]| match want {
        ValueMatch::Any => true,
        ValueMatch::Exact(v) => v.as_bytes() == got,
    };
    let headers_ok = m.headers.iter().all(|(name, want)| {
        req.headers()
            .get_all(name)
            .iter()
            .any(|v| value_ok(want, v.as_bytes()))
    });
    if !headers_ok {
        return false;
    }
    if m.query.is_empty() {
        return true;
    }
    let query = req.uri().query().unwrap_or("");
    m.query.iter().all(|(name, want)| {
        // Decoded pairs (percent-escapes and '+'); bounded by the URI,
        // which the listener's head limit bounds.
        form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == name.as_str() && value_ok(want, v.as_bytes()))
    })
}

/// `prefix` has no trailing slash: "/v1" matches "/v1", "/v1/" and "/v1/x",
/// not "/v1x"; "" matches every path.
#[inline]
pub fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let exact = HostMatch::Exact("api.example.com".into());
        let wild = HostMatch::Suffix(".example.com".into());
        assert!(host_matches(&exact, "API.example.com"));
        assert!(!host_matches(&exact, "x.api.example.com"));
        assert!(host_matches(&wild, "a.b.EXAMPLE.com"));
        assert!(!host_matches(&wild, "example.com"));
        assert!(!host_matches(&wild, "badexample.com"));
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com."), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn paths() {
        assert!(path_matches("/v1", "/v1"));
        assert!(path_matches("/v1", "/v1/"));
        assert!(path_matches("/v1", "/v1/users"));
        assert!(!path_matches("/v1", "/v1x"));
        assert!(!path_matches("/v1", "/"));
        assert!(path_matches("", "/anything"));
    }
}
