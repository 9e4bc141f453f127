//! Hot reload on SIGHUP and graceful shutdown on SIGTERM.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

fn cfg(servers_of: &[&Backend], extra: &str) -> String {
    config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\n{}\n{extra}",
        servers(servers_of)
    ))
}

/// Blocking fulcrum helpers (reload waits on its log) must not stall the
/// test's own backends: run them off the async workers.
fn reload(f: &Fulcrum, toml: &str) -> String {
    tokio::task::block_in_place(|| f.reload(toml))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_servers() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let f = Fulcrum::start(&cfg(&[&a], ""));
    let mut c = Client::connect(f.addr("web")).await;
    assert_eq!(c.get("/", "x").await.text(), "a");
    assert!(reload(&f, &cfg(&[&a, &b], "")).contains("config reloaded"));
    let mut seen = String::new();
    for _ in 0..4 {
        seen += &c.get("/", "x").await.text();
    }
    assert_eq!(seen, "abab");
    assert!(reload(&f, &cfg(&[&b], "")).contains("config reloaded"));
    let a_hits = a.hits();
    for _ in 0..4 {
        assert_eq!(c.get("/", "x").await.text(), "b");
    }
    assert_eq!(a.hits(), a_hits, "a removed server gets no new requests");
    let m = scrape(&f).await;
    assert_eq!(metric(&m, "fulcrum_config_generation", &[]), Some(3.0));
    assert_eq!(
        metric(&m, "fulcrum_config_reloads_total", &[("result", "success")]),
        Some(2.0)
    );
    assert!(
        metric(
            &m,
            "fulcrum_upstream_server_up",
            &[("server", &a.addr.to_string())]
        )
        .is_none(),
        "removed server left the gauges"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reloads_keep_the_old_config() {
    let a = Backend::named("a").await;
    let good = cfg(&[&a], "");
    let f = Fulcrum::start(&good);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = [
        ("invalid toml", "this is = = not toml".to_string()),
        (
            "unknown key",
            good.replace("[upstream.u]", "[upstream.u]\nstrateggy = \"weighted\""),
        ),
        (
            "missing upstream",
            good.replace(
                "upstream = \"u\"\n[upstream.u]",
                "upstream = \"nope\"\n[upstream.u]",
            ),
        ),
        (
            "taken port",
            format!(
                "{good}\n[[listener]]\nname = \"extra\"\nlisten = \"{}\"\n",
                taken.local_addr().unwrap()
            ),
        ),
    ];
    for (i, (what, text)) in bad.iter().enumerate() {
        let line = reload(&f, text);
        assert!(line.contains("config reload failed"), "{what}: {line}");
        assert_eq!(
            get(f.addr("web"), "/").await.text(),
            "a",
            "{what}: old config serves"
        );
        let m = scrape(&f).await;
        assert_eq!(
            metric(&m, "fulcrum_config_reloads_total", &[("result", "failure")]),
            Some((i + 1) as f64)
        );
        assert_eq!(
            metric(&m, "fulcrum_config_last_reload_successful", &[]),
            Some(0.0)
        );
        assert_eq!(metric(&m, "fulcrum_config_generation", &[]), Some(1.0));
    }
    let logs = f.logs();
    assert!(
        logs.contains("route[0].upstream: no upstream named \\\"nope\\\"")
            || logs.contains("no upstream named"),
        "{logs}"
    );
    assert!(logs.contains("strateggy"));
    assert!(reload(&f, &good).contains("config reloaded"));
    let m = scrape(&f).await;
    assert_eq!(
        metric(&m, "fulcrum_config_last_reload_successful", &[]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_in_flight_survive_a_reload() {
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let slow = Backend::start(move |req: Request<hyper::body::Incoming>| {
        let release = r.clone();
        async move {
            if req.uri().path() == "/slow" {
                release.notified().await;
            }
            Response::new(full("slow"))
        }
    })
    .await;
    let down = Backend::start(|req: Request<hyper::body::Incoming>| async move {
        let mut r = Response::new(full("down"));
        if req.uri().path() == "/healthz" {
            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        r
    })
    .await;
    let hc = "[upstream.u.health_check]\ninterval = \"100ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n";
    let f = Fulcrum::start(&cfg(&[&slow, &down], hc));
    eventually(Duration::from_secs(5), "down marked down", || async {
        server_state(&f, "u", down.addr).await == "down"
    })
    .await;
    // a request in flight on `slow`
    let addr = f.addr("web");
    let inflight = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.get("/slow", "x").await
    });
    eventually(Duration::from_secs(5), "request reaches slow", || async {
        slow.hits() >= 1
    })
    .await;
    // reload with a different check interval (probes restart) and timeouts
    let hc2 = hc.replace("100ms", "5s");
    assert!(reload(
        &f,
        &cfg(
            &[&slow, &down],
            &format!("response_timeout = \"30s\"\n{hc2}")
        )
    )
    .contains("config reloaded"));
    assert_eq!(
        server_state(&f, "u", down.addr).await,
        "down",
        "health state kept"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&get(f.admin, "/status.json").await.body).unwrap();
    let s = status["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == slow.addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(s["in_flight"], 1, "in-flight count kept: {s}");
    release.notify_one();
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request finished on its old table");
    assert_eq!(r.text(), "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_nothing() {
    let b1 = Backend::named("1").await;
    let b2 = Backend::named("2").await;
    let b3 = Backend::named("3").await;
    let conf_a = format!(
        "{}\n[[listener]]\nname = \"extra_a\"\nlisten = \"127.0.0.1:0\"\n",
        cfg(&[&b1, &b2], "")
    );
    let conf_b = format!(
        "{}\n[[listener]]\nname = \"extra_b\"\nlisten = \"127.0.0.1:0\"\n",
        cfg(&[&b2, &b3], "strategy = \"weighted\"")
    );
    let f = Fulcrum::start(&conf_a);
    let addr = f.addr("web");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    // 12 HTTP/1.1 keep-alive clients
    for _ in 0..12 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get("/")
                    .header("host", "x")
                    .body(full(""))
                    .unwrap();
                match c.send(req).await {
                    Ok(r) if r.status() == 200 => {
                        collect(r).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        c = Client::connect(addr).await;
                    }
                }
            }
        }));
    }
    // 4 HTTP/2 connections with 4 concurrent streams each
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let mut streams = Vec::new();
            for _ in 0..4 {
                let (stop, ok, failed, mut sender) =
                    (stop.clone(), ok.clone(), failed.clone(), sender.clone());
                streams.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let req = Request::get("http://x/").body(full("")).unwrap();
                        match sender.send_request(req).await {
                            Ok(r) if r.status() == 200 => {
                                collect(r).await;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for s in streams {
                s.await.unwrap();
            }
        }));
    }
    // 20 reloads alternating between two configs, paced over ~6 s of load
    let started = Instant::now();
    for i in 0..20 {
        let line = reload(&f, if i % 2 == 0 { &conf_b } else { &conf_a });
        assert!(line.contains("config reloaded"), "{line}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "reload under load: {ok} ok, {failed} failed in {:?}",
        started.elapsed()
    );
    assert_eq!(failed, 0);
    assert!(ok > 1000, "load generator too slow to mean anything: {ok}");
    assert!(b1.hits() > 0 && b2.hits() > 0 && b3.hits() > 0);
    let m = scrape(&f).await;
    assert_eq!(metric(&m, "fulcrum_config_generation", &[]), Some(21.0));
}

/// A backend that accepts an HTTP/1.1 WebSocket upgrade and then echoes bytes
/// (no WebSocket framing: Fulcrum only tunnels them).
async fn upgrade_echo_backend() -> Backend {
    Backend::start(|mut req: Request<hyper::body::Incoming>| async move {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = hyper_util::rt::TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(""))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_tunnel_survives_reloads() {
    let b = upgrade_echo_backend().await;
    let other = Backend::named("other").await;
    let f = Fulcrum::start(&cfg(&[&b], ""));
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(
        b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for i in 0..5 {
        // alternate the upstream's servers: the tunnel is pinned to its server
        let next = if i % 2 == 0 {
            cfg(&[&other], "")
        } else {
            cfg(&[&b], "")
        };
        assert!(reload(&f, &next).contains("config reloaded"));
        let msg = format!("ping-{i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_finish_refuses_new_and_exits_0() {
    let b = Backend::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Response::new(full("done"))
    })
    .await;
    let f = Fulcrum::start(&cfg(&[&b], "").replace(
        "[[listener]]",
        "[global]\nshutdown_timeout = \"10s\"\n\n[[listener]]",
    ));
    let addr: SocketAddr = f.addr("web");
    let admin = f.admin;
    // an idle keep-alive connection, to be closed by the drain
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let inflight = tokio::spawn(async move { Client::connect(addr).await.get("/slow", "x").await });
    eventually(
        Duration::from_secs(5),
        "slow request reaches backend",
        || async { b.hits() >= 2 },
    )
    .await;
    let started = Instant::now();
    f.signal("TERM");
    eventually(Duration::from_secs(2), "/ready answers 503", || async {
        match tokio::net::TcpStream::connect(admin).await {
            Ok(_) => get(admin, "/ready").await.status == 503,
            Err(_) => true,
        }
    })
    .await;
    eventually(
        Duration::from_secs(2),
        "new connections refused",
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    // the idle keep-alive connection is closed
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "idle connection closed by the drain");
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "done");
    let mut f = f;
    let code = tokio::task::block_in_place(|| f.terminate_wait());
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_a_silent_new_connection_at_once() {
    let b = Backend::named("b").await;
    // Long enough that waiting for either would fail the time bound below.
    let f = Fulcrum::start(
        &with_listener_settings(&cfg(&[&b], ""), "header_read_timeout = \"30s\"").replace(
            "[[listener]]",
            "[global]\nshutdown_timeout = \"30s\"\n\n[[listener]]",
        ),
    );
    let mut silent = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    wait_metric(
        &f,
        "fulcrum_connections_active",
        &[("listener", "web")],
        |v| v == 1.0,
    )
    .await;
    let started = Instant::now();
    f.signal("TERM");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent connection is closed by the drain")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let mut f = f;
    let code = tokio::task::block_in_place(|| f.terminate_wait());
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
}
