//! The request-header code on hostile input: hop-by-hop stripping,
//! X-Forwarded-For appending, X-Request-Id, the framing/Host checks and the
//! trusted-proxy client IP. Checks invariants, not just absence of panics.
#![no_main]

use arbitrary::Arbitrary;
use fulcrum::config::Cidr;
use fulcrum::proxy::{client_ip, headers, validate};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    uri: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
    peer: [u8; 4],
    trusted: Vec<([u8; 4], u8)>,
    keep_upgrade: bool,
}

const HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "trailer",
    "upgrade",
    "te",
];

fuzz_target!(|input: Input<'_>| {
    let mut map = HeaderMap::new();
    for (n, v) in &input.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            map.append(n, v);
        }
    }
    let peer = std::net::IpAddr::from(input.peer);
    let trusted: Vec<Cidr> = input
        .trusted
        .iter()
        .map(|(a, p)| Cidr {
            addr: std::net::IpAddr::from(*a),
            prefix: p % 33,
        })
        .collect();
    let client = client_ip::effective(peer, &map, &trusted);
    if !trusted.iter().any(|c| c.contains(peer)) {
        assert_eq!(client, peer, "an untrusted peer is the client");
    }

    let mut req = http::Request::new(());
    if let Ok(uri) = http::Uri::try_from(input.uri) {
        *req.uri_mut() = uri;
    }
    *req.headers_mut() = map.clone();
    let _ = validate::check(&req);

    let _ = headers::wants_upgrade(&map);
    let _ = headers::head_size(&map);
    let named_in_connection: Vec<HeaderName> = map
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let mut h = map.clone();
    headers::strip_hop_by_hop(&mut h, input.keep_upgrade);
    for name in HOP {
        match name {
            "te" => assert!(h
                .get_all(name)
                .iter()
                .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))),
            "upgrade" if input.keep_upgrade => {}
            "connection" if input.keep_upgrade => {
                assert!(h.get_all(name).iter().all(|v| v == "upgrade"))
            }
            _ => assert!(!h.contains_key(name), "{name} survived: {h:?}"),
        }
    }
    for n in named_in_connection {
        // `close` is the connection option itself, not a header name.
        let keep = n == http::header::HOST
            || n.as_str() == "close"
            || n == http::header::CONNECTION
            || (input.keep_upgrade && n == http::header::UPGRADE)
            || (n == http::header::TE && h.get(&n).is_some_and(|v| v == "trailers"));
        if !keep {
            assert!(!h.contains_key(&n), "{n} named in Connection survived");
        }
    }

    let ip = HeaderValue::from_str(&client.to_string()).unwrap();
    headers::append_forwarded_for(&mut h, &ip);
    let xff = h.get(&headers::X_FORWARDED_FOR).expect("XFF set");
    assert!(xff.as_bytes().ends_with(ip.as_bytes()));
    let id = headers::request_id(&mut h);
    assert!(!id.is_empty() && id.len() <= 200);
});
