//! Validation of `[cluster]` (the shared Redis behind `scope = "cluster"`
//! rate limits), route names, and each route's `rate_limit.scope`.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ctx::Ctx;
use super::raw::{RawRoute, S};
use super::{RateScope, RouteConfig};

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub(crate) redis: Option<S>,
    pub(crate) timeout: Option<S>,
    pub(crate) on_error: Option<S>,
    pub(crate) key_prefix: Option<S>,
}

/// What a cluster-scoped limit does when Redis does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The same limit, enforced by this instance alone.
    Local,
    /// Let the request through.
    Allow,
    /// 429 with `Retry-After: 1`.
    Deny,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Local => "local",
            OnError::Allow => "allow",
            OnError::Deny => "deny",
        }
    }
}

/// `[cluster]`: the Redis every instance shares its cluster budgets through.
/// Equal configs keep the same connection across reloads.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` URL, as written (may hold a password).
    pub redis: String,
    /// Bound on each Redis call, from the request's point of view.
    pub timeout: Duration,
    pub on_error: OnError,
    /// Prepended to every key Fulcrum writes.
    pub key_prefix: String,
}

impl ClusterConfig {
    /// The URL without its password, for logs.
    pub fn redis_redacted(&self) -> String {
        redact(&self.redis)
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &self.redis_redacted())
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Validates `[cluster]`, route names (non-empty, unique) and every
/// `rate_limit.scope`, setting the scope on the typed routes.
pub(super) fn validate(
    ctx: &mut Ctx<'_>,
    raw: Option<&Spanned<RawCluster>>,
    raw_routes: &[Spanned<RawRoute>],
    routes: &mut [RouteConfig],
) -> Option<ClusterConfig> {
    let cluster = raw.map(|c| cluster(ctx, c));
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in raw_routes.iter().enumerate() {
        let r = r.get_ref();
        if let Some(name) = &r.name {
            let n = name.get_ref();
            if n.trim().is_empty() || n.chars().any(char::is_control) {
                ctx.error(
                    name.span(),
                    format!("route[{i}].name"),
                    "must be non-empty, without control characters",
                );
            } else if let Some(first) = seen.insert(n, i) {
                ctx.error(
                    name.span(),
                    format!("route[{i}].name"),
                    format!("duplicate route name \"{n}\" (also route[{first}])"),
                );
            }
        }
        let Some(rl) = &r.rate_limit else { continue };
        let Some(scope) = rl.get_ref().get("scope") else {
            continue;
        };
        let key = format!("route[{i}].rate_limit.scope");
        let scope = match scope.as_str() {
            Some("instance") => RateScope::Instance,
            Some("cluster") => {
                if r.name.is_none() {
                    ctx.error(
                        rl.span(),
                        &key,
                        "scope = \"cluster\" needs an explicit route `name` (the default route<N> shifts when routes move)",
                    );
                }
                if cluster.is_none() {
                    ctx.error(
                        rl.span(),
                        &key,
                        "scope = \"cluster\" needs a [cluster] table with `redis`",
                    );
                }
                RateScope::Cluster
            }
            _ => {
                ctx.error(
                    rl.span(),
                    &key,
                    format!("{scope} must be \"instance\" or \"cluster\""),
                );
                RateScope::Instance
            }
        };
        if let Some(limit) = routes.get_mut(i).and_then(|r| r.rate_limit.as_mut()) {
            limit.scope = scope;
        }
    }
    cluster.flatten()
}

fn cluster(ctx: &mut Ctx<'_>, raw: &Spanned<RawCluster>) -> Option<ClusterConfig> {
    let c = raw.get_ref();
    let timeout = ctx.positive_duration(&c.timeout, "cluster.timeout", Duration::from_millis(50));
    let on_error = match &c.on_error {
        None => OnError::Local,
        Some(s) => match s.get_ref().as_str() {
            "local" => OnError::Local,
            "allow" => OnError::Allow,
            "deny" => OnError::Deny,
            other => {
                ctx.error(
                    s.span(),
                    "cluster.on_error",
                    format!("\"{other}\" must be \"local\", \"allow\" or \"deny\""),
                );
                OnError::Local
            }
        },
    };
    let key_prefix = c
        .key_prefix
        .as_ref()
        .map_or_else(|| "fulcrum:".to_string(), |p| p.get_ref().clone());
    let Some(redis) = &c.redis else {
        ctx.error(
            raw.span(),
            "cluster.redis",
            "missing (a URL like \"redis://127.0.0.1:6379/0\")",
        );
        return None;
    };
    if let Err(e) = check_url(redis.get_ref()) {
        ctx.error(redis.span(), "cluster.redis", e);
        return None;
    }
    Some(ClusterConfig {
        redis: redis.get_ref().clone(),
        timeout,
        on_error,
        key_prefix,
    })
}

/// A `redis://` or `rediss://` URL the client can connect with.
fn check_url(url: &str) -> Result<(), String> {
    let shown = redact(url);
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!(
            "\"{shown}\" must be a redis:// or rediss:// (TLS) URL"
        ));
    }
    match redis::Client::open(url) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("\"{shown}\" is not a valid Redis URL: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn check(extra: &str, route: &str) -> Result<Config, String> {
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:9901\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n{extra}\n[[route]]\n{route}\nupstream = \"api\"\n[upstream.api]\nservers = [{{ address = \"127.0.0.1:1\" }}]\n"
        );
        Config::from_toml(std::path::Path::new("t.toml"), &text).map_err(|e| e.to_string())
    }

    const CLUSTER: &str = "[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\n";
    const LIMIT: &str =
        "rate_limit = { requests_per_second = 100, burst = 200, scope = \"cluster\" }";

    #[test]
    fn cluster_scope_needs_a_name_and_a_cluster_table() {
        let c = check(CLUSTER, &format!("name = \"my api\"\n{LIMIT}")).unwrap();
        let cl = c.cluster.unwrap();
        assert_eq!(cl.timeout, Duration::from_millis(50));
        assert_eq!(cl.on_error, OnError::Local);
        assert_eq!(cl.key_prefix, "fulcrum:");
        assert_eq!(c.routes[0].name, "my api");
        assert_eq!(c.routes[0].rate_limit.unwrap().scope, RateScope::Cluster);

        let e = check(CLUSTER, LIMIT).unwrap_err();
        assert!(
            e.contains("t.toml:10:14: route[0].rate_limit.scope: scope = \"cluster\" needs an explicit route `name`"),
            "{e}"
        );
        let e = check("", &format!("name = \"api\"\n{LIMIT}")).unwrap_err();
        assert!(e.contains("needs a [cluster] table"), "{e}");
        let e = check(
            CLUSTER,
            "rate_limit = { requests_per_second = 1, scope = \"global\" }",
        )
        .unwrap_err();
        assert!(
            e.contains("route[0].rate_limit.scope: \"global\" must be \"instance\" or \"cluster\""),
            "{e}"
        );
        // Instance scope (the default) needs neither.
        let c = check(
            "",
            "rate_limit = { requests_per_second = 1, scope = \"instance\" }",
        )
        .unwrap();
        assert_eq!(c.routes[0].name, "route0");
        assert_eq!(c.routes[0].rate_limit.unwrap().scope, RateScope::Instance);
        assert!(c.cluster.is_none());
    }

    #[test]
    fn cluster_table_keys_are_checked() {
        let e = check(
            "[cluster]\nredis = \"http://x\"\ntimeout = \"0ms\"\non_error = \"panic\"\n",
            "",
        )
        .unwrap_err();
        assert!(
            e.contains("t.toml:7:9: cluster.redis: \"http://x\" must be a redis://"),
            "{e}"
        );
        assert!(e.contains("cluster.timeout: must be greater than 0"), "{e}");
        assert!(
            e.contains("cluster.on_error: \"panic\" must be \"local\", \"allow\" or \"deny\""),
            "{e}"
        );
        let e = check("[cluster]\ntimeout = \"1s\"\n", "").unwrap_err();
        assert!(e.contains("cluster.redis: missing"), "{e}");
        let e = check("[cluster]\nredis = \"redis://h\"\nurl = 1\n", "").unwrap_err();
        assert!(e.contains("unknown field `url`"), "{e}");
        let c = check(
            "[cluster]\nredis = \"rediss://u:pw@h:6380/1\"\ntimeout = \"20ms\"\non_error = \"deny\"\nkey_prefix = \"edge:\"\n",
            "",
        )
        .unwrap();
        let cl = c.cluster.unwrap();
        assert_eq!(
            (cl.timeout, cl.on_error, cl.key_prefix.as_str()),
            (Duration::from_millis(20), OnError::Deny, "edge:")
        );
        assert!(!format!("{cl:?}").contains("pw"));
    }

    #[test]
    fn route_names_are_unique_and_non_empty() {
        let text = |a: &str, b: &str| {
            format!(
                "[admin]\nlisten = \"127.0.0.1:9901\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n[[route]]\nname = \"{a}\"\nupstream = \"api\"\n[[route]]\nname = \"{b}\"\nupstream = \"api\"\n[upstream.api]\nservers = [{{ address = \"127.0.0.1:1\" }}]\n"
            )
        };
        let load = |t: String| {
            Config::from_toml(std::path::Path::new("t.toml"), &t).map_err(|e| e.to_string())
        };
        let e = load(text("api", "api")).unwrap_err();
        assert!(
            e.contains("route[1].name: duplicate route name \"api\" (also route[0])"),
            "{e}"
        );
        let e = load(text(" ", "b")).unwrap_err();
        assert!(e.contains("route[0].name: must be non-empty"), "{e}");
        assert!(load(text("ünï côdé", "with spaces")).is_ok());
    }

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://cache.internal:6380").is_ok());
        assert!(check_url("redis://[::1]:6379").is_ok());
        let e = check_url("http://u:hunter2@127.0.0.1:6379").unwrap_err();
        assert!(e.contains("redis:// or rediss://"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = check_url("redis://u:hunter2@127.0.0.1:6379/notadb").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(
            redact("redis://app:hunter2@10.0.0.1:6379/2"),
            "redis://app:***@10.0.0.1:6379/2"
        );
        assert_eq!(redact("redis://10.0.0.1:6379/2"), "redis://10.0.0.1:6379/2");
    }
}
