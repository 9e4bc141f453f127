//! Validation of `[upstream.NAME]`: servers (DNS names resolved here),
//! strategy, hash key, timeouts, retries, protocol and TLS, sticky cookies;
//! health checks are in `health.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::ctx::{config_relative, Ctx};
use super::raw::{RawSticky, RawUpstream, S};
use super::{
    HashKey, ServerConfig, StickyConfig, Strategy, UpstreamConfig, UpstreamProtocol, UpstreamTls,
};

pub(super) fn validate_upstream(
    ctx: &mut Ctx<'_>,
    path: &Path,
    name: &str,
    u: &Spanned<RawUpstream>,
) -> UpstreamConfig {
    let k = |key: &str| format!("upstream.{name}.{key}");
    let span = u.span();
    let u = u.get_ref();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        ctx.error(
            span,
            format!("upstream.{name}"),
            "upstream names may use letters, digits, '-', '_' and '.'",
        );
    }
    let strategy = match u.strategy.as_ref() {
        None => Strategy::RoundRobin,
        Some(s) => Strategy::from_name(s.get_ref()).unwrap_or_else(|| {
            ctx.error(
                s.span(),
                k("strategy"),
                format!("unknown strategy \"{}\": expected one of round-robin, weighted, least-connections, power-of-two, peak-ewma, ip-hash, consistent-hash", s.get_ref()),
            );
            Strategy::RoundRobin
        }),
    };

    let mut servers: Vec<ServerConfig> = Vec::new();
    if u.servers.get_ref().is_empty() {
        ctx.error(
            u.servers.span(),
            k("servers"),
            "at least one server is required",
        );
    }
    // Key paths are formatted only when there is an error to report: large
    // configs have thousands of servers and reloads must stay cheap.
    let mut seen: HashMap<SocketAddr, usize> = HashMap::with_capacity(u.servers.get_ref().len());
    for (i, s) in u.servers.get_ref().iter().enumerate() {
        let sk = |key: &str| format!("upstream.{name}.servers[{i}].{key}");
        let s = s.get_ref();
        let weight = match &s.weight {
            Some(w) if (1..=1000).contains(w.get_ref()) => *w.get_ref() as u32,
            None => 1,
            Some(_) => ctx.int(&s.weight, &sk("weight"), 1..1001, 1) as u32,
        };
        for address in resolve_server(ctx, &s.address, &|| sk("address")) {
            if let Some(dup) = seen.get(&address) {
                let also = servers[*dup].configured_as.clone();
                ctx.error(
                    s.address.span(),
                    sk("address"),
                    format!("{address} is listed twice (also as \"{also}\")"),
                );
                continue;
            }
            seen.insert(address, servers.len());
            servers.push(ServerConfig {
                address,
                weight,
                configured_as: s.address.get_ref().clone(),
            });
        }
    }
    if strategy == Strategy::RoundRobin {
        if let Some(w) = u
            .servers
            .get_ref()
            .iter()
            .find_map(|s| s.get_ref().weight.as_ref())
        {
            if *w.get_ref() != 1 {
                ctx.warning(
                    w.span(),
                    &format!("upstream.{name}.servers.weight"),
                    "weights are ignored by strategy round-robin; use strategy = \"weighted\"",
                );
            }
        }
    }

    let hash_key = match &u.hash_key {
        None => HashKey::ClientIp,
        Some(h) => {
            if strategy != Strategy::ConsistentHash {
                ctx.error(
                    h.span(),
                    k("hash_key"),
                    format!(
                        "hash_key applies only to strategy \"consistent-hash\" (this upstream uses \"{}\")",
                        strategy.as_str()
                    ),
                );
            }
            parse_hash_key(h.get_ref()).unwrap_or_else(|e| {
                ctx.error(h.span(), k("hash_key"), e);
                HashKey::ClientIp
            })
        }
    };
    let hash_balance_factor = match &u.hash_balance_factor {
        None => 0.0,
        Some(f) => {
            let v = *f.get_ref();
            if !matches!(strategy, Strategy::ConsistentHash | Strategy::IpHash) && v != 0.0 {
                ctx.error(
                    f.span(),
                    k("hash_balance_factor"),
                    "hash_balance_factor applies only to strategies \"consistent-hash\" and \"ip-hash\"",
                );
                0.0
            } else if v == 0.0 || (1.0..=100.0).contains(&v) {
                v
            } else {
                ctx.error(
                    f.span(),
                    k("hash_balance_factor"),
                    format!("{v} is out of range: 0 (off) or 1.0 to 100.0, e.g. 1.25"),
                );
                0.0
            }
        }
    };
    let slow_start = ctx.duration(&u.slow_start, &k("slow_start"), Duration::ZERO);
    let sticky = u
        .sticky
        .as_ref()
        .map(|s| validate_sticky(ctx, name, s.get_ref()));
    let resolve_interval = ctx.positive_duration(
        &u.resolve_interval,
        &k("resolve_interval"),
        Duration::from_secs(30),
    );
    let retries = ctx.int(&u.retries, &k("retries"), 0..11, 1) as u32;
    let max_header_count =
        ctx.int(&u.max_header_count, &k("max_header_count"), 1..10_001, 100) as usize;
    let retry_budget = match &u.retry_budget {
        None => 0.2,
        Some(b) if (0.0..=1.0).contains(b.get_ref()) => *b.get_ref(),
        Some(b) => {
            ctx.error(b.span(), k("retry_budget"), "must be between 0.0 and 1.0");
            0.2
        }
    };
    let protocol = match u.protocol.as_ref() {
        None => UpstreamProtocol::Http1,
        Some(p) => match p.get_ref().as_str() {
            "http1" => UpstreamProtocol::Http1,
            "http1-tls" => UpstreamProtocol::Http1Tls,
            "h2c" => UpstreamProtocol::H2c,
            "h2" => UpstreamProtocol::H2,
            other => {
                ctx.error(
                    p.span(),
                    k("protocol"),
                    format!("unknown protocol \"{other}\": expected http1, h2c, h2 or http1-tls"),
                );
                UpstreamProtocol::Http1
            }
        },
    };
    let tls = validate_upstream_tls(ctx, path, name, u, protocol);
    let health_check = u
        .health_check
        .as_ref()
        .map(|h| super::health::active(ctx, name, h.get_ref()));
    let passive_health = u
        .passive_health
        .as_ref()
        .map(|p| super::health::passive(ctx, name, p.get_ref()));

    UpstreamConfig {
        name: name.to_string(),
        strategy,
        servers,
        hash_key,
        hash_balance_factor,
        slow_start,
        sticky,
        connect_timeout: ctx.positive_duration(
            &u.connect_timeout,
            &k("connect_timeout"),
            Duration::from_secs(3),
        ),
        response_timeout: ctx.positive_duration(
            &u.response_timeout,
            &k("response_timeout"),
            Duration::from_secs(60),
        ),
        pool_idle_timeout: ctx.positive_duration(
            &u.pool_idle_timeout,
            &k("pool_idle_timeout"),
            Duration::from_secs(90),
        ),
        pool_max_idle_per_server: ctx.int(
            &u.pool_max_idle_per_server,
            &k("pool_max_idle_per_server"),
            0..100_001,
            64,
        ) as usize,
        retries,
        max_header_count,
        retry_budget,
        resolve_interval,
        health_check,
        passive_health,
        protocol,
        tls,
    }
}

/// `tls_server_name` and `tls_ca`, for the protocols that use TLS.
pub(super) fn validate_upstream_tls(
    ctx: &mut Ctx<'_>,
    path: &Path,
    name: &str,
    u: &RawUpstream,
    protocol: UpstreamProtocol,
) -> Option<UpstreamTls> {
    let k = |key: &str| format!("upstream.{name}.{key}");
    if !protocol.uses_tls() {
        for (v, key) in [
            (&u.tls_server_name, "tls_server_name"),
            (&u.tls_ca, "tls_ca"),
        ] {
            if let Some(v) = v {
                ctx.error(
                    v.span(),
                    k(key),
                    format!(
                        "only used when protocol is \"h2\" or \"http1-tls\" (protocol is \"{}\")",
                        protocol.as_str()
                    ),
                );
            }
        }
        return None;
    }
    let server_name = match &u.tls_server_name {
        None => None,
        Some(n) => match rustls_pki_types::ServerName::try_from(n.get_ref().trim().to_string()) {
            Ok(sn) => Some(sn),
            Err(_) => {
                ctx.error(
                    n.span(),
                    k("tls_server_name"),
                    format!("\"{}\" is not a DNS name or IP address", n.get_ref()),
                );
                None
            }
        },
    };
    let ca = u
        .tls_ca
        .as_ref()
        .map(|c| config_relative(path, c.get_ref()));
    match crate::tls::client::client_config(ca.as_deref(), protocol.is_h2()) {
        Ok(client) => Some(UpstreamTls {
            client,
            server_name,
            ca_file: ca,
        }),
        Err(e) => {
            let (span, key) = match &u.tls_ca {
                Some(c) => (c.span(), k("tls_ca")),
                None => (0..0, k("protocol")),
            };
            ctx.error(span, key, e);
            None
        }
    }
}

/// `hash_key`: "client-ip", "header:<Name>", "cookie:<name>", "query:<name>", "path".
pub(super) fn parse_hash_key(v: &str) -> Result<HashKey, String> {
    let expected = "expected \"client-ip\", \"header:<Name>\", \"cookie:<name>\", \"query:<name>\" or \"path\"";
    match v {
        "client-ip" => return Ok(HashKey::ClientIp),
        "path" => return Ok(HashKey::Path),
        _ => {}
    }
    let Some((kind, arg)) = v.split_once(':') else {
        return Err(format!("unknown hash_key \"{v}\": {expected}"));
    };
    if arg.is_empty() {
        return Err(format!("hash_key \"{v}\" needs a name after ':'"));
    }
    match kind {
        "header" => http::HeaderName::from_bytes(arg.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("\"{arg}\" is not a valid header name")),
        "cookie"
            if arg
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"=;,\\\"".contains(&b)) =>
        {
            Ok(HashKey::Cookie(arg.to_string()))
        }
        "cookie" => Err(format!("\"{arg}\" is not a valid cookie name")),
        "query" => Ok(HashKey::Query(arg.to_string())),
        _ => Err(format!("unknown hash_key \"{v}\": {expected}")),
    }
}

pub(super) fn validate_sticky(ctx: &mut Ctx<'_>, upstream: &str, s: &RawSticky) -> StickyConfig {
    let k = |key: &str| format!("upstream.{upstream}.sticky.{key}");
    let cookie = match &s.cookie {
        None => "fulcrum_sticky".to_string(),
        Some(c) => {
            let v = c.get_ref();
            let token = !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !token {
                ctx.error(
                    c.span(),
                    k("cookie"),
                    format!(
                        "\"{v}\" is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"
                    ),
                );
            }
            v.clone()
        }
    };
    let max_age = match &s.max_age {
        Some(m) if !m.get_ref().trim().is_empty() => {
            let d = ctx.positive_duration(&s.max_age, &k("max_age"), Duration::from_secs(1));
            Some(d)
        }
        _ => None,
    };
    let same_site = match &s.same_site {
        None => "Lax",
        Some(v) => match v.get_ref().as_str() {
            "lax" => "Lax",
            "strict" => "Strict",
            "none" => "None",
            other => {
                ctx.error(
                    v.span(),
                    k("same_site"),
                    format!("unknown same_site \"{other}\": expected lax, strict or none"),
                );
                "Lax"
            }
        },
    };
    let secure = s.secure.unwrap_or(false);
    if same_site == "None" && !secure {
        if let Some(v) = &s.same_site {
            ctx.error(
                v.span(),
                k("same_site"),
                "same_site = \"none\" requires secure = true (browsers reject it otherwise)",
            );
        }
    }
    StickyConfig {
        cookie,
        max_age,
        secure,
        http_only: s.http_only.unwrap_or(true),
        same_site,
    }
}

/// A literal `ip:port` is one server; `name:port` is every address it resolves to.
pub(super) fn resolve_server(
    ctx: &mut Ctx<'_>,
    s: &S,
    key: &dyn Fn() -> String,
) -> Vec<SocketAddr> {
    let v = s.get_ref().trim();
    if let Ok(a) = v.parse::<SocketAddr>() {
        if a.port() == 0 {
            ctx.error(s.span(), key(), format!("\"{v}\" needs a non-zero port"));
        }
        return vec![a];
    }
    let Some((host, port)) = v.rsplit_once(':') else {
        ctx.error(
            s.span(),
            key(),
            format!("\"{v}\" is not a host:port address"),
        );
        return Vec::new();
    };
    let Ok(port) = port.parse::<u16>() else {
        ctx.error(s.span(), key(), format!("\"{v}\" has an invalid port"));
        return Vec::new();
    };
    match super::resolve::resolve(host, port) {
        Ok(addrs) => {
            if addrs.is_empty() {
                ctx.error(s.span(), key(), format!("\"{v}\" resolves to no address"));
            }
            addrs
        }
        Err(e) => {
            ctx.error(s.span(), key(), format!("cannot resolve \"{v}\": {e}"));
            Vec::new()
        }
    }
}
