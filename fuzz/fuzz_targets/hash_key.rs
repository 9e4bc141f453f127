//! Hash-key extraction (`hash_key`: header, cookie, query, path, client IP)
//! from hostile requests: never panics, never yields an empty key, and is
//! deterministic.
#![no_main]

use arbitrary::Arbitrary;
use fulcrum::balance::key;
use fulcrum::config::HashKey;
use http::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    kind: u8,
    name: &'a str,
    uri: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
    ip: [u8; 16],
}

fuzz_target!(|input: Input<'_>| {
    let hk = match input.kind % 5 {
        0 => HashKey::ClientIp,
        1 => HashKey::Path,
        2 => match HeaderName::from_bytes(input.name.as_bytes()) {
            Ok(n) => HashKey::Header(n),
            Err(_) => return,
        },
        3 => HashKey::Cookie(input.name.to_string()),
        _ => HashKey::Query(input.name.to_string()),
    };
    let mut req = http::Request::new(());
    if let Ok(uri) = http::Uri::try_from(input.uri) {
        *req.uri_mut() = uri;
    }
    for (n, v) in &input.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            req.headers_mut().append(n, v);
        }
    }
    let (parts, ()) = req.into_parts();
    if let Some(v) = key::extract(&hk, &parts) {
        assert!(!v.is_empty());
    }
    let ip = std::net::IpAddr::from(input.ip);
    let a = key::request_hash(&hk, &parts, ip);
    assert_eq!(a, key::request_hash(&hk, &parts, ip));
    assert_eq!(key::hash_ip(ip), key::hash_ip(ip.to_canonical()));
});
