//! `basic_auth` state: the users and a short cache of verified credentials.
//!
//! A bcrypt or argon2id check costs tens of milliseconds of CPU, too much
//! for an async worker thread and too much to pay on every request of a
//! logged-in client. So:
//! - a check runs on tokio's blocking pool (`spawn_blocking`), at most one
//!   per CPU at a time (more would only queue in the kernel instead);
//! - a successful check is remembered for `CACHE_TTL`, keyed by an
//!   HMAC-SHA256 of user and password under a key drawn at random when the
//!   route's policy is built. Neither the password nor an unkeyed hash of
//!   it is kept. A hit costs one HMAC and one map lookup (about a
//!   microsecond). Failed checks are never cached, and a reload (a new
//!   users file) starts with an empty cache.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use http::header::HeaderValue;
use ring::hmac;

use crate::clock::clock_ms;
use crate::config::policy::BasicAuthConfig;
use crate::htpasswd::Users;

/// How long a verified user:password pair is taken without a new check.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// At most this many pairs are remembered per route; when full, expired
/// ones go first, then all of them.
pub const CACHE_MAX: usize = 10_000;

/// Longer credentials are refused unchecked (a bcrypt hash uses only the
/// first 72 bytes of a password anyway).
const MAX_CREDENTIALS: usize = 4096;

pub struct BasicAuth {
    pub realm: String,
    /// `Basic realm="<realm>"`, for every 401.
    pub challenge: HeaderValue,
    users: Arc<Users>,
    cache: Cache,
}

impl BasicAuth {
    pub fn new(config: &BasicAuthConfig) -> BasicAuth {
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\"", config.realm))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"restricted\""));
        BasicAuth {
            realm: config.realm.clone(),
            challenge,
            users: config.users.clone(),
            cache: Cache::new(),
        }
    }

    /// Whether `authorization` (the request's one Authorization header)
    /// carries the credentials of a user of the file: from the cache, or
    /// checked on the blocking pool.
    pub async fn allows(&self, authorization: &HeaderValue) -> bool {
        let Some((user, password)) = credentials(authorization) else {
            return false;
        };
        let key = self.cache.key(&user, &password);
        if self.cache.hit(&key) {
            return true;
        }
        let users = self.users.clone();
        let permit = verify_permits().acquire().await;
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            users.verify(&user, password.as_bytes())
        })
        .await
        .unwrap_or(false);
        if ok {
            self.cache.insert(key);
        }
        ok
    }

    /// Pairs in the cache (tests, status).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// Bounds concurrent checks to the CPU count: a flood of bad passwords
/// queues here instead of starting hundreds of blocking threads.
fn verify_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(n)
    })
}

/// User and password from `Basic <base64(user:password)>` (RFC 7617): the
/// scheme case-insensitive, padding optional, the decoded text UTF-8, split
/// at the first colon. `None` for anything else.
pub fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let v = value.as_bytes();
    if v.len() > MAX_CREDENTIALS * 2 || v.len() < 6 || !v[..5].eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let rest = &v[5..];
    let token = rest.trim_ascii_start();
    if token.len() == rest.len() {
        // "Basicxyz": no space after the scheme.
        return None;
    }
    let decoded = ENGINE.decode(token.trim_ascii_end()).ok()?;
    if decoded.len() > MAX_CREDENTIALS {
        return None;
    }
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

/// Verified pairs: HMAC of the pair → when it stops counting (clock ms).
struct Cache {
    key: hmac::Key,
    entries: RwLock<HashMap<[u8; 32], u64>>,
}

impl Cache {
    fn new() -> Cache {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            // The OS random source failing leaves no safe key: fall back
            // to one from the std hasher's random seed and the clock.
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &fallback_seed()));
        Cache {
            key,
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(user.len() as u64).to_le_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn hit(&self, key: &[u8; 32]) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(key).is_some_and(|until| *until > clock_ms())
    }

    fn insert(&self, key: [u8; 32]) {
        let now = clock_ms();
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_MAX && !entries.contains_key(&key) {
            entries.retain(|_, until| *until > now);
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(key, now + CACHE_TTL.as_millis() as u64);
    }

    fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn fallback_seed() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn basic(raw: &[u8]) -> HeaderValue {
        hv(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
    }

    #[test]
    fn credentials_from_well_formed_headers() {
        let c = |v: HeaderValue| credentials(&v).map(|(u, p)| format!("{u}|{p}"));
        // RFC 7617's example.
        assert_eq!(
            c(hv("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")).as_deref(),
            Some("Aladdin|open sesame")
        );
        assert_eq!(
            c(hv("basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")).as_deref(),
            Some("Aladdin|open sesame")
        );
        assert_eq!(
            c(hv("BASIC   QWxhZGRpbjpvcGVuIHNlc2FtZQ== ")).as_deref(),
            Some("Aladdin|open sesame")
        );
        // Padding may be left off.
        assert_eq!(
            c(hv("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ")).as_deref(),
            Some("Aladdin|open sesame")
        );
        // The password may contain colons, or be empty; UTF-8 is fine.
        assert_eq!(c(basic(b"u:a:b:c")).as_deref(), Some("u|a:b:c"));
        assert_eq!(c(basic(b"u:")).as_deref(), Some("u|"));
        assert_eq!(
            c(basic("jürgen:pässword".as_bytes())).as_deref(),
            Some("jürgen|pässword")
        );
    }

    #[test]
    fn malformed_headers_are_no_credentials() {
        for v in [
            hv("Basic"),
            hv("Basic "),
            hv("Basic !!!!"),
            hv("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=x"),
            hv("BasicQWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            hv("Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            hv("Digest username=\"a\""),
            hv(""),
            basic(b"no colon"),
            basic(b":password only"),
            basic(b"\xff\xfe:bad utf8"),
            basic(&[b'a'; MAX_CREDENTIALS + 1]),
            HeaderValue::from_bytes(b"Basic \xc3\xa4\xc3\xa4").unwrap(),
        ] {
            assert!(credentials(&v).is_none(), "{v:?}");
        }
    }

    #[test]
    fn cache_keys_are_keyed_and_unambiguous() {
        let a = Cache::new();
        let b = Cache::new();
        assert_eq!(a.key("ab", "c"), a.key("ab", "c"));
        assert_ne!(a.key("ab", "c"), a.key("a", "bc"));
        assert_ne!(a.key("ab", "c"), b.key("ab", "c"), "a random key per cache");
        let k = a.key("u", "p");
        assert!(!a.hit(&k));
        a.insert(k);
        assert!(a.hit(&k));
        assert!(!a.hit(&a.key("u", "q")));
    }

    #[test]
    fn cache_stays_bounded() {
        let c = Cache::new();
        for i in 0..CACHE_MAX + 10 {
            c.insert(c.key("u", &i.to_string()));
        }
        assert!(c.len() <= CACHE_MAX, "{}", c.len());
    }

    fn auth() -> BasicAuth {
        // htpasswd -nbB -C 5 carol 's3cret:with:colons'
        let users = crate::htpasswd::parse(
            "carol:$2y$05$RJQgsnJWtRzr/VRq0AAcQuWvRPTXuAGEs4EnvDpGtZD45LVTqNVya\n",
        )
        .unwrap();
        BasicAuth::new(&BasicAuthConfig {
            realm: "ops".into(),
            users_file: "ops.htpasswd".into(),
            users: Arc::new(users),
        })
    }

    #[tokio::test]
    async fn only_successful_checks_are_cached() {
        let a = auth();
        assert_eq!(a.challenge, "Basic realm=\"ops\"");
        assert!(!a.allows(&basic(b"carol:wrong")).await);
        assert!(!a.allows(&basic(b"mallory:s3cret:with:colons")).await);
        assert_eq!(a.cached(), 0, "failures are not cached");
        assert!(a.allows(&basic(b"carol:s3cret:with:colons")).await);
        assert_eq!(a.cached(), 1);
        assert!(a.allows(&basic(b"carol:s3cret:with:colons")).await);
        assert_eq!(a.cached(), 1);
        assert!(!a.allows(&basic(b"carol:s3cret:with:colon")).await);
    }
}
