//! `basic_auth` and `forward_auth` on the request path.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, HOST};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::answer::{self, Stop};
use super::body::{Finish, ProxyBody, ReqBody, UpstreamBody};
use super::forward::{self, Replay};
use super::headers::{
    strip_hop_by_hop, PROTO_HTTP, PROTO_HTTPS, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
};
use crate::backend::{InFlight, RouteNameStats};
use crate::metrics::Rejection;
use crate::policy::basic_auth::BasicAuth;
use crate::policy::forward_auth::ForwardAuth;

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");

/// Lets the request on when it carries a valid user (its Authorization
/// header is then removed); otherwise a 401 with WWW-Authenticate, counted
/// as a `basic_auth` rejection.
pub(super) async fn basic_auth(
    auth: &BasicAuth,
    req: &mut Request<Incoming>,
    stats: &RouteNameStats,
) -> Result<(), Stop> {
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    let ok = match (values.next(), values.next()) {
        // Exactly one Authorization header: two are ambiguous.
        (Some(v), None) => auth.allows(v).await,
        _ => false,
    };
    if !ok {
        stats.metrics.rejected(Rejection::BasicAuth);
        return Err(Stop::Answer(answer::unauthorized(&auth.challenge)));
    }
    req.headers_mut().remove(AUTHORIZATION);
    Ok(())
}

/// Asks the auth service; a 2xx lets the request on with the listed
/// response headers copied onto it; anything else is the client's answer.
pub(super) async fn forward_auth(
    auth: &ForwardAuth,
    req: &mut Request<Incoming>,
    client_ip: IpAddr,
    tls: bool,
    stats: &RouteNameStats,
) -> Result<(), Stop> {
    let head = auth_request_headers(auth, req, client_ip, tls);
    let uri = Uri::from(auth.path.clone());
    let build = || {
        let mut r = Request::new(ReqBody::empty());
        *r.method_mut() = Method::GET;
        *r.uri_mut() = uri.clone();
        *r.version_mut() = Version::HTTP_11;
        *r.headers_mut() = head.clone();
        r
    };
    let replay = Replay {
        rebuild: &build,
        idempotent: true,
    };
    // `timeout` bounds the whole exchange up to the response head,
    // whatever mix of pooled and new connections it takes.
    let sent = tokio::time::timeout(
        auth.config.timeout,
        forward::send(&auth.server, &auth.upstream, build(), Some(replay)),
    )
    .await;
    let (resp, conn) = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(failed)) => {
            tracing::debug!(auth_service = %auth.config.address, error = %failed.error, "forward_auth service failed");
            stats.metrics.rejected(Rejection::ForwardAuthError);
            return Err(Stop::Answer(answer::auth_unavailable()));
        }
        Err(_) => {
            tracing::debug!(auth_service = %auth.config.address, "forward_auth service timed out");
            stats.metrics.rejected(Rejection::ForwardAuthError);
            return Err(Stop::Answer(answer::auth_unavailable()));
        }
    };
    let (mut parts, body) = resp.into_parts();
    if parts.status.is_informational() {
        // A 101 (or another 1xx as the final answer) is not an auth answer.
        stats.metrics.rejected(Rejection::ForwardAuthError);
        return Err(Stop::Answer(answer::auth_unavailable()));
    }
    // The body (and with it the connection, back to the pool when the
    // body ends) goes to the client on a denial, or is read off in the
    // background (bounded) on an allow.
    let finish = Finish {
        in_flight: InFlight::new(auth.server.clone()),
        conn,
    };
    let body = UpstreamBody::new(body, finish);
    if parts.status.is_success() {
        let headers = req.headers_mut();
        copy_listed(&parts.headers, headers, auth.response_headers());
        drop(body);
        return Ok(());
    }
    stats.metrics.rejected(Rejection::ForwardAuth);
    strip_hop_by_hop(&mut parts.headers, false);
    let mut resp = Response::new(ProxyBody::upstream(body));
    *resp.status_mut() = parts.status;
    *resp.headers_mut() = parts.headers;
    Err(Stop::Relay(resp))
}

/// The auth request's headers: `Host` (the auth service), the listed
/// request headers (every value of each), and X-Forwarded-Method, -Proto,
/// -Host, -Uri (path and query as the client sent them) and -For.
fn auth_request_headers<B>(
    auth: &ForwardAuth,
    req: &Request<B>,
    client_ip: IpAddr,
    tls: bool,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(auth.request_headers().len() + 6);
    h.insert(HOST, auth.host.clone());
    for name in auth.request_headers() {
        for v in req.headers().get_all(name) {
            h.append(name.clone(), v.clone());
        }
    }
    if let Ok(m) = HeaderValue::from_str(req.method().as_str()) {
        h.insert(X_FORWARDED_METHOD.clone(), m);
    }
    let proto = if tls { &PROTO_HTTPS } else { &PROTO_HTTP };
    h.insert(X_FORWARDED_PROTO.clone(), proto.clone());
    let host = req.headers().get(HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST.clone(), host);
    }
    let uri = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(u) = HeaderValue::from_str(uri) {
        h.insert(X_FORWARDED_URI.clone(), u);
    }
    if let Ok(ip) = HeaderValue::from_str(&client_ip.to_string()) {
        h.insert(X_FORWARDED_FOR.clone(), ip);
    }
    h
}

/// Each listed header of the auth answer replaces the request's header of
/// that name; a listed header the answer lacks is removed from the request
/// (a client cannot forge what the auth service would have said).
fn copy_listed(from: &HeaderMap, to: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        to.remove(name);
        for v in from.get_all(name) {
            to.append(name.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::ForwardAuthConfig;

    fn auth(request: &[&str], response: &[&str]) -> ForwardAuth {
        let names = |l: &[&str]| {
            l.iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
                .collect()
        };
        ForwardAuth::new(&ForwardAuthConfig {
            address: "127.0.0.1:9201".into(),
            addr: "127.0.0.1:9201".parse().unwrap(),
            path: "/verify".into(),
            timeout: std::time::Duration::from_secs(1),
            request_headers: names(request),
            response_headers: names(response),
        })
    }

    #[test]
    fn auth_request_carries_only_listed_headers_and_forwarded_ones() {
        let a = auth(&["Authorization", "Cookie"], &[]);
        let req = Request::builder()
            .method("POST")
            .uri("/app/page?q=1&r=%20")
            .header("host", "app.example.com:8443")
            .header("authorization", "Bearer t")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x-user", "forged")
            .header("x-forwarded-for", "203.0.113.9")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        let h = auth_request_headers(&a, &req, "192.0.2.7".parse().unwrap(), true);
        let get = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("host"), ["127.0.0.1:9201"]);
        assert_eq!(get("authorization"), ["Bearer t"]);
        assert_eq!(get("cookie"), ["a=1", "b=2"]);
        assert_eq!(get("x-forwarded-method"), ["POST"]);
        assert_eq!(get("x-forwarded-proto"), ["https"]);
        assert_eq!(get("x-forwarded-host"), ["app.example.com:8443"]);
        assert_eq!(get("x-forwarded-uri"), ["/app/page?q=1&r=%20"]);
        assert_eq!(
            get("x-forwarded-for"),
            ["192.0.2.7"],
            "the client IP, not what it claimed"
        );
        assert_eq!(h.keys_len(), 8, "nothing else: {h:?}");
    }

    #[test]
    fn h2_request_host_comes_from_the_authority() {
        let a = auth(&[], &[]);
        let req = Request::builder()
            .uri("https://app.example.com/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let h = auth_request_headers(&a, &req, "::1".parse().unwrap(), false);
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        assert_eq!(h["x-forwarded-uri"], "/x");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "::1");
    }

    #[test]
    fn listed_answer_headers_replace_the_clients() {
        let mut from = HeaderMap::new();
        from.insert("x-user", HeaderValue::from_static("alice"));
        from.append("x-groups", HeaderValue::from_static("a"));
        from.append("x-groups", HeaderValue::from_static("b"));
        from.insert("x-other", HeaderValue::from_static("not listed"));
        let mut to = HeaderMap::new();
        to.insert("x-user", HeaderValue::from_static("forged"));
        to.insert("x-email", HeaderValue::from_static("forged@example.com"));
        to.insert("authorization", HeaderValue::from_static("Bearer t"));
        let names: Vec<HeaderName> = ["x-user", "x-groups", "x-email"]
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        copy_listed(&from, &mut to, &names);
        assert_eq!(to["x-user"], "alice");
        assert_eq!(to.get_all("x-groups").iter().count(), 2);
        assert!(
            to.get("x-email").is_none(),
            "not in the answer: the client's is gone too"
        );
        assert!(to.get("x-other").is_none());
        assert_eq!(
            to["authorization"], "Bearer t",
            "the client's Authorization stays"
        );
    }
}
