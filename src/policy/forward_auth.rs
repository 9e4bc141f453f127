//! `forward_auth` state: the auth service's address, timeout and connections.
//!
//! The auth service is reached through the same machinery as upstream
//! servers (`proxy::forward::send`: keep-alive pool, connect and response
//! timeouts), so it needs a `ServerState` and an `UpstreamConfig`. Its
//! `ServerState` lives in a registry of its own, keyed by address like
//! upstream servers: pooled connections survive reloads that keep the
//! address, and the auth service never shows among the upstreams (metrics,
//! status page), whose series that private registry's are never exported.

use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, HeaderValue};

use crate::backend::{Registry, ServerState};
use crate::config::policy::ForwardAuthConfig;
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;

/// The name auth services go by in their registry and in logs.
pub const AUTH_SERVICE: &str = "forward_auth";

pub struct ForwardAuth {
    pub config: ForwardAuthConfig,
    /// The auth service's connections.
    pub server: Arc<ServerState>,
    /// How `send` reaches it: HTTP/1.1, `timeout` for connect and for the
    /// response head, no retries.
    pub upstream: UpstreamConfig,
    /// The auth request's `Host` (the address as written).
    pub host: HeaderValue,
    /// `path` (and query) of the auth request.
    pub path: http::uri::PathAndQuery,
}

impl ForwardAuth {
    pub fn new(config: &ForwardAuthConfig) -> ForwardAuth {
        let upstream = UpstreamConfig {
            name: AUTH_SERVICE.to_string(),
            connect_timeout: config.timeout,
            response_timeout: config.timeout,
            retries: 0,
            pool_max_idle_per_server: 16,
            ..UpstreamConfig::default()
        };
        ForwardAuth {
            server: auth_services().server(AUTH_SERVICE, config.addr, true),
            upstream,
            host: HeaderValue::from_str(&config.address)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            path: config
                .path
                .parse()
                .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/")),
            config: config.clone(),
        }
    }

    /// The request headers the auth service gets from the client's request.
    pub fn request_headers(&self) -> &[HeaderName] {
        &self.config.request_headers
    }

    /// The auth answer's headers copied onto the forwarded request.
    pub fn response_headers(&self) -> &[HeaderName] {
        &self.config.response_headers
    }
}

/// The registry of auth services' server state (see the module doc).
fn auth_services() -> &'static Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry::new(Arc::new(Metrics::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(addr: &str) -> ForwardAuthConfig {
        ForwardAuthConfig {
            address: addr.to_string(),
            addr: addr.parse().unwrap(),
            path: "/verify?x=1".into(),
            timeout: Duration::from_millis(700),
            request_headers: vec![],
            response_headers: vec![],
        }
    }

    #[test]
    fn connections_are_kept_per_address_across_rebuilds() {
        let a = ForwardAuth::new(&config("127.0.0.1:9101"));
        let b = ForwardAuth::new(&config("127.0.0.1:9101"));
        let c = ForwardAuth::new(&config("127.0.0.1:9102"));
        assert!(Arc::ptr_eq(&a.server, &b.server), "same address, same pool");
        assert!(!Arc::ptr_eq(&a.server, &c.server));
        assert_eq!(a.upstream.connect_timeout, Duration::from_millis(700));
        assert_eq!(a.upstream.response_timeout, Duration::from_millis(700));
        assert_eq!(a.host, "127.0.0.1:9101");
        assert_eq!(a.path.as_str(), "/verify?x=1");
    }
}
