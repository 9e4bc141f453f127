//! PROXY protocol v1/v2 on listeners with `proxy_protocol = true`: the
//! header's source becomes the client IP (X-Forwarded-For, access log,
//! per-client limits, hashing); connections without a valid header are
//! closed and counted as `reason="proxy_protocol"`; TLS follows the header.

mod common;
use common::*;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn pp_config(listener_extra: &str, b: &Backend) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[global]\naccess_log = true\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\n{listener_extra}\n[[route]]\nupstream = \"app\"\n\n[upstream.app]\n{}\n",
        servers(&[b])
    )
}

/// A connection that has sent `header`, ready for HTTP on top.
async fn connect_with(addr: std::net::SocketAddr, header: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(header).await.unwrap();
    s
}

async fn rejected(f: &Fulcrum, at_least: f64) -> f64 {
    wait_metric(
        f,
        "fulcrum_connections_rejected_total",
        &[("listener", "web"), ("reason", "proxy_protocol")],
        |v| v >= at_least,
    )
    .await
}

#[tokio::test]
async fn v1_source_becomes_the_client_ip() {
    let b = Backend::named("app").await;
    let f = Fulcrum::start(&pp_config("", &b));
    let a = f.addr("web");

    // Header and request in one write: the bytes after the header are HTTP.
    let out = raw(
        a,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 4321 80\r\nGET /one HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(b.last().headers["x-forwarded-for"], "203.0.113.7");
    f.wait_log("client=203.0.113.7", Duration::from_secs(5));

    // TCP6, and keep-alive: several requests after one header.
    let s = connect_with(a, b"PROXY TCP6 2001:db8::7 ::1 4321 80\r\n").await;
    let mut c = Client::over(s).await;
    for _ in 0..3 {
        assert_eq!(c.get("/", "x").await.text(), "app");
        assert_eq!(b.last().headers["x-forwarded-for"], "2001:db8::7");
    }

    // UNKNOWN: the peer is the client.
    let s = connect_with(a, b"PROXY UNKNOWN\r\n").await;
    assert_eq!(Client::over(s).await.get("/", "x").await.text(), "app");
    assert_eq!(b.last().headers["x-forwarded-for"], "127.0.0.1");

    let text = scrape(&f).await;
    let r = metric(
        &text,
        "fulcrum_connections_rejected_total",
        &[("listener", "web"), ("reason", "proxy_protocol")],
    );
    assert_eq!(r, Some(0.0), "nothing rejected:\n{text}");
}

fn v2_header(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut v = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v.push(cmd);
    v.push(fam);
    v.extend((body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn v2_inet(src: [u8; 4], tlvs: &[u8]) -> Vec<u8> {
    let mut body = src.to_vec();
    body.extend([127, 0, 0, 1]);
    body.extend(4321u16.to_be_bytes());
    body.extend(80u16.to_be_bytes());
    body.extend_from_slice(tlvs);
    v2_header(0x21, 0x11, &body)
}

#[tokio::test]
async fn v2_source_becomes_the_client_ip() {
    let b = Backend::named("app").await;
    let f = Fulcrum::start(&pp_config("", &b));
    let a = f.addr("web");

    // AF_INET with a TLV (AWS NLB style), request in the same write.
    let mut wire = v2_inet([198, 51, 100, 9], &[0xEA, 0, 4, 1, 2, 3, 4]);
    wire.extend_from_slice(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let out = raw(a, &wire, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(b.last().headers["x-forwarded-for"], "198.51.100.9");

    // AF_INET6.
    let mut body = "2001:db8::9"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    body.extend(std::net::Ipv6Addr::LOCALHOST.octets());
    body.extend([0, 1, 0, 80]);
    let s = connect_with(a, &v2_header(0x21, 0x21, &body)).await;
    assert_eq!(Client::over(s).await.get("/", "x").await.text(), "app");
    assert_eq!(b.last().headers["x-forwarded-for"], "2001:db8::9");

    // LOCAL (the balancer's own health check): the peer is the client.
    let s = connect_with(a, &v2_header(0x20, 0x00, &[])).await;
    assert_eq!(Client::over(s).await.get("/", "x").await.text(), "app");
    assert_eq!(b.last().headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn missing_or_malformed_header_is_rejected_and_counted() {
    let b = Backend::named("app").await;
    let f = Fulcrum::start(&pp_config("header_read_timeout = \"300ms\"\n", &b));
    let a = f.addr("web");
    let t = Duration::from_secs(5);

    // Plain HTTP where a header is required: closed without an answer.
    let out = raw(a, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", t).await;
    assert_eq!(out, "");
    rejected(&f, 1.0).await;

    // Malformed v1 (bad address), v1 without CRLF past 107 bytes,
    // v2 with a bad version, v2 whose length cannot hold its addresses.
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(200, b'a');
    let bad: Vec<Vec<u8>> = vec![
        b"PROXY TCP4 203.0.113.300 127.0.0.1 1 80\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        long,
        v2_header(0x31, 0x11, &[0; 12]),
        v2_header(0x21, 0x11, &[0; 8]),
    ];
    for (i, wire) in bad.iter().enumerate() {
        let out = raw(a, wire, t).await;
        assert_eq!(out, "", "case {i} answered");
        rejected(&f, 2.0 + i as f64).await;
    }

    // Silent and trickling peers are cut at header_read_timeout.
    let started = std::time::Instant::now();
    let out = raw(a, b"PROXY TCP4 1.2.3.4", t).await;
    assert_eq!(out, "");
    assert!(started.elapsed() < Duration::from_secs(3));
    rejected(&f, 6.0).await;
    assert_eq!(b.hits(), 0, "no rejected connection reached the backend");
}

#[tokio::test]
async fn per_client_limit_counts_the_header_source() {
    let b = Backend::named("app").await;
    let f = Fulcrum::start(&pp_config("max_connections_per_client = 1\n", &b));
    let a = f.addr("web");

    // Two clients behind the same balancer peer (127.0.0.1): both served.
    let s1 = connect_with(a, b"PROXY TCP4 203.0.113.1 127.0.0.1 1 80\r\n").await;
    let mut c1 = Client::over(s1).await;
    assert_eq!(c1.get("/", "x").await.text(), "app");
    let s2 = connect_with(a, b"PROXY TCP4 203.0.113.2 127.0.0.1 1 80\r\n").await;
    let mut c2 = Client::over(s2).await;
    assert_eq!(c2.get("/", "x").await.text(), "app");

    // A second connection from 203.0.113.1 while the first is open: closed.
    let out = raw(
        a,
        b"PROXY TCP4 203.0.113.1 127.0.0.1 2 80\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(out, "");
    wait_metric(
        &f,
        "fulcrum_connections_rejected_total",
        &[
            ("listener", "web"),
            ("reason", "max_connections_per_client"),
        ],
        |v| v == 1.0,
    )
    .await;
    drop((c1, c2));
}

#[tokio::test]
async fn header_comes_before_tls() {
    let ca = TestCa::new();
    let dir = temp_dir();
    write_leaf(&dir, "site", &ca.leaf(&["site.test"]));
    let b = Backend::named("app").await;
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\n[listener.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n\n[[route]]\nupstream = \"app\"\n\n[upstream.app]\n{}\n",
        dir.join("site.pem").display().to_string(),
        dir.join("site.key").display().to_string(),
        servers(&[&b])
    );
    let f = Fulcrum::start(&toml);
    let a = f.addr("web");

    let tcp = connect_with(a, &v2_inet([192, 0, 2, 44], &[])).await;
    let tls = tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]))
        .connect(
            rustls_pki_types::ServerName::try_from("site.test").unwrap(),
            tcp,
        )
        .await
        .expect("TLS after the PROXY header");
    let reply = Client::over(tls).await.get("/", "site.test").await;
    assert_eq!(reply.text(), "app");
    let seen = b.last();
    assert_eq!(seen.headers["x-forwarded-for"], "192.0.2.44");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    // A TLS ClientHello with no header in front: rejected, not a handshake error.
    let tcp = TcpStream::connect(a).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]))
        .connect(
            rustls_pki_types::ServerName::try_from("site.test").unwrap(),
            tcp,
        )
        .await;
    assert!(r.is_err());
    rejected(&f, 1.0).await;
    let text = scrape(&f).await;
    assert_eq!(
        metric(
            &text,
            "fulcrum_tls_handshake_errors_total",
            &[("listener", "web")]
        ),
        Some(0.0)
    );
}
