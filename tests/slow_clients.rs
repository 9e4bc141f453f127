//! Slow and greedy clients over raw sockets: slowloris and slow bodies get
//! 408 at their timeouts, a client that never reads its response is cut at
//! the write-stall timeout with memory bounded, 10,000 idle connections are
//! held while the admin endpoints and honest clients are served, and
//! `max_connections` / `max_connections_per_client` behave as SPEC says, and a
//! client that half-closes after its request still gets the response.

mod common;
use common::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn cfg(listener: &str, rest: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n{listener}\n\n{rest}"
    )
}

fn route(b: &Backend) -> String {
    format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\n{}\n",
        servers(&[b])
    )
}

async fn honest(f: &Fulcrum) {
    assert_eq!(
        get(f.addr("web"), "/").await.status,
        200,
        "honest client served"
    );
}

async fn admin_ok(f: &Fulcrum) {
    assert_eq!(get(f.admin, "/health").await.status, 200);
    assert!(scrape(f).await.contains("fulcrum_connections_active"));
}

async fn active(f: &Fulcrum) -> f64 {
    metric(
        &scrape(f).await,
        "fulcrum_connections_active",
        &[("listener", "web")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn slowloris_and_slow_body_get_408() {
    let b = draining_backend().await;
    let f = Fulcrum::start(&cfg(
        "header_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"",
        &route(&b),
    ));
    // Slowloris: one byte of the head every 100 ms, never finishing.
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut out = Vec::new();
    for byte in head.iter() {
        if s.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            out.extend_from_slice(&buf[..n]);
            if n == 0 {
                break;
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&out), Some(408), "{out}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    honest(&f).await;

    // Slow body: the head and 2 of 10 bytes, then nothing.
    let started = Instant::now();
    let (out, closed) = raw_closed(
        f.addr("web"),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&out), Some(408), "{out}");
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(4));
    honest(&f).await;
    assert_eq!(
        b.hits(),
        3,
        "the slow body reached the server once, honest twice"
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_with_memory_bounded() {
    // The server streams 256 MiB as fast as it is taken; count what it
    // managed to hand over.
    let pushed = Arc::new(AtomicUsize::new(0));
    let p = pushed.clone();
    let b = Backend::start(move |req: http::Request<hyper::body::Incoming>| {
        let p = p.clone();
        async move {
            if req.uri().path() != "/big" {
                return http::Response::new(full("ok"));
            }
            let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::iter((0..4096).map(move |_| {
                p.fetch_add(chunk.len(), Ordering::Relaxed);
                Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))
            }));
            use http_body_util::BodyExt;
            http::Response::new(
                http_body_util::StreamBody::new(stream)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                    .boxed(),
            )
        }
    })
    .await;
    let f = Fulcrum::start(&cfg("idle_timeout = \"1s\"", &route(&b)));
    honest(&f).await;
    let rss_before = rss_kib(f.pid());

    // A small receive buffer, and never a read.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the response started", || async {
        pushed.load(Ordering::Relaxed) > 0
    })
    .await;
    // Stalled: cut within idle_timeout (plus slack), not after 256 MiB.
    eventually(
        Duration::from_secs(6),
        "the stalled connection closed",
        || async { active(&f).await == 0.0 },
    )
    .await;
    let pushed = pushed.load(Ordering::Relaxed);
    let rss_after = rss_kib(f.pid());
    assert!(
        pushed < 32 << 20,
        "the server pushed {pushed} bytes into a stalled client"
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    eprintln!("slow reader: server pushed {pushed} bytes; RSS {rss_before} -> {rss_after} KiB");
    honest(&f).await;
    drop(s);
}

#[tokio::test]
async fn ten_thousand_idle_connections_and_admin_keeps_answering() {
    const N: usize = 10_000;
    let b = Backend::named("ok").await;
    let f = Fulcrum::start(&cfg(
        "max_connections = 10100\nheader_read_timeout = \"60s\"",
        &route(&b),
    ));
    let rss_before = rss_kib(f.pid());
    let started = Instant::now();
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        conns.push(TcpStream::connect(f.addr("web")).await.unwrap());
    }
    eventually(
        Duration::from_secs(20),
        "10,000 connections accepted",
        || async { active(&f).await >= N as f64 },
    )
    .await;
    let rss = rss_kib(f.pid());
    eprintln!(
        "{N} idle connections in {:?}; fulcrum RSS {rss_before} -> {rss} KiB ({} bytes/connection)",
        started.elapsed(),
        (rss.saturating_sub(rss_before)) * 1024 / N as u64
    );
    admin_ok(&f).await;
    honest(&f).await;
    assert_eq!(get(f.admin, "/ready").await.status, 200);
    drop(conns);
    eventually(Duration::from_secs(20), "connections released", || async {
        active(&f).await == 0.0
    })
    .await;
}

#[tokio::test]
async fn max_connections_queues_and_per_client_limit_rejects() {
    let b = Backend::named("ok").await;
    let f = Fulcrum::start(&cfg(
        "max_connections = 20\nmax_connections_per_client = 8\nheader_read_timeout = \"60s\"",
        &route(&b),
    ));
    // Per client: the 9th connection from 127.0.0.1 is closed at once.
    let mut mine = Vec::new();
    for _ in 0..8 {
        mine.push(TcpStream::connect(f.addr("web")).await.unwrap());
    }
    eventually(Duration::from_secs(5), "8 accepted", || async {
        active(&f).await == 8.0
    })
    .await;
    let (out, closed) = raw_closed(
        f.addr("web"),
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(closed && out.is_empty(), "{out:?}");
    let m = scrape(&f).await;
    assert_eq!(
        metric(
            &m,
            "fulcrum_connections_rejected_total",
            &[
                ("listener", "web"),
                ("reason", "max_connections_per_client")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    // Other client IPs fill the rest of max_connections.
    let web = f.addr("web");
    let from = move |last: u8| async move {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(format!("127.0.0.{last}:0").parse().unwrap())
            .unwrap();
        s.connect(web).await.unwrap()
    };
    let mut others = Vec::new();
    for i in 0..12u8 {
        others.push(from(10 + i).await);
    }
    eventually(Duration::from_secs(5), "20 accepted", || async {
        active(&f).await == 20.0
    })
    .await;
    // Full: a new client waits in the accept queue, not refused...
    let mut waiting = from(50).await;
    waiting
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf))
            .await
            .is_err(),
        "served past max_connections"
    );
    // ...while the admin listener answers...
    admin_ok(&f).await;
    // ...and it is served as soon as a slot frees.
    drop(others.pop());
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), waiting.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&out)), Some(200));
    drop(mine);
    drop(others);
    eventually(Duration::from_secs(5), "slots released", || async {
        active(&f).await == 0.0
    })
    .await;
    honest(&f).await;
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_response() {
    // The backend answers only once the client has shut its write side, so
    // the FIN is certain to arrive while the request is in flight.
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<()>();
    let got_tx = Arc::new(std::sync::Mutex::new(Some(got_tx)));
    let release = Arc::new(tokio::sync::Notify::new());
    let b = {
        let release = release.clone();
        Backend::start(move |_req| {
            let got_tx = got_tx.clone();
            let release = release.clone();
            async move {
                let released = release.notified();
                if let Some(tx) = got_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                released.await;
                hyper::Response::new(full("after the half-close"))
            }
        })
        .await
    };
    let f = Fulcrum::start(&cfg("", &route(&b)));
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    got_rx.await.unwrap();
    s.shutdown().await.unwrap();
    release.notify_one();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("response within 10 s")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("after the half-close"), "{out}");
}
