//! Upstream protocols: `http1-tls` and `h2` against a TLS server with a
//! private CA (SNI from tls_server_name), verification failures as `tls`
//! errors, `h2c`, and a gRPC-style h2 → h2 exchange with trailers.

mod common;
use common::*;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

/// Answers with the protocol version it was spoken to in.
async fn version_backend(tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> Backend {
    let h = |req: Request<hyper::body::Incoming>| async move {
        Response::new(full(format!("{:?} {}", req.version(), req.uri().path())))
    };
    match tls {
        Some(c) => Backend::start_tls(c, h).await,
        None => Backend::start(h).await,
    }
}

fn upstream_cfg(b: &Backend, extra: &str) -> String {
    config(&format!(
        "[[route]]\nupstream = \"app\"\n\n[upstream.app]\n{}\nretries = 0\n{extra}\n",
        servers(&[b])
    ))
}

#[tokio::test]
async fn http1_tls_and_h2_to_a_server_with_a_private_ca() {
    let ca = TestCa::new();
    let dir = temp_dir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let ca_path = dir.join("ca.pem").display().to_string();
    let b = version_backend(Some(ca.server_config(&ca.leaf(&["backend.test"])))).await;

    let f = Fulcrum::start(&upstream_cfg(
        &b,
        &format!(
            "protocol = \"http1-tls\"\ntls_server_name = \"backend.test\"\ntls_ca = {ca_path:?}"
        ),
    ));
    let mut c = Client::connect(f.addr("web")).await;
    for i in 0..3 {
        let r = c.get(&format!("/p{i}"), "front.test").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), format!("HTTP/1.1 /p{i}"));
    }
    assert_eq!(b.last().headers.get("host").unwrap(), "front.test");

    // The same server over h2 (ALPN), concurrent requests multiplexed.
    let cfg = upstream_cfg(
        &b,
        &format!("protocol = \"h2\"\ntls_server_name = \"backend.test\"\ntls_ca = {ca_path:?}"),
    );
    assert!(f.reload(&cfg).contains("config reloaded"));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let a = f.addr("web");
        tasks.push(tokio::spawn(async move {
            get_host(a, &format!("/h{i}"), "front.test").await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), format!("HTTP/2.0 /h{i}"));
    }
}

#[tokio::test]
async fn upstream_certificate_that_does_not_verify_is_a_tls_error() {
    let ca = TestCa::new();
    let dir = temp_dir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let ca_path = dir.join("ca.pem").display().to_string();
    let b = version_backend(Some(ca.server_config(&ca.leaf(&["backend.test"])))).await;
    let server = b.addr.to_string();
    let kind_tls = [
        ("upstream", "app"),
        ("server", server.as_str()),
        ("kind", "tls"),
    ];

    // Wrong name.
    let f = Fulcrum::start(&upstream_cfg(
        &b,
        &format!(
            "protocol = \"http1-tls\"\ntls_server_name = \"other.test\"\ntls_ca = {ca_path:?}"
        ),
    ));
    let r = get(f.addr("web"), "/").await;
    assert_eq!(r.status, 502);
    let text = scrape(&f).await;
    assert_eq!(
        metric(&text, "fulcrum_upstream_errors_total", &kind_tls),
        Some(1.0),
        "{text}"
    );

    // The default trust anchors (webpki roots) do not know a private CA.
    let cfg = upstream_cfg(&b, "protocol = \"h2\"\ntls_server_name = \"backend.test\"");
    assert!(f.reload(&cfg).contains("config reloaded"));
    let r = get(f.addr("web"), "/").await;
    assert_eq!(r.status, 502);
    let text = scrape(&f).await;
    assert_eq!(
        metric(&text, "fulcrum_upstream_errors_total", &kind_tls),
        Some(2.0),
        "{text}"
    );
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn h2c_upstream() {
    let b = version_backend(None).await;
    let f = Fulcrum::start(&upstream_cfg(&b, "protocol = \"h2c\""));
    let mut c = Client::connect(f.addr("web")).await;
    for i in 0..3 {
        let r = c.get(&format!("/c{i}"), "front.test").await;
        assert_eq!(r.text(), format!("HTTP/2.0 /c{i}"));
    }
    let seen = b.last();
    // The Host travels as :authority alone: nginx (to 1.29.0) refuses both.
    assert_eq!(seen.uri, "http://front.test/c2");
    assert!(seen.headers.get("host").is_none(), "{:?}", seen.headers);
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "http");
    assert!(seen.headers.get("x-request-id").is_some());
}

#[tokio::test]
async fn grpc_style_h2_to_h2_with_trailers() {
    let ca = TestCa::new();
    let dir = temp_dir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    write_leaf(&dir, "front", &ca.leaf(&["grpc.test"]));
    // A gRPC-like server: reads the whole request, answers a data frame and
    // then trailers with the status.
    let b = Backend::start_tls(
        ca.server_config(&ca.leaf(&["backend.test"])),
        |req: Request<hyper::body::Incoming>| async move {
            let te = req.headers().get("te").cloned();
            let version = req.version();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "ok".parse().unwrap());
            let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
                Ok(Frame::data(Bytes::from(format!(
                    "{version:?} te={te:?} got {} bytes",
                    body.len()
                )))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::builder()
                .header("content-type", "application/grpc")
                .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
                .unwrap()
        },
    )
    .await;
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n\n[[route]]\nupstream = \"grpc\"\n\n[upstream.grpc]\n{}\nprotocol = \"h2\"\ntls_server_name = \"backend.test\"\ntls_ca = {:?}\n",
        dir.join("front.pem").display().to_string(),
        dir.join("front.key").display().to_string(),
        servers(&[&b]),
        dir.join("ca.pem").display().to_string(),
    );
    let f = Fulcrum::start(&cfg);
    let s = tls_connect(f.addr("web"), "grpc.test", ca.client_config(&[b"h2"]))
        .await
        .unwrap();
    let mut h2 = h2_client(s).await;
    // A length-prefixed message, as gRPC frames it.
    let mut msg = vec![0u8, 0, 0, 0, 5];
    msg.extend_from_slice(b"hello");
    let req = Request::post("https://grpc.test/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(msg))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/grpc"
    );
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reached the client");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "ok");
    assert_eq!(
        collected.to_bytes(),
        Bytes::from("HTTP/2.0 te=Some(\"trailers\") got 10 bytes")
    );
    let seen = b.last();
    assert_eq!(seen.uri, "https://grpc.test/pkg.Service/Method");
}

#[tokio::test]
async fn tls_keys_need_a_tls_protocol() {
    let dir = temp_dir();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        config("[[route]]\nupstream = \"app\"\n\n[upstream.app]\nservers = [{ address = \"127.0.0.1:1\" }]\ntls_server_name = \"x.test\"\n[upstream.app2]\nservers = [{ address = \"127.0.0.1:2\" }]\nprotocol = \"h2\"\ntls_ca = \"nope.pem\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("upstream.app.tls_server_name"), "{text}");
    assert!(text.contains("upstream.app2.tls_ca"), "{text}");
    assert!(text.contains("nope.pem"), "{text}");
}

/// Active checks speak the upstream's protocol: TLS with its CA and name,
/// and HTTP/2 for h2/h2c.
#[tokio::test]
async fn health_checks_use_the_upstream_protocol() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let ca = TestCa::new();
    let dir = temp_dir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let ca_path = dir.join("ca.pem").display().to_string();
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let b = Backend::start_tls(ca.server_config(&ca.leaf(&["backend.test"])), move |req| {
        let h = h.clone();
        async move {
            let mut r = Response::new(full(format!("{:?}", req.version())));
            if req.uri().path() == "/healthz" && !h.load(Ordering::SeqCst) {
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await;
    for protocol in ["http1-tls", "h2"] {
        healthy.store(true, Ordering::SeqCst);
        let f = Fulcrum::start(&upstream_cfg(
            &b,
            &format!(
                "protocol = \"{protocol}\"\ntls_server_name = \"backend.test\"\ntls_ca = {ca_path:?}\n\
                 [upstream.app.health_check]\ninterval = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1\njitter = \"0%\""
            ),
        ));
        let before = b.hits();
        eventually(std::time::Duration::from_secs(5), "probes pass", || {
            let n = b.hits();
            async move { n >= before + 2 }
        })
        .await;
        assert_eq!(server_state(&f, "app", b.addr).await, "up", "{protocol}");
        let probe = b.last();
        assert!(probe.uri.ends_with("/healthz"), "{protocol}: {probe:?}");
        healthy.store(false, Ordering::SeqCst);
        eventually(std::time::Duration::from_secs(5), "server down", || async {
            server_state(&f, "app", b.addr).await == "down"
        })
        .await;
        assert_eq!(get(f.addr("web"), "/").await.status, 503, "{protocol}");
    }
}
