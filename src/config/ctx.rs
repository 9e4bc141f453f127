//! The validation context: collects every error with its line, column and
//! key, and the value checks every section uses (durations, ranges, sizes,
//! addresses, paths relative to the config file).

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawSize, S};
use super::units::{parse_duration, parse_size};
use super::Diagnostic;

pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) diags: Vec<Diagnostic>,
    pub(super) warnings: Vec<String>,
}

impl Ctx<'_> {
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
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

    pub(super) fn size(&mut self, v: &Option<Spanned<RawSize>>, key: &str) -> Option<u64> {
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

pub(super) fn socket_addr(ctx: &mut Ctx<'_>, s: &S, key: &str) -> SocketAddr {
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

/// A path from the config file, relative to the file's directory.
pub(super) fn config_relative(config: &Path, p: &str) -> std::path::PathBuf {
    let p = Path::new(p.trim());
    if p.is_absolute() {
        return p.to_path_buf();
    }
    config.parent().unwrap_or(Path::new("")).join(p)
}
