//! Every key the config parser accepts is documented in docs/configuration.md,
//! and the README's small config is one `fulcrum check` accepts.
//!
//! The key list comes from the parser itself, not from a copy: a key nobody
//! accepts is put into each table in turn, and the parser's "unknown field
//! ..., expected one of `a`, `b`" error (serde's `deny_unknown_fields`) names
//! every key that table takes. A new key in a raw struct therefore fails this
//! test until the docs have a row for it.

use std::path::{Path, PathBuf};

use fulcrum::config::Config;

const UNKNOWN: &str = "zz_not_a_key";

/// A config with every table present, so each can receive the unknown key.
const BASE: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[global]

[[listener]]
name = "web"
listen = "127.0.0.1:8080"

[listener.tls]
certificates = [{ cert = "a.pem", key = "a.key" }]

[[route]]
upstream = "api"
rate_limit = { requests_per_second = 1 }

[[route]]
split = [{ upstream = "api", weight = 1 }]
redirect = { scheme = "https" }
respond = { status = 200 }
request_headers = { set = { "X-A" = "1" } }
response_headers = { remove = ["Server"] }
basic_auth = { users_file = "u.htpasswd" }
forward_auth = { address = "127.0.0.1:9" }
compress = { min_size = "1KiB" }

[upstream.api]
servers = [{ address = "127.0.0.1:1" }]

[upstream.api.sticky]

[upstream.api.health_check]

[upstream.api.passive_health]
"#;

/// (where the unknown key goes, the heading of the docs section that must
/// list that table's keys). `at` is the text the key is inserted after.
struct Table {
    name: &'static str,
    at: &'static str,
    insert: &'static str,
    section: &'static str,
}

fn tables() -> Vec<Table> {
    let line = |name, at, section| Table {
        name,
        at,
        insert: "\nzz_not_a_key = 1",
        section,
    };
    vec![
        line("[admin]", "listen = \"127.0.0.1:9901\"", "`[admin]`"),
        line("[global]", "[global]", "`[global]`"),
        line(
            "[[listener]]",
            "listen = \"127.0.0.1:8080\"",
            "`[[listener]]`",
        ),
        line(
            "[listener.tls]",
            "certificates = [{ cert = \"a.pem\", key = \"a.key\" }]",
            "`[listener.tls]`",
        ),
        Table {
            name: "certificates[]",
            at: "key = \"a.key\"",
            insert: ", zz_not_a_key = 1",
            section: "`[listener.tls]`",
        },
        line("[[route]]", "upstream = \"api\"", "`[[route]]`"),
        Table {
            name: "rate_limit",
            at: "requests_per_second = 1",
            insert: ", zz_not_a_key = 1",
            section: "`[[route]]`",
        },
        Table {
            name: "split[]",
            at: "weight = 1",
            insert: ", zz_not_a_key = 1",
            section: "`[[route]]`",
        },
        Table {
            name: "redirect",
            at: "scheme = \"https\"",
            insert: ", zz_not_a_key = 1",
            section: "`[[route]]`",
        },
        Table {
            name: "respond",
            at: "status = 200",
            insert: ", zz_not_a_key = 1",
            section: "`[[route]]`",
        },
        Table {
            name: "request_headers",
            at: "set = { \"X-A\" = \"1\" }",
            insert: ", zz_not_a_key = 1",
            section: "`[[route]]`",
        },
        Table {
            name: "response_headers",
            at: "remove = [\"Server\"]",
            insert: ", zz_not_a_key = 1",
            section: "`[[route]]`",
        },
        Table {
            name: "basic_auth",
            at: "users_file = \"u.htpasswd\"",
            insert: ", zz_not_a_key = 1",
            section: "Route policy: access",
        },
        Table {
            name: "forward_auth",
            at: "address = \"127.0.0.1:9\"",
            insert: ", zz_not_a_key = 1",
            section: "Route policy: access",
        },
        Table {
            name: "compress",
            at: "min_size = \"1KiB\"",
            insert: ", zz_not_a_key = 1",
            section: "Route policy: compression",
        },
        line(
            "[upstream.NAME]",
            "servers = [{ address = \"127.0.0.1:1\" }]",
            "`[upstream.NAME]`",
        ),
        Table {
            name: "servers[]",
            at: "address = \"127.0.0.1:1\"",
            insert: ", zz_not_a_key = 1",
            section: "`[upstream.NAME]`",
        },
        line(
            "[upstream.NAME.sticky]",
            "[upstream.api.sticky]",
            "`[upstream.NAME.sticky]`",
        ),
        line(
            "[upstream.NAME.health_check]",
            "[upstream.api.health_check]",
            "`[upstream.NAME.health_check]`",
        ),
        line(
            "[upstream.NAME.passive_health]",
            "[upstream.api.passive_health]",
            "`[upstream.NAME.passive_health]`",
        ),
    ]
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The keys a table accepts, read from the parser's error for an unknown key.
fn accepted_keys(text: &str) -> Vec<String> {
    let err = Config::from_toml(Path::new("t.toml"), text)
        .expect_err("a config with an unknown key must be refused")
        .to_string();
    assert!(
        err.contains(UNKNOWN),
        "error does not name the unknown key: {err}"
    );
    let expected = err
        .split_once("expected ")
        .unwrap_or_else(|| panic!("error does not list the accepted keys: {err}"))
        .1;
    let expected = expected.lines().next().unwrap_or_default();
    // serde: "one of `a`, `b`" or "`a`"; the rate_limit check: "a, b)".
    let names: Vec<String> = if expected.contains('`') {
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    } else {
        expected
            .trim_end_matches(')')
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    };
    assert!(!names.is_empty(), "no key names in: {err}");
    names
}

/// The first cells of the table rows under the `## ...` heading containing
/// `heading`, up to the next `## ` heading.
fn documented(doc: &str, heading: &str) -> Vec<String> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with("## ") {
            inside = line.contains(heading);
            continue;
        }
        if inside {
            if let Some(cell) = line.strip_prefix("| `") {
                if let Some((key, _)) = cell.split_once('`') {
                    rows.push(key.to_string());
                }
            }
        }
    }
    assert!(
        !rows.is_empty(),
        "no key table under a heading with {heading}"
    );
    rows
}

/// `certificates[].cert` documents `cert`; a plain `cert` does too.
fn is_documented(rows: &[String], key: &str) -> bool {
    rows.iter()
        .any(|r| r == key || r.ends_with(&format!("].{key}")) || r.ends_with(&format!(".{key}")))
}

#[test]
fn every_accepted_key_is_documented() {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let mut missing = Vec::new();
    let mut checked = 0;
    for t in tables() {
        assert!(
            BASE.contains(t.at),
            "{}: base config lacks {:?}",
            t.name,
            t.at
        );
        let text = BASE.replacen(t.at, &format!("{}{}", t.at, t.insert), 1);
        let rows = documented(&doc, t.section);
        for key in accepted_keys(&text) {
            checked += 1;
            // A sub-table has its own heading, e.g. `[upstream.NAME.sticky]`.
            let own_heading = doc
                .lines()
                .any(|l| l.starts_with("## ") && l.contains(&format!(".{key}]`")));
            if !is_documented(&rows, &key) && !own_heading {
                missing.push(format!(
                    "{}: {key} (under the heading {})",
                    t.name, t.section
                ));
            }
        }
    }
    // The top level: each table has its own heading.
    let top = format!("{UNKNOWN} = 1\n{BASE}");
    for key in accepted_keys(&top) {
        checked += 1;
        let heading = ["`[", "`[[", "`[upstream.NAME"]
            .iter()
            .any(|p| doc.contains(&format!("## {p}{key}")));
        if !heading {
            missing.push(format!("top-level table {key}"));
        }
    }
    assert!(
        checked > 50,
        "only {checked} keys found: the extraction broke"
    );
    assert!(
        missing.is_empty(),
        "keys the parser accepts but docs/configuration.md does not document:\n  {}",
        missing.join("\n  ")
    );
}

/// The detector itself: a table without a row for one of its keys is caught.
#[test]
fn an_undocumented_key_is_caught() {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let without = doc.replace("| `idle_timeout` |", "| idle timeout |");
    let rows = documented(&without, "`[[listener]]`");
    let text = BASE.replacen(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nzz_not_a_key = 1",
        1,
    );
    let keys = accepted_keys(&text);
    assert!(keys.iter().any(|k| k == "idle_timeout"), "{keys:?}");
    assert!(!is_documented(&rows, "idle_timeout"));
    assert!(is_documented(
        &documented(&doc, "`[[listener]]`"),
        "idle_timeout"
    ));
}

/// The README's config is the first thing a reader copies: it must pass
/// `fulcrum check`'s validation.
#[test]
fn readme_config_is_valid() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README has a ```toml block");
    let c = Config::from_toml(&root().join("README.md"), block)
        .unwrap_or_else(|e| panic!("README config does not validate:\n{e}"));
    assert_eq!(c.listeners.len(), 1);
}

#[test]
fn every_cookbook_recipe_passes_check() {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let section = doc
        .split("## Route policy cookbook")
        .nth(1)
        .expect("a cookbook section")
        .split("\n## ")
        .next()
        .unwrap();
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 7, "only {} recipes found", blocks.len());
    let dir = std::env::temp_dir().join(format!("fulcrum-cookbook-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("errors")).unwrap();
    for page in ["502.html", "503.html"] {
        std::fs::write(dir.join("errors").join(page), "<h1>sorry</h1>\n").unwrap();
    }
    let mut text = String::from(
        "[admin]\nlisten = \"127.0.0.1:9901\"\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\
         [[listener]]\nname = \"websecure\"\nlisten = \"127.0.0.1:8443\"\n",
    );
    for up in [
        "site",
        "api",
        "stable",
        "canary",
        "oauth2-proxy",
        "internal",
    ] {
        text += &format!("[upstream.{up}]\nservers = [{{ address = \"127.0.0.1:1\" }}]\n");
    }
    for b in &blocks {
        text += b;
    }
    let path = dir.join("fulcrum.toml");
    let result = Config::from_toml(&path, &text);
    std::fs::remove_dir_all(&dir).ok();
    if let Err(e) = result {
        panic!("a cookbook recipe fails check:\n{e}\n\n{text}");
    }
}
