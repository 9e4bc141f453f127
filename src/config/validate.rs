//! Raw → typed validation. Collects every error instead of stopping at the first.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::ctx::{socket_addr, Ctx};
use super::listener::validate_listener;
use super::raw::RawConfig;
use super::route::validate_route;
use super::upstream::validate_upstream;
use super::{AdminConfig, Config, ConfigError, GlobalConfig};

pub(super) fn parse_and_validate(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut ctx = Ctx {
        text,
        diags: Vec::new(),
        warnings: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let key = key_at(text, span.start);
            ctx.error(span, key, e.message().trim().to_string());
            return Err(ConfigError {
                path: path.to_path_buf(),
                diagnostics: ctx.diags,
            });
        }
    };
    let mut config = validate(&mut ctx, path, raw);
    if ctx.diags.is_empty() {
        config.warnings = ctx
            .warnings
            .into_iter()
            .map(|w| format!("{}:{w}", path.display()))
            .collect();
        Ok(config)
    } else {
        ctx.diags.sort_by_key(|d| (d.line, d.column));
        Err(ConfigError {
            path: path.to_path_buf(),
            diagnostics: ctx.diags,
        })
    }
}

/// Best-effort name of the key whose value or name starts at `offset`, for
/// serde errors (which carry a span but no key path).
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    if let Some((k, _)) = line.split_once('=') {
        return k.trim().to_string();
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    match (line.is_empty(), table) {
        (false, _) if line.starts_with('[') => line.trim_matches(['[', ']']).to_string(),
        (_, Some(t)) => t.trim_matches(['[', ']']).to_string(),
        _ => "config".to_string(),
    }
}

fn validate(ctx: &mut Ctx<'_>, path: &Path, raw: RawConfig) -> Config {
    let admin = match &raw.admin {
        Some(a) => {
            let listen = socket_addr(ctx, &a.get_ref().listen, "admin.listen");
            super::admin::validate(ctx, path, a.get_ref(), listen)
        }
        None => {
            ctx.error(0..0, "admin", "the [admin] table with `listen` is required");
            AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
                listener: std::sync::Arc::new(super::admin::listener_settings(
                    ctx,
                    path,
                    SocketAddr::from(([127, 0, 0, 1], 9901)),
                )),
                token: None,
                token_file: None,
                state_file: None,
            }
        }
    };

    let g = &raw.global;
    let global = GlobalConfig {
        worker_threads: ctx.int(&g.worker_threads, "global.worker_threads", 0..1025, 0) as usize,
        shutdown_timeout: ctx.duration(
            &g.shutdown_timeout,
            "global.shutdown_timeout",
            Duration::from_secs(30),
        ),
        access_log: g.access_log.unwrap_or(false),
        error_pages: super::policy_validate::error_pages(
            ctx,
            path,
            g.error_pages.as_ref(),
            "global.error_pages",
            None,
        ),
    };

    if raw.listeners.is_empty() {
        ctx.error(0..0, "listener", "at least one [[listener]] is required");
    }
    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    addrs.insert(admin.listen);
    for (i, l) in raw.listeners.iter().enumerate() {
        let l = validate_listener(ctx, path, i, l.get_ref());
        let name_span = raw.listeners[i].get_ref().name.span();
        if !names.insert(l.name.clone()) {
            ctx.error(
                name_span.clone(),
                format!("listener[{i}].name"),
                format!("duplicate listener name \"{}\"", l.name),
            );
        }
        if l.listen.port() != 0 && !addrs.insert(l.listen) {
            ctx.error(
                raw.listeners[i].get_ref().listen.span(),
                format!("listener[{i}].listen"),
                format!(
                    "address {} is already used by another listener or the admin listener",
                    l.listen
                ),
            );
        }
        listeners.push(l);
    }

    let mut upstreams = Vec::new();
    for (name, u) in &raw.upstreams {
        upstreams.push(validate_upstream(ctx, path, name, u));
    }

    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        routes.push(validate_route(
            ctx,
            path,
            &global.error_pages,
            i,
            r.span(),
            r.get_ref(),
            &names,
            &raw.upstreams,
        ));
    }
    if raw.routes.is_empty() && !raw.listeners.is_empty() {
        ctx.error(0..0, "route", "at least one [[route]] is required");
    }
    let cluster = super::cluster::validate(ctx, raw.cluster.as_ref(), &raw.routes, &mut routes);

    let acme = super::acme::validate_acme(ctx, path, raw.acme.as_ref());
    let acme_present = raw.acme.is_some();
    super::acme::check_listeners(ctx, acme.as_ref(), &raw.listeners, &listeners, acme_present);

    Config {
        path: path.to_path_buf(),
        admin,
        global,
        listeners,
        routes,
        upstreams,
        warnings: Vec::new(),
        acme,
        cluster,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ctx::config_relative;
    use crate::config::listener::parse_cidr;
    use crate::config::{HashKey, HostMatch, RateLimit, RateScope, Strategy, UpstreamProtocol};

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse_and_validate(Path::new("t.toml"), text)
    }

    const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[[listener]]
name = "web"
listen = "127.0.0.1:8080"
max_request_body = "10MiB"

[[route]]
host = "*.Example.com"
path_prefix = "/v1/"
upstream = "api"

[upstream.api]
strategy = "weighted"
servers = [{ address = "127.0.0.1:1", weight = 3 }, { address = "127.0.0.1:2" }]
"#;

    #[test]
    fn rate_limit_validated_with_line_and_key() {
        let with = |rl: &str| {
            GOOD.replace(
                "upstream = \"api\"\n",
                &format!("upstream = \"api\"\nrate_limit = {rl}\n"),
            )
        };
        let c = check(&with("{ requests_per_second = 100, burst = 200 }")).unwrap();
        assert_eq!(
            c.routes[0].rate_limit,
            Some(RateLimit {
                requests_per_second: 100.0,
                burst: 200,
                scope: RateScope::Instance,
            })
        );
        let c = check(&with("{ requests_per_second = 0.5 }")).unwrap();
        assert_eq!(
            c.routes[0].rate_limit,
            Some(RateLimit {
                requests_per_second: 0.5,
                burst: 1,
                scope: RateScope::Instance,
            })
        );
        let s = check(&with("{ requests_per_second = 0, burst = 0, brust = 3 }"))
            .unwrap_err()
            .to_string();
        assert!(
            s.contains("t.toml:14:14: route[0].rate_limit.brust: unknown key"),
            "{s}"
        );
        assert!(
            s.contains("route[0].rate_limit.requests_per_second: 0 must be a number above 0"),
            "{s}"
        );
        assert!(
            s.contains("route[0].rate_limit.burst: 0 must be a whole number"),
            "{s}"
        );
        let s = check(&with("5")).unwrap_err().to_string();
        assert!(s.contains("route[0].rate_limit: must be a table"), "{s}");
        let s = check(&with("{ burst = 5 }")).unwrap_err().to_string();
        assert!(
            s.contains("route[0].rate_limit.requests_per_second: missing"),
            "{s}"
        );
    }

    #[test]
    fn good_config() {
        let c = check(GOOD).unwrap();
        assert_eq!(c.listeners[0].max_request_body, Some(10 << 20));
        assert_eq!(
            c.routes[0].host,
            Some(HostMatch::Suffix(".example.com".into()))
        );
        assert_eq!(c.routes[0].path_prefix, "/v1");
        assert_eq!(c.upstreams[0].servers[0].weight, 3);
        assert_eq!(c.upstreams[0].strategy, Strategy::Weighted);
    }

    #[test]
    fn typo_names_line_and_key() {
        let text = GOOD.replace("max_request_body", "max_request_bdy");
        let e = check(&text).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:"), "{e}");
        assert!(e.contains("max_request_bdy"), "{e}");
    }

    #[test]
    fn collects_every_error() {
        let text = GOOD
            .replace("upstream = \"api\"", "upstream = \"apx\"")
            .replace("weight = 3", "weight = 0")
            .replace("\"10MiB\"", "\"10XB\"");
        let e = check(&text).unwrap_err();
        assert_eq!(e.diagnostics.len(), 3, "{e}");
        let s = e.to_string();
        assert!(
            s.contains("t.toml:8:20: listener[0].max_request_body"),
            "{s}"
        );
        assert!(
            s.contains("t.toml:13:12: route[0].upstream: no upstream named \"apx\""),
            "{s}"
        );
        assert!(s.contains("upstream.api.servers[0].weight"), "{s}");
    }

    #[test]
    fn strategy_keys_validated_with_line_and_key() {
        let text = GOOD.replace(
            "strategy = \"weighted\"",
            "strategy = \"consistent-hash\"\nhash_key = \"cookie:sid\"\nhash_balance_factor = 1.25\nslow_start = \"30s\"",
        ) + "[upstream.api.sticky]\ncookie = \"srv\"\nmax_age = \"1h\"\nsame_site = \"strict\"\n";
        let c = check(&text).unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.strategy, Strategy::ConsistentHash);
        assert_eq!(u.hash_key, HashKey::Cookie("sid".into()));
        assert_eq!(u.hash_balance_factor, 1.25);
        assert_eq!(u.slow_start, Duration::from_secs(30));
        let st = u.sticky.as_ref().unwrap();
        assert_eq!(
            (
                st.cookie.as_str(),
                st.max_age,
                st.same_site,
                st.http_only,
                st.secure
            ),
            (
                "srv",
                Some(Duration::from_secs(3600)),
                "Strict",
                true,
                false
            )
        );

        let bad = GOOD.replace(
            "strategy = \"weighted\"",
            "strategy = \"least-connections\"\nhash_key = \"bogus\"\nhash_balance_factor = 0.5\nslow_start = \"soon\"",
        ) + "[upstream.api.sticky]\ncookie = \"a b\"\nsame_site = \"none\"\n";
        let e = check(&bad).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("t.toml:17:12: upstream.api.hash_key: hash_key applies only to strategy \"consistent-hash\""), "{s}");
        assert!(
            s.contains("upstream.api.hash_key: unknown hash_key \"bogus\""),
            "{s}"
        );
        assert!(
            s.contains("t.toml:18:23: upstream.api.hash_balance_factor"),
            "{s}"
        );
        assert!(s.contains("t.toml:19:14: upstream.api.slow_start"), "{s}");
        assert!(
            s.contains("upstream.api.sticky.cookie: \"a b\" is not a valid cookie name"),
            "{s}"
        );
        assert!(
            s.contains(
                "upstream.api.sticky.same_site: same_site = \"none\" requires secure = true"
            ),
            "{s}"
        );
        let typo = GOOD.to_string() + "[upstream.api.sticky]\ncokie = \"x\"\n";
        let s = check(&typo).unwrap_err().to_string();
        assert!(
            s.contains("t.toml:19:1: cokie: unknown field `cokie`"),
            "{s}"
        );
        let s = check(&GOOD.replace("weighted", "fastest"))
            .unwrap_err()
            .to_string();
        assert!(s.contains("unknown strategy \"fastest\""), "{s}");
    }

    #[test]
    fn cidr() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
    }

    #[test]
    fn upstream_protocols_and_tls_keys() {
        let text = GOOD.replace(
            "strategy = \"weighted\"",
            "strategy = \"weighted\"\nprotocol = \"h2\"\ntls_server_name = \"api.internal\"",
        );
        let c = check(&text).unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.protocol, UpstreamProtocol::H2);
        let tls = u.tls.as_ref().unwrap();
        assert_eq!(tls.client.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(
            u.tls_name_for(u.servers[0].address).unwrap().to_str(),
            "api.internal"
        );

        let text = GOOD.replace(
            "strategy = \"weighted\"",
            "strategy = \"weighted\"\nprotocol = \"h3\"",
        );
        let e = check(&text).unwrap_err().to_string();
        assert!(
            e.contains("upstream.api.protocol: unknown protocol \"h3\""),
            "{e}"
        );
    }

    #[test]
    fn listener_tls_errors_name_the_key() {
        let text = GOOD.replace(
            "max_request_body = \"10MiB\"",
            "[listener.tls]\ncertificates = []\nmin_version = \"1.0\"",
        );
        let e = check(&text).unwrap_err().to_string();
        assert!(e.contains("listener[0].tls.min_version"), "{e}");
        assert!(
            e.contains("listener[0].tls.certificates: at least one"),
            "{e}"
        );
    }

    #[test]
    fn paths_are_relative_to_the_config_file() {
        let base = Path::new("/etc/fulcrum/fulcrum.toml");
        assert_eq!(
            config_relative(base, "certs/a.pem"),
            Path::new("/etc/fulcrum/certs/a.pem")
        );
        assert_eq!(config_relative(base, "/abs/a.pem"), Path::new("/abs/a.pem"));
        assert_eq!(
            config_relative(Path::new("f.toml"), "a.pem"),
            Path::new("a.pem")
        );
    }
}
