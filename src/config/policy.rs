//! Route policy (0.2): the typed form of a route's match keys, its action
//! and its policy keys. Validation of the auth keys lives in `super::auth`,
//! of `compress` in `super::compress`; the rest is here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::Cidr;

/// What a route matches beyond host and path. `None` on a route that uses
/// none of `methods`, `headers`, `query`.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Empty = any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    /// Names and values percent-decoded.
    pub query: Vec<(String, ValueMatch)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// `"*"`: present with any value.
    Any,
    Exact(String),
}

/// What a matched route does: exactly one of `upstream`, `split`,
/// `redirect`, `respond`.
#[derive(Debug, Clone)]
pub enum RouteAction {
    Upstream(String),
    Split(SplitConfig),
    Redirect(RedirectConfig),
    Respond(RespondConfig),
}

impl RouteAction {
    /// The upstreams this action may forward to.
    pub fn upstreams(&self) -> Vec<&str> {
        match self {
            RouteAction::Upstream(u) => vec![u.as_str()],
            RouteAction::Split(s) => s.targets.iter().map(|t| t.upstream.as_str()).collect(),
            RouteAction::Redirect(_) | RouteAction::Respond(_) => Vec::new(),
        }
    }

    /// A short human description (status page): "api",
    /// "split stable 95, canary 5", "redirect 301", "respond 503".
    pub fn describe(&self) -> String {
        match self {
            RouteAction::Upstream(u) => u.clone(),
            RouteAction::Split(s) => {
                let arms: Vec<String> = s
                    .targets
                    .iter()
                    .map(|t| format!("{} {}", t.upstream, t.weight))
                    .collect();
                format!("split {}", arms.join(", "))
            }
            RouteAction::Redirect(r) => format!("redirect {}", r.status.as_u16()),
            RouteAction::Respond(r) => format!("respond {}", r.status.as_u16()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SplitConfig {
    pub targets: Vec<SplitTarget>,
    pub by: SplitBy,
}

#[derive(Debug, Clone)]
pub struct SplitTarget {
    pub upstream: String,
    /// 1..=1000 (0 is allowed, to take a side out without removing it).
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitBy {
    /// Exact integer shares, smoothly interleaved.
    Request,
    ClientIp,
    Cookie(String),
    Header(HeaderName),
}

#[derive(Debug, Clone)]
pub struct RedirectConfig {
    /// Lower case, "http" or "https".
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Replaces the route's matched `path_prefix`; no trailing slash
    /// ("" for "/").
    pub path_prefix: Option<String>,
    pub status: StatusCode,
}

#[derive(Debug, Clone)]
pub struct RespondConfig {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: HeaderValue,
}

/// `request_headers` / `response_headers`.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

/// `basic_auth`: the users file is read (and every line checked) at load.
#[derive(Debug, Clone)]
pub struct BasicAuthConfig {
    pub realm: String,
    pub users_file: std::path::PathBuf,
    pub users: Arc<crate::htpasswd::Users>,
}

#[derive(Debug, Clone)]
pub struct ForwardAuthConfig {
    /// `host:port` as written: the auth request's `Host`.
    pub address: String,
    /// `address` resolved at load (a DNS name's first address), as upstream
    /// servers' names are.
    pub addr: std::net::SocketAddr,
    pub path: String,
    pub timeout: Duration,
    pub request_headers: Vec<HeaderName>,
    pub response_headers: Vec<HeaderName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Br,
    Gzip,
    Zstd,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompressConfig {
    /// In preference order (breaks q-value ties).
    pub algorithms: Vec<Encoding>,
    pub min_size: u64,
    /// Lower case; "text/*" matches any text type.
    pub content_types: Vec<String>,
}

/// One error page body, read at load.
#[derive(Debug, Clone)]
pub struct ErrorPage {
    pub body: Bytes,
    pub content_type: HeaderValue,
}

/// status → page.
pub type ErrorPages = Arc<BTreeMap<u16, ErrorPage>>;

/// A route's policy keys. `RouteConfig::policy` is `None` when a route uses
/// none of them, so such a route costs nothing extra.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    pub deny: Vec<Cidr>,
    /// `None` = no allow-list.
    pub allow: Option<Vec<Cidr>>,
    pub basic_auth: Option<BasicAuthConfig>,
    pub forward_auth: Option<ForwardAuthConfig>,
    pub strip_prefix: bool,
    /// No trailing slash; `None` or "" = nothing to add.
    pub add_prefix: Option<String>,
    pub request_headers: Option<HeaderRules>,
    pub response_headers: Option<HeaderRules>,
    pub compress: Option<CompressConfig>,
    /// The route's own pages over `[global].error_pages` (merged at load).
    pub error_pages: Option<ErrorPages>,
}
