//! `[acme]` and the listeners' `tls.acme` names: raw keys, the typed
//! settings and their validation (an https directory, DNS names, a known
//! challenge, `[acme]` present when a listener names ACME certificates).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ctx::{config_relative, Ctx};
use super::raw::{RawListener, S};
use super::ListenerConfig;

/// `[acme]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub(crate) directory: Option<S>,
    pub(crate) email: Option<S>,
    pub(crate) storage: Option<S>,
    pub(crate) directory_ca: Option<S>,
    pub(crate) challenge: Option<S>,
    pub(crate) renew_before: Option<S>,
}

/// `[acme]`: where certificates come from and how they are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The ACME directory URL (https).
    pub directory: String,
    /// Account contact, without `mailto:`.
    pub email: Option<String>,
    /// Account key, certificates and keys (created 0700, files 0600).
    pub storage: PathBuf,
    /// Trust anchor for the directory's HTTPS instead of the webpki roots.
    pub directory_ca: Option<PathBuf>,
    pub challenge: AcmeChallenge,
    /// Renew this long before expiry.
    pub renew_before: Duration,
}

/// How the CA checks that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// `GET /.well-known/acme-challenge/<token>` on a plain listener (port 80).
    Http01,
    /// ALPN `acme-tls/1` on a TLS listener (port 443).
    TlsAlpn01,
}

impl AcmeChallenge {
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// Validates `[acme]`; `None` when absent or invalid (errors are in `ctx`).
pub(super) fn validate_acme(
    ctx: &mut Ctx<'_>,
    path: &Path,
    raw: Option<&Spanned<RawAcme>>,
) -> Option<AcmeConfig> {
    let span = raw?.span();
    let a = raw?.get_ref();
    let mut ok = true;
    let directory = match &a.directory {
        None => {
            ctx.error(span, "acme.directory", "required (the CA's directory URL)");
            ok = false;
            String::new()
        }
        Some(d) => {
            let v = d.get_ref().trim();
            if let Err(e) = https_url(v) {
                ctx.error(d.span(), "acme.directory", e);
                ok = false;
            }
            v.to_string()
        }
    };
    let email = match &a.email {
        Some(e) if !e.get_ref().trim().is_empty() => {
            let v = e.get_ref().trim().trim_start_matches("mailto:");
            let (user, domain) = v.split_once('@').unwrap_or(("", ""));
            if user.is_empty() || !domain.contains('.') || v.contains(char::is_whitespace) {
                ctx.error(
                    e.span(),
                    "acme.email",
                    format!("\"{v}\" is not an email address"),
                );
                ok = false;
            }
            Some(v.to_string())
        }
        _ => None,
    };
    let storage = config_relative(
        path,
        a.storage.as_ref().map_or("acme", |s| s.get_ref().as_str()),
    );
    let directory_ca = match &a.directory_ca {
        Some(c) if !c.get_ref().trim().is_empty() => {
            let p = config_relative(path, c.get_ref());
            if let Err(e) = crate::tls::load_certs(&p) {
                ctx.error(c.span(), "acme.directory_ca", e);
                ok = false;
            }
            Some(p)
        }
        _ => None,
    };
    let challenge = match &a.challenge {
        None => AcmeChallenge::Http01,
        Some(c) => {
            match c.get_ref().trim() {
                "http-01" => AcmeChallenge::Http01,
                "tls-alpn-01" => AcmeChallenge::TlsAlpn01,
                other => {
                    ctx.error(
                    c.span(),
                    "acme.challenge",
                    format!("unknown challenge \"{other}\": expected \"http-01\" or \"tls-alpn-01\""),
                );
                    ok = false;
                    AcmeChallenge::Http01
                }
            }
        }
    };
    let renew_before = ctx.positive_duration(
        &a.renew_before,
        "acme.renew_before",
        Duration::from_secs(30 * 86400),
    );
    ok.then_some(AcmeConfig {
        directory,
        email,
        storage,
        directory_ca,
        challenge,
        renew_before,
    })
}

fn https_url(v: &str) -> Result<(), String> {
    let uri: http::Uri = v
        .parse()
        .map_err(|e| format!("\"{v}\" is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("\"{v}\" must be an https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("\"{v}\" has no host"));
    }
    Ok(())
}

/// `listener[i].tls.acme`: lower-cased DNS names, no duplicates.
pub(super) fn validate_names(ctx: &mut Ctx<'_>, i: usize, names: &Spanned<Vec<S>>) -> Vec<String> {
    let key = format!("listener[{i}].tls.acme");
    if names.get_ref().is_empty() {
        ctx.error(names.span(), key, "at least one name is required");
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for (j, n) in names.get_ref().iter().enumerate() {
        let name = n.get_ref().trim().to_ascii_lowercase();
        match dns_name(&name) {
            Err(e) => ctx.error(n.span(), format!("{key}[{j}]"), e),
            Ok(()) if out.contains(&name) => ctx.error(
                n.span(),
                format!("{key}[{j}]"),
                format!("\"{name}\" is listed twice"),
            ),
            Ok(()) => out.push(name),
        }
    }
    out
}

/// A name a CA can validate with http-01 or tls-alpn-01.
fn dns_name(n: &str) -> Result<(), String> {
    if n.starts_with("*.") {
        return Err(format!(
            "\"{n}\": wildcard names need the dns-01 challenge, which Fulcrum does not do"
        ));
    }
    if n.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "\"{n}\": IP addresses are not supported, only DNS names"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if n.len() > 253 || !n.contains('.') || !n.split('.').all(label_ok) {
        return Err(format!(
            "\"{n}\" is not a DNS name (e.g. \"example.com\": dot-separated labels of letters, digits and '-')"
        ));
    }
    Ok(())
}

/// Checks across listeners: `[acme]` exists when a listener names ACME
/// certificates, a name belongs to one certificate only, and http-01 has a
/// plain listener to answer on.
pub(super) fn check_listeners(
    ctx: &mut Ctx<'_>,
    acme: Option<&AcmeConfig>,
    raw: &[Spanned<RawListener>],
    listeners: &[ListenerConfig],
    acme_section_present: bool,
) {
    let mut owner: Vec<(&str, &[String])> = Vec::new();
    let mut any = false;
    for (i, l) in listeners.iter().enumerate() {
        let Some(names) = l.tls.as_ref().map(|t| t.acme.as_slice()) else {
            continue;
        };
        if names.is_empty() {
            continue;
        }
        any = true;
        let span = raw
            .get(i)
            .and_then(|r| r.get_ref().tls.as_ref())
            .and_then(|t| t.get_ref().acme.as_ref())
            .map_or(0..0, |a| a.span());
        if !acme_section_present {
            ctx.error(
                span.clone(),
                format!("listener[{i}].tls.acme"),
                "ACME names need an [acme] table (directory, storage, challenge)",
            );
        }
        for n in names {
            match owner.iter().find(|(o, _)| o == n) {
                Some((_, set)) if *set != names => ctx.error(
                    span.clone(),
                    format!("listener[{i}].tls.acme"),
                    format!(
                        "\"{n}\" is also in another listener's acme list ({}); a name belongs to one certificate",
                        set.join(", ")
                    ),
                ),
                Some(_) => {}
                None => owner.push((n, names)),
            }
        }
    }
    if let Some(a) = acme {
        if any && a.challenge == AcmeChallenge::Http01 && listeners.iter().all(|l| l.tls.is_some())
        {
            ctx.error(
                0..0,
                "acme.challenge",
                "http-01 needs a plain (non-TLS) listener that the CA reaches on port 80; add one or use \"tls-alpn-01\"",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dns_name;
    use crate::config::{AcmeChallenge, Config};
    use std::path::Path;
    use std::time::Duration;

    const ACME: &str = "[acme]\ndirectory = \"https://ca.example/dir\"\n";

    fn load(acme: &str, tls: &str, plain: bool) -> Result<Config, String> {
        let web = if plain {
            "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n"
        } else {
            ""
        };
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{acme}\n{web}[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\n[listener.tls]\n{tls}\n\n[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{{ address = \"127.0.0.1:1\" }}]\n"
        );
        Config::from_toml(Path::new("/etc/fulcrum/f.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_listener_may_have_acme_names_and_no_certificates() {
        let c = load(
            &format!("{ACME}email = \"ops@example.com\"\nchallenge = \"tls-alpn-01\"\nrenew_before = \"20d\""),
            "acme = [\"Example.com\", \"www.example.com\"]",
            false,
        )
        .unwrap();
        let a = c.acme.unwrap();
        assert_eq!(a.directory, "https://ca.example/dir");
        assert_eq!(a.email.as_deref(), Some("ops@example.com"));
        assert_eq!(a.storage, Path::new("/etc/fulcrum/acme"));
        assert_eq!(a.challenge, AcmeChallenge::TlsAlpn01);
        assert_eq!(a.renew_before, Duration::from_secs(20 * 86400));
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.acme, ["example.com", "www.example.com"]);
        assert!(tls.keys.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[acme]\ndirectory = \"http://ca.example/dir\"",
                "acme = [\"example.com\"]",
                true,
                "acme.directory: \"http://ca.example/dir\" must be an https:// URL",
            ),
            (
                ACME,
                "acme = [\"*.example.com\"]",
                true,
                "listener[1].tls.acme[0]: \"*.example.com\": wildcard",
            ),
            (
                ACME,
                "acme = [\"10.0.0.1\"]",
                true,
                "IP addresses are not supported",
            ),
            (
                ACME,
                "acme = []",
                true,
                "listener[1].tls.acme: at least one name",
            ),
            (
                "",
                "acme = [\"example.com\"]",
                true,
                "listener[1].tls.acme: ACME names need an [acme] table",
            ),
            (
                &format!("{ACME}challenge = \"dns-01\""),
                "acme = [\"example.com\"]",
                true,
                "acme.challenge: unknown challenge \"dns-01\"",
            ),
            (
                ACME,
                "acme = [\"example.com\"]",
                false,
                "acme.challenge: http-01 needs a plain",
            ),
            (
                &format!("{ACME}emial = \"x\""),
                "acme = [\"example.com\"]",
                true,
                "unknown field `emial`",
            ),
            (
                &format!("{ACME}email = \"ops\""),
                "acme = [\"example.com\"]",
                true,
                "acme.email",
            ),
            (
                ACME,
                "",
                true,
                "tls.certificates: at least one certificate is required",
            ),
        ];
        for (acme, tls, plain, want) in cases {
            let e = load(acme, tls, plain).unwrap_err();
            assert!(e.contains(want), "want {want:?} in:\n{e}");
        }
    }

    #[test]
    fn dns_names() {
        assert!(dns_name("example.com").is_ok());
        assert!(dns_name("www.ex-ample.co.uk").is_ok());
        for bad in [
            "*.example.com",
            "127.0.0.1",
            "localhost",
            "a..b",
            "-a.com",
            "a_b.com",
            "",
        ] {
            assert!(dns_name(bad).is_err(), "{bad}");
        }
    }
}
