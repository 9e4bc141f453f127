//! Validation of `[admin]`: the listen address, and runtime control's
//! `token_file` (read now, so a reload re-reads it) and `state_file`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ctx::{config_relative, Ctx};
use super::raw::{RawAdmin, RawListener};
use super::{AdminConfig, ListenerConfig};

/// At most this many admin connections; more wait in the accept queue.
pub(super) const ADMIN_MAX_CONNECTIONS: usize = 1024;

/// The admin listener's protections: those of a listener with default
/// settings (built by the same validation, so the defaults cannot drift),
/// at most `ADMIN_MAX_CONNECTIONS` connections.
pub(super) fn listener_settings(
    ctx: &mut Ctx<'_>,
    path: &Path,
    listen: SocketAddr,
) -> ListenerConfig {
    let raw: RawListener = toml::from_str("name = \"admin\"\nlisten = \"127.0.0.1:0\"")
        .expect("a listener with defaults parses");
    let mut l = super::listener::validate_listener(ctx, path, 0, &raw);
    l.listen = listen;
    l.max_connections = ADMIN_MAX_CONNECTIONS;
    l
}

/// Shortest token accepted, in bytes after trimming whitespace.
pub const MIN_TOKEN_BYTES: usize = 32;

/// The admin API's bearer token. Never printed (Debug is redacted).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Arc<[u8]>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Whether `presented` is the token. Constant time in the content of
    /// both (every byte of the longer one is visited whatever differs), so
    /// response timing does not tell an attacker how much of a guess was
    /// right. Written out rather than pulling in `subtle` for ten lines.
    pub fn matches(&self, presented: &[u8]) -> bool {
        ct_eq(&self.0, presented)
    }

    /// A token from its file content: trimmed, at least `MIN_TOKEN_BYTES`.
    pub fn from_file_content(text: &[u8]) -> Result<AdminToken, String> {
        let t = text.trim_ascii();
        if t.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "the token is {} bytes; at least {MIN_TOKEN_BYTES} are required",
                t.len()
            ));
        }
        if t.iter().any(|b| !b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces".into());
        }
        Ok(AdminToken(Arc::from(t)))
    }
}

/// Constant-time equality of two byte strings.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

pub(super) fn validate(
    ctx: &mut Ctx<'_>,
    path: &Path,
    raw: &RawAdmin,
    listen: SocketAddr,
) -> AdminConfig {
    let mut token = None;
    let token_file = raw.token_file.as_ref().map(|f| {
        let file = config_relative(path, f.get_ref());
        match std::fs::read(&file) {
            Ok(text) => match AdminToken::from_file_content(&text) {
                Ok(t) => token = Some(t),
                Err(e) => ctx.error(
                    f.span(),
                    "admin.token_file",
                    format!("{}: {e}", file.display()),
                ),
            },
            Err(e) => ctx.error(
                f.span(),
                "admin.token_file",
                format!("cannot read {}: {e}", file.display()),
            ),
        }
        file
    });
    let state_file: Option<PathBuf> = raw.state_file.as_ref().map(|f| {
        if f.get_ref().trim().is_empty() {
            ctx.error(f.span(), "admin.state_file", "must name a file");
        }
        config_relative(path, f.get_ref())
    });
    AdminConfig {
        listen,
        listener: Arc::new(listener_settings(ctx, path, listen)),
        token,
        token_file,
        state_file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"abc", b""));
        assert!(!ct_eq(b"\0", b""), "padding never makes a match");
    }

    #[test]
    fn tokens_are_trimmed_and_long_enough() {
        let long = "k".repeat(32);
        let t = AdminToken::from_file_content(format!("  {long}\n").as_bytes()).unwrap();
        assert!(t.matches(long.as_bytes()));
        assert!(!t.matches(format!("{long}\n").as_bytes()));
        let short = "k".repeat(31);
        assert!(AdminToken::from_file_content(format!("{short}\n\n").as_bytes()).is_err());
        assert!(AdminToken::from_file_content(format!("{short} x").as_bytes()).is_err());
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }
}
