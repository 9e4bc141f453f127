//! Test helpers: real backends on 127.0.0.1:0, a real `fulcrum` process, and
//! small HTTP clients. No mocks: everything talks over loopback sockets.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

/// A real HTTP/1.1 + h2c server on an ephemeral loopback port.
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Backend {
    /// Serves every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::on(listener, handler)
    }

    pub fn on<F, Fut>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
    {
        Backend::serve(listener, None, handler)
    }

    /// Accepts on `listener` (through TLS when `tls` is given) and records
    /// every request before `handler` answers it.
    fn serve<F, Fut>(
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: F,
    ) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, s) = (hits.clone(), seen.clone());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let c = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, hits, seen) = (handler.clone(), h.clone(), s.clone());
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(Seen {
                            method: req.method().to_string(),
                            uri: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
                c.lock().unwrap().push(conn.abort_handle());
            }
        });
        Backend {
            addr,
            hits,
            seen,
            task,
            conns,
        }
    }

    /// Answers every request with `name` as the body.
    pub async fn named(name: &'static str) -> Backend {
        Backend::start(move |_req| async move { Response::new(full(name)) }).await
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("backend saw a request")
    }

    /// Stops like a killed process: no more accepts, every open connection closed.
    pub fn stop(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `fulcrum run` process with the addresses it bound.
pub struct Fulcrum {
    pub child: Child,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fulcrum")
}

/// A fresh directory under target/ for one test's files.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "t-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Fulcrum {
    /// Writes `toml` to a file and starts `fulcrum run` on it; returns once
    /// it logs "fulcrum ready" (its readiness signal), with the bound ports.
    pub fn start(toml: &str) -> Fulcrum {
        Fulcrum::start_with_args(toml, &[])
    }

    pub fn start_with_args(toml: &str, args: &[&str]) -> Fulcrum {
        Fulcrum::start_full(toml, args, &[])
    }

    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Fulcrum {
        Fulcrum::start_full(toml, &[], env)
    }

    pub fn start_full(toml: &str, args: &[&str], env: &[(&str, &str)]) -> Fulcrum {
        let dir = temp_dir();
        let config_path = dir.join("fulcrum.toml");
        std::fs::write(&config_path, toml).unwrap();
        let mut child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fulcrum");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let l = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut f = Fulcrum {
            child,
            dir,
            config_path,
            admin: "0.0.0.0:0".parse().unwrap(),
            listeners: HashMap::new(),
            logs,
            lines: rx,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match f.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!(
                    "fulcrum did not become ready; logs:\n{}",
                    f.logs.lock().unwrap().join("\n")
                ),
            };
            if line.contains("admin listening") {
                f.admin = field(&line, "addr").parse().unwrap();
            } else if line.contains(" listening ")
                || line.ends_with(" listening")
                || line.contains("\"message\":\"listening\"")
            {
                if let (Some(name), addr) = (field_opt(&line, "listener"), field(&line, "addr")) {
                    f.listeners.insert(name, addr.parse().unwrap());
                }
            }
            if line.contains("fulcrum ready") {
                return f;
            }
        }
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for a log line containing `needle` (after those already read).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => continue,
                Err(_) => panic!(
                    "no log line with {needle:?}; logs:\n{}",
                    self.logs.lock().unwrap().join("\n")
                ),
            }
        }
    }

    /// Rewrites the config and sends SIGHUP; waits for the reload's log line.
    pub fn reload(&self, toml: &str) -> String {
        std::fs::write(&self.config_path, toml).unwrap();
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains("config reloaded") || l.contains("config reload failed") => {
                    return l
                }
                Ok(_) => continue,
                Err(_) => panic!("no reload result logged; logs:\n{}", self.logs()),
            }
        }
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        self.signal("TERM");
        self.terminate_wait()
    }

    /// Waits (up to 40 s) for the process to exit; returns the exit code.
    pub fn terminate_wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "fulcrum did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Fulcrum {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field_opt(line: &str, key: &str) -> Option<String> {
    if line.starts_with('{') {
        // `--log-format json`: one JSON object per line.
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        return match v.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
    }
    let pat = format!("{key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}

fn field(line: &str, key: &str) -> String {
    field_opt(line, key).unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// A config with one listener "web" on an ephemeral port, admin on an
/// ephemeral port, and the given routes/upstreams appended.
pub fn config(rest: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n{rest}"
    )
}

/// `cfg` (made by `config`) with `lines` added to its `web` listener, e.g.
/// `idle_timeout = "1s"`. Panics if the listener is not where `config`
/// puts it, so a test cannot silently run with default settings.
pub fn with_listener_settings(cfg: &str, lines: &str) -> String {
    const END: &str = "listen = \"127.0.0.1:0\"\n\n[[route]]";
    assert!(cfg.contains(END), "no [[listener]] to extend in:\n{cfg}");
    cfg.replace(
        END,
        &format!(
            "listen = \"127.0.0.1:0\"\n{}\n\n[[route]]",
            lines.trim_end()
        ),
    )
}

/// `config` with one catch-all route to upstream `u` over `backends`.
pub fn one_route(backends: &[&Backend]) -> String {
    config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\n{}\n",
        servers(backends)
    ))
}

/// `servers = [...]` for the given backends.
pub fn servers(backends: &[&Backend]) -> String {
    let s: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr))
        .collect();
    format!("servers = [{}]", s.join(", "))
}

/// A finished response with its whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP/1.1 keep-alive client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<BoxBody>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        Client { sender }
    }

    pub async fn send(
        &mut self,
        req: Request<BoxBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(req).await
    }

    pub async fn get(&mut self, path: &str, host: &str) -> Reply {
        let req = Request::get(path)
            .header("host", host)
            .body(full(""))
            .unwrap();
        collect(self.send(req).await.unwrap()).await
    }
}

pub async fn collect(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// One GET on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Client::connect(addr).await.get(path, "example.test").await
}

pub async fn get_host(addr: SocketAddr, path: &str, host: &str) -> Reply {
    Client::connect(addr).await.get(path, host).await
}

/// Sends raw bytes and reads until the server closes (or `timeout`).
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of one sample in a Prometheus exposition, e.g.
/// `metric(&text, "fulcrum_requests_total", &[("code", "200")])`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub async fn scrape(f: &Fulcrum) -> String {
    get(f.admin, "/metrics").await.text()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes (a readiness
/// wait on observable state, not a sleep standing in for synchronisation).
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `state` of server `addr` in upstream `upstream` from /status.json.
pub async fn server_state(f: &Fulcrum, upstream: &str, addr: SocketAddr) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&get(f.admin, "/status.json").await.body).unwrap();
    v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == upstream)
        .and_then(|u| {
            u["servers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["address"] == addr.to_string())
        })
        .map(|s| s["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "absent".into())
}

// ---------------------------------------------------------------------------
// TLS, HTTP/2 and WebSocket helpers (certificates are made at test time).

pub use rustls_pki_types::{CertificateDer, ServerName};
pub use tokio_rustls::client::TlsStream as ClientTls;

/// A private certificate authority made with rcgen for one test.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate issued by a `TestCa`.
pub struct Leaf {
    /// Leaf then CA certificate, PEM.
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fulcrum test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names, wildcards allowed).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }

    /// Client settings trusting only this CA.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(self.roots())
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }

    /// Server settings for a TLS backend with `leaf`, ALPN h2 and http/1.1.
    pub fn server_config(&self, leaf: &Leaf) -> Arc<rustls::ServerConfig> {
        let certs = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

pub use rustls_pki_types::pem::PemObject;

/// Writes a leaf's chain and key as `<name>.pem` / `<name>.key` in `dir`.
pub fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) {
    std::fs::write(dir.join(format!("{name}.pem")), &leaf.chain_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &leaf.key_pem).unwrap();
}

/// Accepts any server certificate: for tests that look at which certificate
/// was served rather than whether it is trusted.
#[derive(Debug)]
pub struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client settings that accept any certificate, with the given versions.
pub fn insecure_client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// TCP connect + TLS handshake with `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<ClientTls<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// The leaf certificate the server presented.
pub fn peer_cert(s: &ClientTls<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

impl Client {
    /// An HTTP/1.1 client over an established stream (e.g. TLS).
    pub async fn over<S>(stream: S) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        Client { sender }
    }
}

/// An HTTP/2 client connection over an established stream.
pub async fn h2_client<S>(stream: S) -> hyper::client::conn::http2::SendRequest<BoxBody>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

impl Backend {
    /// A backend that speaks TLS (ALPN h2 and http/1.1) with `config`.
    pub async fn start_tls<F, Fut>(config: Arc<rustls::ServerConfig>, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::serve(
            listener,
            Some(tokio_rustls::TlsAcceptor::from(config)),
            handler,
        )
    }
}

/// A WebSocket echo server (tokio-tungstenite) on an ephemeral port; each
/// text or binary message comes back prefixed with "echo:".
pub async fn websocket_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::text(format!("echo:{}", t.as_str())),
                        Message::Binary(b) => {
                            let mut v = b"echo:".to_vec();
                            v.extend_from_slice(&b);
                            Message::binary(v)
                        }
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Polls the admin metrics until `name{labels}` satisfies `pred` (or panics
/// after 5 s): for counters updated just after the event a test observes.
pub async fn wait_metric(
    f: &Fulcrum,
    name: &str,
    labels: &[(&str, &str)],
    pred: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(f).await;
        if let Some(v) = metric(&text, name, labels) {
            if pred(v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never matched; metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A backend that answers `name` after `delay` (a slow server).
pub async fn slow_backend(name: &'static str, delay: Duration) -> Backend {
    Backend::start(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(full(name))
    })
    .await
}

/// Sends `per_task` sequential GETs on each of `tasks` concurrent keep-alive
/// connections; returns every response body.
pub async fn load(addr: SocketAddr, tasks: usize, per_task: usize) -> Vec<String> {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        handles.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut out = Vec::new();
            for _ in 0..per_task {
                out.push(c.get("/", "example.test").await.text());
            }
            out
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// One GET with extra request headers, on a new connection.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(path).header("host", "example.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut c = Client::connect(addr).await;
    collect(c.send(b.body(full("")).unwrap()).await.unwrap()).await
}

/// A backend answering `name` whose `/healthz` answers 503 while the returned
/// flag is false: a server whose health a test switches.
pub async fn toggled_backend(name: &'static str) -> (Backend, Arc<std::sync::atomic::AtomicBool>) {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = healthy.clone();
    let b = Backend::start(move |req| {
        let h = h.clone();
        async move {
            let mut r = Response::new(full(name));
            if req.uri().path() == "/healthz" && !h.load(Ordering::SeqCst) {
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await;
    (b, healthy)
}

/// Sends raw bytes; returns what came back and whether the server closed
/// the connection (EOF) within `timeout`.
pub async fn raw_closed(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The status code of the first response in `raw` text, if any.
pub fn status_of(raw: &str) -> Option<u16> {
    raw.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A backend that reads the whole request body (and its trailers) before
/// answering; the body of its answer is the body length.
pub async fn draining_backend() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        match req.into_body().collect().await {
            Ok(c) => Response::new(full(c.to_bytes().len().to_string())),
            Err(_) => Response::new(full("body error")),
        }
    })
    .await
}

/// A process's resident set size in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}
