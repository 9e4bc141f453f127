//! Raw → typed validation. Collects every error instead of stopping at the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw::{
    RawConfig, RawListener, RawListenerTls, RawRoute, RawSize, RawSticky, RawUpstream, S,
};
use super::units::{parse_duration, parse_size};
use super::{
    AdminConfig, Cidr, Config, ConfigError, Diagnostic, GlobalConfig, HashKey, HostMatch,
    ListenerConfig, ListenerTls, RateLimit, RateScope, RouteConfig, ServerConfig, StickyConfig,
    Strategy, UpstreamConfig, UpstreamProtocol, UpstreamTls,
};
use crate::server::tls::{load_certified_key, server_config, MinVersion};

pub(super) struct Ctx<'a> {
    text: &'a str,
    diags: Vec<Diagnostic>,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = self.line_col(span.start);
        self.diags.push(Diagnostic {
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    /// A finding that does not stop the config: `check` prints it, `run`
    /// logs it (once logging is set up).
    pub(super) fn warning(&mut self, span: Range<usize>, key: &str, message: &str) {
        let (line, column) = self.line_col(span.start);
        self.warnings
            .push(format!("{line}:{column}: {key}: {message}"));
    }

    pub(super) fn duration(&mut self, v: &Option<S>, key: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.error(s.span(), key, e);
                    default
                }
            },
        }
    }

    pub(super) fn positive_duration(
        &mut self,
        v: &Option<S>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration(v, key, default);
        if d.is_zero() {
            if let Some(s) = v {
                self.error(s.span(), key, "must be greater than 0");
            }
            return default;
        }
        d
    }

    pub(super) fn int(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        range: Range<i64>,
        default: i64,
    ) -> i64 {
        match v {
            None => default,
            Some(n) if range.contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                self.error(
                    n.span(),
                    key,
                    format!(
                        "{} is out of range: must be {} to {}",
                        n.get_ref(),
                        range.start,
                        range.end - 1
                    ),
                );
                default
            }
        }
    }

    fn size(&mut self, v: &Option<Spanned<RawSize>>, key: &str) -> Option<u64> {
        let v = v.as_ref()?;
        let parsed = match v.get_ref() {
            RawSize::Int(n) if *n >= 0 => Ok(*n as u64),
            RawSize::Int(n) => Err(format!("size {n} must not be negative")),
            RawSize::Str(s) if s.trim().is_empty() => return None,
            RawSize::Str(s) => parse_size(s),
        };
        match parsed {
            Ok(n) => Some(n),
            Err(e) => {
                self.error(v.span(), key, e);
                None
            }
        }
    }
}

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
        Some(a) => AdminConfig {
            listen: socket_addr(ctx, &a.get_ref().listen, "admin.listen"),
        },
        None => {
            ctx.error(0..0, "admin", "the [admin] table with `listen` is required");
            AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
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
        routes.push(validate_route(ctx, i, r.get_ref(), &names, &raw.upstreams));
    }
    if raw.routes.is_empty() && !raw.listeners.is_empty() {
        ctx.error(0..0, "route", "at least one [[route]] is required");
    }
    let cluster = super::cluster::validate(ctx, raw.cluster.as_ref(), &raw.routes, &mut routes);

    Config {
        path: path.to_path_buf(),
        admin,
        global,
        listeners,
        routes,
        upstreams,
        warnings: Vec::new(),
        cluster,
    }
}

fn socket_addr(ctx: &mut Ctx<'_>, s: &S, key: &str) -> SocketAddr {
    let fallback = SocketAddr::from(([0, 0, 0, 0], 0));
    let v = s.get_ref().trim();
    if let Ok(a) = v.parse::<SocketAddr>() {
        return a;
    }
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            match (host, port.parse::<u16>().unwrap_or(0)).to_socket_addrs() {
                Ok(mut it) => match it.next() {
                    Some(a) => a,
                    None => {
                        ctx.error(s.span(), key, format!("\"{v}\" resolves to no address"));
                        fallback
                    }
                },
                Err(e) => {
                    ctx.error(s.span(), key, format!("cannot resolve \"{v}\": {e}"));
                    fallback
                }
            }
        }
        _ => {
            ctx.error(s.span(), key, format!("\"{v}\" is not a host:port address"));
            fallback
        }
    }
}

fn validate_listener(ctx: &mut Ctx<'_>, path: &Path, i: usize, l: &RawListener) -> ListenerConfig {
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

/// A path from the config file, relative to the file's directory.
fn config_relative(config: &Path, p: &str) -> std::path::PathBuf {
    let p = Path::new(p.trim());
    if p.is_absolute() {
        return p.to_path_buf();
    }
    config.parent().unwrap_or(Path::new("")).join(p)
}

/// `[listener.tls]`: loads every certificate now, so a bad one fails the
/// start or the reload with the file and key named.
fn validate_listener_tls(
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
    if t.certificates.get_ref().is_empty() {
        let s = if t.certificates.span().is_empty() {
            span
        } else {
            t.certificates.span()
        };
        ctx.error(s, k("certificates"), "at least one certificate is required");
        return None;
    }
    let mut keys = Vec::new();
    let mut files = Vec::new();
    let mut ok = true;
    for (j, c) in t.certificates.get_ref().iter().enumerate() {
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
        server: server_config(keys, min),
        files,
    })
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
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

fn validate_route(
    ctx: &mut Ctx<'_>,
    i: usize,
    r: &RawRoute,
    listener_names: &HashSet<String>,
    upstreams: &BTreeMap<String, Spanned<RawUpstream>>,
) -> RouteConfig {
    let k = |key: &str| format!("route[{i}].{key}");
    let listeners = r.listeners.as_ref().map(|ls| {
        ls.iter()
            .enumerate()
            .map(|(j, l)| {
                if !listener_names.contains(l.get_ref()) {
                    ctx.error(
                        l.span(),
                        k(&format!("listeners[{j}]")),
                        format!("no listener named \"{}\"", l.get_ref()),
                    );
                }
                l.get_ref().clone()
            })
            .collect::<Vec<_>>()
    });
    let host = r.host.as_ref().and_then(|h| {
        let v = h.get_ref().trim().to_ascii_lowercase();
        let v = v.strip_suffix('.').unwrap_or(&v).to_string();
        let valid_chars = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if let Some(rest) = v.strip_prefix("*.") {
            if valid_chars(rest) {
                return Some(HostMatch::Suffix(format!(".{rest}")));
            }
        } else if valid_chars(&v) {
            return Some(HostMatch::Exact(v));
        }
        ctx.error(
            h.span(),
            k("host"),
            format!(
                "\"{}\" is not a host name or a wildcard like \"*.example.com\" (no port, no scheme)",
                h.get_ref()
            ),
        );
        None
    });
    let path_prefix = match &r.path_prefix {
        None => String::new(),
        Some(p) => {
            let v = p.get_ref();
            if !v.starts_with('/') {
                ctx.error(
                    p.span(),
                    k("path_prefix"),
                    format!("\"{v}\" must start with '/'"),
                );
            }
            v.trim_end_matches('/').to_string()
        }
    };
    let upstream = r.upstream.get_ref().clone();
    if !upstreams.contains_key(&upstream) {
        ctx.error(
            r.upstream.span(),
            k("upstream"),
            format!("no upstream named \"{upstream}\" (define [upstream.{upstream}])"),
        );
    }
    let rate_limit = r
        .rate_limit
        .as_ref()
        .and_then(|rl| validate_rate_limit(ctx, rl, &k("rate_limit")));
    RouteConfig {
        name: r
            .name
            .as_ref()
            .map_or_else(|| format!("route{i}"), |n| n.get_ref().clone()),
        listeners,
        host,
        path_prefix,
        upstream,
        rate_limit,
    }
}

/// `{ requests_per_second = N, burst = M }`: N > 0 (fractions allowed, e.g.
/// 0.5 = one request every 2 s), M a whole number >= 1, default ceil(N).
fn validate_rate_limit(
    ctx: &mut Ctx<'_>,
    rl: &Spanned<toml::Value>,
    key: &str,
) -> Option<RateLimit> {
    const MAX: f64 = 1_000_000.0;
    let Some(table) = rl.get_ref().as_table() else {
        ctx.error(
            rl.span(),
            key,
            "must be a table like { requests_per_second = 100, burst = 200 }",
        );
        return None;
    };
    let mut ok = true;
    for name in table.keys() {
        // `scope` is checked with [cluster] (config/cluster.rs).
        if name != "requests_per_second" && name != "burst" && name != "scope" {
            ctx.error(
                rl.span(),
                format!("{key}.{name}"),
                "unknown key (expected requests_per_second, burst, scope)",
            );
            ok = false;
        }
    }
    let rps = match table.get("requests_per_second") {
        None => {
            ctx.error(rl.span(), format!("{key}.requests_per_second"), "missing");
            None
        }
        Some(v) => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
            Some(n) if n > 0.0 && n <= MAX && n.is_finite() => Some(n),
            _ => {
                ctx.error(
                    rl.span(),
                    format!("{key}.requests_per_second"),
                    format!("{v} must be a number above 0 and at most 1000000"),
                );
                None
            }
        },
    };
    let burst = match table.get("burst") {
        None => rps.map(|n| n.ceil() as u32),
        Some(v) => match v.as_integer() {
            Some(n) if (1..=MAX as i64).contains(&n) => Some(n as u32),
            _ => {
                ctx.error(
                    rl.span(),
                    format!("{key}.burst"),
                    format!("{v} must be a whole number from 1 to 1000000"),
                );
                None
            }
        },
    };
    match (ok, rps, burst) {
        (true, Some(requests_per_second), Some(burst)) => Some(RateLimit {
            requests_per_second,
            burst,
            scope: RateScope::Instance,
        }),
        _ => None,
    }
}

fn validate_upstream(
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
fn validate_upstream_tls(
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
    match crate::proxy::upstream_tls::client_config(ca.as_deref(), protocol.is_h2()) {
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
fn parse_hash_key(v: &str) -> Result<HashKey, String> {
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

fn validate_sticky(ctx: &mut Ctx<'_>, upstream: &str, s: &RawSticky) -> StickyConfig {
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
fn resolve_server(ctx: &mut Ctx<'_>, s: &S, key: &dyn Fn() -> String) -> Vec<SocketAddr> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
