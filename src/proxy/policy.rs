//! Route policy on the request path, except auth (`auth`) and compression
//! (`compress`): the access lists, the answers a route gives by itself
//! (`redirect`, `respond`), path and header rewrites, and error pages.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};

use super::body::ProxyBody;
use super::error::ProxyError;
use crate::config::policy::{ErrorPages, HeaderRules, RedirectConfig, RespondConfig};
use crate::config::PolicyConfig;
use crate::routing::request_host;

/// `deny`, then `allow`, against the effective client IP.
pub(super) fn access_allowed(p: &PolicyConfig, client_ip: IpAddr) -> bool {
    if p.deny.iter().any(|c| c.contains(client_ip)) {
        return false;
    }
    p.allow
        .as_ref()
        .is_none_or(|allow| allow.iter().any(|c| c.contains(client_ip)))
}

/// `respond`: the configured status, body and content type.
pub(super) fn respond(cfg: &RespondConfig) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(cfg.body.clone()));
    *resp.status_mut() = cfg.status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, cfg.content_type.clone());
    resp
}

/// `redirect`: an absolute `Location` built from the request and the keys
/// that are set. When the scheme or the host changes and `port` is unset,
/// the port is dropped; a port that is the scheme's default is never shown.
pub(super) fn redirect<B>(
    cfg: &RedirectConfig,
    route_prefix: &str,
    req: &Request<B>,
    tls: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let req_scheme = if tls { "https" } else { "http" };
    let scheme = cfg.scheme.as_deref().unwrap_or(req_scheme);
    let req_host = request_host(req).ok_or(ProxyError::BadRequest("no Host"))?;
    let host = cfg.host.as_deref().unwrap_or(req_host);
    let port = match cfg.port {
        Some(p) => Some(p),
        None if scheme != req_scheme || cfg.host.is_some() => None,
        None => request_port(req),
    };
    let port = port.filter(|p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let path = req.uri().path();
    let mut location = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
    location.push_str(scheme);
    location.push_str("://");
    if host.contains(':') && !host.starts_with('[') {
        location.push('[');
        location.push_str(host);
        location.push(']');
    } else {
        location.push_str(host);
    }
    if let Some(p) = port {
        location.push(':');
        location.push_str(&p.to_string());
    }
    match &cfg.path_prefix {
        Some(new) => {
            let rest = path.get(route_prefix.len()..).unwrap_or("");
            location.push_str(new);
            if new.is_empty() && rest.is_empty() {
                location.push('/');
            } else {
                location.push_str(rest);
            }
        }
        None => location.push_str(path),
    }
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    let location =
        HeaderValue::from_str(&location).map_err(|_| ProxyError::BadRequest("bad Host"))?;
    let mut resp = Response::new(ProxyBody::full(bytes::Bytes::new()));
    *resp.status_mut() = cfg.status;
    resp.headers_mut().insert(LOCATION, location);
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(resp)
}

/// The port the client addressed (Host or :authority), if it gave one.
fn request_port<B>(req: &Request<B>) -> Option<u16> {
    if let Some(p) = req.uri().port_u16() {
        return Some(p);
    }
    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
    let after_v6 = host.rsplit_once(']').map_or(host, |(_, rest)| rest);
    after_v6.rsplit_once(':')?.1.parse().ok()
}

/// `strip_prefix` and `add_prefix`: `/v1/users?id=7` → `/api/users?id=7`,
/// `/v1` → `/api`; no doubled or trailing slash is introduced and the query
/// is kept.
pub(super) fn rewrite_path<B>(p: &PolicyConfig, route_prefix: &str, req: &mut Request<B>) {
    let add = p.add_prefix.as_deref().unwrap_or("");
    if !p.strip_prefix && add.is_empty() {
        return;
    }
    let path = req.uri().path();
    let mut rest = if p.strip_prefix {
        path.get(route_prefix.len()..).unwrap_or(path)
    } else {
        path
    };
    if !add.is_empty() && rest == "/" && !p.strip_prefix {
        rest = "";
    }
    let mut new = String::with_capacity(
        add.len() + rest.len() + 1 + req.uri().query().map_or(0, |q| q.len() + 1),
    );
    new.push_str(add);
    new.push_str(rest);
    if new.is_empty() {
        new.push('/');
    }
    if let Some(q) = req.uri().query() {
        new.push('?');
        new.push_str(q);
    }
    let Ok(pq) = PathAndQuery::try_from(new) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// `request_headers` / `response_headers`: remove, then set, then add.
pub(super) fn apply_header_rules(rules: &HeaderRules, headers: &mut HeaderMap) {
    for name in &rules.remove {
        headers.remove(name);
    }
    for (name, value) in &rules.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &rules.add {
        headers.append(name.clone(), value.clone());
    }
}

/// An answer Fulcrum generated gets the configured page for its status.
pub(super) fn error_page(pages: &ErrorPages, resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let Some(page) = pages.get(&resp.status().as_u16()) else {
        return resp;
    };
    let (mut parts, _) = resp.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, page.content_type.clone());
    Response::from_parts(parts, ProxyBody::full(page.body.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::PolicyConfig;

    fn req(uri: &str, host: &str) -> Request<()> {
        Request::builder()
            .uri(uri)
            .header("host", host)
            .body(())
            .unwrap()
    }

    fn location(cfg: RedirectConfig, prefix: &str, r: &Request<()>, tls: bool) -> String {
        let resp = redirect(&cfg, prefix, r, tls).unwrap();
        resp.headers()[LOCATION].to_str().unwrap().to_string()
    }

    fn rd() -> RedirectConfig {
        RedirectConfig {
            scheme: None,
            host: None,
            port: None,
            path_prefix: None,
            status: http::StatusCode::MOVED_PERMANENTLY,
        }
    }

    #[test]
    fn redirect_keeps_what_is_not_set_and_drops_the_port_on_a_scheme_change() {
        let r = req("/a/b?x=1", "example.com:8080");
        let https = RedirectConfig {
            scheme: Some("https".into()),
            ..rd()
        };
        assert_eq!(
            location(https.clone(), "", &r, false),
            "https://example.com/a/b?x=1"
        );
        let port = RedirectConfig {
            port: Some(8443),
            ..https
        };
        assert_eq!(
            location(port, "", &r, false),
            "https://example.com:8443/a/b?x=1"
        );
        // Same scheme and host: the client's port stays.
        let prefix = RedirectConfig {
            path_prefix: Some("/new".into()),
            ..rd()
        };
        assert_eq!(
            location(prefix.clone(), "/a", &r, false),
            "http://example.com:8080/new/b?x=1"
        );
        assert_eq!(
            location(prefix, "/a", &req("/a", "example.com"), true),
            "https://example.com/new"
        );
        let root = RedirectConfig {
            path_prefix: Some(String::new()),
            ..rd()
        };
        assert_eq!(location(root, "/a", &req("/a", "h"), false), "http://h/");
        let host = RedirectConfig {
            host: Some("www.example.com".into()),
            ..rd()
        };
        assert_eq!(
            location(host, "", &r, false),
            "http://www.example.com/a/b?x=1"
        );
        // A default port is never shown; IPv6 literals keep their brackets.
        let p80 = RedirectConfig {
            port: Some(80),
            ..rd()
        };
        assert_eq!(
            location(p80, "", &req("/", "[::1]:8080"), false),
            "http://[::1]/"
        );
    }

    fn rewritten(strip: bool, add: Option<&str>, prefix: &str, uri: &str) -> String {
        let p = PolicyConfig {
            strip_prefix: strip,
            add_prefix: add.map(str::to_string),
            ..Default::default()
        };
        let mut r = req(uri, "h");
        rewrite_path(&p, prefix, &mut r);
        r.uri().to_string()
    }

    #[test]
    fn prefixes() {
        assert_eq!(rewritten(true, Some("/api"), "/v1", "/v1"), "/api");
        assert_eq!(
            rewritten(true, Some("/api"), "/v1", "/v1/users?id=7"),
            "/api/users?id=7"
        );
        assert_eq!(rewritten(true, None, "/v1", "/v1"), "/");
        assert_eq!(rewritten(true, None, "/v1", "/v1/"), "/");
        assert_eq!(rewritten(true, None, "/v1", "/v1/x?q"), "/x?q");
        assert_eq!(rewritten(false, Some("/api"), "", "/"), "/api");
        assert_eq!(rewritten(false, Some("/api"), "", "/x/"), "/api/x/");
        assert_eq!(rewritten(false, None, "/v1", "/v1/x"), "/v1/x");
    }
}
