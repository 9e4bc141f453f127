//! Validation of `basic_auth` and `forward_auth` on a route. The htpasswd
//! file is read and every line checked here, at load and reload, so a bad
//! file fails `check` and a reload (which keeps the old config).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use toml::Spanned;

use super::ctx::{config_relative, Ctx};
use super::policy::{BasicAuthConfig, ForwardAuthConfig};
use super::policy_validate::CONNECTION_HEADERS;
use super::raw::{RawBasicAuth, RawForwardAuth, S};

/// The realm when none is given: Caddy's default, and what browsers show
/// in their password prompt.
const DEFAULT_REALM: &str = "restricted";

/// `forward_auth.timeout` when none is given (SPEC's example).
const DEFAULT_FORWARD_AUTH_TIMEOUT: Duration = Duration::from_secs(2);

/// An htpasswd file is read into memory whole; keep that bounded.
const MAX_USERS_FILE: u64 = 16 * 1024 * 1024;

pub(super) fn validate_basic_auth(
    ctx: &mut Ctx<'_>,
    config_path: &Path,
    raw: &Spanned<RawBasicAuth>,
    key: &str,
) -> Option<BasicAuthConfig> {
    let raw = raw.get_ref();
    let errors = ctx.diags.len();
    let realm = match &raw.realm {
        None => DEFAULT_REALM.to_string(),
        Some(r) => {
            let v = r.get_ref();
            if v.is_empty()
                || !v
                    .bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
            {
                ctx.error(
                    r.span(),
                    format!("{key}.realm"),
                    format!("realm {v:?} must be printable ASCII without '\"' or '\\' (it is sent quoted in WWW-Authenticate)"),
                );
            }
            v.clone()
        }
    };
    let file_key = format!("{key}.users_file");
    let file = &raw.users_file;
    let path = config_relative(config_path, file.get_ref());
    let text = match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_USERS_FILE => Err("is larger than 16 MiB".to_string()),
        _ => std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| String::from_utf8(b).map_err(|_| "is not UTF-8 text".to_string())),
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            ctx.error(
                file.span(),
                file_key,
                format!("cannot read {}: {e}", path.display()),
            );
            return None;
        }
    };
    let users = match crate::htpasswd::parse(&text) {
        Ok(u) => u,
        Err(e) => {
            ctx.error(
                file.span(),
                file_key,
                format!("{}:{}: {}", path.display(), e.line, e.message),
            );
            return None;
        }
    };
    if users.is_empty() {
        ctx.error(
            file.span(),
            file_key,
            format!(
                "{} has no users (expected \"user:hash\" lines)",
                path.display()
            ),
        );
        return None;
    }
    if ctx.diags.len() != errors {
        return None;
    }
    Some(BasicAuthConfig {
        realm,
        users_file: path,
        users: Arc::new(users),
    })
}

/// Sent to the auth service by Fulcrum itself, whatever the list says.
const SENT_ANYWAY: &[&str] = &[
    "x-forwarded-method",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-uri",
    "x-forwarded-for",
];

pub(super) fn validate_forward_auth(
    ctx: &mut Ctx<'_>,
    raw: &Spanned<RawForwardAuth>,
    key: &str,
) -> Option<ForwardAuthConfig> {
    let raw = raw.get_ref();
    let errors = ctx.diags.len();
    let address = raw.address.get_ref().trim().to_string();
    let addr = super::upstream::resolve_server(ctx, &raw.address, &|| format!("{key}.address"))
        .into_iter()
        .next();
    let path = match &raw.path {
        None => "/".to_string(),
        Some(p) => {
            let v = p.get_ref();
            if !v.starts_with('/') || v.parse::<http::uri::PathAndQuery>().is_err() {
                ctx.error(
                    p.span(),
                    format!("{key}.path"),
                    format!("\"{v}\" must be a path starting with '/'"),
                );
            }
            v.clone()
        }
    };
    let timeout = ctx.positive_duration(
        &raw.timeout,
        &format!("{key}.timeout"),
        DEFAULT_FORWARD_AUTH_TIMEOUT,
    );
    let request_headers = header_list(
        ctx,
        raw.request_headers.as_deref(),
        &format!("{key}.request_headers"),
        true,
    );
    let response_headers = header_list(
        ctx,
        raw.response_headers.as_deref(),
        &format!("{key}.response_headers"),
        false,
    );
    if ctx.diags.len() != errors {
        return None;
    }
    Some(ForwardAuthConfig {
        address,
        addr: addr?,
        path,
        timeout,
        request_headers,
        response_headers,
    })
}

fn header_list(
    ctx: &mut Ctx<'_>,
    names: Option<&[S]>,
    key: &str,
    request: bool,
) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::new();
    for (j, n) in names.unwrap_or_default().iter().enumerate() {
        let k = format!("{key}[{j}]");
        let v = n.get_ref();
        match HeaderName::from_bytes(v.as_bytes()) {
            // Connection headers belong to one connection; Host to the auth
            // service (the client's host is sent as X-Forwarded-Host).
            Ok(h) if CONNECTION_HEADERS.contains(&h.as_str()) || h == "host" => ctx.error(
                n.span(),
                k,
                format!("\"{v}\" cannot be listed (hop-by-hop, framing, or Host)"),
            ),
            Ok(h) if request && SENT_ANYWAY.contains(&h.as_str()) => ctx.error(
                n.span(),
                k,
                format!("\"{v}\" is always sent to the auth service, set by Fulcrum"),
            ),
            Ok(h) => {
                if !out.contains(&h) {
                    out.push(h);
                }
            }
            Err(_) => ctx.error(n.span(), k, format!("\"{v}\" is not a header name")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::config::{Config, ConfigError};

    const ALICE: &str = "alice:$2y$05$RJQgsnJWtRzr/VRq0AAcQuWvRPTXuAGEs4EnvDpGtZD45LVTqNVya\n";

    /// Writes `files` next to a config whose one route has `keys`; loads it.
    fn load(keys: &str, files: &[(&str, &str)]) -> Result<Config, ConfigError> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fulcrum-auth-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let text = format!(
            "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"ops\"\nupstream = \"u\"\n{keys}\n\n[upstream.u]\nservers = [{{ address = \"127.0.0.1:9\" }}]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        );
        let path = dir.join("fulcrum.toml");
        std::fs::write(&path, &text).unwrap();
        let r = Config::from_toml(&path, &text);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    fn policy(c: &Config) -> &crate::config::PolicyConfig {
        c.routes[0].policy.as_deref().expect("a policy")
    }

    fn error(keys: &str, files: &[(&str, &str)]) -> String {
        match load(keys, files) {
            Ok(_) => panic!("accepted: {keys}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn basic_auth_reads_the_users_file_relative_to_the_config() {
        let c = load(
            "basic_auth = { users_file = \"ops.htpasswd\" }",
            &[("ops.htpasswd", ALICE)],
        )
        .unwrap();
        let b = policy(&c).basic_auth.as_ref().unwrap();
        assert_eq!(b.realm, "restricted");
        assert!(b.users.contains("alice"));
        assert!(b.users_file.ends_with("ops.htpasswd"));
        let dir = b.users_file.parent().unwrap().file_name().unwrap();
        assert!(
            dir.to_string_lossy().starts_with("fulcrum-auth-"),
            "{dir:?}"
        );
        let c = load(
            "basic_auth = { realm = \"ops team\", users_file = \"ops.htpasswd\" }",
            &[("ops.htpasswd", ALICE)],
        )
        .unwrap();
        assert_eq!(policy(&c).basic_auth.as_ref().unwrap().realm, "ops team");
    }

    #[test]
    fn a_bad_htpasswd_line_names_file_line_and_key() {
        let e = error(
            "basic_auth = { users_file = \"ops.htpasswd\" }",
            &[(
                "ops.htpasswd",
                &format!("# users\n{ALICE}dave:$apr1$u.tWOxJt$eJwyNXI50e6Vf7nzGvuc//\n"),
            )],
        );
        // The route's basic_auth is on line 8 of the config; the bad
        // htpasswd line is line 3 of its file.
        assert!(e.contains(":8:"), "{e}");
        assert!(e.contains("route[0].basic_auth.users_file"), "{e}");
        assert!(e.contains("ops.htpasswd:3:"), "{e}");
        assert!(e.contains("MD5"), "{e}");
    }

    #[test]
    fn basic_auth_file_problems_are_errors() {
        let keys = "basic_auth = { users_file = \"ops.htpasswd\" }";
        let e = error(keys, &[("ops.htpasswd", "# nobody\n\n")]);
        assert!(e.contains("has no users"), "{e}");
        let e = error(keys, &[]);
        assert!(
            e.contains("cannot read") && e.contains("ops.htpasswd"),
            "{e}"
        );
        let e = error(
            "basic_auth = { realm = 'say \"hi\"', users_file = \"ops.htpasswd\" }",
            &[("ops.htpasswd", ALICE)],
        );
        assert!(e.contains("route[0].basic_auth.realm"), "{e}");
    }

    #[test]
    fn forward_auth_defaults() {
        let c = load("forward_auth = { address = \"127.0.0.1:9000\" }", &[]).unwrap();
        let f = policy(&c).forward_auth.as_ref().unwrap();
        assert_eq!(f.address, "127.0.0.1:9000");
        assert_eq!(f.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(f.path, "/");
        assert_eq!(f.timeout, std::time::Duration::from_secs(2));
        assert!(f.request_headers.is_empty() && f.response_headers.is_empty());

        let c = load(
            "forward_auth = { address = \"localhost:9000\", path = \"/verify?rd=1\", timeout = \"500ms\", request_headers = [\"Authorization\", \"cookie\", \"Cookie\"], response_headers = [\"X-User\"] }",
            &[],
        )
        .unwrap();
        let f = policy(&c).forward_auth.as_ref().unwrap();
        assert_eq!(f.address, "localhost:9000");
        assert_eq!(f.addr.port(), 9000);
        assert_eq!(f.path, "/verify?rd=1");
        assert_eq!(f.timeout, std::time::Duration::from_millis(500));
        assert_eq!(f.request_headers, ["authorization", "cookie"]);
        assert_eq!(f.response_headers, ["x-user"]);
    }

    #[test]
    fn forward_auth_errors_name_their_key() {
        for (keys, key) in [
            ("{ address = \"127.0.0.1\" }", "forward_auth.address"),
            ("{ address = \"127.0.0.1:0\" }", "forward_auth.address"),
            (
                "{ address = \"127.0.0.1:9000\", path = \"verify\" }",
                "forward_auth.path",
            ),
            (
                "{ address = \"127.0.0.1:9000\", timeout = \"0s\" }",
                "forward_auth.timeout",
            ),
            (
                "{ address = \"127.0.0.1:9000\", timeout = \"soon\" }",
                "forward_auth.timeout",
            ),
            (
                "{ address = \"127.0.0.1:9000\", request_headers = [\"Cookie\", \"Connection\"] }",
                "forward_auth.request_headers[1]",
            ),
            (
                "{ address = \"127.0.0.1:9000\", request_headers = [\"X-Forwarded-Uri\"] }",
                "forward_auth.request_headers[0]",
            ),
            (
                "{ address = \"127.0.0.1:9000\", response_headers = [\"bad name\"] }",
                "forward_auth.response_headers[0]",
            ),
            (
                "{ address = \"127.0.0.1:9000\", response_headers = [\"Transfer-Encoding\"] }",
                "forward_auth.response_headers[0]",
            ),
        ] {
            let e = error(&format!("forward_auth = {keys}"), &[]);
            assert!(e.contains(&format!("route[0].{key}")), "{keys}: {e}");
        }
    }
}
