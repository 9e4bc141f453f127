//! Bodies stream both ways, intact, without being buffered whole; h2c works.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::{mpsc, Notify};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn channel_body(rx: mpsc::Receiver<Bytes>) -> BoxBody {
    let stream =
        tokio_stream(rx).map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)));
    BodyExt::boxed(StreamBody::new(stream))
}

fn tokio_stream(mut rx: mpsc::Receiver<Bytes>) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn echo_backend() -> Backend {
    Backend::start(|req: Request<hyper::body::Incoming>| async move {
        // stream the request body straight back
        let body = req
            .into_body()
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
        Response::new(BodyExt::boxed(body))
    })
    .await
}

#[tokio::test]
async fn ten_mib_both_ways_intact_with_length_and_chunked() {
    let b = echo_backend().await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let data = pattern(10 << 20);
    let mut c = Client::connect(f.addr("web")).await;
    // with Content-Length
    let req = Request::post("/echo")
        .header("host", "x")
        .body(full(data.clone()))
        .unwrap();
    let r = collect(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), data.len());
    assert!(r.body == data, "body corrupted");
    // chunked upload (no Content-Length)
    let (tx, rx) = mpsc::channel(4);
    let req = Request::post("/echo")
        .header("host", "x")
        .body(channel_body(rx))
        .unwrap();
    let send = tokio::spawn({
        let data = data.clone();
        async move {
            for chunk in data.chunks(64 * 1024) {
                tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
            }
        }
    });
    let r = collect(c.send(req).await.unwrap()).await;
    send.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.body == data,
        "chunked body corrupted ({} bytes)",
        r.body.len()
    );
    let seen = b.last();
    assert_eq!(seen.headers["transfer-encoding"], "chunked");
    assert!(!seen.headers.contains_key("content-length"));
}

#[tokio::test]
async fn response_streams_before_backend_finishes() {
    let release = Arc::new(Notify::new());
    let r2 = release.clone();
    let b = Backend::start(move |_req| {
        let release = r2.clone();
        async move {
            let (tx, rx) = mpsc::channel(2);
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"first;")).await.unwrap();
                release.notified().await;
                tx.send(Bytes::from_static(b"second")).await.unwrap();
            });
            Response::new(channel_body(rx))
        }
    })
    .await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let mut c = Client::connect(f.addr("web")).await;
    let req = Request::get("/")
        .header("host", "x")
        .body(full(""))
        .unwrap();
    let mut body = c.send(req).await.unwrap().into_body();
    // The first bytes must arrive while the backend is still holding the rest back.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first bytes were not streamed")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn request_body_streams_before_client_finishes() {
    let got_first = Arc::new(Notify::new());
    let g = got_first.clone();
    let b = Backend::start(move |req: Request<hyper::body::Incoming>| {
        let got_first = g.clone();
        async move {
            let mut body = req.into_body();
            let mut all = Vec::new();
            let mut notified = false;
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame.unwrap().into_data() {
                    all.extend_from_slice(&d);
                }
                if !notified {
                    got_first.notify_one();
                    notified = true;
                }
            }
            Response::new(full(all))
        }
    })
    .await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let mut c = Client::connect(f.addr("web")).await;
    let (tx, rx) = mpsc::channel(1);
    let req = Request::post("/")
        .header("host", "x")
        .body(channel_body(rx))
        .unwrap();
    let sender = tokio::spawn(async move {
        tx.send(Bytes::from_static(b"part1;")).await.unwrap();
        // only send the rest once the backend has seen the first part
        tokio::time::timeout(Duration::from_secs(5), got_first.notified())
            .await
            .expect("request body was not streamed to the backend");
        tx.send(Bytes::from_static(b"part2")).await.unwrap();
    });
    let r = collect(c.send(req).await.unwrap()).await;
    sender.await.unwrap();
    assert_eq!(r.text(), "part1;part2");
}

/// Writes its first write in two pieces (the h2 preface split mid-way), so
/// the listener may see too few bytes to tell HTTP/2 from HTTP/1.
struct SplitFirstWrite {
    inner: tokio::net::TcpStream,
    split: bool,
}

impl tokio::io::AsyncRead for SplitFirstWrite {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SplitFirstWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = if self.split {
            buf.len()
        } else {
            buf.len().min(7)
        };
        self.split = true;
        std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn h2c_with_the_preface_split_across_writes() {
    let b = Backend::named("split").await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let inner = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    inner.set_nodelay(true).unwrap();
    let mut sender = h2_client(SplitFirstWrite {
        inner,
        split: false,
    })
    .await;
    let req = Request::get("http://h2.example.com/")
        .body(full(""))
        .unwrap();
    let r = collect(sender.send_request(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "split");
}

#[tokio::test]
async fn h2c_prior_knowledge_client() {
    let b = Backend::named("via-h2c").await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let stream = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::get(format!("http://h2.example.com/p{i}"))
            .body(full(""))
            .unwrap();
        let r = collect(sender.send_request(req).await.unwrap()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "via-h2c");
        assert!(r.header("x-request-id").is_some());
    }
    let seen = b.last();
    assert_eq!(seen.headers["host"], "h2.example.com");
    assert_eq!(seen.headers["x-forwarded-host"], "h2.example.com");
    assert_eq!(seen.uri, "/p2");
}
