//! Validation of `compress` on a route: `true` (the defaults), `false`
//! (off) or a table of `algorithms`, `min_size`, `content_types`.

use std::ops::Range;

use toml::Spanned;

use super::ctx::Ctx;
use super::policy::{CompressConfig, Encoding};
use super::units::parse_size;

/// `min_size` when not given: smaller bodies gain little and cost a
/// compressor's start-up.
const DEFAULT_MIN_SIZE: u64 = 1024;

/// `content_types` when not given.
const DEFAULT_TYPES: [&str; 5] = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
];

/// `true` (defaults), `false` (`None`) or a table.
pub(super) fn validate_compress(
    ctx: &mut Ctx<'_>,
    raw: &Spanned<toml::Value>,
    key: &str,
) -> Option<CompressConfig> {
    let span = raw.span();
    let table = match raw.get_ref() {
        toml::Value::Boolean(true) => return Some(defaults()),
        toml::Value::Boolean(false) => return None,
        toml::Value::Table(t) => t,
        _ => {
            ctx.error(
                span,
                key,
                "must be true, false or a table like { algorithms = [\"br\", \"gzip\"], \
                 min_size = \"1KiB\", content_types = [\"text/*\"] }",
            );
            return None;
        }
    };
    let mut ok = true;
    for name in table.keys() {
        if !matches!(name.as_str(), "algorithms" | "min_size" | "content_types") {
            ctx.error(
                key_span(ctx.text, &span, name, false),
                format!("{key}.{name}"),
                "unknown key (expected algorithms, min_size, content_types)",
            );
            ok = false;
        }
    }
    let mut cfg = defaults();
    if let Some(v) = table.get("algorithms") {
        let k = format!("{key}.algorithms");
        match algorithms(v) {
            Ok(a) => cfg.algorithms = a,
            Err(e) => {
                ctx.error(key_span(ctx.text, &span, "algorithms", true), k, e);
                ok = false;
            }
        }
    }
    if let Some(v) = table.get("min_size") {
        let parsed = match v {
            toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
            toml::Value::Integer(n) => Err(format!("size {n} must not be negative")),
            toml::Value::String(s) => parse_size(s),
            other => Err(format!(
                "{other} must be a size like \"1KiB\" or a number of bytes"
            )),
        };
        match parsed {
            Ok(n) => cfg.min_size = n,
            Err(e) => {
                ctx.error(
                    key_span(ctx.text, &span, "min_size", true),
                    format!("{key}.min_size"),
                    e,
                );
                ok = false;
            }
        }
    }
    if let Some(v) = table.get("content_types") {
        match content_types(v) {
            Ok(t) => cfg.content_types = t,
            Err(e) => {
                ctx.error(
                    key_span(ctx.text, &span, "content_types", true),
                    format!("{key}.content_types"),
                    e,
                );
                ok = false;
            }
        }
    }
    ok.then_some(cfg)
}

/// Where `name = ...` is inside the table at `span` (the value when
/// `value`, else the key), so an error points at it; the whole table when
/// it cannot be found (the raw value keeps no inner positions).
fn key_span(text: &str, span: &Range<usize>, name: &str, value: bool) -> Range<usize> {
    let Some(table) = text.get(span.clone()) else {
        return span.clone();
    };
    let mut from = 0;
    while let Some(i) = table[from..].find(name) {
        let at = from + i;
        let after = &table[at + name.len()..];
        let rest = after.trim_start_matches([' ', '\t', '"']);
        let before_ok = at == 0 || !table.as_bytes()[at - 1].is_ascii_alphanumeric();
        if before_ok && rest.starts_with('=') {
            let start = if value {
                let v = rest[1..].trim_start();
                span.start + table.len() - v.len()
            } else {
                span.start + at
            };
            return start..span.end;
        }
        from = at + name.len();
    }
    span.clone()
}

fn defaults() -> CompressConfig {
    CompressConfig {
        algorithms: vec![Encoding::Br, Encoding::Gzip],
        min_size: DEFAULT_MIN_SIZE,
        content_types: DEFAULT_TYPES.iter().map(|s| s.to_string()).collect(),
    }
}

fn algorithms(v: &toml::Value) -> Result<Vec<Encoding>, String> {
    const SHAPE: &str = "must be a list of \"br\", \"gzip\", \"zstd\" in order of preference";
    let list = v.as_array().ok_or(SHAPE)?;
    if list.is_empty() {
        return Err(format!("{SHAPE} (at least one)"));
    }
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let enc = match item.as_str() {
            Some("br") => Encoding::Br,
            Some("gzip") => Encoding::Gzip,
            Some("zstd") => Encoding::Zstd,
            Some(other) => {
                return Err(format!(
                    "unknown algorithm \"{other}\" (expected \"br\", \"gzip\", \"zstd\")"
                ))
            }
            None => return Err(SHAPE.to_string()),
        };
        if out.contains(&enc) {
            return Err(format!("\"{}\" is listed twice", enc.as_str()));
        }
        out.push(enc);
    }
    Ok(out)
}

fn content_types(v: &toml::Value) -> Result<Vec<String>, String> {
    const SHAPE: &str = "must be a list of media types like \"application/json\" or \"text/*\"";
    let list = v.as_array().ok_or(SHAPE)?;
    if list.is_empty() {
        return Err(format!("{SHAPE} (at least one)"));
    }
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let s = item.as_str().ok_or(SHAPE)?.trim().to_ascii_lowercase();
        let valid = match s.split_once('/') {
            Some((ty, sub)) => is_token(ty) && ty != "*" && (sub == "*" || is_token(sub)),
            None => false,
        };
        if !valid {
            return Err(format!(
                "\"{s}\" is not a media type like \"application/json\" or \"text/*\" \
                 (no parameters)"
            ));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// An RFC 9110 token without `*` (a wildcard is only allowed as a whole
/// subtype).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Doc {
        compress: Spanned<toml::Value>,
    }

    fn run(value: &str) -> (Option<CompressConfig>, Vec<(String, String)>) {
        let text = format!("compress = {value}\n");
        let doc: Doc = toml::from_str(&text).unwrap();
        let mut ctx = Ctx {
            text: &text,
            diags: Vec::new(),
            warnings: Vec::new(),
        };
        let c = validate_compress(&mut ctx, &doc.compress, "route[0].compress");
        let errs = ctx.diags.into_iter().map(|d| (d.key, d.message)).collect();
        (c, errs)
    }

    #[test]
    fn true_gives_defaults_false_gives_none() {
        let (c, e) = run("true");
        assert!(e.is_empty());
        let c = c.unwrap();
        assert_eq!(c.algorithms, vec![Encoding::Br, Encoding::Gzip]);
        assert_eq!(c.min_size, 1024);
        assert_eq!(
            c.content_types,
            [
                "text/*",
                "application/json",
                "application/javascript",
                "application/xml",
                "image/svg+xml"
            ]
        );
        let (c, e) = run("false");
        assert!(c.is_none() && e.is_empty());
    }

    #[test]
    fn table_overrides_each_key() {
        let (c, e) = run(
            r#"{ algorithms = ["zstd", "gzip"], min_size = "2KiB", content_types = ["Text/HTML", "application/*"] }"#,
        );
        assert!(e.is_empty(), "{e:?}");
        let c = c.unwrap();
        assert_eq!(c.algorithms, vec![Encoding::Zstd, Encoding::Gzip]);
        assert_eq!(c.min_size, 2048);
        assert_eq!(c.content_types, ["text/html", "application/*"]);
        let (c, e) = run("{ min_size = 0 }");
        assert!(e.is_empty());
        let c = c.unwrap();
        assert_eq!(c.min_size, 0);
        assert_eq!(c.algorithms, vec![Encoding::Br, Encoding::Gzip]);
        assert_eq!(c.content_types.len(), 5);
    }

    #[test]
    fn errors_point_at_the_key_or_value() {
        let text = "compress = { min_size = \"1 parsec\", level = 5 }\n";
        let doc: Doc = toml::from_str(text).unwrap();
        let mut ctx = Ctx {
            text,
            diags: Vec::new(),
            warnings: Vec::new(),
        };
        assert!(validate_compress(&mut ctx, &doc.compress, "c").is_none());
        let at: Vec<_> = ctx
            .diags
            .iter()
            .map(|d| (d.key.as_str(), d.column))
            .collect();
        assert_eq!(at, [("c.level", 37), ("c.min_size", 25)]);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("\"yes\"", "route[0].compress"),
            ("{ level = 5 }", "route[0].compress.level"),
            (
                "{ algorithms = [\"deflate\"] }",
                "route[0].compress.algorithms",
            ),
            ("{ algorithms = [] }", "route[0].compress.algorithms"),
            ("{ algorithms = \"gzip\" }", "route[0].compress.algorithms"),
            (
                "{ algorithms = [\"gzip\", \"gzip\"] }",
                "route[0].compress.algorithms",
            ),
            ("{ min_size = -1 }", "route[0].compress.min_size"),
            ("{ min_size = \"1 parsec\" }", "route[0].compress.min_size"),
            ("{ min_size = true }", "route[0].compress.min_size"),
            (
                "{ content_types = [\"json\"] }",
                "route[0].compress.content_types",
            ),
            (
                "{ content_types = [\"*/*\"] }",
                "route[0].compress.content_types",
            ),
            (
                "{ content_types = [\"text/html; charset=utf-8\"] }",
                "route[0].compress.content_types",
            ),
            ("{ content_types = [1] }", "route[0].compress.content_types"),
            ("{ content_types = [] }", "route[0].compress.content_types"),
        ];
        for (value, key) in cases {
            let (c, e) = run(value);
            assert!(c.is_none(), "{value} accepted");
            assert_eq!(e.len(), 1, "{value}: {e:?}");
            assert_eq!(e[0].0, key, "{value}: {e:?}");
        }
    }
}
