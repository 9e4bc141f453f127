//! The request key that `consistent-hash` and `ip-hash` hash (`hash_key`).
//! Reads the request in place: no allocation.

use std::hash::Hasher;
use std::net::IpAddr;

use http::header::COOKIE;
use http::request::Parts;

use crate::config::HashKey;

fn hasher() -> siphasher::sip::SipHasher13 {
    siphasher::sip::SipHasher13::new_with_keys(0x6675_6c63_7275_6d00, 0x6b65_7900)
}

/// Hash of a client IP (an IPv4-mapped IPv6 address hashes as the IPv4 one).
#[inline]
pub fn hash_ip(ip: IpAddr) -> u64 {
    let mut h = hasher();
    match ip.to_canonical() {
        IpAddr::V4(v4) => h.write(&v4.octets()),
        IpAddr::V6(v6) => h.write(&v6.octets()),
    }
    h.finish()
}

/// Hash of arbitrary key bytes.
#[inline]
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = hasher();
    h.write(b);
    // Keep the client-IP and byte-key spaces apart.
    h.write_u8(0xff);
    h.finish()
}

/// The value `key` names in the request, if present and non-empty.
pub fn extract<'a>(key: &HashKey, parts: &'a Parts) -> Option<&'a [u8]> {
    let v: &[u8] = match key {
        HashKey::ClientIp => return None,
        HashKey::Path => parts.uri.path().as_bytes(),
        HashKey::Header(name) => parts.headers.get(name)?.as_bytes(),
        HashKey::Cookie(name) => cookie(&parts.headers, name)?,
        HashKey::Query(name) => query(parts.uri.query()?, name)?,
    };
    (!v.is_empty()).then_some(v)
}

/// The request's key hash: the `hash_key` value, or the client IP when the
/// request doesn't carry it.
#[inline]
pub fn request_hash(key: &HashKey, parts: &Parts, client_ip: IpAddr) -> u64 {
    match extract(key, parts) {
        Some(v) => hash_bytes(v),
        None => hash_ip(client_ip),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let n = pair[..eq].trim_ascii();
            // A nameless pair (`=x`) is no cookie, whatever name is asked for.
            (!n.is_empty() && n == name.as_bytes()).then(|| {
                let v = pair[eq + 1..].trim_ascii();
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v)
            })
        })
    })
}

/// The raw (not percent-decoded) value of query parameter `name`.
fn query<'a>(q: &'a str, name: &str) -> Option<&'a [u8]> {
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameless_cookie_pair_never_matches() {
        // Found by the sticky_cookie fuzz target.
        let p = parts("/", &[("cookie", "   = \"  \"  ; =x")]);
        assert_eq!(cookie(&p.headers, ""), None);
        let p = parts("/", &[("cookie", "=x; sid=1")]);
        assert_eq!(cookie(&p.headers, "sid"), Some(&b"1"[..]));
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn extracts_each_kind() {
        let p = parts(
            "/a/b?x=1&user=42&y",
            &[
                ("x-user", "bob"),
                ("cookie", "a=1; sid=\"s1\""),
                ("cookie", "c=3"),
            ],
        );
        let hk = |s: &str| match s.split_once(':') {
            Some(("header", n)) => {
                HashKey::Header(http::HeaderName::from_bytes(n.as_bytes()).unwrap())
            }
            Some(("cookie", n)) => HashKey::Cookie(n.into()),
            Some(("query", n)) => HashKey::Query(n.into()),
            _ => HashKey::Path,
        };
        assert_eq!(extract(&hk("header:X-User"), &p), Some(&b"bob"[..]));
        assert_eq!(extract(&hk("cookie:sid"), &p), Some(&b"s1"[..]));
        assert_eq!(extract(&hk("cookie:c"), &p), Some(&b"3"[..]));
        assert_eq!(extract(&hk("query:user"), &p), Some(&b"42"[..]));
        assert_eq!(extract(&hk("query:y"), &p), None, "empty value falls back");
        assert_eq!(extract(&hk("path"), &p), Some(&b"/a/b"[..]));
        assert_eq!(extract(&hk("cookie:none"), &p), None);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(request_hash(&hk("cookie:none"), &p, ip), hash_ip(ip));
        assert_eq!(hash_ip(ip), hash_ip("::ffff:10.1.2.3".parse().unwrap()));
        assert_ne!(request_hash(&hk("query:user"), &p, ip), hash_ip(ip));
    }
}
