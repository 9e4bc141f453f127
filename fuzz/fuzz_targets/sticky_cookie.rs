//! The sticky-session cookie parser: `Cookie` header lines to the value of
//! the configured cookie, then to a server id. Never panics; an id that
//! parses is exactly 16 hex digits and round-trips.
#![no_main]

use arbitrary::Arbitrary;
use fulcrum::balance::key::cookie;
use fulcrum::balance::sticky::parse_hex;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    name: &'a str,
    lines: Vec<&'a [u8]>,
}

fuzz_target!(|input: Input<'_>| {
    let mut h = HeaderMap::new();
    for l in &input.lines {
        if let Ok(v) = HeaderValue::from_bytes(l) {
            h.append(http::header::COOKIE, v);
        }
    }
    let found = cookie(&h, input.name);
    // The parser trims ASCII whitespace only (cookie names are RFC 6265 tokens).
    if input.name.as_bytes().trim_ascii().is_empty() {
        assert!(found.is_none(), "a nameless pair matched");
    }
    if let Some(v) = found {
        assert!(!v.contains(&b';'));
        if let Some(id) = parse_hex(v) {
            assert_eq!(v.len(), 16);
            assert!(format!("{id:016x}").eq_ignore_ascii_case(std::str::from_utf8(v).unwrap()));
        }
    }
});
