//! Request and response header rules of SPEC "Proxy behaviour".

mod common;
use common::*;

use http::{Request, Response};

#[tokio::test]
async fn forwarded_headers_request_id_and_host() {
    let b = Backend::start(|_req| async {
        Response::builder()
            .header("x-from-backend", "1")
            .header("connection", "x-secret-resp")
            .header("x-secret-resp", "hidden")
            .header("keep-alive", "timeout=5")
            .header("x-request-id", "backend-must-not-override")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let mut c = Client::connect(f.addr("web")).await;

    // 1. no incoming ids or forwarding headers
    let req = Request::get("/a?b=c")
        .header("host", "shop.example.com:8080")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "must-not-pass")
        .header("keep-alive", "timeout=1")
        .header("te", "gzip")
        .header("proxy-connection", "keep-alive")
        .header("upgrade", "h2c-nope")
        .body(full(""))
        .unwrap();
    let r = collect(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    let seen = b.last();
    let h = &seen.headers;
    assert_eq!(h["host"], "shop.example.com:8080");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com:8080");
    let id = h["x-request-id"].to_str().unwrap().to_string();
    assert!(id.len() >= 16, "{id}");
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the backend: {h:?}");
    }
    assert_eq!(seen.uri, "/a?b=c");
    // response side: id returned, hop-by-hop removed, end-to-end kept
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    assert_eq!(r.header("x-from-backend"), Some("1"));
    assert!(r.header("x-secret-resp").is_none());
    assert!(r.header("keep-alive").is_none());

    // 2. incoming id kept, XFF appended, TE: trailers survives
    let req = Request::post("/b")
        .header("host", "shop.example.com")
        .header("x-request-id", "client-id-42")
        .header("x-forwarded-for", "203.0.113.9")
        .header("te", "trailers")
        .body(full("x"))
        .unwrap();
    let r = collect(c.send(req).await.unwrap()).await;
    let h = b.last().headers;
    assert_eq!(h["x-request-id"], "client-id-42");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["te"], "trailers");
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));

    // 3. ids are unique per request
    let a = c
        .get("/", "x")
        .await
        .header("x-request-id")
        .unwrap()
        .to_string();
    let z = c
        .get("/", "x")
        .await
        .header("x-request-id")
        .unwrap()
        .to_string();
    assert_ne!(a, z);
}

#[tokio::test]
async fn generated_errors_carry_request_id_and_plain_text() {
    let f = Fulcrum::start(&config(
        "[[route]]\nhost = \"only.test\"\nupstream = \"u\"\n[upstream.u]\nservers = [{ address = \"127.0.0.1:9\" }]\n",
    ));
    let r = get_host(f.addr("web"), "/", "other.test").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(r.header("x-request-id").is_some());
}
