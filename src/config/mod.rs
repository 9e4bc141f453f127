//! Configuration: the typed, validated `Config` and how it is loaded from TOML.
//!
//! Loading is two steps: TOML → `raw::RawConfig` (serde, unknown keys denied),
//! then `validate` → `Config`, which collects every error it finds, each naming
//! the file, line, column and key.

mod raw;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct GlobalConfig {
    /// 0 = one per CPU core.
    pub worker_threads: usize,
    pub shutdown_timeout: Duration,
    pub access_log: bool,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_request_body: Option<u64>,
    pub body_read_timeout: Duration,
    pub max_connections_per_client: usize,
    pub trusted_proxies: Vec<Cidr>,
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
    /// `None` = every listener.
    pub listeners: Option<Vec<String>>,
    pub host: Option<HostMatch>,
    /// Normalised without a trailing slash; "" matches everything.
    pub path_prefix: String,
    pub upstream: String,
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
