//! `fulcrum ctl`: runtime control through the admin API (SPEC "Runtime
//! control"). A small HTTP/1.1 client on hyper; exit 0 on success, 1 when
//! the API refuses (its status and message are printed) or `drain --wait`
//! times out, 2 when nothing answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use crate::cli::{CtlArgs, CtlCommand};
use crate::config::{AdminToken, Config};

/// How long one API call may take, connect included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `drain --wait` looks at `in_flight`.
const POLL: Duration = Duration::from_millis(100);

/// Why a command did not succeed; maps to the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad arguments, unreadable config or token, a drain that did not
    /// finish in time: exit 1.
    #[error("{0}")]
    Usage(String),
    /// The API answered with an error: exit 1.
    #[error("{status}: {message}")]
    Api { status: StatusCode, message: String },
    /// Nothing answered: exit 2.
    #[error("no answer from the admin listener at {addr}: {reason}")]
    NoAnswer { addr: SocketAddr, reason: String },
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) | CtlError::Api { .. } => 1,
            CtlError::NoAnswer { .. } => 2,
        }
    }
}

/// One server as the API returns it.
#[derive(Debug, Deserialize)]
pub struct ServerInfo {
    pub upstream: String,
    pub address: String,
    pub weight: u32,
    pub effective_weight: u32,
    pub state: String,
    pub admin_state: String,
    pub in_flight: usize,
}

#[derive(Debug, Deserialize)]
struct UpstreamInfo {
    servers: Vec<ServerInfo>,
}

#[derive(Debug, Deserialize)]
struct AllServers {
    upstreams: Vec<UpstreamInfo>,
}

/// Where the API is and the token for it.
pub struct Target {
    pub addr: SocketAddr,
    token: String,
}

impl Target {
    /// From `--config`, or from `--admin` and `--token-file`.
    pub fn resolve(args: &CtlArgs) -> Result<Target, CtlError> {
        let (addr, token_file) = match (&args.config, &args.admin, &args.token_file) {
            (Some(c), None, None) => {
                let config = Config::load(c).map_err(|e| CtlError::Usage(e.to_string()))?;
                let file = config.admin.token_file.clone().ok_or_else(|| {
                    CtlError::Usage(format!(
                        "{}: [admin] has no token_file, so the admin API is disabled",
                        c.display()
                    ))
                })?;
                (dial_addr(config.admin.listen), file)
            }
            (None, Some(a), Some(t)) => {
                let addr = a
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut it| it.next())
                    .ok_or_else(|| CtlError::Usage(format!("--admin {a}: not a host:port")))?;
                (dial_addr(addr), t.clone())
            }
            _ => {
                return Err(CtlError::Usage(
                    "give either --config FILE, or --admin ADDR with --token-file FILE".into(),
                ))
            }
        };
        let token = read_token(&token_file)?;
        Ok(Target { addr, token })
    }

    /// Calls the API: the parsed JSON answer, or why not.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<serde_json::Value, CtlError> {
        let no_answer = |reason: String| CtlError::NoAnswer {
            addr: self.addr,
            reason,
        };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| no_answer(e.to_string()))?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| no_answer(e.to_string()))?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, self.addr.to_string())
                .header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", self.token),
                )
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| CtlError::Usage(e.to_string()))?;
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| no_answer(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| no_answer(e.to_string()))?
                .to_bytes();
            Ok::<_, CtlError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| no_answer(format!("no response within {CALL_TIMEOUT:?}")))??;
        let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        if !status.is_success() {
            let message = json
                .as_ref()
                .and_then(|j| j.get("error"))
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(CtlError::Api { status, message });
        }
        json.ok_or_else(|| CtlError::Api {
            status,
            message: "the answer is not JSON".into(),
        })
    }
}

/// An unspecified listen address (`0.0.0.0`, `[::]`) is dialled on loopback.
fn dial_addr(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        _ => a,
    }
}

fn read_token(path: &Path) -> Result<String, CtlError> {
    let text = std::fs::read(path)
        .map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", path.display())))?;
    AdminToken::from_file_content(&text)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", path.display())))?;
    Ok(String::from_utf8_lossy(text.trim_ascii()).into_owned())
}

/// Percent-encodes one path segment (an IPv6 address's brackets and
/// colons, anything but unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn server_path(upstream: &str, address: &str, tail: &str) -> String {
    let mut p = format!(
        "/api/v1/upstreams/{}/servers/{}",
        encode_segment(upstream),
        encode_segment(address)
    );
    if !tail.is_empty() {
        p.push('/');
        p.push_str(tail);
    }
    p
}

/// The `servers` table.
pub fn render_table(servers: &[ServerInfo]) -> String {
    let head = [
        "UPSTREAM",
        "ADDRESS",
        "STATE",
        "ADMIN",
        "WEIGHT",
        "EFFECTIVE",
        "IN-FLIGHT",
    ];
    let rows: Vec<[String; 7]> = servers
        .iter()
        .map(|s| {
            [
                s.upstream.clone(),
                s.address.clone(),
                s.state.clone(),
                s.admin_state.clone(),
                s.weight.to_string(),
                s.effective_weight.to_string(),
                s.in_flight.to_string(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.push('\n');
        l
    };
    let mut out = line(&head);
    for r in &rows {
        out.push_str(&line(&r.each_ref().map(String::as_str)));
    }
    out
}

fn one_line(s: &ServerInfo) -> String {
    format!(
        "{} {}: state={} admin_state={} weight={} effective_weight={} in_flight={}",
        s.upstream, s.address, s.state, s.admin_state, s.weight, s.effective_weight, s.in_flight
    )
}

fn parse_server(v: serde_json::Value) -> Result<ServerInfo, CtlError> {
    serde_json::from_value(v).map_err(|e| CtlError::Api {
        status: StatusCode::OK,
        message: format!("unexpected answer: {e}"),
    })
}

/// Runs one `ctl` command, printing its result to stdout.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    let target = Target::resolve(&args)?;
    match args.command {
        CtlCommand::Servers => {
            let v = target.call(Method::GET, "/api/v1/servers", None).await?;
            let all: AllServers = serde_json::from_value(v).map_err(|e| CtlError::Api {
                status: StatusCode::OK,
                message: format!("unexpected answer: {e}"),
            })?;
            let servers: Vec<ServerInfo> =
                all.upstreams.into_iter().flat_map(|u| u.servers).collect();
            print!("{}", render_table(&servers));
        }
        CtlCommand::Drain {
            server,
            wait,
            timeout,
        } => {
            let path = server_path(&server.upstream, &server.address, "drain");
            let s = parse_server(target.call(Method::POST, &path, None).await?)?;
            println!("{}", one_line(&s));
            if wait {
                let limit = crate::config::units::parse_duration(&timeout)
                    .map_err(|e| CtlError::Usage(format!("--timeout {timeout}: {e}")))?;
                wait_idle(&target, &server.upstream, &server.address, limit).await?;
            }
        }
        CtlCommand::Disable { server } => {
            let path = server_path(&server.upstream, &server.address, "disable");
            let s = parse_server(target.call(Method::POST, &path, None).await?)?;
            println!("{}", one_line(&s));
        }
        CtlCommand::Enable { server } => {
            let tail = "enable";
            let path = server_path(&server.upstream, &server.address, tail);
            let s = parse_server(target.call(Method::POST, &path, None).await?)?;
            println!("{}", one_line(&s));
        }
        CtlCommand::Weight { server, value } => {
            let path = server_path(&server.upstream, &server.address, "weight");
            let v = if value == "reset" {
                target.call(Method::DELETE, &path, None).await?
            } else {
                let n: u32 = value.parse().map_err(|_| {
                    CtlError::Usage(format!(
                        "weight must be a number or \"reset\", not {value:?}"
                    ))
                })?;
                let body = serde_json::json!({ "weight": n }).to_string();
                target.call(Method::PUT, &path, Some(body)).await?
            };
            println!("{}", one_line(&parse_server(v)?));
        }
    }
    Ok(())
}

/// Polls the server until its `in_flight` is 0 (Ok) or `limit` passes.
async fn wait_idle(
    target: &Target,
    upstream: &str,
    address: &str,
    limit: Duration,
) -> Result<(), CtlError> {
    let path = server_path(upstream, address, "");
    let deadline = Instant::now() + limit;
    loop {
        let s = parse_server(target.call(Method::GET, &path, None).await?)?;
        if s.in_flight == 0 {
            println!("{upstream} {address}: drained (0 in flight)");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CtlError::Usage(format!(
                "{upstream} {address}: still {} in flight after {limit:?}",
                s.in_flight
            )));
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("[::1]:8080"), "%5B%3A%3A1%5D%3A8080");
        assert_eq!(encode_segment("10.0.0.1:80"), "10.0.0.1%3A80");
        assert_eq!(encode_segment("api-v2_x"), "api-v2_x");
    }

    #[test]
    fn unspecified_addresses_are_dialled_on_loopback() {
        assert_eq!(
            dial_addr("0.0.0.0:9901".parse().unwrap()),
            "127.0.0.1:9901".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            dial_addr("[::]:9901".parse().unwrap()),
            "[::1]:9901".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            dial_addr("10.1.1.1:9901".parse().unwrap()),
            "10.1.1.1:9901".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn table_aligns_columns() {
        let s = ServerInfo {
            upstream: "api".into(),
            address: "127.0.0.1:8080".into(),
            weight: 1,
            effective_weight: 5,
            state: "draining".into(),
            admin_state: "drain".into(),
            in_flight: 2,
        };
        let t = render_table(&[s]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("UPSTREAM  ADDRESS         STATE     ADMIN"));
        assert!(lines[1].starts_with("api       127.0.0.1:8080  draining  drain"));
        assert_eq!(
            lines[0].find("IN-FLIGHT"),
            lines[1].rfind(' ').map(|i| i + 1)
        );
    }
}
