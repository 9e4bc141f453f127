//! Test helpers: real backends on 127.0.0.1:0, a real `fulcrum` process, and
//! small HTTP clients. No mocks: everything talks over loopback sockets.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
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
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, s) = (hits.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, hits, seen) = (handler.clone(), h.clone(), s.clone());
                tokio::spawn(async move {
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
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            hits,
            seen,
            task,
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

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
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
        let dir = temp_dir();
        let config_path = dir.join("fulcrum.toml");
        std::fs::write(&config_path, toml).unwrap();
        let mut child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .args(args)
            .env("RUST_LOG", "info")
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
                Err(_) => panic!("no reload result logged"),
            }
        }
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        self.signal("TERM");
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
pub fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
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
