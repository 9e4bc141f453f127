//! Route policy (0.2) `compress`: negotiation from `Accept-Encoding`, the
//! skip rules, the header edits of a compressed response, streaming (an
//! event stream stays live), `respond` answers, and the metric. Bodies are
//! decoded with reference decoders (flate2, brotli-decompressor, zstd).

mod common;
use common::*;

use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body fed through a channel: unknown length, each item one
/// chunk on the wire; an `Err` breaks the response off.
struct ChanBody(mpsc::Receiver<Result<Bytes, BoxError>>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn chan_body(items: Vec<Result<Bytes, BoxError>>) -> BoxBody {
    let (tx, rx) = mpsc::channel(items.len().max(1));
    for i in items {
        tx.try_send(i).unwrap();
    }
    ChanBody(rx).boxed()
}

/// 16 KiB of JSON.
fn json() -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < 16 * 1024 - 64 {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item {i}\",\"tags\":[\"a\",\"b\"],\"ok\":{}}},",
            i % 3 == 0
        ));
        i += 1;
    }
    s.pop();
    s.push(']');
    while s.len() < 16 * 1024 {
        s.push(' ');
    }
    s.into_bytes()
}

/// The upstream's ends of the handshakes with the test: on `sse`, each
/// message lets the event stream send its next event; on `broken`, the
/// message lets the broken body fail (after the test has its head).
struct Gates {
    sse: Mutex<Option<mpsc::Receiver<()>>>,
    broken: Mutex<Option<mpsc::Receiver<()>>>,
}

/// One upstream serving every case by path.
async fn upstream(gates: Arc<Gates>) -> Backend {
    Backend::start(move |req: Request<hyper::body::Incoming>| {
        let gates = gates.clone();
        async move {
            let path = req.uri().path().to_string();
            let mut b = Response::builder().header("content-type", "application/json");
            let body = match path.as_str() {
                "/json" => {
                    b = b
                        .header("etag", "\"v1\"")
                        .header("vary", "Origin")
                        .header("accept-ranges", "bytes");
                    full(json())
                }
                "/text" => {
                    b = Response::builder().header("content-type", "Text/HTML; charset=utf-8");
                    full(json())
                }
                "/png" => {
                    b = Response::builder().header("content-type", "image/png");
                    full(json())
                }
                "/encoded" => full(json()),
                "/no-transform" => {
                    b = b.header("cache-control", "public, no-transform");
                    full(json())
                }
                "/small" => full(vec![b' '; 1000]),
                "/stream-small" => chan_body(vec![Ok(Bytes::from_static(b"{\"small\":true}"))]),
                "/broken" => {
                    let mut go = gates
                        .broken
                        .lock()
                        .unwrap()
                        .take()
                        .expect("one broken body");
                    let (tx, rx) = mpsc::channel(1);
                    tokio::spawn(async move {
                        let _ = tx.send(Ok(Bytes::from(json()))).await;
                        let _ = go.recv().await;
                        let _ = tx.send(Err("upstream broke off".into())).await;
                    });
                    ChanBody(rx).boxed()
                }
                "/sse" => {
                    b = Response::builder().header("content-type", "text/event-stream");
                    let mut go = gates.sse.lock().unwrap().take().expect("one event stream");
                    let (tx, rx) = mpsc::channel(1);
                    tokio::spawn(async move {
                        for i in 1..=3 {
                            let ev = format!("id: {i}\ndata: event {i}\n\n");
                            if tx.send(Ok(Bytes::from(ev))).await.is_err() || i == 3 {
                                return;
                            }
                            // Waits for the test to have read and decoded event i.
                            if go.recv().await.is_none() {
                                return;
                            }
                        }
                    });
                    ChanBody(rx).boxed()
                }
                p if p.starts_with("/status/") => {
                    let code: u16 = p["/status/".len()..].parse().unwrap();
                    b = b.status(code);
                    if code == 206 {
                        b = b.header("content-range", "bytes 0-16383/32768");
                    }
                    full(json())
                }
                _ => {
                    b = b.status(404);
                    full("")
                }
            };
            if path == "/encoded" {
                b = b.header("content-encoding", "gzip");
            }
            b.body(body).unwrap()
        }
    })
    .await
}

const RESPOND_BODY: &str = "the same words again and again ";

fn toml(u: &Backend) -> String {
    config(&format!(
        r#"
[[route]]
name = "z"
host = "zstd.test"
upstream = "u"
compress = {{ algorithms = ["zstd", "gzip"], min_size = 0, content_types = ["application/*"] }}

[[route]]
name = "answer"
host = "respond.test"
respond = {{ status = 200, body = "{}" }}
compress = true

[[route]]
name = "api"
upstream = "u"
compress = true

[upstream.u]
{}
"#,
        RESPOND_BODY.repeat(100),
        servers(&[u])
    ))
}

/// The test's ends of the handshakes (see `Gates`).
struct Go {
    sse: mpsc::Sender<()>,
    broken: mpsc::Sender<()>,
}

async fn start() -> (Fulcrum, Backend, Go) {
    let (sse, sse_rx) = mpsc::channel(1);
    let (broken, broken_rx) = mpsc::channel(1);
    let u = upstream(Arc::new(Gates {
        sse: Mutex::new(Some(sse_rx)),
        broken: Mutex::new(Some(broken_rx)),
    }))
    .await;
    let f = Fulcrum::start(&toml(&u));
    (f, u, Go { sse, broken })
}

async fn send(f: &Fulcrum, method: &str, host: &str, path: &str, ae: Option<&str>) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    if let Some(ae) = ae {
        b = b.header("accept-encoding", ae);
    }
    let mut c = Client::connect(f.addr("web")).await;
    collect(c.send(b.body(full("")).unwrap()).await.unwrap()).await
}

async fn get(f: &Fulcrum, path: &str, ae: &str) -> Reply {
    send(f, "GET", "example.test", path, Some(ae)).await
}

fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli_decompressor::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(data).unwrap(),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

fn identity(r: &Reply) {
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None, "{:?}", r.headers);
}

#[tokio::test]
async fn gzip_and_br_round_trip_with_the_header_edits() {
    let (f, _u, _go) = start().await;
    let body = json();
    for enc in ["gzip", "br"] {
        let r = get(&f, "/json", enc).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(enc));
        assert_eq!(r.header("content-length"), None);
        assert_eq!(r.header("etag"), Some("W/\"v1\""));
        assert_eq!(r.header("accept-ranges"), None);
        let vary: Vec<_> = r.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin, Accept-Encoding"]);
        assert!(
            r.body.len() < body.len() / 4,
            "{enc}: {} bytes",
            r.body.len()
        );
        assert_eq!(decode(enc, &r.body), body, "{enc} round trip");
    }
    // Not asked for: untouched.
    let r = send(&f, "GET", "example.test", "/json", None).await;
    identity(&r);
    assert_eq!(r.header("content-length"), Some("16384"));
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.body, body);
    // A listed type with parameters and odd case.
    let r = get(&f, "/text", "gzip").await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), body);

    let m = scrape(&f).await;
    for (alg, n) in [("gzip", 2.0), ("br", 1.0)] {
        let labels = [("route", "api"), ("algorithm", alg)];
        assert_eq!(
            metric(&m, "fulcrum_compressed_responses_total", &labels),
            Some(n),
            "{alg}"
        );
    }
}

#[tokio::test]
async fn q_values_and_the_configured_order_decide() {
    let (f, _u, _go) = start().await;
    let cases = [
        ("gzip, br", Some("br")),
        ("br, gzip", Some("br")),
        ("gzip;q=1, br;q=0.5", Some("gzip")),
        ("br;q=0, gzip;q=0.1", Some("gzip")),
        ("br;q=0", None),
        ("br;q=0, *", Some("gzip")),
        ("*", Some("br")),
        ("*;q=0", None),
        ("*;q=0, identity", None),
        ("identity", None),
        ("deflate", None),
        ("zstd", None),
        ("", None),
    ];
    for (ae, want) in cases {
        let r = get(&f, "/json", ae).await;
        assert_eq!(r.status, 200, "{ae}");
        assert_eq!(r.header("content-encoding"), want, "Accept-Encoding: {ae}");
        let got = match want {
            Some(enc) => decode(enc, &r.body),
            None => r.body.to_vec(),
        };
        assert_eq!(got, json(), "{ae}");
    }
    // zstd when the route offers it first; its own list of types.
    let r = send(&f, "GET", "zstd.test", "/json", Some("gzip, zstd, br")).await;
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    assert_eq!(decode("zstd", &r.body), json());
    let r = send(&f, "GET", "zstd.test", "/json", Some("br")).await;
    identity(&r);
    let r = send(&f, "GET", "zstd.test", "/text", Some("zstd")).await;
    identity(&r);
    let m = scrape(&f).await;
    let labels = [("route", "z"), ("algorithm", "zstd")];
    assert_eq!(
        metric(&m, "fulcrum_compressed_responses_total", &labels),
        Some(1.0)
    );
}

#[tokio::test]
async fn skip_rules() {
    let (f, _u, _go) = start().await;
    for path in ["/png", "/no-transform", "/small"] {
        let r = get(&f, path, "gzip, br").await;
        identity(&r);
        assert!(r.header("content-length").is_some(), "{path}");
        assert_eq!(r.header("vary"), None, "{path}");
    }
    // Already encoded: passed on as it is.
    let r = get(&f, "/encoded", "gzip, br").await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, json());
    // A body of unknown length is compressed, however small.
    let r = get(&f, "/stream-small", "gzip").await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), b"{\"small\":true}");
    // The same bytes with a known length under min_size are not.
    let r = get(&f, "/small", "gzip").await;
    assert_eq!(r.body.len(), 1000);
    for code in [204u16, 206, 304] {
        let r = get(&f, &format!("/status/{code}"), "gzip, br").await;
        assert_eq!(r.status, code);
        assert_eq!(r.header("content-encoding"), None, "{code}");
        if code == 206 {
            assert_eq!(r.body, json());
        }
    }
    // Other statuses are compressed.
    let r = get(&f, "/status/503", "gzip").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), json());
}

#[tokio::test]
async fn head_is_not_compressed() {
    let (f, _u, _go) = start().await;
    let r = send(&f, "HEAD", "example.test", "/json", Some("gzip, br")).await;
    identity(&r);
    assert_eq!(r.header("content-length"), Some("16384"));
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn respond_answers_are_compressed() {
    let (f, _u, _go) = start().await;
    let r = send(&f, "GET", "respond.test", "/", Some("gzip")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(decode("gzip", &r.body), RESPOND_BODY.repeat(100).as_bytes());
    let r = send(&f, "GET", "respond.test", "/", None).await;
    identity(&r);
    assert_eq!(r.text(), RESPOND_BODY.repeat(100));
}

/// Reads the response body until the decoded stream contains `want`.
async fn read_until(
    body: &mut hyper::body::Incoming,
    dec: &mut flate2::write::GzDecoder<Vec<u8>>,
    want: &str,
) {
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        loop {
            dec.flush().unwrap();
            if String::from_utf8_lossy(dec.get_ref()).contains(want) {
                return;
            }
            let frame = body
                .frame()
                .await
                .unwrap_or_else(|| panic!("body ended before {want:?}"))
                .unwrap();
            if let Some(d) = frame.data_ref() {
                dec.write_all(d).unwrap();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{want:?} never arrived: compression held it back"));
}

#[tokio::test]
async fn an_event_stream_stays_live() {
    let (f, _u, go) = start().await;
    let req = Request::get("/sse")
        .header("host", "example.test")
        .header("accept-encoding", "gzip")
        .body(full(""))
        .unwrap();
    let mut c = Client::connect(f.addr("web")).await;
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut body = resp.into_body();
    let mut dec = flate2::write::GzDecoder::new(Vec::new());
    // The upstream sends event 2 only after this side has decoded event 1.
    read_until(&mut body, &mut dec, "data: event 1\n\n").await;
    go.sse.send(()).await.unwrap();
    read_until(&mut body, &mut dec, "data: event 2\n\n").await;
    go.sse.send(()).await.unwrap();
    read_until(&mut body, &mut dec, "data: event 3\n\n").await;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            dec.write_all(d).unwrap();
        }
    }
    let all = dec.finish().unwrap();
    assert_eq!(
        String::from_utf8(all).unwrap(),
        "id: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\nid: 3\ndata: event 3\n\n"
    );
}

#[tokio::test]
async fn an_upstream_that_breaks_off_ends_the_response_in_error() {
    let (f, _u, go) = start().await;
    let req = Request::get("/broken")
        .header("host", "example.test")
        .header("accept-encoding", "gzip")
        .body(full(""))
        .unwrap();
    let mut c = Client::connect(f.addr("web")).await;
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    go.broken.send(()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the response ends");
    assert!(got.is_err(), "a broken upstream body must not end cleanly");
}

#[tokio::test]
async fn a_huge_accept_encoding_gets_a_prompt_answer() {
    let (f, _u, _go) = start().await;
    // 60 KB of entries (the default head limit is 64 KiB).
    let junk = "x;q=0.1,".repeat(7_500);
    let started = Instant::now();
    let r = get(&f, "/json", &format!("gzip,{junk}br")).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), json());
    // Entries past the first few are not read: the trailing br is unseen.
    let r = get(&f, "/json", &format!("{junk}br")).await;
    identity(&r);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn check_names_file_line_and_key_for_bad_compress() {
    let dir = temp_dir();
    let bad = r#"[admin]
listen = "127.0.0.1:9901"
[[listener]]
name = "web"
listen = "127.0.0.1:8080"
[[route]]
upstream = "u"
compress = { algorithms = ["gzip", "lz4"], min_size = "1 parsec", level = 9 }
[[route]]
upstream = "u"
compress = "yes"
[[route]]
upstream = "u"
compress = { content_types = ["application/json; charset=utf-8"] }
[upstream.u]
servers = [{ address = "127.0.0.1:1" }]
"#;
    let path = dir.join("bad.toml");
    let (code, err) = check_text(&path, bad);
    assert_eq!(code, 1, "{err}");
    let p = path.display();
    for want in [
        format!("{p}:8:27: route[0].compress.algorithms: unknown algorithm \"lz4\""),
        format!("{p}:8:55: route[0].compress.min_size: size \"1 parsec\""),
        format!("{p}:8:67: route[0].compress.level: unknown key"),
        format!("{p}:11:12: route[1].compress: must be true, false or a table"),
        format!("{p}:14:30: route[2].compress.content_types: \"application/json; charset=utf-8\""),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    // The good forms pass.
    let good = bad
        .replace(
            r#"{ algorithms = ["gzip", "lz4"], min_size = "1 parsec", level = 9 }"#,
            r#"{ algorithms = ["zstd", "gzip"], min_size = 0 }"#,
        )
        .replace("compress = \"yes\"", "compress = false")
        .replace("; charset=utf-8", "");
    let (code, err) = check_text(&path, &good);
    assert_eq!(code, 0, "{err}");
}

/// Over HTTP/2 end to end (h2c both sides), the server's trailers still
/// follow the compressed body.
#[tokio::test]
async fn trailers_follow_a_compressed_body_over_h2() {
    let b = Backend::start(|_req: Request<hyper::body::Incoming>| async move {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
        tx.try_send(Ok(Frame::data(Bytes::from(json())))).unwrap();
        tx.try_send(Ok(Frame::trailers(trailers))).unwrap();
        struct Frames(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);
        impl Body for Frames {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                self.0.poll_recv(cx)
            }
        }
        Response::builder()
            .header("content-type", "application/json")
            .body(Frames(rx).boxed())
            .unwrap()
    })
    .await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\ncompress = true\n\n[upstream.u]\n{}\nprotocol = \"h2c\"\n",
        servers(&[&b])
    )));
    let s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    let mut h2 = h2_client(s).await;
    let req = Request::get("http://example.test/")
        .header("accept-encoding", "br")
        .header("te", "trailers")
        .body(full(""))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["content-encoding"], "br");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(decode("br", &collected.to_bytes()), json());
}
