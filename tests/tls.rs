//! TLS termination: SNI certificate choice and default, ALPN h2, minimum
//! version with the handshake error counter, certificate rotation on reload
//! (and a broken certificate keeping the old one), key formats, 408 through
//! TLS, X-Forwarded-Proto https.

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

use http::{Request, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A config whose listener "web" terminates TLS with the given cert/key
/// pairs (paths), plus `listener_extra` keys and `rest`.
fn tls_config(pairs: &[(String, String)], listener_extra: &str, rest: &str) -> String {
    let certs: Vec<String> = pairs
        .iter()
        .map(|(c, k)| format!("{{ cert = {c:?}, key = {k:?} }}"))
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n{listener_extra}\n[listener.tls]\ncertificates = [{}]\n\n{rest}",
        certs.join(", ")
    )
}

fn pair(dir: &Path, name: &str) -> (String, String) {
    (
        dir.join(format!("{name}.pem")).display().to_string(),
        dir.join(format!("{name}.key")).display().to_string(),
    )
}

fn route_to(b: &Backend) -> String {
    format!(
        "[[route]]\nupstream = \"app\"\n\n[upstream.app]\n{}\n",
        servers(&[b])
    )
}

#[tokio::test]
async fn sni_picks_the_matching_certificate_and_defaults_to_the_first() {
    let ca = TestCa::new();
    let dir = temp_dir();
    let first = ca.leaf(&["first.test"]);
    let api = ca.leaf(&["api.test"]);
    let wild = ca.leaf(&["*.wild.test"]);
    write_leaf(&dir, "first", &first);
    write_leaf(&dir, "api", &api);
    write_leaf(&dir, "wild", &wild);
    let b = Backend::named("app").await;
    let f = Fulcrum::start(&tls_config(
        &[pair(&dir, "first"), pair(&dir, "api"), pair(&dir, "wild")],
        "",
        &route_to(&b),
    ));
    let a = f.addr("web");

    // Each name gets a certificate that verifies against the CA for it.
    for (sni, want) in [
        ("first.test", &first),
        ("api.test", &api),
        ("x.wild.test", &wild),
        ("API.TEST", &api),
    ] {
        let s = tls_connect(a, sni, ca.client_config(&[b"http/1.1"]))
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(peer_cert(&s), want.der, "{sni}");
        let mut c = Client::over(s).await;
        let r = c.get("/", sni).await;
        assert_eq!(r.text(), "app");
    }
    // Unknown name and the bare parent of a wildcard: the first certificate.
    for sni in ["unknown.test", "wild.test"] {
        let s = tls_connect(
            a,
            sni,
            insecure_client_config(&[&rustls::version::TLS13], &[]),
        )
        .await
        .unwrap();
        assert_eq!(peer_cert(&s), first.der, "{sni}");
    }
    // No SNI at all (an IP address is never sent as SNI): the default.
    let s = tls_connect(
        a,
        "127.0.0.1",
        insecure_client_config(&[&rustls::version::TLS13], &[]),
    )
    .await
    .unwrap();
    assert_eq!(peer_cert(&s), first.der);

    // Requests over TLS are marked https for the server.
    assert_eq!(
        b.last()
            .headers
            .get("x-forwarded-proto")
            .map(|v| v.to_str().unwrap()),
        Some("https")
    );
}

#[tokio::test]
async fn alpn_negotiates_h2_and_serves_http2() {
    let ca = TestCa::new();
    let dir = temp_dir();
    write_leaf(&dir, "site", &ca.leaf(&["site.test"]));
    let b = Backend::start(|req| async move {
        http::Response::new(full(format!("{:?} {}", req.version(), req.uri())))
    })
    .await;
    let f = Fulcrum::start(&tls_config(&[pair(&dir, "site")], "", &route_to(&b)));

    let s = tls_connect(
        f.addr("web"),
        "site.test",
        ca.client_config(&[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = h2_client(s).await;
    // Several concurrent streams on the one connection.
    let mut replies = Vec::new();
    for i in 0..5 {
        let req = Request::get(format!("https://site.test/s/{i}"))
            .body(full(""))
            .unwrap();
        replies.push(h2.send_request(req));
    }
    for (i, r) in replies.into_iter().enumerate() {
        let resp = r.await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert!(resp.headers().contains_key("x-request-id"));
        let r = collect(resp).await;
        assert_eq!(r.status, 200);
        // The server got HTTP/1.1 with an origin-form URI.
        assert_eq!(r.text(), format!("HTTP/1.1 /s/{i}"));
    }
    let seen = b.last();
    assert_eq!(seen.headers.get("host").unwrap(), "site.test");
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "https");

    // A client that only offers http/1.1 gets it.
    let s = tls_connect(f.addr("web"), "site.test", ca.client_config(&[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        Client::over(s).await.get("/", "site.test").await.status,
        200
    );
}

#[tokio::test]
async fn tls13_only_listener_refuses_tls12_and_counts_it() {
    let ca = TestCa::new();
    let dir = temp_dir();
    write_leaf(&dir, "site", &ca.leaf(&["site.test"]));
    let b = Backend::named("app").await;
    let cfg = tls_config(&[pair(&dir, "site")], "", &route_to(&b)).replace(
        "[listener.tls]\n",
        "[listener.tls]\nmin_version = \"1.3\"\n",
    );
    let f = Fulcrum::start(&cfg);
    let a = f.addr("web");

    let tls12 = insecure_client_config(&[&rustls::version::TLS12], &[]);
    let err = tls_connect(a, "site.test", tls12).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("version"),
        "expected a protocol version alert, got {err}"
    );
    wait_metric(
        &f,
        "fulcrum_tls_handshake_errors_total",
        &[("listener", "web")],
        |v| v == 1.0,
    )
    .await;

    // TLS 1.3 works, and is not counted.
    let s = tls_connect(a, "site.test", ca.client_config(&[]))
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        Client::over(s).await.get("/", "site.test").await.text(),
        "app"
    );
    // Plain HTTP on a TLS port is a handshake error too.
    let out = raw(
        a,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!out.contains("200 OK"), "{out}");
    // The connection closes as the handshake fails, a moment before the
    // error is counted: wait for the count, as for the first one.
    wait_metric(
        &f,
        "fulcrum_tls_handshake_errors_total",
        &[("listener", "web")],
        |v| v == 2.0,
    )
    .await;
}

#[tokio::test]
async fn reload_rotates_certificates_and_a_broken_one_keeps_the_old() {
    let ca = TestCa::new();
    let dir = temp_dir();
    let old = ca.leaf(&["site.test"]);
    write_leaf(&dir, "site", &old);
    let b = Backend::named("app").await;
    let cfg = tls_config(&[pair(&dir, "site")], "", &route_to(&b));
    let f = Fulcrum::start(&cfg);
    let a = f.addr("web");

    let s = tls_connect(a, "site.test", ca.client_config(&[]))
        .await
        .unwrap();
    assert_eq!(peer_cert(&s), old.der);
    let mut kept = Client::over(s).await;
    assert_eq!(kept.get("/", "site.test").await.text(), "app");

    // Rotate on disk, SIGHUP: new connections get the new certificate.
    let new = ca.leaf(&["site.test"]);
    write_leaf(&dir, "site", &new);
    assert!(f.reload(&cfg).contains("config reloaded"));
    let s = tls_connect(a, "site.test", ca.client_config(&[]))
        .await
        .unwrap();
    assert_eq!(peer_cert(&s), new.der);
    assert_eq!(
        Client::over(s).await.get("/", "site.test").await.text(),
        "app"
    );
    // The connection made before the reload still works.
    assert_eq!(kept.get("/again", "site.test").await.text(), "app");

    // A broken certificate fails the reload; the current one keeps serving.
    std::fs::write(dir.join("site.pem"), "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    let line = f.reload(&cfg);
    assert!(line.contains("config reload failed"), "{line}");
    assert!(line.contains("listener[0].tls.certificates[0]"), "{line}");
    let s = tls_connect(a, "site.test", ca.client_config(&[]))
        .await
        .unwrap();
    assert_eq!(peer_cert(&s), new.der);
    // A key that belongs to another certificate fails it too.
    write_leaf(&dir, "site", &new);
    std::fs::write(dir.join("site.key"), &old.key_pem).unwrap();
    let line = f.reload(&cfg);
    assert!(line.contains("config reload failed"), "{line}");
    let text = scrape(&f).await;
    assert_eq!(
        metric(&text, "fulcrum_config_last_reload_successful", &[]),
        Some(0.0)
    );
    let s = tls_connect(a, "site.test", ca.client_config(&[]))
        .await
        .unwrap();
    assert_eq!(peer_cert(&s), new.der);
    assert_eq!(kept.get("/third", "site.test").await.text(), "app");
}

#[tokio::test]
async fn pkcs1_and_sec1_keys_load() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let p = |n: &str| {
        (
            fixtures.join(format!("{n}.crt")).display().to_string(),
            fixtures.join(format!("{n}.key")).display().to_string(),
        )
    };
    let b = Backend::named("app").await;
    let f = Fulcrum::start(&tls_config(
        &[p("rsa-pkcs1"), p("ec-sec1")],
        "",
        &route_to(&b),
    ));
    for (sni, alg) in [("rsa.test", "RSA"), ("ec.test", "ECDSA")] {
        let s = tls_connect(
            f.addr("web"),
            sni,
            insecure_client_config(&[&rustls::version::TLS13], &[]),
        )
        .await
        .unwrap();
        let scheme = format!("{:?}", s.get_ref().1.negotiated_cipher_suite());
        let cert = peer_cert(&s);
        let want = std::fs::read(fixtures.join(format!(
            "{}.crt",
            if alg == "RSA" { "rsa-pkcs1" } else { "ec-sec1" }
        )))
        .unwrap();
        let want = CertificateDer::pem_slice_iter(&want)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(cert, want, "{sni} ({scheme})");
        assert_eq!(Client::over(s).await.get("/", sni).await.text(), "app");
    }
}

#[tokio::test]
async fn bad_tls_config_is_reported_by_check() {
    let dir = temp_dir();
    let cfg = tls_config(
        &[(
            dir.join("missing.pem").display().to_string(),
            dir.join("missing.key").display().to_string(),
        )],
        "",
        "[[route]]\nupstream = \"app\"\n\n[upstream.app]\nservers = [{ address = \"127.0.0.1:1\" }]\n",
    )
    .replace("[listener.tls]\n", "[listener.tls]\nmin_version = \"1.1\"\n");
    let path = dir.join("bad.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("listener[0].tls.min_version"), "{text}");
    assert!(text.contains("listener[0].tls.certificates[0]"), "{text}");
    assert!(text.contains("missing.pem"), "{text}");
}

#[tokio::test]
async fn slow_request_head_gets_408_through_tls() {
    let ca = TestCa::new();
    let dir = temp_dir();
    write_leaf(&dir, "site", &ca.leaf(&["site.test"]));
    let b = Backend::named("app").await;
    let f = Fulcrum::start(&tls_config(
        &[pair(&dir, "site")],
        "header_read_timeout = \"300ms\"\n",
        &route_to(&b),
    ));
    let mut s = tls_connect(f.addr("web"), "site.test", ca.client_config(&[]))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "connection not closed");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    assert_eq!(b.hits(), 0);
}
