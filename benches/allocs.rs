//! Heap allocations per proxied request, counted, not timed: a keep-alive
//! client sends N and then 2N `GET /1k` through an in-process Fulcrum to a
//! hyper backend running in a child process (so its allocations are not
//! counted); (A(2N) − A(N)) / N cancels start-up. The same client straight
//! to the backend shows the client's own share (≈ 0: it reuses one buffer).
//!
//! `cargo bench --bench allocs` (also runs once, quickly, under
//! `cargo test --all-targets`). Counting uses dhat-rs's allocator, the
//! standard tool for this (the Rust Performance Book's "counting
//! allocations"); `ALLOCS_PROFILE=dhat.json` also writes the sites.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// A backend that answers like nginx serving a static 1 KiB file.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body = Bytes::from(vec![b'x'; 1024]);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("server", "nginx/1.22.1")
                                .header("content-type", "application/octet-stream")
                                .header("last-modified", "Sun, 22 Nov 2026 07:00:00 GMT")
                                .header("accept-ranges", "bytes")
                                .body(Full::new(body))
                                .expect("response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn fulcrum(backend: SocketAddr) -> SocketAddr {
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[global]\naccess_log = false\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nupstream = \"app\"\n\n\
         [upstream.app]\nservers = [{{ address = \"{backend}\" }}]\n"
    );
    let config =
        fulcrum::config::Config::from_toml(Path::new("allocs.toml"), &text).expect("valid config");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = fulcrum::app::run(config, move |b| {
            let _ = tx.send(b.listeners[0].1);
        })
        .await;
        if let Err(e) = r {
            eprintln!("fulcrum: {e}");
        }
    });
    rx.await.expect("fulcrum bound")
}

/// Sends `n` requests on one keep-alive connection, reading each response
/// whole; returns (allocations, bytes) made meanwhile by the whole process.
async fn run(conn: &mut TcpStream, n: usize, buf: &mut Vec<u8>) -> (u64, u64) {
    const REQ: &[u8] =
        b"GET /1k HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: allocs\r\nAccept: */*\r\n\r\n";
    let before = dhat::HeapStats::get();
    for _ in 0..n {
        conn.write_all(REQ).await.expect("write");
        buf.clear();
        let body_start = loop {
            let mut chunk = [0u8; 4096];
            let got = conn.read(&mut chunk).await.expect("read");
            assert!(got > 0, "connection closed");
            buf.extend_from_slice(&chunk[..got]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = std::str::from_utf8(&buf[..body_start]).expect("ascii head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("content-length");
        while buf.len() < body_start + len {
            let mut chunk = [0u8; 4096];
            let got = conn.read(&mut chunk).await.expect("read");
            assert!(got > 0, "connection closed mid-body");
            buf.extend_from_slice(&chunk[..got]);
        }
    }
    let after = dhat::HeapStats::get();
    (
        after.total_blocks - before.total_blocks,
        after.total_bytes - before.total_bytes,
    )
}

/// Per-request (allocations, bytes) through `addr`, by the N/2N method.
async fn per_request(addr: SocketAddr, n: usize) -> (f64, f64) {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let mut buf = Vec::with_capacity(8192);
    run(&mut conn, 200, &mut buf).await; // warm-up: pools, caches
    let (a1, b1) = run(&mut conn, n, &mut buf).await;
    let (a2, b2) = run(&mut conn, 2 * n, &mut buf).await;
    (
        (a2 as f64 - a1 as f64) / n as f64,
        (b2 as f64 - b1 as f64) / n as f64,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--backend") {
        return backend_process();
    }
    // Under `cargo test --all-targets` this runs as a smoke test: fewer requests.
    let n = if std::env::args().any(|a| a == "--bench") {
        2000
    } else {
        200
    };
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--backend")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the backend process");
    let backend: SocketAddr = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("backend address");
        line.trim().parse().expect("backend address")
    };
    // ALLOCS_PROFILE=dhat.json also writes every allocation site (view with
    // DHAT's dh_view.html, or sort the JSON's program points by "tbk").
    let profile = std::env::var_os("ALLOCS_PROFILE");
    let profiler = match &profile {
        Some(path) => dhat::Profiler::builder().file_name(path).build(),
        None => dhat::Profiler::builder().testing().build(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let proxy = fulcrum(backend).await;
        let (direct_allocs, direct_bytes) = per_request(backend, n).await;
        let (allocs, bytes) = per_request(proxy, n).await;
        println!("heap allocations per request (GET /1k, HTTP/1.1 keep-alive, N = {n}):");
        println!("  Fulcrum: {allocs:6.2} allocations, {bytes:8.0} bytes");
        println!("  (the client alone: {direct_allocs:.2} allocations, {direct_bytes:.0} bytes)");
    });
    drop(profiler);
    let _ = child.kill();
    let _ = child.wait();
    // The app's signal handlers and tasks are not torn down; exit directly.
    std::process::exit(0);
}

/// The child: serve until the parent closes our stdin.
fn backend_process() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let addr = backend().await;
        println!("{addr}");
        let mut stdin = tokio::io::stdin();
        let mut b = [0u8; 1];
        let _ = stdin.read(&mut b).await;
    });
}
