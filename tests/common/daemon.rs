//! A real `fulcrum run` process: start, signal, reload, stop; the configs
//! tests give it; and what its admin API reports.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

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
    /// it logs "fulcrum ready" (its readiness signal), with the bound ports
    /// (listeners' from the admin API's `/status.json`).
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
            // The admin port (0 in test configs) is the one address only
            // the start-up log can tell a separate process; the listeners'
            // bound addresses then come from the admin API.
            if line.contains("admin listening") {
                f.admin = field(&line, "addr").parse().unwrap();
            }
            if line.contains("fulcrum ready") {
                f.listeners = bound_listeners(f.admin);
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

    /// A log line containing `needle` from any time since start (the
    /// readiness wait reads lines that come before "fulcrum ready"), or
    /// waits for one.
    pub fn logged(&self, needle: &str, timeout: Duration) -> String {
        let seen = self
            .logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned();
        match seen {
            Some(l) => l,
            None => self.wait_log(needle, timeout),
        }
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

/// One GET on the admin listener, answered in full (blocking; the admin
/// listener closes after `Connection: close`).
pub fn admin_get(admin: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// Each listener's bound address, by name, as `/status.json` reports it.
fn bound_listeners(admin: SocketAddr) -> HashMap<String, SocketAddr> {
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json")).expect("/status.json is JSON");
    status["listeners"]
        .as_array()
        .expect("/status.json lists listeners")
        .iter()
        .map(|l| {
            let name = l["name"].as_str().unwrap().to_string();
            let addr = l["listen"].as_str().unwrap().parse().unwrap();
            (name, addr)
        })
        .collect()
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

/// A process's resident set size in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Waits until a process told to stop has begun its drain: its `/ready`
/// answers 503, or its admin listener is already gone.
pub async fn wait_draining(admin: SocketAddr) {
    eventually(Duration::from_secs(5), "shutdown begun", || async {
        match tokio::net::TcpStream::connect(admin).await {
            Ok(_) => get(admin, "/ready").await.status == 503,
            Err(_) => true,
        }
    })
    .await;
}

/// Runs `fulcrum check --config <path>`: (exit code, stdout, stderr).
pub fn check_file(path: &Path) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `toml` to `path` and runs `fulcrum check` on it: (exit code, stderr).
pub fn check_text(path: &Path, toml: &str) -> (i32, String) {
    std::fs::write(path, toml).unwrap();
    let (code, _, err) = check_file(path);
    (code, err)
}
