//! Raw configuration: serde structs that mirror the TOML file one to one.
//!
//! Every struct denies unknown keys so a typo fails loudly. Values that need
//! validation keep their source span (`Spanned`) so errors can name the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string value with its position in the file.
pub(crate) type S = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub(crate) global: RawGlobal,
    #[serde(default, rename = "listener")]
    pub(crate) listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "route")]
    pub(crate) routes: Vec<Spanned<RawRoute>>,
    #[serde(default, rename = "upstream")]
    pub(crate) upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    pub(crate) acme: Option<Spanned<super::acme::RawAcme>>,
    pub(crate) cluster: Option<Spanned<super::cluster::RawCluster>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: S,
    pub(crate) token_file: Option<S>,
    pub(crate) state_file: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGlobal {
    pub(crate) worker_threads: Option<Spanned<i64>>,
    pub(crate) shutdown_timeout: Option<S>,
    pub(crate) access_log: Option<bool>,
    pub(crate) error_pages: Option<Spanned<BTreeMap<String, S>>>,
}

/// A byte size: an integer, or a string with a unit ("10MiB"); "" means unset.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Int(i64),
    Str(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: S,
    pub(crate) listen: S,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) header_read_timeout: Option<S>,
    pub(crate) idle_timeout: Option<S>,
    pub(crate) max_header_bytes: Option<Spanned<RawSize>>,
    pub(crate) max_header_count: Option<Spanned<i64>>,
    pub(crate) max_request_body: Option<Spanned<RawSize>>,
    pub(crate) body_read_timeout: Option<S>,
    pub(crate) max_connections_per_client: Option<Spanned<i64>>,
    pub(crate) proxy_protocol: Option<Spanned<bool>>,
    pub(crate) trusted_proxies: Option<Vec<S>>,
    pub(crate) tls: Option<Spanned<RawListenerTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenerTls {
    pub(crate) certificates: Option<Spanned<Vec<Spanned<RawCertificate>>>>,
    pub(crate) min_version: Option<S>,
    /// ACME names (one certificate), see `super::acme`.
    pub(crate) acme: Option<Spanned<Vec<S>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub(crate) cert: S,
    pub(crate) key: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: Option<S>,
    pub(crate) listeners: Option<Vec<S>>,
    pub(crate) host: Option<S>,
    pub(crate) path_prefix: Option<S>,
    pub(crate) upstream: Option<S>,
    pub(crate) rate_limit: Option<Spanned<toml::Value>>,
    // Route policy (0.2), validated in `super::policy`, `super::auth` and
    // `super::compress`.
    pub(crate) methods: Option<Spanned<Vec<S>>>,
    pub(crate) headers: Option<Spanned<BTreeMap<String, S>>>,
    pub(crate) query: Option<Spanned<BTreeMap<String, S>>>,
    pub(crate) split: Option<Spanned<Vec<Spanned<RawSplitTarget>>>>,
    pub(crate) split_by: Option<S>,
    pub(crate) redirect: Option<Spanned<RawRedirect>>,
    pub(crate) respond: Option<Spanned<RawRespond>>,
    pub(crate) deny: Option<Spanned<Vec<S>>>,
    pub(crate) allow: Option<Spanned<Vec<S>>>,
    pub(crate) basic_auth: Option<Spanned<RawBasicAuth>>,
    pub(crate) forward_auth: Option<Spanned<RawForwardAuth>>,
    pub(crate) strip_prefix: Option<Spanned<bool>>,
    pub(crate) add_prefix: Option<S>,
    pub(crate) request_headers: Option<Spanned<RawHeaderRules>>,
    pub(crate) response_headers: Option<Spanned<RawHeaderRules>>,
    /// `true`, `false` or a table: checked by hand for clear messages.
    pub(crate) compress: Option<Spanned<toml::Value>>,
    pub(crate) error_pages: Option<Spanned<BTreeMap<String, S>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSplitTarget {
    pub(crate) upstream: S,
    pub(crate) weight: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    pub(crate) scheme: Option<S>,
    pub(crate) host: Option<S>,
    pub(crate) port: Option<Spanned<i64>>,
    pub(crate) path_prefix: Option<S>,
    pub(crate) status: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    pub(crate) status: Spanned<i64>,
    pub(crate) body: Option<S>,
    pub(crate) content_type: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBasicAuth {
    pub(crate) realm: Option<S>,
    pub(crate) users_file: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawForwardAuth {
    pub(crate) address: S,
    pub(crate) path: Option<S>,
    pub(crate) timeout: Option<S>,
    pub(crate) request_headers: Option<Vec<S>>,
    pub(crate) response_headers: Option<Vec<S>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderRules {
    pub(crate) set: Option<BTreeMap<String, S>>,
    pub(crate) add: Option<BTreeMap<String, S>>,
    pub(crate) remove: Option<Vec<S>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) address: S,
    pub(crate) weight: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) strategy: Option<S>,
    pub(crate) servers: Spanned<Vec<Spanned<RawServer>>>,
    pub(crate) hash_key: Option<S>,
    pub(crate) hash_balance_factor: Option<Spanned<f64>>,
    pub(crate) slow_start: Option<S>,
    pub(crate) resolve_interval: Option<S>,
    pub(crate) connect_timeout: Option<S>,
    pub(crate) response_timeout: Option<S>,
    pub(crate) pool_idle_timeout: Option<S>,
    pub(crate) pool_max_idle_per_server: Option<Spanned<i64>>,
    pub(crate) retries: Option<Spanned<i64>>,
    pub(crate) max_header_count: Option<Spanned<i64>>,
    pub(crate) retry_budget: Option<Spanned<f64>>,
    pub(crate) protocol: Option<S>,
    pub(crate) tls_server_name: Option<S>,
    pub(crate) tls_ca: Option<S>,
    pub(crate) sticky: Option<Spanned<RawSticky>>,
    pub(crate) health_check: Option<Spanned<RawHealthCheck>>,
    pub(crate) passive_health: Option<Spanned<RawPassiveHealth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub(crate) path: Option<S>,
    pub(crate) interval: Option<S>,
    pub(crate) timeout: Option<S>,
    pub(crate) healthy_threshold: Option<Spanned<i64>>,
    pub(crate) unhealthy_threshold: Option<Spanned<i64>>,
    pub(crate) expect_status: Option<S>,
    pub(crate) jitter: Option<S>,
    pub(crate) initial_state: Option<S>,
    pub(crate) host: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassiveHealth {
    pub(crate) consecutive_failures: Option<Spanned<i64>>,
    pub(crate) ejection_time: Option<S>,
    pub(crate) max_ejection_percent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSticky {
    pub(crate) cookie: Option<S>,
    pub(crate) max_age: Option<S>,
    pub(crate) secure: Option<bool>,
    pub(crate) http_only: Option<bool>,
    pub(crate) same_site: Option<S>,
}
