//! Validation of `[[listener]]` and `[listener.tls]` (certificates are loaded
//! here, so a bad one fails the start or the reload with its key named).

use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use super::ctx::{config_relative, socket_addr, Ctx};
use super::raw::{RawListener, RawListenerTls};
use super::{Cidr, ListenerConfig, ListenerTls};
use crate::tls::server::{load_certified_key, server_config, MinVersion};

pub(super) fn validate_listener(
    ctx: &mut Ctx<'_>,
    path: &Path,
    i: usize,
    l: &RawListener,
) -> ListenerConfig {
    let k = |key: &str| format!("listener[{i}].{key}");
    let name = l.name.get_ref().trim().to_string();
    if name.is_empty() {
        ctx.error(l.name.span(), k("name"), "must not be empty");
    }
    let listen = socket_addr(ctx, &l.listen, &k("listen"));
    let max_connections = ctx.int(
        &l.max_connections,
        &k("max_connections"),
        1..10_000_001,
        10_000,
    ) as usize;
    let header_read_timeout = ctx.positive_duration(
        &l.header_read_timeout,
        &k("header_read_timeout"),
        Duration::from_secs(10),
    );
    let idle_timeout =
        ctx.positive_duration(&l.idle_timeout, &k("idle_timeout"), Duration::from_secs(60));
    let max_header_bytes = match ctx.size(&l.max_header_bytes, &k("max_header_bytes")) {
        None => 65536,
        Some(n) if (1024..=(16 << 20)).contains(&n) => n as usize,
        Some(n) => {
            let span = l
                .max_header_bytes
                .as_ref()
                .map(|s| s.span())
                .unwrap_or(0..0);
            ctx.error(
                span,
                k("max_header_bytes"),
                format!("{n} is out of range: must be 1KiB to 16MiB"),
            );
            65536
        }
    };
    let max_header_count =
        ctx.int(&l.max_header_count, &k("max_header_count"), 1..10_001, 100) as usize;
    let max_request_body = ctx.size(&l.max_request_body, &k("max_request_body"));
    let body_read_timeout = ctx.positive_duration(
        &l.body_read_timeout,
        &k("body_read_timeout"),
        Duration::from_secs(30),
    );
    let max_connections_per_client = ctx.int(
        &l.max_connections_per_client,
        &k("max_connections_per_client"),
        0..10_000_001,
        0,
    ) as usize;
    let proxy_protocol = l.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
    let mut trusted_proxies = Vec::new();
    for (j, c) in l.trusted_proxies.iter().flatten().enumerate() {
        match parse_cidr(c.get_ref()) {
            Ok(cidr) => trusted_proxies.push(cidr),
            Err(e) => ctx.error(c.span(), k(&format!("trusted_proxies[{j}]")), e),
        }
    }
    let tls = l
        .tls
        .as_ref()
        .and_then(|t| validate_listener_tls(ctx, path, i, t.get_ref(), t.span()));
    ListenerConfig {
        name,
        listen,
        max_connections,
        header_read_timeout,
        idle_timeout,
        max_header_bytes,
        max_header_count,
        max_request_body,
        body_read_timeout,
        max_connections_per_client,
        proxy_protocol,
        trusted_proxies,
        tls,
    }
}

/// `[listener.tls]`: loads every certificate now, so a bad one fails the
/// start or the reload with the file and key named.
pub(super) fn validate_listener_tls(
    ctx: &mut Ctx<'_>,
    path: &Path,
    i: usize,
    t: &RawListenerTls,
    span: Range<usize>,
) -> Option<ListenerTls> {
    let k = |key: &str| format!("listener[{i}].tls.{key}");
    let min = match t.min_version.as_ref() {
        None => MinVersion::Tls12,
        Some(v) => match v.get_ref().trim() {
            "1.2" => MinVersion::Tls12,
            "1.3" => MinVersion::Tls13,
            other => {
                ctx.error(
                    v.span(),
                    k("min_version"),
                    format!("unknown TLS version \"{other}\": expected \"1.2\" or \"1.3\""),
                );
                MinVersion::Tls12
            }
        },
    };
    let acme = match &t.acme {
        Some(names) => super::acme::validate_names(ctx, i, names),
        None => Vec::new(),
    };
    let certificates = t.certificates.as_ref();
    if certificates.is_none_or(|c| c.get_ref().is_empty()) && t.acme.is_none() {
        let s = match certificates {
            Some(c) if !c.span().is_empty() => c.span(),
            _ => span,
        };
        ctx.error(
            s,
            k("certificates"),
            "at least one certificate is required (or `acme` names)",
        );
        return None;
    }
    let mut keys = Vec::new();
    let mut files = Vec::new();
    let mut ok = true;
    for (j, c) in certificates
        .map(|c| c.get_ref().as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let span = c.span();
        let c = c.get_ref();
        let cert = config_relative(path, c.cert.get_ref());
        let key = config_relative(path, c.key.get_ref());
        match load_certified_key(&cert, &key) {
            Ok(ck) => keys.push(std::sync::Arc::new(ck)),
            Err(e) => {
                ctx.error(span, k(&format!("certificates[{j}]")), e);
                ok = false;
            }
        }
        files.push(cert);
        files.push(key);
    }
    ok.then(|| ListenerTls {
        server: server_config(keys.clone(), min, None),
        files,
        keys,
        min_version: min,
        acme,
    })
}

pub(super) fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| format!("\"{s}\" is not a CIDR (e.g. \"10.0.0.0/8\" or \"::1/128\")"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("\"{s}\" has an invalid prefix length (0 to {max})"))?,
    };
    Ok(Cidr { addr, prefix })
}
