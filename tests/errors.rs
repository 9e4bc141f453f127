//! Every status Fulcrum produces itself, produced for real.

mod common;
use common::*;

use std::time::{Duration, Instant};

use http::{Request, Response};

fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn payload_too_large_by_length_and_while_streaming() {
    let b = Backend::start(|req: Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let n = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        Response::new(full(n.to_string()))
    })
    .await;
    let f = Fulcrum::start(&with_listener_settings(
        &one_route(&[&b]),
        "max_request_body = \"1KiB\"",
    ));
    let mut c = Client::connect(f.addr("web")).await;
    let ok = c
        .send(
            Request::post("/")
                .header("host", "x")
                .body(full(vec![b'a'; 1024]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let r = collect(
        Client::connect(f.addr("web"))
            .await
            .send(
                Request::post("/")
                    .header("host", "x")
                    .body(full(vec![b'a'; 2000]))
                    .unwrap(),
            )
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 413);
    assert!(r.header("x-request-id").is_some());
    let hits_before = b.hits();
    // chunked, no Content-Length: caught while streaming
    let resp = raw(
        f.addr("web"),
        &chunked_request(&[1000, 1000]),
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(b.hits() <= hits_before + 1);
}

#[tokio::test]
async fn header_fields_too_large() {
    let b = Backend::named("ok").await;
    let f = Fulcrum::start(&with_listener_settings(
        &one_route(&[&b]),
        "max_header_bytes = 2048",
    ));
    // over our limit but under hyper's minimum buffer: our check answers
    let big = "v".repeat(3000);
    let r = collect(
        Client::connect(f.addr("web"))
            .await
            .send(
                Request::get("/")
                    .header("host", "x")
                    .header("x-big", &big)
                    .body(full(""))
                    .unwrap(),
            )
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 431);
    // far over: hyper's parser answers before any handler runs
    let huge = "v".repeat(20_000);
    let resp = raw(
        f.addr("web"),
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(b.hits(), 0);
    // a normal request still works
    assert_eq!(get(f.addr("web"), "/").await.status, 200);
}

#[tokio::test]
async fn request_timeout_for_slow_head_and_stalled_body() {
    let b = Backend::start(|req: Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let _ = req.into_body().collect().await;
        Response::new(full("ok"))
    })
    .await;
    let f = Fulcrum::start(&with_listener_settings(
        &one_route(&[&b]),
        "header_read_timeout = \"400ms\"\nbody_read_timeout = \"400ms\"\nidle_timeout = \"700ms\"",
    ));
    // slow head: part of it, then nothing
    let started = Instant::now();
    let resp = raw(
        f.addr("web"),
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // stalled body: 3 of 10 bytes
    let resp = raw(
        f.addr("web"),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    // a keep-alive connection idle after a response is closed quietly, no 408
    let started = Instant::now();
    let resp = raw(
        f.addr("web"),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(!resp.contains("408"), "{resp}");
    // then closed quietly by idle_timeout, well before our 5 s read bound
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(650) && idle < Duration::from_secs(4),
        "{idle:?}"
    );
}

#[tokio::test]
async fn bad_gateway_when_connect_refused() {
    let dead = closed_port();
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{{ address = \"{dead}\" }}]\nconnect_timeout = \"1s\"\n"
    )));
    let r = get(f.addr("web"), "/").await;
    assert_eq!(r.status, 502);
    assert!(r.header("x-request-id").is_some());
    let m = scrape(&f).await;
    assert!(
        metric(&m, "fulcrum_upstream_errors_total", &[("kind", "connect")]).unwrap() >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn connect_failure_fails_over_to_another_server() {
    let dead = closed_port();
    let b = Backend::named("alive").await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{{ address = \"{dead}\" }}, {{ address = \"{}\" }}]\n",
        b.addr
    )));
    let mut c = Client::connect(f.addr("web")).await;
    for _ in 0..6 {
        let r = c.get("/", "x").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "alive");
    }
    let m = scrape(&f).await;
    // without passive health (not configured) every request meets the dead
    // server first in the rotation and is retried once
    assert_eq!(
        metric(&m, "fulcrum_retries_total", &[("upstream", "u")]),
        Some(6.0)
    );
}

#[tokio::test]
async fn gateway_timeout_when_response_is_slow() {
    let b = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(full("late"))
    })
    .await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\n{}\nresponse_timeout = \"300ms\"\n",
        servers(&[&b])
    )));
    let started = Instant::now();
    let r = get(f.addr("web"), "/").await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn malformed_request_gets_400_and_close() {
    let b = Backend::named("ok").await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let resp = raw(
        f.addr("web"),
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = raw(
        f.addr("web"),
        b"NOT A REQUEST\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(b.hits(), 0);
}

fn chunked_request(chunks: &[usize]) -> Vec<u8> {
    let mut v = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for n in chunks {
        v.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        v.extend(std::iter::repeat_n(b'a', *n));
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}
