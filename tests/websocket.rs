//! WebSocket: HTTP/1.1 Upgrade tunnelled both ways through a plain and a TLS
//! listener, counted in flight while open, untouched by the connection's
//! header/idle timers and by a reload.

mod common;
use common::*;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

async fn round_trip<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("stream open")
        .expect("valid frame");
    assert_eq!(reply, Message::text(format!("echo:{text}")));
}

#[tokio::test]
async fn websocket_echo_through_a_plain_listener() {
    let (echo, _task) = websocket_echo().await;
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"200ms\"\nidle_timeout = \"300ms\"\n\n[[route]]\nupstream = \"ws\"\n\n[upstream.ws]\nservers = [{{ address = \"{echo}\" }}]\n"
    );
    let f = Fulcrum::start(&cfg);
    let tcp = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.test/socket", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    round_trip(&mut ws, "hello").await;
    // Binary, and a message larger than any single read buffer.
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.into_data().len(), big.len() + 5);

    // The tunnel counts as in flight for the server.
    let server = echo.to_string();
    let labels = [("upstream", "ws"), ("server", server.as_str())];
    wait_metric(&f, "fulcrum_upstream_in_flight", &labels, |v| v == 1.0).await;

    // Quiet for longer than header_read_timeout and idle_timeout: those
    // timers belong to HTTP, not to an open tunnel (a 408 written into the
    // tunnel or a close would break the next exchange).
    tokio::time::sleep(Duration::from_millis(700)).await;
    round_trip(&mut ws, "still there").await;

    // A reload does not cut the tunnel.
    assert!(f.reload(&cfg).contains("config reloaded"));
    round_trip(&mut ws, "after reload").await;

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    wait_metric(&f, "fulcrum_upstream_in_flight", &labels, |v| v == 0.0).await;
}

#[tokio::test]
async fn websocket_echo_through_a_tls_listener() {
    let (echo, _task) = websocket_echo().await;
    let ca = TestCa::new();
    let dir = temp_dir();
    write_leaf(&dir, "site", &ca.leaf(&["chat.test"]));
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n\n[[route]]\nupstream = \"ws\"\n\n[upstream.ws]\nservers = [{{ address = \"{echo}\" }}]\n",
        dir.join("site.pem").display().to_string(),
        dir.join("site.key").display().to_string(),
    );
    let f = Fulcrum::start(&cfg);
    let tls = tls_connect(f.addr("web"), "chat.test", ca.client_config(&[b"http/1.1"]))
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.test/socket", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        round_trip(&mut ws, &format!("message {i}")).await;
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn upgrade_refused_by_the_server_is_a_normal_response() {
    // A server that answers an Upgrade request with 200: no tunnel, the
    // connection stays usable for the next request.
    let b = Backend::named("plain").await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"app\"\n\n[upstream.app]\n{}\n",
        servers(&[&b])
    )));
    let mut c = Client::connect(f.addr("web")).await;
    let req = http::Request::get("/")
        .header("host", "x.test")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(full(""))
        .unwrap();
    let r = collect(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "plain");
    assert_eq!(b.last().headers.get("upgrade").unwrap(), "websocket");
    assert_eq!(c.get("/next", "x.test").await.text(), "plain");
}

#[tokio::test]
async fn shutdown_waits_for_an_open_tunnel() {
    let (echo, _task) = websocket_echo().await;
    let f = Fulcrum::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[global]\nshutdown_timeout = \"20s\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nupstream = \"ws\"\n\n[upstream.ws]\nservers = [{{ address = \"{echo}\" }}]\n"
    ));
    let tcp = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://chat.test/socket", tcp)
        .await
        .unwrap();
    round_trip(&mut ws, "before").await;
    f.signal("TERM");
    f.wait_log("SIGTERM", Duration::from_secs(5));
    // The tunnel keeps working while the listener drains.
    round_trip(&mut ws, "during drain").await;
    let mut f = f;
    assert!(
        f.child.try_wait().unwrap().is_none(),
        "exited with a tunnel open"
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = f.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after the tunnel closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}
