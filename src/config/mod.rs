//! Configuration: the typed, validated `Config` and how it is loaded from TOML.
//!
//! Loading is two steps: TOML → `raw::RawConfig` (serde, unknown keys denied),
//! then `validate` → `Config`, which collects every error it finds, each naming
//! the file, line, column and key.

mod acme;
mod admin;
mod auth;
mod cluster;
mod compress;
mod ctx;
mod health;
mod listener;
pub mod policy;
mod policy_validate;
mod raw;
pub mod resolve;
mod route;
pub mod units;
mod upstream;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use acme::{AcmeChallenge, AcmeConfig};
pub use admin::{AdminToken, MIN_TOKEN_BYTES};
pub use cluster::{ClusterConfig, OnError};
pub use policy::{PolicyConfig, RouteAction, RouteMatch};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (used for reloads and relative paths).
    pub path: PathBuf,
    pub admin: AdminConfig,
    pub global: GlobalConfig,
    pub listeners: Vec<ListenerConfig>,
    /// In file order: first match wins.
    pub routes: Vec<RouteConfig>,
    /// Sorted by name.
    pub upstreams: Vec<UpstreamConfig>,
    /// Findings that don't stop the config (`file:line:column: key: message`).
    pub warnings: Vec<String>,
    /// `[acme]`: automatic certificates.
    pub acme: Option<AcmeConfig>,
    /// `[cluster]`: the Redis behind `scope = "cluster"` rate limits.
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The admin listener's connection settings (defaults, 1024 connections).
    pub listener: Arc<ListenerConfig>,
    /// The `/api/v1` bearer token, read from `token_file`; `None` disables
    /// the API.
    pub token: Option<AdminToken>,
    pub token_file: Option<PathBuf>,
    /// Where runtime overrides are persisted.
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct GlobalConfig {
    /// 0 = one per CPU core.
    pub worker_threads: usize,
    pub shutdown_timeout: Duration,
    pub access_log: bool,
    /// `[global].error_pages`: bodies for the answers Fulcrum generates.
    pub error_pages: policy::ErrorPages,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// More request header fields than this -> 431 (HTTP/1 and HTTP/2).
    pub max_header_count: usize,
    pub max_request_body: Option<u64>,
    pub body_read_timeout: Duration,
    pub max_connections_per_client: usize,
    /// Every connection starts with a PROXY v1/v2 header naming the client.
    pub proxy_protocol: bool,
    pub trusted_proxies: Vec<Cidr>,
    /// Present when this listener terminates TLS.
    pub tls: Option<ListenerTls>,
}

/// TLS termination of one listener, with every certificate already loaded
/// (a reload re-reads the files, so a rotated certificate takes effect).
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// rustls settings: SNI certificate resolver, ALPN h2 + http/1.1,
    /// protocol versions from `min_version`.
    pub server: Arc<rustls::ServerConfig>,
    /// The certificate and key files, in config order.
    pub files: Vec<PathBuf>,
    /// The loaded `certificates`, first is the default (may be empty when
    /// `acme` is not).
    pub keys: Vec<Arc<rustls::sign::CertifiedKey>>,
    pub min_version: crate::tls::server::MinVersion,
    /// `acme`: names of one ACME-managed certificate (lower case).
    pub acme: Vec<String>,
}

/// How Fulcrum talks to an upstream's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over TCP.
    Http1,
    /// HTTP/1.1 over TLS.
    Http1Tls,
    /// HTTP/2 with prior knowledge over TCP.
    H2c,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http1Tls => "http1-tls",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
        }
    }

    pub fn is_h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, UpstreamProtocol::Http1Tls | UpstreamProtocol::H2)
    }
}

/// TLS towards an upstream's servers.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Trust anchors (`tls_ca` or the webpki roots) and ALPN.
    pub client: Arc<rustls::ClientConfig>,
    /// `tls_server_name`: SNI and the name the certificate must match. When
    /// absent, each server's configured host name (or IP) is used.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
    /// The `tls_ca` file, when one is named (`--watch` follows it).
    pub ca_file: Option<PathBuf>,
}

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Lower-cased exact name.
    Exact(String),
    /// `*.example.com`, stored as `.example.com` (lower case).
    Suffix(String),
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `name`, or `route<N>` (N = its index in the file).
    pub name: String,
    /// `None` = every listener.
    pub listeners: Option<Vec<String>>,
    pub host: Option<HostMatch>,
    /// Normalised without a trailing slash; "" matches everything.
    pub path_prefix: String,
    /// `methods`, `headers`, `query`; `None` when the route uses none.
    pub matching: Option<RouteMatch>,
    pub action: RouteAction,
    pub rate_limit: Option<RateLimit>,
    /// Everything else a route may do; `None` when it uses none of it.
    pub policy: Option<Box<PolicyConfig>>,
}

/// `rate_limit = { requests_per_second = N, burst = M }` on a route: per
/// client IP, a bucket of `burst` requests refilled at `requests_per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
    pub scope: RateScope,
}

/// Who shares a `rate_limit` budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// Each instance counts alone.
    Instance,
    /// Every instance with the same `[cluster]`, through Redis.
    Cluster,
}

/// Load-balancing strategies that this build implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Weighted,
    LeastConnections,
    PowerOfTwo,
    PeakEwma,
    IpHash,
    ConsistentHash,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::Weighted => "weighted",
            Strategy::LeastConnections => "least-connections",
            Strategy::PowerOfTwo => "power-of-two",
            Strategy::PeakEwma => "peak-ewma",
            Strategy::IpHash => "ip-hash",
            Strategy::ConsistentHash => "consistent-hash",
        }
    }

    /// Every strategy, in the order the docs list them.
    pub const ALL: [Strategy; 7] = [
        Strategy::RoundRobin,
        Strategy::Weighted,
        Strategy::LeastConnections,
        Strategy::PowerOfTwo,
        Strategy::PeakEwma,
        Strategy::IpHash,
        Strategy::ConsistentHash,
    ];

    pub fn from_name(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// What `consistent-hash` hashes (`hash_key`). A request without the named
/// part falls back to its client IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
    Path,
}

/// `[upstream.X.sticky]`: cookie session affinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    pub cookie: String,
    /// `None` = session cookie.
    pub max_age: Option<Duration>,
    pub secure: bool,
    pub http_only: bool,
    /// "Lax", "Strict" or "None" as written in the cookie attribute.
    pub same_site: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub address: SocketAddr,
    pub weight: u32,
    /// The address as written (a DNS name expands to several servers).
    pub configured_as: String,
}

impl ServerConfig {
    /// The (name, port) to re-resolve, when the address was written as a DNS name.
    pub fn dns_name(&self) -> Option<(&str, u16)> {
        if self.configured_as.parse::<SocketAddr>().is_ok() {
            return None;
        }
        let (host, port) = self.configured_as.rsplit_once(':')?;
        Some((host, port.parse().ok()?))
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub strategy: Strategy,
    pub servers: Vec<ServerConfig>,
    pub hash_key: HashKey,
    /// 0 = off; else no server takes more than this × the mean in-flight load.
    pub hash_balance_factor: f64,
    /// Zero = off.
    pub slow_start: Duration,
    pub sticky: Option<StickyConfig>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_server: usize,
    /// Extra attempts on another server when the request was never sent.
    pub retries: u32,
    /// A response with more header fields -> 502.
    pub max_header_count: usize,
    pub protocol: UpstreamProtocol,
    /// Present when `protocol` uses TLS.
    pub tls: Option<UpstreamTls>,
    /// Retries may add at most this fraction of requests (plus a floor).
    pub retry_budget: f64,
    /// How often DNS names among the servers are re-resolved.
    pub resolve_interval: Duration,
    pub health_check: Option<HealthCheckConfig>,
    pub passive_health: Option<PassiveHealthConfig>,
}

/// `[upstream.X.health_check]`: active HTTP probes.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Inclusive range of passing status codes.
    pub expect_status: (u16, u16),
    /// Fraction (0.0..=1.0) by which each probe's schedule is spread.
    pub jitter: f64,
    /// `initial_state = "up"`: serve before the first check.
    pub initial_up: bool,
    pub host: Option<String>,
}

/// `[upstream.X.passive_health]`: outlier ejection from live traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveHealthConfig {
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl UpstreamConfig {
    /// The TLS name for a server: `tls_server_name`, else the host the server
    /// was configured as (a DNS name or an IP address).
    pub fn tls_name_for(&self, addr: SocketAddr) -> Option<rustls_pki_types::ServerName<'static>> {
        let tls = self.tls.as_ref()?;
        if let Some(n) = &tls.server_name {
            return Some(n.clone());
        }
        let configured = self
            .servers
            .iter()
            .find(|s| s.address == addr)
            .map(|s| s.configured_as.trim());
        // A server written as a DNS name is verified against that name.
        let dns_host = configured
            .filter(|c| c.parse::<SocketAddr>().is_err())
            .and_then(|c| c.rsplit_once(':'))
            .map(|(host, _)| host)
            .filter(|h| !h.is_empty());
        match dns_host {
            Some(h) => rustls_pki_types::ServerName::try_from(h.to_string()).ok(),
            None => Some(rustls_pki_types::ServerName::IpAddress(addr.ip().into())),
        }
    }
}

impl Default for UpstreamConfig {
    /// SPEC's defaults, with no servers: for building upstreams in code
    /// (benchmarks, tests) with `..Default::default()`.
    fn default() -> Self {
        UpstreamConfig {
            name: String::new(),
            strategy: Strategy::RoundRobin,
            servers: Vec::new(),
            hash_key: HashKey::ClientIp,
            hash_balance_factor: 0.0,
            slow_start: Duration::ZERO,
            sticky: None,
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_server: 64,
            retries: 1,
            max_header_count: 100,
            retry_budget: 0.2,
            resolve_interval: Duration::from_secs(30),
            health_check: None,
            passive_health: None,
            protocol: UpstreamProtocol::Http1,
            tls: None,
        }
    }
}

/// An IPv4 or IPv6 network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One problem found in a config file, with where it is.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `upstream.api.servers[0].weight`.
    pub key: String,
    pub message: String,
}

/// Every problem found while loading one config file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub path: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if d.line == 0 {
                write!(f, "{}: {}: {}", self.path.display(), d.key, d.message)?;
            } else {
                write!(
                    f,
                    "{}:{}:{}: {}: {}",
                    self.path.display(),
                    d.line,
                    d.column,
                    d.key,
                    d.message
                )?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            diagnostics: vec![Diagnostic {
                line: 0,
                column: 0,
                key: "file".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::from_toml(path, &text)
    }

    /// Parses and validates config text; `path` names it in errors and anchors
    /// relative paths.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        validate::parse_and_validate(path, text)
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}
