//! Header rewriting: hop-by-hop removal (both directions), X-Forwarded-*,
//! X-Request-Id. Written to do one pass over the names and allocate only when
//! a value must be built.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::header::{
    HeaderName, HeaderValue, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

pub static PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
pub static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Whether the message asks for an HTTP/1.1 upgrade that Fulcrum tunnels:
/// WebSocket only. Any other protocol (`h2c` above all: a tunnelled h2c
/// connection would carry requests past routing, rate limits and
/// X-Forwarded-*, the "h2c smuggling" class) is not an upgrade to Fulcrum;
/// its `Upgrade` and `Connection` headers are stripped like any hop-by-hop
/// header and the request is forwarded as a plain request, as nginx does.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(UPGRADE).iter();
    let websocket = match (upgrades.next(), upgrades.next()) {
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"),
        _ => false,
    };
    websocket && list_has(headers, &CONNECTION, "upgrade")
}

/// Whether a comma-separated header (any of its lines) lists `token`,
/// case-insensitively (`Connection: upgrade`, `Vary`, `Cache-Control:
/// no-transform`).
pub fn list_has(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

const H_CONNECTION: u8 = 1;
const H_TRANSFER_ENCODING: u8 = 2;
const H_TE: u8 = 4;
const H_TRAILER: u8 = 8;
const H_UPGRADE: u8 = 16;
const H_KEEP_ALIVE: u8 = 32;
const H_PROXY_CONNECTION: u8 = 64;

fn hop_bit(name: &HeaderName) -> u8 {
    if *name == CONNECTION {
        H_CONNECTION
    } else if *name == TRANSFER_ENCODING {
        H_TRANSFER_ENCODING
    } else if *name == TE {
        H_TE
    } else if *name == TRAILER {
        H_TRAILER
    } else if *name == UPGRADE {
        H_UPGRADE
    } else if *name == KEEP_ALIVE {
        H_KEEP_ALIVE
    } else if *name == PROXY_CONNECTION {
        H_PROXY_CONNECTION
    } else {
        0
    }
}

/// Removes hop-by-hop headers. With `keep_upgrade`, `Upgrade` and
/// `Connection: upgrade` survive so the upgrade can be tunnelled.
/// Returns whether any header named in `Connection` was removed (only then
/// can one of Fulcrum's own headers have gone).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> bool {
    // One pass over the names notes which are present, so only those are
    // looked up again (each lookup hashes): most messages carry none, or
    // only `connection: keep-alive`.
    let present = headers.keys().fold(0u8, |p, n| p | hop_bit(n));
    if present == 0 {
        return false;
    }
    let mut removed_named = false;
    if present & H_CONNECTION != 0 {
        // Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1).
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(CONNECTION) {
            let b = v.as_bytes();
            if b.eq_ignore_ascii_case(b"keep-alive") || b.eq_ignore_ascii_case(b"close") {
                continue;
            }
            let Ok(s) = v.to_str() else { continue };
            for t in s.split(',') {
                let t = t.trim();
                if t.is_empty()
                    || t.eq_ignore_ascii_case("keep-alive")
                    || t.eq_ignore_ascii_case("close")
                    || (keep_upgrade && t.eq_ignore_ascii_case("upgrade"))
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                    if n != HOST {
                        named.push(n);
                    }
                }
            }
        }
        removed_named = !named.is_empty();
        for n in named {
            headers.remove(n);
        }
        headers.remove(CONNECTION);
    }
    if present & H_KEEP_ALIVE != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if present & H_PROXY_CONNECTION != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if present & H_TRANSFER_ENCODING != 0 {
        headers.remove(TRANSFER_ENCODING);
    }
    if present & H_TRAILER != 0 {
        headers.remove(TRAILER);
    }
    if present & H_TE != 0 {
        if let Some(te) = headers.get(TE) {
            if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
                headers.remove(TE);
            }
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & H_UPGRADE != 0 {
        headers.remove(UPGRADE);
    }
    removed_named
}

/// Appends `client` to X-Forwarded-For.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    match headers.entry(&X_FORWARDED_FOR) {
        http::header::Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        http::header::Entry::Occupied(mut e) => {
            let prev = e.get();
            let mut v = Vec::with_capacity(prev.len() + 2 + client.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                e.insert(v);
            }
        }
    }
}

/// The request's X-Request-Id, or a new one inserted into `headers`.
pub fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    match headers.entry(&X_REQUEST_ID) {
        http::header::Entry::Occupied(mut e) => {
            let v = e.get();
            if !v.is_empty() && v.len() <= 200 {
                return v.clone();
            }
            let id = new_request_id();
            e.insert(id.clone());
            id
        }
        http::header::Entry::Vacant(e) => e.insert(new_request_id()).clone(),
    }
}

/// A process-unique id: a random per-process prefix and a counter, as hex.
pub fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 33];
    for i in 0..16 {
        buf[i] = HEX[((prefix >> (60 - 4 * i)) & 0xf) as usize];
    }
    buf[16] = b'-';
    for i in 0..16 {
        buf[17 + i] = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    // One allocation that holds the bytes and is shared by clones (the id
    // goes on the request and on the response); `from_bytes` would copy
    // into a buffer whose first clone allocates again.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .expect("hex is a valid header value")
}

/// Sum of the request head's header bytes, as HTTP/1 would send them.
pub fn head_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("gzip"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let with = |up: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                CONNECTION,
                HeaderValue::from_static("Upgrade, HTTP2-Settings"),
            );
            h.insert(UPGRADE, HeaderValue::from_str(up).unwrap());
            wants_upgrade(&h)
        };
        assert!(with("websocket"));
        assert!(with("WebSocket"));
        assert!(!with("h2c"));
        assert!(!with("websocket, h2c"));
        assert!(!with("h2c, websocket"));
        assert!(!with("TLS/1.0"));
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get(TE).unwrap(), "trailers");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let ip = HeaderValue::from_static("10.0.0.1");
        append_forwarded_for(&mut h, &ip);
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1");
        append_forwarded_for(&mut h, &HeaderValue::from_static("127.0.0.1"));
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1, 127.0.0.1");
    }

    #[test]
    fn request_ids_are_unique_and_kept() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 33);
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(request_id(&mut h), "abc");
    }
}
