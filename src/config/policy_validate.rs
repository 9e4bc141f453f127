//! Validation of a route's match keys, its action, and the policy keys that
//! are not auth or compression (those are in `super::auth` and
//! `super::compress`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use toml::Spanned;

use super::ctx::{config_relative, Ctx};
use super::listener::parse_cidr;
use super::policy::*;
use super::raw::{RawHeaderRules, RawRoute, RawUpstream, S};
use super::Cidr;

/// Exactly one of `upstream`, `split`, `redirect`, `respond`.
pub(super) fn action(
    ctx: &mut Ctx<'_>,
    i: usize,
    span: Range<usize>,
    r: &RawRoute,
    upstreams: &BTreeMap<String, Spanned<RawUpstream>>,
) -> RouteAction {
    let k = |key: &str| format!("route[{i}].{key}");
    let given = [
        r.upstream.is_some(),
        r.split.is_some(),
        r.redirect.is_some(),
        r.respond.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        ctx.error(
            span,
            k("upstream"),
            "a route needs exactly one action: upstream, split, redirect or respond",
        );
    }
    if let (Some(s), None) = (&r.split_by, &r.split) {
        ctx.error(
            s.span(),
            k("split_by"),
            "split_by is only for a route with split",
        );
    }
    let known = |ctx: &mut Ctx<'_>, u: &S, key: String| {
        let name = u.get_ref();
        if !upstreams.contains_key(name) {
            ctx.error(
                u.span(),
                key,
                format!("no upstream named \"{name}\" (define [upstream.{name}])"),
            );
        }
        name.clone()
    };
    let mut actions = Vec::new();
    if let Some(u) = &r.upstream {
        actions.push(RouteAction::Upstream(known(ctx, u, k("upstream"))));
    }
    if let Some(split) = &r.split {
        let mut targets = Vec::new();
        for (j, t) in split.get_ref().iter().enumerate() {
            let t = t.get_ref();
            let upstream = known(ctx, &t.upstream, k(&format!("split[{j}].upstream")));
            let w = *t.weight.get_ref();
            if !(0..=1000).contains(&w) {
                ctx.error(
                    t.weight.span(),
                    k(&format!("split[{j}].weight")),
                    format!("{w} must be a whole number from 0 to 1000"),
                );
            }
            targets.push(SplitTarget {
                upstream,
                weight: w.clamp(0, 1000) as u32,
            });
        }
        if targets.iter().all(|t| t.weight == 0) {
            ctx.error(
                split.span(),
                k("split"),
                "needs at least one target with a weight above 0",
            );
        }
        let by = r.split_by.as_ref().map_or(SplitBy::Request, |s| {
            split_by(s.get_ref()).unwrap_or_else(|msg| {
                ctx.error(s.span(), k("split_by"), msg);
                SplitBy::Request
            })
        });
        actions.push(RouteAction::Split(SplitConfig { targets, by }));
    }
    if let Some(rd) = &r.redirect {
        actions.push(RouteAction::Redirect(redirect(ctx, rd, &k("redirect"))));
    }
    if let Some(rs) = &r.respond {
        let raw = rs.get_ref();
        let status = status_in(ctx, &raw.status, &k("respond.status"), 200..=599);
        let content_type = match &raw.content_type {
            None => HeaderValue::from_static("text/plain; charset=utf-8"),
            Some(ct) => header_value(ctx, ct, &k("respond.content_type")),
        };
        return RouteAction::Respond(RespondConfig {
            status,
            body: Bytes::from(
                raw.body
                    .as_ref()
                    .map_or(String::new(), |b| b.get_ref().clone()),
            ),
            content_type,
        });
    }
    // Every given action is checked; the first one stands in when there
    // are several (the config is rejected anyway).
    actions
        .into_iter()
        .next()
        .unwrap_or_else(|| RouteAction::Upstream(String::new()))
}

fn split_by(s: &str) -> Result<SplitBy, String> {
    let bad = || {
        format!(
            "\"{s}\" must be \"request\", \"client-ip\", \"cookie:<name>\" or \"header:<Name>\""
        )
    };
    match s {
        "request" => Ok(SplitBy::Request),
        "client-ip" => Ok(SplitBy::ClientIp),
        _ => {
            if let Some(c) = s.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
                Ok(SplitBy::Cookie(c.to_string()))
            } else if let Some(h) = s.strip_prefix("header:") {
                HeaderName::from_bytes(h.as_bytes())
                    .map(SplitBy::Header)
                    .map_err(|_| bad())
            } else {
                Err(bad())
            }
        }
    }
}

fn redirect(ctx: &mut Ctx<'_>, rd: &Spanned<super::raw::RawRedirect>, key: &str) -> RedirectConfig {
    let raw = rd.get_ref();
    let k = |s: &str| format!("{key}.{s}");
    let scheme = raw.scheme.as_ref().map(|s| {
        let v = s.get_ref().to_ascii_lowercase();
        if v != "http" && v != "https" {
            ctx.error(
                s.span(),
                k("scheme"),
                format!("\"{}\" must be \"http\" or \"https\"", s.get_ref()),
            );
        }
        v
    });
    let host = raw.host.as_ref().map(|h| {
        let v = h.get_ref().trim().to_ascii_lowercase();
        let ok = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
            && (v.starts_with('[') || !v.contains(':'));
        if !ok {
            ctx.error(
                h.span(),
                k("host"),
                format!(
                    "\"{}\" is not a host name (no port or scheme: use `port`, `scheme`)",
                    h.get_ref()
                ),
            );
        }
        v
    });
    let port = raw.port.as_ref().map(|p| {
        let v = *p.get_ref();
        if !(1..=65535).contains(&v) {
            ctx.error(p.span(), k("port"), format!("{v} must be from 1 to 65535"));
        }
        v.clamp(1, 65535) as u16
    });
    let path_prefix = raw
        .path_prefix
        .as_ref()
        .map(|p| prefix(ctx, p, &k("path_prefix")));
    let status = match &raw.status {
        None => StatusCode::MOVED_PERMANENTLY,
        Some(s) => {
            let v = *s.get_ref();
            if ![301, 302, 303, 307, 308].contains(&v) {
                ctx.error(
                    s.span(),
                    k("status"),
                    format!("{v} must be 301, 302, 303, 307 or 308"),
                );
            }
            StatusCode::from_u16(v.clamp(100, 999) as u16).unwrap_or(StatusCode::MOVED_PERMANENTLY)
        }
    };
    if scheme.is_none() && host.is_none() && port.is_none() && path_prefix.is_none() {
        ctx.error(
            rd.span(),
            key,
            "needs at least one of scheme, host, port, path_prefix (otherwise it redirects to itself)",
        );
    }
    RedirectConfig {
        scheme,
        host,
        port,
        path_prefix,
        status,
    }
}

/// A path prefix: starts with '/', stored without a trailing slash.
fn prefix(ctx: &mut Ctx<'_>, p: &S, key: &str) -> String {
    let v = p.get_ref();
    if !v.starts_with('/') || v.contains(['?', '#', ' ']) {
        ctx.error(
            p.span(),
            key,
            format!("\"{v}\" must be a path starting with '/'"),
        );
    }
    v.trim_end_matches('/').to_string()
}

fn status_in(
    ctx: &mut Ctx<'_>,
    s: &Spanned<i64>,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
) -> StatusCode {
    let v = *s.get_ref();
    if !range.contains(&v) {
        ctx.error(
            s.span(),
            key,
            format!("{v} must be from {} to {}", range.start(), range.end()),
        );
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::from_u16(v as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn header_value(ctx: &mut Ctx<'_>, v: &S, key: &str) -> HeaderValue {
    HeaderValue::from_str(v.get_ref()).unwrap_or_else(|_| {
        ctx.error(
            v.span(),
            key,
            format!(
                "{:?} is not a valid header value (visible ASCII, spaces, tabs)",
                v.get_ref()
            ),
        );
        HeaderValue::from_static("")
    })
}

/// `methods`, `headers`, `query`; `None` when none is given.
pub(super) fn matching(ctx: &mut Ctx<'_>, i: usize, r: &RawRoute) -> Option<RouteMatch> {
    if r.methods.is_none() && r.headers.is_none() && r.query.is_none() {
        return None;
    }
    let k = |key: &str| format!("route[{i}].{key}");
    let mut m = RouteMatch::default();
    if let Some(ms) = &r.methods {
        if ms.get_ref().is_empty() {
            ctx.error(
                ms.span(),
                k("methods"),
                "lists no method (leave it out to match every method)",
            );
        }
        for (j, s) in ms.get_ref().iter().enumerate() {
            let v = s.get_ref().trim().to_ascii_uppercase();
            match Method::from_bytes(v.as_bytes()) {
                Ok(method) if !v.is_empty() => m.methods.push(method),
                _ => ctx.error(
                    s.span(),
                    k(&format!("methods[{j}]")),
                    format!("\"{}\" is not a method name", s.get_ref()),
                ),
            }
        }
    }
    let value = |v: &S| match v.get_ref().as_str() {
        "*" => ValueMatch::Any,
        other => ValueMatch::Exact(other.to_string()),
    };
    if let Some(hs) = &r.headers {
        for (name, v) in hs.get_ref() {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => m.headers.push((h, value(v))),
                Err(_) => ctx.error(
                    v.span(),
                    k(&format!("headers.{name}")),
                    format!("\"{name}\" is not a header name"),
                ),
            }
        }
    }
    if let Some(qs) = &r.query {
        for (name, v) in qs.get_ref() {
            if name.is_empty() {
                ctx.error(v.span(), k("query"), "a parameter name cannot be empty");
            }
            m.query.push((name.clone(), value(v)));
        }
    }
    Some(m)
}

/// The policy keys; `None` when the route uses none of them.
pub(super) fn policy(
    ctx: &mut Ctx<'_>,
    config_path: &Path,
    i: usize,
    r: &RawRoute,
    path_prefix: &str,
    global_pages: &ErrorPages,
) -> Option<Box<PolicyConfig>> {
    let k = |key: &str| format!("route[{i}].{key}");
    let mut p = PolicyConfig::default();
    let mut any = false;
    let cidrs = |ctx: &mut Ctx<'_>, v: &Spanned<Vec<S>>, key: &str| -> Vec<Cidr> {
        v.get_ref()
            .iter()
            .enumerate()
            .filter_map(|(j, s)| match parse_cidr(s.get_ref()) {
                Ok(c) => Some(c),
                Err(msg) => {
                    ctx.error(s.span(), k(&format!("{key}[{j}]")), msg);
                    None
                }
            })
            .collect()
    };
    if let Some(d) = &r.deny {
        any = true;
        p.deny = cidrs(ctx, d, "deny");
    }
    if let Some(a) = &r.allow {
        any = true;
        if a.get_ref().is_empty() {
            ctx.warning(
                a.span(),
                &k("allow"),
                "an empty allow list refuses every client",
            );
        }
        p.allow = Some(cidrs(ctx, a, "allow"));
    }
    if let Some(b) = &r.basic_auth {
        any = true;
        p.basic_auth = super::auth::validate_basic_auth(ctx, config_path, b, &k("basic_auth"));
    }
    if let Some(f) = &r.forward_auth {
        any = true;
        p.forward_auth = super::auth::validate_forward_auth(ctx, f, &k("forward_auth"));
    }
    if let Some(s) = &r.strip_prefix {
        p.strip_prefix = *s.get_ref();
        any |= p.strip_prefix;
        if p.strip_prefix && path_prefix.is_empty() {
            ctx.warning(
                s.span(),
                &k("strip_prefix"),
                "the route has no path_prefix to strip",
            );
        }
    }
    if let Some(a) = &r.add_prefix {
        let v = prefix(ctx, a, &k("add_prefix"));
        if !v.is_empty() {
            any = true;
            p.add_prefix = Some(v);
        }
    }
    if let Some(h) = &r.request_headers {
        any = true;
        p.request_headers = Some(header_rules(ctx, h, &k("request_headers")));
    }
    if let Some(h) = &r.response_headers {
        any = true;
        p.response_headers = Some(header_rules(ctx, h, &k("response_headers")));
    }
    if let Some(c) = &r.compress {
        p.compress = super::compress::validate_compress(ctx, c, &k("compress"));
        any |= p.compress.is_some();
    }
    if let Some(pages) = &r.error_pages {
        any = true;
        p.error_pages = Some(error_pages(
            ctx,
            config_path,
            Some(pages),
            &k("error_pages"),
            Some(global_pages),
        ));
    }
    any.then(|| Box::new(p))
}

/// Headers that belong to one connection's framing: the hop-by-hop ones
/// (removed in both directions anyway) and Content-Length (Fulcrum's to
/// compute). No header rule or auth header list may name them.
pub(super) const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

fn header_rules(ctx: &mut Ctx<'_>, h: &Spanned<RawHeaderRules>, key: &str) -> HeaderRules {
    let raw = h.get_ref();
    let mut rules = HeaderRules::default();
    let name = |ctx: &mut Ctx<'_>, n: &str, span: Range<usize>, key: String| {
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) if CONNECTION_HEADERS.contains(&h.as_str()) || h == "x-request-id" => {
                ctx.error(
                    span,
                    key,
                    format!("\"{n}\" cannot be changed by a header rule (hop-by-hop, framing, or X-Request-Id)"),
                );
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                ctx.error(span, key, format!("\"{n}\" is not a header name"));
                None
            }
        }
    };
    for (op, map, out) in [
        ("set", &raw.set, &mut rules.set),
        ("add", &raw.add, &mut rules.add),
    ] {
        for (n, v) in map.iter().flatten() {
            let k = format!("{key}.{op}.{n}");
            if let Some(h) = name(ctx, n, v.span(), k.clone()) {
                out.push((h, header_value(ctx, v, &k)));
            }
        }
    }
    for (j, n) in raw.remove.iter().flatten().enumerate() {
        if let Some(h) = name(ctx, n.get_ref(), n.span(), format!("{key}.remove[{j}]")) {
            rules.remove.push(h);
        }
    }
    rules
}

/// `error_pages = { "503" = "errors/503.html" }`: read now (a missing file
/// is a config error), merged over `base` (the global pages, for a route).
pub(super) fn error_pages(
    ctx: &mut Ctx<'_>,
    config_path: &Path,
    raw: Option<&Spanned<BTreeMap<String, S>>>,
    key: &str,
    base: Option<&ErrorPages>,
) -> ErrorPages {
    /// A page is read into memory once; keep that bounded.
    const MAX_PAGE: u64 = 1024 * 1024;
    let mut pages: BTreeMap<u16, ErrorPage> = base.map(|b| (**b).clone()).unwrap_or_default();
    for (code, file) in raw.map(|r| r.get_ref().iter()).into_iter().flatten() {
        let k = format!("{key}.{code}");
        let status = match code.parse::<u16>() {
            Ok(s) if (400..=599).contains(&s) => s,
            _ => {
                ctx.error(
                    file.span(),
                    k,
                    format!("\"{code}\" must be a status from 400 to 599"),
                );
                continue;
            }
        };
        let path = config_relative(config_path, file.get_ref());
        let body = match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_PAGE => Err("is larger than 1 MiB".to_string()),
            _ => std::fs::read(&path).map_err(|e| e.to_string()),
        };
        match body {
            Ok(body) => {
                pages.insert(
                    status,
                    ErrorPage {
                        body: Bytes::from(body),
                        content_type: HeaderValue::from_static(content_type_for(&path)),
                    },
                );
            }
            Err(e) => ctx.error(
                file.span(),
                k,
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    Arc::new(pages)
}

/// The content type of an error page, from its file extension.
fn content_type_for(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("svg") => "image/svg+xml",
        Some("css") => "text/css",
        _ => "text/plain; charset=utf-8",
    }
}
