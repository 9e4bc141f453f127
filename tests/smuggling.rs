//! Request smuggling and framing attacks over raw sockets: every hostile
//! message gets its exact answer, the connection is closed, the server never
//! sees a second (smuggled) request, and honest clients keep being served.

mod common;
use common::*;

use std::time::Duration;

const T: Duration = Duration::from_secs(5);
/// Appended to every attack: if any framing disagreement let it through,
/// the backend would see a request for /smuggled.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

async fn setup() -> (Backend, Fulcrum) {
    let b = draining_backend().await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nretries = 0\n{}\n",
        servers(&[&b])
    )));
    (b, f)
}

async fn honest(f: &Fulcrum) {
    let r = get(f.addr("web"), "/honest").await;
    assert_eq!(r.status, 200, "an honest client is still served");
}

fn no_smuggled(b: &Backend) {
    let seen = b.seen.lock().unwrap();
    assert!(
        seen.iter().all(|s| !s.uri.contains("smuggled")),
        "a smuggled request reached the server: {seen:?}"
    );
}

/// Sends `head` + SMUGGLED, expects `status` and a closed connection.
async fn attack(f: &Fulcrum, name: &str, head: &str, status: u16) {
    let bytes = format!("{head}{SMUGGLED}");
    let (out, closed) = raw_closed(f.addr("web"), bytes.as_bytes(), T).await;
    assert_eq!(status_of(&out), Some(status), "{name}: got {out:?}");
    assert!(closed, "{name}: connection left open after {out:?}");
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        1,
        "{name}: more than one response: {out:?}"
    );
    honest(f).await;
}

#[tokio::test]
async fn framing_attacks_are_rejected_before_the_server() {
    let (b, f) = setup().await;
    honest(&f).await;
    let cases: &[(&str, &str, u16)] = &[
        (
            "duplicate content-length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            400,
        ),
        ("content-length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello", 400),
        ("content-length +5", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
        ("content-length 0x5", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", 400),
        ("content-length -1", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (
            "content-length huge",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            400,
        ),
        (
            "gzip, chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            "two chunked lines",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        ("xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
        (
            "chunked not last",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "transfer-encoding in HTTP/1.0",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "whitespace before colon",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        ("whitespace in name", "GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n", 400),
        ("CR in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400),
        ("NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n", 400),
        (
            "vertical tab before chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        ("missing host", "GET / HTTP/1.1\r\n\r\n", 400),
        ("duplicate host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
        ("absolute-form host mismatch", "GET http://internal/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("bad request line", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("bad version", "GET / HTTP/9.9\r\nHost: a\r\n\r\n", 400),
    ];
    let before = b.hits();
    for (name, head, status) in cases {
        attack(&f, name, head, *status).await;
    }
    // Only the honest requests reached the server.
    assert_eq!(b.hits() - before, cases.len());
    no_smuggled(&b);
}

#[tokio::test]
async fn invalid_chunking_is_400_and_never_blames_the_server() {
    let (b, f) = setup().await;
    let post = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: &[(&str, &str)] = &[
        ("bad chunk size", "zz\r\nhello\r\n0\r\n\r\n"),
        ("chunk longer than declared", "3\r\nabcdef\r\n0\r\n\r\n"),
        (
            "chunk size overflow",
            "fffffffffffffffffff\r\na\r\n0\r\n\r\n",
        ),
        ("bare LF after size", "3\nabc\r\n0\r\n\r\n"),
    ];
    for (name, body) in cases {
        attack(&f, name, &format!("{post}{body}"), 400).await;
    }
    no_smuggled(&b);
    // The client's broken body is not the server's fault.
    let m = scrape(&f).await;
    assert_eq!(
        metric(&m, "fulcrum_upstream_errors_total", &[("kind", "reset")]).unwrap_or(0.0),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "fulcrum_upstream_errors_total", &[("kind", "protocol")]).unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles() {
    let (b, f) = setup().await;
    for head in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    ] {
        let bytes = format!("{head}{SMUGGLED}");
        let (out, closed) = raw_closed(f.addr("web"), bytes.as_bytes(), T).await;
        assert_eq!(status_of(&out), Some(400), "{out:?}");
        assert!(closed);
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out:?}");
        honest(&f).await;
    }
    no_smuggled(&b);
}

#[tokio::test]
async fn trailers_never_carry_framing_or_host_upstream() {
    let b = Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let c = req.into_body().collect().await.unwrap();
        let names: Vec<String> = c
            .trailers()
            .map(|t| t.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        http::Response::new(full(names.join(",")))
    })
    .await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let req = "POST / HTTP/1.1\r\nHost: a\r\nTrailer: Content-Length, Host, TE, X-Ok\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 100\r\nHost: evil\r\nTE: gzip\r\nX-Ok: 1\r\n\r\n";
    let (out, _) = raw_closed(f.addr("web"), req.as_bytes(), T).await;
    assert_eq!(status_of(&out), Some(200), "{out:?}");
    let body = out.rsplit("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    for bad in ["content-length", "host", "te"] {
        assert!(
            !body.split(',').any(|n| n == bad),
            "trailer {bad} reached the server: {body}"
        );
    }
    assert_eq!(b.hits(), 1);
    honest(&f).await;
}

/// A server on loopback that answers every request head on a connection with
/// `answer`, counting connections.
async fn liar(
    answer: &'static [u8],
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        head.clear();
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn upstream_lies_are_502_and_the_connection_is_discarded() {
    use std::sync::atomic::Ordering;
    let big = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(512 * 1024)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let lies: [(&str, &'static [u8]); 4] = [
        (
            "content-length with transfer-encoding",
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("duplicate content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("bad status line", b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok"),
        ("oversized headers", big),
    ];
    for (name, answer) in lies {
        let (addr, conns) = liar(answer).await;
        let f = Fulcrum::start(&config(&format!(
            "[[route]]\nupstream = \"u\"\n[upstream.u]\nretries = 0\nservers = [{{ address = \"{addr}\" }}]\n"
        )));
        let mut c = Client::connect(f.addr("web")).await;
        for i in 1..=2 {
            let r = c.get("/", "a").await;
            assert_eq!(r.status, 502, "{name}: {}", r.text());
            assert_eq!(r.text(), "invalid upstream response\n", "{name}");
            assert_eq!(
                conns.load(Ordering::SeqCst),
                i,
                "{name}: the lying connection was reused"
            );
        }
        let m = scrape(&f).await;
        assert_eq!(
            metric(&m, "fulcrum_upstream_errors_total", &[("kind", "protocol")]),
            Some(2.0),
            "{name}"
        );
    }
}
