//! Validation of `[[route]]`: host and path matching, the upstream it names,
//! the listeners it applies to, and its rate limit.

use std::collections::{BTreeMap, HashSet};

use toml::Spanned;

use super::ctx::Ctx;
use super::raw::{RawRoute, RawUpstream};
use super::{HostMatch, RateLimit, RateScope, RouteConfig};

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
pub(super) fn validate_route(
    ctx: &mut Ctx<'_>,
    config_path: &std::path::Path,
    global_pages: &super::policy::ErrorPages,
    i: usize,
    span: std::ops::Range<usize>,
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
    let action = super::policy_validate::action(ctx, i, span, r, upstreams);
    let rate_limit = r
        .rate_limit
        .as_ref()
        .and_then(|rl| validate_rate_limit(ctx, rl, &k("rate_limit")));
    let matching = super::policy_validate::matching(ctx, i, r);
    let policy = super::policy_validate::policy(ctx, config_path, i, r, &path_prefix, global_pages);
    RouteConfig {
        name: r
            .name
            .as_ref()
            .map_or_else(|| format!("route{i}"), |n| n.get_ref().clone()),
        listeners,
        host,
        path_prefix,
        matching,
        action,
        rate_limit,
        policy,
    }
}

/// `{ requests_per_second = N, burst = M }`: N > 0 (fractions allowed, e.g.
/// 0.5 = one request every 2 s), M a whole number >= 1, default ceil(N).
pub(super) fn validate_rate_limit(
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
