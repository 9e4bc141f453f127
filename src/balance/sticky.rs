//! Cookie session affinity (`[upstream.X.sticky]`).
//!
//! A server's id is a keyed SipHash-2-4 of (upstream name, address) written
//! as 16 hex digits: opaque (the address can't be read from it), and the same
//! on every Fulcrum with the same config, because the key is fixed. At
//! snapshot build the ids of the up servers are sorted for binary search and
//! each server's `Set-Cookie` value is formatted once, so the request path
//! neither formats nor allocates.

use std::hash::Hasher;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use super::key::cookie;
use crate::backend::ServerState;
use crate::config::StickyConfig;

const KEY: (u64, u64) = (0x6675_6c63_7275_6d2d, 0x7374_6963_6b79_2d31);

/// The opaque id of server `addr` of `upstream`.
pub fn server_id(upstream: &str, addr: SocketAddr) -> u64 {
    let mut h = siphasher::sip::SipHasher24::new_with_keys(KEY.0, KEY.1);
    h.write(upstream.as_bytes());
    h.write_u8(0);
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => h.write(&ip.octets()),
        std::net::IpAddr::V6(ip) => h.write(&ip.octets()),
    }
    h.write(&addr.port().to_be_bytes());
    h.finish()
}

/// `server_id` as it appears in the cookie.
pub fn server_id_hex(upstream: &str, addr: SocketAddr) -> String {
    format!("{:016x}", server_id(upstream, addr))
}

/// A cookie value as a server id: exactly 16 hex digits.
pub fn parse_hex(v: &[u8]) -> Option<u64> {
    // from_str_radix alone would take a sign: "+" and 15 digits (a
    // sticky_cookie fuzz finding).
    if v.len() != 16 || !v.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// The `Set-Cookie` value that pins a client to server `id`.
pub fn set_cookie_value(cfg: &StickyConfig, id: u64) -> String {
    let mut v = format!("{}={id:016x}; Path=/", cfg.cookie);
    if let Some(age) = cfg.max_age {
        v += &format!("; Max-Age={}", age.as_secs().max(1));
    }
    if cfg.http_only {
        v += "; HttpOnly";
    }
    if cfg.secure {
        v += "; Secure";
    }
    v += "; SameSite=";
    v += cfg.same_site;
    v
}

pub struct Sticky {
    cookie: String,
    /// (server id, position in `up`), sorted by id.
    ids: Box<[(u64, u32)]>,
    /// `Set-Cookie` per position in `up`.
    set_cookie: Box<[HeaderValue]>,
}

impl Sticky {
    pub fn new(cfg: &StickyConfig, upstream: &str, up: &[Arc<ServerState>]) -> Sticky {
        let mut ids: Vec<(u64, u32)> = up
            .iter()
            .enumerate()
            .map(|(i, s)| (server_id(upstream, s.addr), i as u32))
            .collect();
        let set_cookie = ids
            .iter()
            .map(|(id, _)| {
                HeaderValue::from_str(&set_cookie_value(cfg, *id))
                    .expect("cookie name and attributes are validated")
            })
            .collect();
        ids.sort_unstable();
        Sticky {
            cookie: cfg.cookie.clone(),
            ids: ids.into_boxed_slice(),
            set_cookie,
        }
    }

    /// The up server (position in `up`) the request's cookie names, if any.
    #[inline]
    pub fn lookup(&self, headers: &HeaderMap) -> Option<usize> {
        let id = parse_hex(cookie(headers, &self.cookie)?)?;
        self.position(id)
    }

    fn position(&self, id: u64) -> Option<usize> {
        let i = self.ids.binary_search_by_key(&id, |(k, _)| *k).ok()?;
        Some(self.ids[i].1 as usize)
    }

    /// The `Set-Cookie` for a response from `server` (an up server of
    /// `upstream`).
    #[inline]
    pub fn set_cookie_for(&self, upstream: &str, server: &ServerState) -> Option<&HeaderValue> {
        let pos = self.position(server_id(upstream, server.addr))?;
        self.set_cookie.get(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn server_ids_are_exactly_16_hex_digits() {
        assert_eq!(parse_hex(b"00112233aabbccdd"), Some(0x0011_2233_aabb_ccdd));
        assert_eq!(parse_hex(b"+BBBBBBB0BBBBBBB"), None);
        assert_eq!(parse_hex(b"-0112233aabbccdd"), None);
        assert_eq!(parse_hex(b"00112233aabbccd"), None);
    }

    #[test]
    fn ids_are_opaque_stable_and_distinct() {
        let a: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let id = server_id_hex("api", a);
        assert_eq!(id.len(), 16);
        assert!(!id.contains("10.0.0.1") && !id.contains("8080"));
        assert_eq!(id, server_id_hex("api", a), "deterministic");
        assert_ne!(id, server_id_hex("api", b));
        assert_ne!(id, server_id_hex("web", a), "keyed by upstream too");
        // pinned: a change would break every client's session on upgrade
        assert_eq!(server_id_hex("api", a), "2de3100707636152");
        assert_eq!(parse_hex(id.as_bytes()), Some(server_id("api", a)));
    }

    #[test]
    fn cookie_attributes() {
        let mut cfg = StickyConfig {
            cookie: "sid".into(),
            max_age: None,
            secure: false,
            http_only: true,
            same_site: "Lax",
        };
        assert_eq!(
            set_cookie_value(&cfg, 0xab),
            "sid=00000000000000ab; Path=/; HttpOnly; SameSite=Lax"
        );
        cfg.max_age = Some(Duration::from_secs(3600));
        cfg.secure = true;
        cfg.http_only = false;
        cfg.same_site = "None";
        assert_eq!(
            set_cookie_value(&cfg, 1),
            "sid=0000000000000001; Path=/; Max-Age=3600; Secure; SameSite=None"
        );
    }
}
