//! htpasswd files for `basic_auth`: `user:hash` lines, bcrypt or argon2id.
//! (Leaf utility: config reads the file at load, the request path verifies.)
//!
//! Only hashes made for passwords are accepted: bcrypt (`$2a$`, `$2b$`,
//! `$2y$`, as `htpasswd -B` writes) through the `bcrypt` crate, and
//! argon2id PHC strings (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`)
//! through RustCrypto's `argon2`. MD5 (`$apr1$`), SHA-1 (`{SHA}`), crypt(3)
//! and plain text are refused when the file is read, naming the line.
//!
//! Verifying costs what the hash says (bcrypt cost 10: tens of
//! milliseconds of CPU), so `Users::verify` blocks: callers run it off the
//! async workers.

use std::collections::HashMap;
use std::str::FromStr;

use argon2::password_hash::PasswordVerifier;
use argon2::{Argon2, PasswordHash};

/// The highest bcrypt cost accepted: `htpasswd -B` goes to 17, where one
/// verification already takes seconds.
const MAX_BCRYPT_COST: u32 = 17;

/// The most memory one argon2id verification may take (KiB): 256 MiB,
/// four times RFC 9106's second recommendation (64 MiB).
const MAX_ARGON2_M_COST: u32 = 256 * 1024;

/// A password hash, checked when the file was read.
#[derive(Debug, Clone)]
enum Hash {
    Bcrypt(String),
    Argon2id(String),
}

/// The users of one htpasswd file.
#[derive(Debug, Default)]
pub struct Users {
    users: HashMap<String, Hash>,
    /// The first user's hash: checked for unknown users too, so that a
    /// wrong user name costs what a wrong password costs (no timing tell).
    decoy: Option<Hash>,
}

/// A line that is not `user:hash` with a supported hash.
#[derive(Debug)]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Parses a whole file; the first bad line is the error. Blank lines and
/// lines starting with `#` are skipped.
pub fn parse(text: &str) -> Result<Users, LineError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut users = Users::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| LineError {
            line: i + 1,
            message,
        };
        let Some((user, hash)) = line.split_once(':') else {
            return Err(err("expected \"user:hash\"".into()));
        };
        if user.is_empty() {
            return Err(err("the user name is empty".into()));
        }
        if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(format!(
                "user name {user:?} contains whitespace or a control character"
            )));
        }
        let hash = parse_hash(hash).map_err(|m| err(format!("user \"{user}\": {m}")))?;
        if users.decoy.is_none() {
            users.decoy = Some(hash.clone());
        }
        if users.users.insert(user.to_string(), hash).is_some() {
            return Err(err(format!("user \"{user}\" appears twice")));
        }
    }
    Ok(users)
}

fn parse_hash(h: &str) -> Result<Hash, String> {
    if h.is_empty() {
        return Err("the hash is empty".into());
    }
    if let Some(v) = ["$2a$", "$2b$", "$2y$"].iter().find(|p| h.starts_with(**p)) {
        let parts = bcrypt::HashParts::from_str(h)
            .map_err(|e| format!("malformed bcrypt hash ({v}): {e}"))?;
        let cost = parts.get_cost();
        if !(4..=MAX_BCRYPT_COST).contains(&cost) {
            return Err(format!(
                "bcrypt cost {cost} is out of range: must be 4 to {MAX_BCRYPT_COST}"
            ));
        }
        return Ok(Hash::Bcrypt(h.to_string()));
    }
    if h.starts_with("$argon2id$") {
        let parsed = PasswordHash::new(h).map_err(|e| format!("malformed argon2id hash: {e}"))?;
        let params = argon2::Params::try_from(&parsed)
            .map_err(|e| format!("malformed argon2id parameters: {e}"))?;
        if parsed.hash.is_none() || parsed.salt.is_none() {
            return Err("argon2id hash has no salt or no hash".into());
        }
        if params.m_cost() > MAX_ARGON2_M_COST {
            return Err(format!(
                "argon2id memory m={} KiB is over the limit of {MAX_ARGON2_M_COST} KiB",
                params.m_cost()
            ));
        }
        return Ok(Hash::Argon2id(h.to_string()));
    }
    Err(format!(
        "{}: only bcrypt ($2a$, $2b$, $2y$; htpasswd -B) and argon2id hashes are accepted",
        describe_unsupported(h)
    ))
}

/// What an unsupported hash looks like, for the error message.
fn describe_unsupported(h: &str) -> &'static str {
    const KNOWN: &[(&str, &str)] = &[
        ("$apr1$", "an Apache MD5 ($apr1$) hash"),
        ("{SHA}", "a SHA-1 ({SHA}) hash"),
        ("{SSHA}", "a salted SHA-1 ({SSHA}) hash"),
        ("$1$", "an MD5-crypt ($1$) hash"),
        ("$5$", "a SHA-256-crypt ($5$) hash"),
        ("$6$", "a SHA-512-crypt ($6$) hash"),
        ("$y$", "a yescrypt ($y$) hash"),
        ("$2x$", "a bcrypt $2x$ hash (the buggy pre-2011 variant)"),
        ("$argon2i$", "an argon2i hash (use argon2id)"),
        ("$argon2d$", "an argon2d hash (use argon2id)"),
    ];
    if let Some((_, what)) = KNOWN.iter().find(|(p, _)| h.starts_with(p)) {
        return what;
    }
    if h.starts_with('$') {
        return "an unknown hash scheme";
    }
    if h.len() == 13 {
        return "a DES crypt hash or a plain-text password";
    }
    "a plain-text password or an unknown hash"
}

impl Users {
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Whether `password` is `user`'s. Blocking and CPU-heavy (the hash's
    /// cost): run it on a blocking thread. An unknown user costs the same
    /// as a known one with a wrong password.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(h) => check(h, password),
            None => {
                if let Some(h) = &self.decoy {
                    let _ = check(h, password);
                }
                false
            }
        }
    }
}

fn check(hash: &Hash, password: &[u8]) -> bool {
    match hash {
        Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        // The parameters come from the hash, not from `Argon2::default()`.
        Hash::Argon2id(h) => Argon2::default()
            .verify_password(password, h.as_str())
            .is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with Apache's reference tool (apache2-utils 2.4):
    //   htpasswd -nbB -C 10 alice 'correct horse battery'
    //   htpasswd -nbB -C 5 carol 's3cret:with:colons'
    const ALICE: &str = "alice:$2y$10$FkS71ttTtEck7i58SGgyeumlKTSSbwnXL.AbYlH6ChqN4w4eMdwEu";
    const CAROL: &str = "carol:$2y$05$RJQgsnJWtRzr/VRq0AAcQuWvRPTXuAGEs4EnvDpGtZD45LVTqNVya";
    // Made with the argon2 reference implementation's CLI (Debian argon2
    // 0~20171227):
    //   echo -n 'argon pass' | argon2 fulcrumsaltfortests -id -t 2 -m 12 -p 1 -e
    const BOB_HASH: &str =
        "$argon2id$v=19$m=4096,t=2,p=1$ZnVsY3J1bXNhbHRmb3J0ZXN0cw$jeCcmvaT5vG7X29onYGY/4R3TPyBhHJoOnUX4NdRRAo";
    // The same with -i (argon2i): refused.
    const ARGON2I: &str =
        "$argon2i$v=19$m=4096,t=2,p=1$ZnVsY3J1bXNhbHRmb3J0ZXN0cw$ex0tusB0L9UMt5ihj5LqM6ia/6ngRc6yBhyKFzbf/e4";

    fn file() -> String {
        format!("# ops users\n\n{ALICE}\r\nbob:{BOB_HASH}\n   # indented comment\n{CAROL}\n")
    }

    #[test]
    fn reference_bcrypt_and_argon2id_hashes_verify() {
        let u = parse(&file()).unwrap();
        assert_eq!(u.len(), 3);
        assert!(u.verify("alice", b"correct horse battery"));
        assert!(!u.verify("alice", b"correct horse batterz"));
        assert!(!u.verify("alice", b""));
        assert!(u.verify("bob", b"argon pass"));
        assert!(!u.verify("bob", b"argon pas"));
        assert!(u.verify("carol", b"s3cret:with:colons"));
        assert!(!u.verify("nobody", b"correct horse battery"));
        assert!(
            !u.verify("Alice", b"correct horse battery"),
            "user names are exact"
        );
    }

    #[test]
    fn every_bcrypt_prefix_is_the_same_algorithm() {
        // $2a$, $2b$ and $2y$ differ only in how old implementations
        // handled 8-bit passwords; for ASCII they are one algorithm.
        let hash = ALICE.strip_prefix("alice:$2y$").unwrap();
        for p in ["$2a$", "$2b$", "$2y$"] {
            let u = parse(&format!("alice:{p}{hash}")).unwrap();
            assert!(u.verify("alice", b"correct horse battery"), "{p}");
        }
    }

    fn bad(text: &str) -> LineError {
        match parse(text) {
            Ok(_) => panic!("accepted: {text:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn unsupported_hashes_name_their_line_and_kind() {
        // apr1 and {SHA} lines made with `htpasswd -nbm` / `htpasswd -nbs`.
        for (line, kind) in [
            ("dave:$apr1$u.tWOxJt$eJwyNXI50e6Vf7nzGvuc//", "MD5"),
            ("erin:{SHA}EfatjsUqKYSrqv18O1FlA3hcIHI=", "SHA-1"),
            ("frank:hunter2", "plain-text"),
            ("gina:rl0Xbn6Hj6Vcs", "DES crypt"),
            ("hal:$6$salt$abc", "SHA-512"),
            (&format!("ivy:{ARGON2I}"), "argon2i"),
            (
                "jo:$2x$10$FkS71ttTtEck7i58SGgyeumlKTSSbwnXL.AbYlH6ChqN4w4eMdwEu",
                "$2x$",
            ),
        ] {
            let e = bad(&format!("{ALICE}\n\n{line}\n"));
            assert_eq!(e.line, 3, "{line}");
            assert!(e.message.contains(kind), "{line}: {}", e.message);
            assert!(e.message.contains("bcrypt"), "{}", e.message);
        }
    }

    #[test]
    fn malformed_lines_are_errors() {
        for (text, line, what) in [
            ("alice\n", 1, "user:hash"),
            (":$2y$10$x\n", 1, "empty"),
            ("alice:\n", 1, "empty"),
            ("al ice:$2y$10$x\n", 1, "whitespace"),
            (&format!("{ALICE}\n{ALICE}\n"), 2, "twice"),
            ("a:$2y$10$tooshort\n", 1, "malformed bcrypt"),
            (&format!("{}x\n", ALICE), 1, "malformed bcrypt"),
            ("a:$2y$31$FkS71ttTtEck7i58SGgyeumlKTSSbwnXL.AbYlH6ChqN4w4eMdwEu\n", 1, "cost 31"),
            ("a:$argon2id$v=19$m=4096,t=2,p=1$c2FsdHNhbHQ\n", 1, "no salt or no hash"),
            ("a:$argon2id$garbage\n", 1, "malformed argon2id"),
            (
                "a:$argon2id$v=19$m=4194304,t=1,p=1$ZnVsY3J1bXNhbHRmb3J0ZXN0cw$jeCcmvaT5vG7X29onYGY/4R3TPyBhHJoOnUX4NdRRAo\n",
                1,
                "over the limit",
            ),
        ] {
            let e = bad(text);
            assert_eq!(e.line, line, "{text:?}");
            assert!(e.message.contains(what), "{text:?}: {}", e.message);
        }
    }

    #[test]
    fn comments_and_blank_lines_only_is_no_users() {
        let u = parse("# nobody yet\n\n  \n").unwrap();
        assert!(u.is_empty());
        assert!(!u.verify("x", b"y"));
        assert!(parse("").unwrap().is_empty());
    }
}
