//! `fulcrum demo`: three loopback backends answering with their name, and a
//! proxy in front of them built from a generated config through `app::run`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::config::Config;

/// Starts one demo backend on an ephemeral loopback port.
pub async fn spawn_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let body = format!("{name}: {} {}\n", req.method(), req.uri());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The demo's config: a proxy on `port`, admin on `port + 1`.
pub fn demo_config(port: u16, backends: &[SocketAddr]) -> String {
    let servers: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"

[[listener]]
name = "demo"
listen = "127.0.0.1:{port}"

[[route]]
upstream = "demo"

[upstream.demo]
strategy = "round-robin"
servers = [{servers}]
connect_timeout = "1s"
response_timeout = "10s"

[upstream.demo.health_check]
path = "/healthz"
interval = "2s"
timeout = "1s"
"#,
        admin = port.wrapping_add(1),
        servers = servers.join(", ")
    )
}

pub async fn run(port: u16) -> Result<(), String> {
    // Hold the proxy and admin ports while the backends take ephemeral ports,
    // so the kernel can't hand one of ours to a backend.
    let held: Vec<_> = [port, port.wrapping_add(1)]
        .into_iter()
        .filter_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
        .collect();
    let mut backends = Vec::new();
    for name in ["backend-1", "backend-2", "backend-3"] {
        backends.push(spawn_backend(name).await.map_err(|e| e.to_string())?);
    }
    drop(held);
    let text = demo_config(port, &backends);
    let config = Config::from_toml(Path::new("<demo>"), &text).map_err(|e| e.to_string())?;
    crate::app::run(config, |bound| {
        let proxy = bound.listeners[0].1;
        let admin = bound.admin;
        println!("fulcrum demo: proxy on http://{proxy}, admin on http://{admin}");
        for b in &backends {
            println!("  backend at {b}");
        }
        println!("try:");
        println!("  curl -s http://{proxy}/hello          # repeat: backend-1, -2, -3 in turn");
        println!("  curl -si http://{proxy}/ | grep -i x-request-id");
        println!("  curl --http2-prior-knowledge -s http://{proxy}/h2c");
        println!("  curl -s http://{admin}/health");
        println!("  curl -s http://{admin}/ready");
        println!("  curl -s http://{admin}/metrics | grep fulcrum_requests_total");
        println!("  curl -s http://{admin}/status.json");
        println!("  open http://{admin}/status in a browser: the live status page");
        println!("stop with Ctrl-C");
    })
    .await
    .map_err(|e| e.to_string())
}
