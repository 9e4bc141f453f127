//! Automatic certificates against a real ACME server (pebble): http-01 and
//! tls-alpn-01 issuance, restart from storage, renewal with hot swap, a CA
//! that is down at start, and bad input that must not stop serving.

mod common;
#[path = "acme/pebble.rs"]
mod pebble;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pebble::{free_port, PebbleSetup};

const ISSUE_TIMEOUT: Duration = Duration::from_secs(90);

fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

fn serial(der: &CertificateDer<'_>) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.raw_serial().to_vec()
}

async fn orders(f: &Fulcrum, result: &str) -> f64 {
    metric(
        &scrape(f).await,
        "fulcrum_acme_orders_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

async fn wait_orders(f: &Fulcrum, result: &str, at_least: f64) {
    let what = format!("fulcrum_acme_orders_total{{result=\"{result}\"}} >= {at_least}");
    let deadline = std::time::Instant::now() + ISSUE_TIMEOUT;
    while orders(f, result).await < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; logs:\n{}",
            f.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Listeners "web" (plain, on `http_port`) and "websecure" (TLS with ACME
/// names, on `tls_port`), a catch-all route to `upstream`.
fn fulcrum_toml(
    acme: &str,
    http_port: Option<u16>,
    tls_port: u16,
    names: &[&str],
    upstream: &str,
) -> String {
    let web = match http_port {
        Some(p) => format!("[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:{p}\"\n\n"),
        None => String::new(),
    };
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{acme}\n{web}[[listener]]\nname = \"websecure\"\nlisten = \"127.0.0.1:{tls_port}\"\n[listener.tls]\nacme = [{}]\n\n[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{{ address = \"{upstream}\" }}]\n",
        names.join(", ")
    )
}

/// A TLS handshake with `sni` that trusts only `roots`; the leaf's serial.
async fn handshake(f: &Fulcrum, sni: &str, roots: &rustls::RootCertStore) -> Vec<u8> {
    let tls = tls_connect(f.addr("websecure"), sni, client_config(roots.clone()))
        .await
        .unwrap_or_else(|e| panic!("handshake for {sni}: {e}; logs:\n{}", f.logs()));
    serial(&peer_cert(&tls))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn http01_issues_one_certificate_for_two_names() {
    let backend = Backend::named("app").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let setup = PebbleSetup::new(http_port, tls_port);
    let pebble = setup.start();
    let storage = temp_dir().join("acme");
    let names = ["one.example.com", "two.example.com"];
    let f = Fulcrum::start(&fulcrum_toml(
        &setup.acme_toml("http-01", &storage),
        Some(http_port),
        tls_port,
        &names,
        &backend.addr.to_string(),
    ));
    wait_orders(&f, "success", 1.0).await;
    let roots = pebble.root().await;
    let first = handshake(&f, names[0], &roots).await;
    let second = handshake(&f, names[1], &roots).await;
    assert_eq!(first, second, "one certificate covers both names");

    // Served through the new certificate, proxied as usual.
    let tls = tls_connect(f.addr("websecure"), names[1], client_config(roots))
        .await
        .unwrap();
    let reply = Client::over(tls).await.get("/x", names[1]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "app");

    // Private storage: folders 0700; account key, certificate and key 0600.
    assert_eq!(mode(&storage), 0o700);
    let ca_dir = storage.join(format!("127.0.0.1_{}", setup.acme_port));
    assert_eq!(mode(&ca_dir), 0o700);
    let mut files: Vec<String> = std::fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "account.json",
            "one.example.com.crt.pem",
            "one.example.com.key.pem"
        ]
    );
    for f in &files {
        assert_eq!(mode(&ca_dir.join(f)), 0o600, "{f}");
    }

    let m = scrape(&f).await;
    let expiry = metric(
        &m,
        "fulcrum_acme_certificate_expiry_timestamp_seconds",
        &[("name", "one.example.com")],
    )
    .expect("expiry gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 86400.0, "{expiry}");

    let status: serde_json::Value =
        serde_json::from_slice(&get(f.admin, "/status.json").await.body).unwrap();
    let acme = &status["acme"][0];
    assert_eq!(acme["names"][1], "two.example.com", "{status}");
    assert!(acme["expires_unix"].as_f64().unwrap() > now);
    let page = get(f.admin, "/status").await.text();
    assert!(page.contains("certificates (ACME)"), "{page}");
    assert!(
        page.contains("<td>one.example.com, two.example.com</td><td>in "),
        "{page}"
    );
}

#[test]
fn check_rejects_bad_acme_settings() {
    let dir = temp_dir();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        fulcrum_toml(
            "[acme]\ndirectory = \"http://ca.example/dir\"\nchallenge = \"dns-01\"\n",
            Some(0),
            0,
            &["*.example.com"],
            "127.0.0.1:1",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "acme.directory: \"http://ca.example/dir\" must be an https:// URL",
        "acme.challenge: unknown challenge \"dns-01\"",
        "listener[1].tls.acme[0]: \"*.example.com\": wildcard names need the dns-01 challenge",
    ] {
        assert!(text.contains(want), "want {want:?} in:\n{text}");
    }
}

/// Waits until Fulcrum's log holds `needle`; returns that line.
async fn wait_for_log(f: &Fulcrum, needle: &str) -> String {
    let deadline = std::time::Instant::now() + ISSUE_TIMEOUT;
    loop {
        if let Some(l) = f.logs().lines().find(|l| l.contains(needle)) {
            return l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with {needle:?}; logs:\n{}",
            f.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `renew_in_s` field of a log line.
fn renew_in_s(line: &str) -> u64 {
    line.split("renew_in_s=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no renew_in_s in {line}"))
}

/// An address nothing listens on.
fn closed_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[tokio::test]
async fn tls_alpn01_issues_on_the_tls_listener_alone() {
    let backend = Backend::named("app").await;
    let tls_port = free_port();
    // No plain listener: pebble's http-01 port leads nowhere.
    let setup = PebbleSetup::new(free_port(), tls_port);
    let pebble = setup.start();
    let storage = temp_dir().join("acme");
    let f = Fulcrum::start(&fulcrum_toml(
        &setup.acme_toml("tls-alpn-01", &storage),
        None,
        tls_port,
        &["alpn.example.com"],
        &backend.addr.to_string(),
    ));
    wait_orders(&f, "success", 1.0).await;
    let roots = pebble.root().await;
    let tls = tls_connect(
        f.addr("websecure"),
        "alpn.example.com",
        client_config(roots),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let reply = Client::over(tls).await.get("/", "alpn.example.com").await;
    assert_eq!(reply.text(), "app");
}

#[tokio::test]
async fn http01_is_answered_before_routing() {
    // The plain listener only redirects to HTTPS (the usual setup): every
    // request there gets the redirect, the CA's challenges do not.
    let backend = Backend::named("app").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let setup = PebbleSetup::new(http_port, tls_port);
    let pebble = setup.start();
    let storage = temp_dir().join("acme");
    let toml = fulcrum_toml(
        &setup.acme_toml("http-01", &storage),
        Some(http_port),
        tls_port,
        &["routed.example.com"],
        &closed_addr(),
    )
    .replace(
        "[[route]]\nupstream = \"u\"",
        &format!(
            "[[route]]\nlisteners = [\"websecure\"]\nupstream = \"app\"\n[upstream.app]\nservers = [{{ address = \"{}\" }}]\n\n[[route]]\nlisteners = [\"web\"]\nredirect = {{ scheme = \"https\" }}",
            backend.addr
        ),
    );
    let f = Fulcrum::start(&toml);
    let plain = f.addr("web");
    let r = get_host(plain, "/x?y=1", "routed.example.com").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://routed.example.com/x?y=1")
    );
    // An unknown token is not ours to answer: it is routed like any path.
    let r = get_host(
        plain,
        "/.well-known/acme-challenge/unknown",
        "routed.example.com",
    )
    .await;
    assert_eq!(r.status, 301);
    wait_orders(&f, "success", 1.0).await;
    let roots = pebble.root().await;
    let tls = tls_connect(
        f.addr("websecure"),
        "routed.example.com",
        client_config(roots),
    )
    .await
    .unwrap();
    assert_eq!(
        Client::over(tls)
            .await
            .get("/", "routed.example.com")
            .await
            .text(),
        "app"
    );
}

#[tokio::test]
async fn a_restart_serves_the_stored_certificate_without_an_order() {
    let backend = Backend::named("app").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let setup = PebbleSetup::new(http_port, tls_port);
    let pebble = setup.start();
    let storage = temp_dir().join("acme");
    let toml = fulcrum_toml(
        &setup.acme_toml("http-01", &storage),
        Some(http_port),
        tls_port,
        &["stored.example.com"],
        &backend.addr.to_string(),
    );
    let f = Fulcrum::start(&toml);
    wait_orders(&f, "success", 1.0).await;
    let roots = pebble.root().await;
    let issued = handshake(&f, "stored.example.com", &roots).await;
    assert_eq!(f.terminate(), Some(0));
    // The CA is gone: any contact with it would fail and be counted.
    drop(pebble);

    let f = Fulcrum::start(&toml);
    let line = wait_for_log(&f, "serving the stored certificate").await;
    assert_eq!(handshake(&f, "stored.example.com", &roots).await, issued);
    // The next order is due only at renewal, months away.
    assert!(renew_in_s(&line) > 86400, "{line}");
    assert!(!f.logs().contains("ordering a certificate"), "{}", f.logs());
    assert_eq!(orders(&f, "success").await, 0.0);
    assert_eq!(orders(&f, "failure").await, 0.0);
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_and_swapped_under_open_connections() {
    let backend = Backend::named("app").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let mut setup = PebbleSetup::new(http_port, tls_port);
    // renew_before (30d default) exceeds the lifetime: renewal comes when a
    // third of it is left, every ~10 s here.
    setup.validity = Some(30);
    let pebble = setup.start();
    let storage = temp_dir().join("acme");
    let f = Fulcrum::start(&fulcrum_toml(
        &setup.acme_toml("http-01", &storage),
        Some(http_port),
        tls_port,
        &["short.example.com"],
        &backend.addr.to_string(),
    ));
    wait_orders(&f, "success", 1.0).await;
    let roots = pebble.root().await;
    let tls = tls_connect(
        f.addr("websecure"),
        "short.example.com",
        client_config(roots.clone()),
    )
    .await
    .unwrap();
    let first = serial(&peer_cert(&tls));
    let mut held = Client::over(tls).await;
    assert_eq!(held.get("/", "short.example.com").await.text(), "app");

    // Scheduled at a third of the lifetime left, not at once (no loop).
    let line = wait_for_log(&f, "ACME: certificate issued").await;
    let renew_in = renew_in_s(&line);
    assert!((5..=25).contains(&renew_in), "{line}");

    wait_orders(&f, "success", 2.0).await;
    let renewed = handshake(&f, "short.example.com", &roots).await;
    assert_ne!(renewed, first, "new handshakes get the renewed certificate");
    // The connection made with the old certificate is still served.
    assert_eq!(held.get("/", "short.example.com").await.text(), "app");
}

#[tokio::test]
async fn a_ca_down_at_start_is_retried_while_serving() {
    let backend = Backend::named("app").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let setup = PebbleSetup::new(http_port, tls_port);
    let storage = temp_dir().join("acme");
    let f = Fulcrum::start(&fulcrum_toml(
        &setup.acme_toml("http-01", &storage),
        Some(http_port),
        tls_port,
        &["late.example.com"],
        &backend.addr.to_string(),
    ));
    assert_eq!(get(f.addr("web"), "/").await.text(), "app");
    wait_orders(&f, "failure", 1.0).await;
    let line = wait_for_log(&f, "ACME: order failed").await;
    assert!(line.contains("cannot use the ACME directory"), "{line}");
    assert!(line.contains("retry_in_s="), "{line}");
    // Until a certificate exists, the name's handshakes fail (whatever the
    // client trusts) and are counted.
    let any = insecure_client_config(&[&rustls::version::TLS13], &[b"http/1.1"]);
    assert!(tls_connect(f.addr("websecure"), "late.example.com", any)
        .await
        .is_err());
    // Counted once the server side of the handshake has failed too, a moment
    // after the client saw it fail.
    wait_metric(
        &f,
        "fulcrum_tls_handshake_errors_total",
        &[("listener", "websecure")],
        |v| v >= 1.0,
    )
    .await;

    let pebble = setup.start();
    let roots = pebble.root().await;
    wait_orders(&f, "success", 1.0).await;
    handshake(&f, "late.example.com", &roots).await;
    assert_eq!(get(f.addr("web"), "/").await.text(), "app");
}

#[tokio::test]
async fn a_reload_orders_new_names_and_drops_removed_ones() {
    let backend = Backend::named("app").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let setup = PebbleSetup::new(http_port, tls_port);
    let pebble = setup.start();
    let storage = temp_dir().join("acme");
    let toml = |names: &[&str]| {
        fulcrum_toml(
            &setup.acme_toml("http-01", &storage),
            Some(http_port),
            tls_port,
            names,
            &backend.addr.to_string(),
        )
    };
    let f = Fulcrum::start(&toml(&["old.example.com"]));
    wait_orders(&f, "success", 1.0).await;
    let roots = pebble.root().await;
    handshake(&f, "old.example.com", &roots).await;

    assert!(f
        .reload(&toml(&["new.example.com"]))
        .contains("config reloaded"));
    wait_orders(&f, "success", 2.0).await;
    handshake(&f, "new.example.com", &roots).await;
    assert!(
        tls_connect(f.addr("websecure"), "old.example.com", client_config(roots))
            .await
            .is_err(),
        "a removed name is no longer served"
    );
    let m = scrape(&f).await;
    let expiry = "fulcrum_acme_certificate_expiry_timestamp_seconds";
    assert!(metric(&m, expiry, &[("name", "new.example.com")]).is_some());
    assert!(
        metric(&m, expiry, &[("name", "old.example.com")]).is_none(),
        "{m}"
    );
}

/// A plain listener keeps proxying whatever ACME does.
async fn still_serving(f: &Fulcrum) {
    assert_eq!(get(f.addr("web"), "/").await.text(), "app");
}

#[tokio::test]
async fn a_directory_that_answers_garbage_is_a_logged_failure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::named("app").await;
    let ca = TestCa::new();
    let server = ca.server_config(&ca.leaf(&["127.0.0.1"]));
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = garbage.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // Read the request head first: closing on unread bytes
                // would reset the connection before the answer is read.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nconnection: close\r\n\r\nnot json :-(")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let dir = temp_dir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let acme = format!(
        "[acme]\ndirectory = \"https://{garbage_addr}/dir\"\nstorage = \"{}\"\ndirectory_ca = \"{}\"\n",
        dir.join("acme").display(),
        dir.join("ca.pem").display()
    );
    let f = Fulcrum::start(&fulcrum_toml(
        &acme,
        Some(free_port()),
        free_port(),
        &["garbage.example.com"],
        &backend.addr.to_string(),
    ));
    wait_orders(&f, "failure", 1.0).await;
    let line = wait_for_log(&f, "ACME: order failed").await;
    assert!(line.contains("cannot use the ACME directory"), "{line}");
    assert!(line.contains("JSON"), "{line}");
    still_serving(&f).await;
}

#[tokio::test]
async fn a_ca_that_rejects_the_order_is_a_logged_failure() {
    let backend = Backend::named("app").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let mut setup = PebbleSetup::new(http_port, tls_port);
    setup.blocklist = vec!["blocked.example.com".into()];
    let _pebble = setup.start();
    let f = Fulcrum::start(&fulcrum_toml(
        &setup.acme_toml("http-01", &temp_dir().join("acme")),
        Some(http_port),
        tls_port,
        &["blocked.example.com"],
        &backend.addr.to_string(),
    ));
    wait_orders(&f, "failure", 1.0).await;
    let line = wait_for_log(&f, "ACME: order failed").await;
    assert!(line.contains("the CA says: "), "{line}");
    assert!(line.contains("rejectedIdentifier"), "{line}");
    assert_eq!(orders(&f, "success").await, 0.0);
    still_serving(&f).await;
    let status: serde_json::Value =
        serde_json::from_slice(&get(f.admin, "/status.json").await.body).unwrap();
    let error = status["acme"][0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("rejectedIdentifier"), "{status}");
}

#[tokio::test]
async fn an_unwritable_storage_folder_is_a_logged_failure() {
    let backend = Backend::named("app").await;
    // A folder under a regular file cannot be created, even by root.
    let dir = temp_dir();
    std::fs::write(dir.join("file"), "").unwrap();
    let (http_port, tls_port) = (free_port(), free_port());
    let setup = PebbleSetup::new(http_port, tls_port);
    let f = Fulcrum::start(&fulcrum_toml(
        &setup.acme_toml("http-01", &dir.join("file").join("acme")),
        Some(http_port),
        tls_port,
        &["nostore.example.com"],
        &backend.addr.to_string(),
    ));
    wait_orders(&f, "failure", 1.0).await;
    let line = wait_for_log(&f, "ACME: order failed").await;
    assert!(line.contains("ACME storage"), "{line}");
    assert!(line.contains("file/acme"), "{line}");
    still_serving(&f).await;
}

#[tokio::test]
async fn a_challenge_the_ca_cannot_reach_fails_with_the_cas_words() {
    let backend = Backend::named("app").await;
    // Pebble validates on a port where nothing listens, not Fulcrum's.
    let (http_port, tls_port) = (free_port(), free_port());
    let setup = PebbleSetup::new(free_port(), tls_port);
    let _pebble = setup.start();
    let f = Fulcrum::start(&fulcrum_toml(
        &setup.acme_toml("http-01", &temp_dir().join("acme")),
        Some(http_port),
        tls_port,
        &["unreachable.example.com"],
        &backend.addr.to_string(),
    ));
    wait_orders(&f, "failure", 1.0).await;
    let line = wait_for_log(&f, "ACME: order failed").await;
    assert!(line.contains("the CA says: "), "{line}");
    assert!(line.contains("unreachable.example.com"), "{line}");
    assert!(line.contains("connection refused"), "{line}");
    assert!(
        line.contains("urn:ietf:params:acme:error:connection"),
        "{line}"
    );
    still_serving(&f).await;
}

#[tokio::test]
async fn an_account_the_ca_forgot_is_replaced() {
    let backend = Backend::named("app").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let setup = PebbleSetup::new(http_port, tls_port);
    let storage = temp_dir().join("acme");
    let toml = fulcrum_toml(
        &setup.acme_toml("http-01", &storage),
        Some(http_port),
        tls_port,
        &["forgot.example.com"],
        &backend.addr.to_string(),
    );
    let pebble = setup.start();
    let f = Fulcrum::start(&toml);
    wait_orders(&f, "success", 1.0).await;
    assert_eq!(f.terminate(), Some(0));
    // A restarted pebble remembers nothing; without the certificate files
    // the next start must order with the stored account.
    drop(pebble);
    let ca_dir = storage.join(format!("127.0.0.1_{}", setup.acme_port));
    std::fs::remove_file(ca_dir.join("forgot.example.com.crt.pem")).unwrap();
    let pebble = setup.start();
    let f = Fulcrum::start(&toml);
    let line = wait_for_log(&f, "ACME: order failed").await;
    assert!(line.contains("accountDoesNotExist"), "{line}");
    wait_for_log(&f, "a new one is made on the next attempt").await;
    wait_orders(&f, "success", 1.0).await;
    assert!(ca_dir.join("account.json").exists());
    assert!(ca_dir.join("account.json.unknown").exists());
    handshake(&f, "forgot.example.com", &pebble.root().await).await;
}

#[tokio::test]
async fn until_issued_the_first_configured_certificate_is_served() {
    let backend = Backend::named("app").await;
    let dir = temp_dir();
    let ca = TestCa::new();
    let leaf = ca.leaf(&["static.example.com"]);
    write_leaf(&dir, "static", &leaf);
    // The CA is unreachable: the ACME name never gets its own certificate.
    let acme = format!(
        "[acme]\ndirectory = \"https://{}/dir\"\nstorage = \"{}\"\n",
        closed_addr(),
        dir.join("acme").display()
    );
    let toml = fulcrum_toml(
        &acme,
        Some(free_port()),
        free_port(),
        &["pending.example.com"],
        &backend.addr.to_string(),
    )
    .replace(
        "[listener.tls]\n",
        &format!(
            "[listener.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            dir.join("static.pem").display(),
            dir.join("static.key").display()
        ),
    );
    let f = Fulcrum::start(&toml);
    wait_orders(&f, "failure", 1.0).await;
    let any = insecure_client_config(&[&rustls::version::TLS13], &[b"http/1.1"]);
    let tls = tls_connect(f.addr("websecure"), "pending.example.com", any)
        .await
        .unwrap();
    assert_eq!(
        peer_cert(&tls),
        leaf.der,
        "the first configured certificate"
    );
    assert_eq!(
        Client::over(tls)
            .await
            .get("/", "pending.example.com")
            .await
            .text(),
        "app"
    );
}
