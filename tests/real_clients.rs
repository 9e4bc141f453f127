//! Regressions found by driving Fulcrum with third-party clients, servers
//! and attack tools: h2c upgrade smuggling, Fulcrum's own headers named in
//! `Connection`, HTTP/2 upstreams (nginx, GOAWAY), uncounted parser errors,
//! header-count limits, requests during shutdown, `Expect: 100-continue`,
//! `check` warnings and HTTP/2 GET bodies.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw HTTP/1.1 server: reads one request head per connection, records
/// it, and writes `answer(head)`.
async fn raw_backend(
    answer: fn(&str) -> String,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                h.lock().unwrap().push(head.clone());
                let _ = s.write_all(answer(&head).as_bytes()).await;
                // Hold the connection as a tunnel would, until the peer goes.
                let _ = s.read(&mut chunk).await;
            });
        }
    });
    (addr, heads)
}

fn upstream_to(addr: SocketAddr) -> String {
    config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{{ address = \"{addr}\" }}]\n"
    ))
}

// 1. h2c upgrade smuggling.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_never_forwarded_nor_answered_101() {
    // A backend that, like hypercorn, switches to HTTP/2 when asked.
    let (backend, heads) = raw_backend(|head| {
        if head.contains("upgrade: h2c") {
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n".into()
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain".into()
        }
    })
    .await;
    let f = Fulcrum::start(&upstream_to(backend));
    let out = raw(
        f.addr("web"),
        b"GET /public HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("plain"), "{out}");
    let head = heads.lock().unwrap()[0].clone();
    assert!(
        !head.contains("upgrade"),
        "upgrade reached the backend: {head}"
    );
    assert!(!head.contains("http2-settings"), "{head}");

    // Upgrade lists with h2c in them are not tunnelled either.
    let out = raw(
        f.addr("web"),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrequested_101_from_the_server_is_a_502() {
    let (backend, _) = raw_backend(|_| {
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n".into()
    })
    .await;
    let f = Fulcrum::start(&upstream_to(backend));
    let out = raw(
        f.addr("web"),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    f.wait_log("invalid upstream response", Duration::from_secs(5));
}

// 2. Fulcrum's own headers survive `Connection`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_strip_fulcrums_own_headers() {
    let b = Backend::named("b").await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let r = get_with(
        f.addr("web"),
        "/",
        &[(
            "connection",
            "X-Request-Id, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host",
        )],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = b.last().headers;
    let id = r.header("x-request-id").expect("response id");
    assert_eq!(seen.get("x-request-id").unwrap(), id);
    assert_eq!(seen.get("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(seen.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(seen.get("x-forwarded-host").unwrap(), "example.test");

    // A client's own id is kept, even when it names it in Connection.
    let r = get_with(
        f.addr("web"),
        "/",
        &[("x-request-id", "mine-123"), ("connection", "x-request-id")],
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("mine-123"));
    assert_eq!(b.last().headers.get("x-request-id").unwrap(), "mine-123");
}

// 3. nginx as an HTTP/2 upstream.

/// Debian's nginx on a loopback port, stopped by PID.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_nginx_h2c() -> Nginx {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is installed (.ci/run installs it with apt)");
    let dir = temp_dir();
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 128; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         server {{\n  listen 127.0.0.1:{port} http2;\n\
         location / {{ return 200 \"nginx $server_protocol $host\\n\"; }}\n }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let n = Nginx { child, addr };
    eventually(Duration::from_secs(10), "nginx listening", || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_as_an_h2c_upstream_gets_no_duplicate_host() {
    let nginx = start_nginx_h2c().await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"n\"\n[upstream.n]\nprotocol = \"h2c\"\nservers = [{{ address = \"{}\" }}]\n",
        nginx.addr
    )));
    for _ in 0..3 {
        let r = get_host(f.addr("web"), "/", "app.example").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "nginx HTTP/2.0 app.example\n");
    }
}

// 4. GOAWAY from an HTTP/2 upstream.

/// An h2c server (the h2 crate) that ends each connection gracefully after
/// `every` requests, as hypercorn does after 1,000 and gRPC after
/// `max_connection_age`: GOAWAY, PING, then a GOAWAY whose last-stream-id
/// refuses the streams the client opened in between.
fn answer(mut respond: h2::server::SendResponse<Bytes>) {
    tokio::spawn(async move {
        if let Ok(mut send) = respond.send_response(Response::new(()), false) {
            let _ = send.send_data(Bytes::from_static(b"ok"), true);
        }
    });
}

async fn goaway_backend(every: usize) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (c, s) = (conns.clone(), served.clone());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let served = s.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                // h2's server drops streams still waiting to be accepted
                // when it closes (server.rs: "TODO: drop any pending
                // streams"), though its GOAWAY's last-stream-id counts them
                // as processed. A real server answers them: the stream that
                // starts the shutdown is held open (so the connection stays)
                // until a PING sent after the GOAWAY comes back (the client
                // sends no stream after it has seen a GOAWAY, and TCP keeps
                // order) and every stream received before it is accepted.
                let mut pings = conn.ping_pong();
                let mut held = None;
                let mut pong = None;
                let mut n = 0;
                loop {
                    let accepted = match (held.is_some(), pong.as_mut()) {
                        (true, Some(p)) => tokio::select! {
                            a = conn.accept() => a,
                            _ = p => {
                                pong = None;
                                continue;
                            }
                        },
                        (true, None) => {
                            // PONG seen: take what is queued, then let go.
                            match tokio::time::timeout(Duration::ZERO, conn.accept()).await {
                                Ok(a) => a,
                                Err(_) => {
                                    answer(held.take().unwrap());
                                    continue;
                                }
                            }
                        }
                        (false, _) => conn.accept().await,
                    };
                    let Some(accepted) = accepted else { break };
                    // A stream error (a reset) ends that stream, not the
                    // connection: the others still get their answers.
                    let Ok((_req, respond)) = accepted else {
                        continue;
                    };
                    n += 1;
                    served.fetch_add(1, Ordering::SeqCst);
                    if n == every {
                        conn.graceful_shutdown();
                        held = Some(respond);
                        pong = pings.take().map(|mut p| {
                            Box::pin(async move {
                                let _ = p.ping(h2::Ping::opaque()).await;
                            })
                        });
                    } else {
                        answer(respond);
                    }
                }
                if let Some(h) = held.take() {
                    answer(h);
                }
                // Until every stream it took is answered.
                let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
            });
        }
    });
    (addr, conns, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_goaway_loses_no_request_and_opens_one_connection_at_a_time() {
    let (backend, conns, served) = goaway_backend(100).await;
    let f = Fulcrum::start_with_env(&config(&format!(
        "[[route]]\nupstream = \"g\"\n[upstream.g]\nprotocol = \"h2c\"\nservers = [{{ address = \"{backend}\" }}]\n"
    )), &[("RUST_LOG", "info,fulcrum=debug")]);
    let addr = f.addr("web");
    // 10 client connections x 100 concurrent streams, three rounds; GET and
    // bodiless POST alike (an unprocessed stream is safe to resend whatever
    // the method).
    let mut failures = Vec::new();
    for round in 0..3 {
        let mut tasks = Vec::new();
        for c in 0..10 {
            tasks.push(tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let sender = h2_client(stream).await;
                let mut streams = Vec::new();
                for i in 0..100 {
                    let mut sender = sender.clone();
                    streams.push(tokio::spawn(async move {
                        let method = if i % 2 == 0 { "GET" } else { "POST" };
                        let req = Request::builder()
                            .method(method)
                            .uri(format!("http://x/{round}/{c}/{i}"))
                            .body(full(""))
                            .unwrap();
                        sender.ready().await.unwrap();
                        match sender.send_request(req).await {
                            Ok(r) => {
                                let status = r.status();
                                let body = r.into_body().collect().await.unwrap().to_bytes();
                                (status == 200 && body == "ok")
                                    .then_some(())
                                    .ok_or(format!("{status} {body:?}"))
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }));
                }
                let mut bad = Vec::new();
                for s in streams {
                    if let Err(e) = s.await.unwrap() {
                        bad.push(e);
                    }
                }
                bad
            }));
        }
        for t in tasks {
            failures.extend(t.await.unwrap());
        }
    }
    if !failures.is_empty() {
        for l in f.logs().lines().filter(|l| l.contains("DEBUG")).take(4) {
            eprintln!("LOG {l}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let opened = conns.load(Ordering::SeqCst);
    // 3,000 requests and a GOAWAY after every 100 (a connection takes more
    // before its final GOAWAY): at most 30 connections are needed, and one
    // per waiting request would be hundreds.
    assert!(
        (3..=45).contains(&opened),
        "{opened} upstream connections for {} requests",
        served.load(Ordering::SeqCst)
    );
    f.wait_log("GOAWAY", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_opens_one_h2_connection() {
    let (backend, conns, _) = goaway_backend(usize::MAX).await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"g\"\n[upstream.g]\nprotocol = \"h2c\"\nservers = [{{ address = \"{backend}\" }}]\n"
    )));
    let replies = load(f.addr("web"), 50, 4).await;
    assert!(replies.iter().all(|r| r == "ok"), "{replies:?}");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

// 5. Every response is counted, the parser's own included.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_errors_and_head_timeouts_are_counted_and_logged() {
    let b = Backend::named("b").await;
    let cfg = one_route(&[&b]).replace(
        "[[listener]]",
        "[global]\naccess_log = true\n\n[[listener]]",
    );
    let f = Fulcrum::start(&with_listener_settings(
        &cfg,
        "header_read_timeout = \"300ms\"",
    ));
    let addr = f.addr("web");
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    ] {
        let out = raw(addr, bad, Duration::from_secs(2)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..120 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let out = raw(addr, many.as_bytes(), Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // A slow head: part of it, then nothing.
    let out = raw(addr, b"GET / HTTP/1.1\r\nHo", Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(
        out.contains("x-request-id: "),
        "every response carries an id: {out}"
    );

    let labels = |code| [("listener", "web"), ("upstream", ""), ("code", code)];
    wait_metric(&f, "fulcrum_requests_total", &labels("400"), |v| v == 3.0).await;
    wait_metric(&f, "fulcrum_requests_total", &labels("431"), |v| v == 1.0).await;
    wait_metric(&f, "fulcrum_requests_total", &labels("408"), |v| v == 1.0).await;
    f.wait_log("status=408", Duration::from_secs(5));
}

// 6. Header-count limits, both directions, both protocols.

async fn cookie_backend(n: usize) -> Backend {
    Backend::start(move |_req| async move {
        let mut r = Response::builder();
        for i in 0..n {
            r = r.header("set-cookie", format!("c{i}=v"));
        }
        r.body(full("cookies")).unwrap()
    })
    .await
}

fn many_headers(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("x-h{i}"), "v".to_string()))
        .collect()
}

async fn h2c_get(addr: SocketAddr, headers: &[(String, String)]) -> StatusCode {
    let mut sender = h2_client(TcpStream::connect(addr).await.unwrap()).await;
    let mut req = Request::get("http://x/").body(full("")).unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::try_from(k.as_str()).unwrap(),
            v.parse().unwrap(),
        );
    }
    sender.send_request(req).await.unwrap().status()
}

async fn h1_get(addr: SocketAddr, headers: &[(String, String)]) -> StatusCode {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    get_with(addr, "/", &h).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_count_limits_are_configurable_and_alike_over_h1_and_h2() {
    let b = cookie_backend(150).await;
    // Raw, so that it takes any number of request fields itself.
    let (small, _) = raw_backend(|_| "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into()).await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\npath_prefix = \"/cookies\"\nupstream = \"c\"\n\
         [[route]]\nupstream = \"s\"\n\
         [upstream.c]\nservers = [{{ address = \"{}\" }}]\n\
         [upstream.s]\nservers = [{{ address = \"{}\" }}]\n",
        b.addr, small
    )));
    let addr = f.addr("web");
    // 150 response fields > the default 100: 502, with the reason logged.
    assert_eq!(get(addr, "/cookies").await.status, 502);
    let line = f.wait_log("invalid upstream response", Duration::from_secs(5));
    assert!(
        line.contains("upstream=c") && line.contains(&b.addr.to_string()),
        "{line}"
    );
    // 120 small request fields (~1.5 KB): 431 over HTTP/1 and HTTP/2 alike.
    let req = many_headers(120);
    assert_eq!(h1_get(addr, &req).await, 431);
    assert_eq!(h2c_get(addr, &req).await, 431);
    assert_eq!(h1_get(addr, &many_headers(50)).await, 200);
    assert_eq!(h2c_get(addr, &many_headers(50)).await, 200);
    drop(f);

    let f = Fulcrum::start(&with_listener_settings(
        &config(&format!(
            "[[route]]\npath_prefix = \"/cookies\"\nupstream = \"c\"\n\
             [[route]]\nupstream = \"s\"\n\
             [upstream.c]\nmax_header_count = 200\nservers = [{{ address = \"{}\" }}]\n\
             [upstream.s]\nservers = [{{ address = \"{}\" }}]\n",
            b.addr, small
        )),
        "max_header_count = 200",
    ));
    let addr = f.addr("web");
    // (Raw: hyper's own client would refuse 150 fields.)
    let out = raw(
        addr,
        b"GET /cookies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(out.matches("set-cookie").count(), 150);
    assert_eq!(h1_get(addr, &req).await, 200);
    assert_eq!(h2c_get(addr, &req).await, 200);
}

// 7. Requests that reach a live connection during shutdown are served.

/// An HPACK literal header field without indexing, new name, no Huffman.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn h2_get_frame(stream: u32, path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    hpack_literal(&mut block, ":method", "GET");
    hpack_literal(&mut block, ":scheme", "http");
    hpack_literal(&mut block, ":path", path);
    hpack_literal(&mut block, ":authority", "x");
    let mut f = Vec::new();
    f.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
    f.push(1); // HEADERS
    f.push(0x5); // END_STREAM | END_HEADERS
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(&block);
    f
}

/// Reads frames until a HEADERS frame for `stream`; returns the first byte
/// of its header block (0x88 is `:status: 200` from HPACK's static table).
async fn first_status_byte(s: &mut TcpStream, stream: u32) -> Option<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, id) = (buf[3], u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]));
            if kind == 1 && id & 0x7fff_ffff == stream {
                return buf.get(9).copied();
            }
            buf.drain(..9 + len);
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_serves_a_request_on_a_live_h2_connection() {
    let b = Backend::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Response::new(full("done"))
    })
    .await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let admin = f.admin;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    hello.extend(h2_get_frame(1, "/slow"));
    s.write_all(&hello).await.unwrap();
    eventually(Duration::from_secs(5), "slow request in flight", || async {
        b.hits() >= 1
    })
    .await;
    f.signal("TERM");
    wait_draining(admin).await;
    // A new stream on the live connection, before Fulcrum's final GOAWAY
    // (which waits for the PING this client never answers).
    s.write_all(&h2_get_frame(3, "/")).await.unwrap();
    assert_eq!(first_status_byte(&mut s, 3).await, Some(0x88), "not a 200");
    assert_eq!(first_status_byte(&mut s, 1).await, Some(0x88), "slow one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_serves_an_http1_request_that_arrives_during_the_drain() {
    let b = Backend::named("done").await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let admin = f.admin;
    // A live connection with half a request head: not idle, so the drain
    // lets it finish its request.
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    wait_metric(
        &f,
        "fulcrum_connections_active",
        &[("listener", "web")],
        |v| v >= 1.0,
    )
    .await;
    f.signal("TERM");
    wait_draining(admin).await;
    // The rest of the head arrives after SIGTERM: served, then closed.
    s.write_all(b"\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(out.starts_with("http/1.1 200"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert!(out.ends_with("done"), "{out}");
}

// 8. Expect: 100-continue reaches the server.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_decided_by_the_server() {
    // Refuses POST on its head (without reading the body), echoes PUT's size.
    let b = Backend::start(|req: Request<hyper::body::Incoming>| async move {
        if req.method() == "POST" {
            let mut r = Response::new(full("no\n"));
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            return r;
        }
        let n = req.into_body().collect().await.unwrap().to_bytes().len();
        Response::new(full(format!("{n}")))
    })
    .await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let addr = f.addr("web");

    // Refused on the head: the client hears the 405 and no 100 first.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let mut whole = buf[..n].to_vec();
    // The whole refusal arrives, the body the server sent with it too
    // (refusing the gate must not cut the response short).
    while !whole.ends_with(b"\r\n\r\nno\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the rest of the 405")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&whole));
        whole.extend_from_slice(&buf[..n]);
    }
    let first = String::from_utf8_lossy(&whole);
    assert!(first.starts_with("HTTP/1.1 405"), "{first}");
    assert!(first.ends_with("\r\n\r\nno\n"), "{first}");
    assert_eq!(b.last().headers.get("expect").unwrap(), "100-continue");

    // Accepted: the server's 100 reaches the client, then the body flows.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    s.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    while !rest.ends_with("\r\n\r\n5") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {rest}");
        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        rest.contains("200 OK") || interim.contains("200 OK"),
        "{rest}"
    );
}

// 9. `check` prints its warnings.

#[test]
fn check_prints_warnings_and_exits_0() {
    let dir = temp_dir();
    let path = dir.join("f.toml");
    std::fs::write(
        &path,
        config(
            "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"round-robin\"\n\
             servers = [{ address = \"127.0.0.1:1\", weight = 3 }]\n",
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "config ok\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("weights are ignored"),
        "{err}"
    );
    assert!(err.contains("f.toml:"), "names the file and line: {err}");
}

// 10. An HTTP/2 GET with a body of unknown length keeps its body.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_get_body_without_length_reaches_an_http1_server() {
    let b = Backend::start(|req: Request<hyper::body::Incoming>| async move {
        let n = req.into_body().collect().await.unwrap().to_bytes().len();
        Response::new(full(format!("{n}")))
    })
    .await;
    let f = Fulcrum::start(&one_route(&[&b]));
    let mut sender = h2_client(TcpStream::connect(f.addr("web")).await.unwrap()).await;
    for method in ["GET", "POST", "OPTIONS"] {
        // A streamed body: no exact size, so no content-length is sent.
        let chunks = futures_util::stream::iter((0..8).map(|_| {
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![b'a'; 100])))
        }));
        let body = http_body_util::StreamBody::new(chunks)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            .boxed();
        let req = Request::builder()
            .method(method)
            .uri("http://x/_search")
            .body(body)
            .unwrap();
        assert!(!req.headers().contains_key("content-length"));
        let r = collect(sender.send_request(req).await.unwrap()).await;
        assert_eq!(r.status, 200, "{method}");
        assert_eq!(r.text(), "800", "{method}");
    }
}
