//! The effective client IP of a request (`trusted_proxies`).
//!
//! The client is the connection's peer (or its PROXY-protocol source), unless
//! that peer is in `trusted_proxies`: then X-Forwarded-For is read from the
//! right, skipping trusted addresses, and the first untrusted address is the
//! client. This is nginx's `real_ip_recursive on` and HAProxy's
//! `trusted-proxies` rule. Anything a client could have written itself (the
//! left part of XFF, anything left of a malformed entry) is never believed.
//! The result feeds hashing, rate limiting and logs; the X-Forwarded-For sent
//! upstream is still the incoming value with the peer appended.

use std::net::IpAddr;

use http::HeaderMap;

use super::headers::X_FORWARDED_FOR;
use crate::config::Cidr;

/// The client IP for `peer` given the request's headers and the listener's
/// trusted proxies. Allocation-free; returns `peer` at once when nothing is
/// trusted.
pub fn effective(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    // Walk the hops right to left: the last XFF line first, each line's
    // entries from its end. `client` is the nearest hop vouched for so far.
    let mut client = peer;
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(s) = line.to_str() else {
            return client;
        };
        for entry in s.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(entry) else {
                // A hop we trust passed on garbage: believe nothing left of it.
                return client;
            };
            if !is_trusted(ip, trusted) {
                return ip;
            }
            client = ip;
        }
    }
    // Every hop is trusted: the leftmost one is the client.
    client
}

fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// One X-Forwarded-For entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or
/// `[2001:db8::1]:5678`. An IPv4-mapped IPv6 address becomes IPv4.
pub fn parse_entry(s: &str) -> Option<IpAddr> {
    let ip = if let Some(rest) = s.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']')?;
        if !(tail.is_empty() || tail.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        IpAddr::V6(addr.parse().ok()?)
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else {
        let (addr, port) = s.rsplit_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(addr.parse().ok()?)
    };
    Some(ip.to_canonical())
}

fn is_port(p: &str) -> bool {
    p.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cidr(s: &str) -> Cidr {
        let (a, p) = s.split_once('/').unwrap();
        Cidr {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let t = [cidr("10.0.0.0/8")];
        assert_eq!(
            effective(ip("192.0.2.1"), &xff(&["1.1.1.1"]), &t),
            ip("192.0.2.1")
        );
        assert_eq!(
            effective(ip("10.0.0.1"), &xff(&["1.1.1.1"]), &[]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn rightmost_untrusted_entry_wins() {
        let t = [cidr("10.0.0.0/8")];
        let h = xff(&["6.6.6.6, 1.1.1.1", "10.0.0.7"]);
        assert_eq!(effective(ip("10.0.0.1"), &h, &t), ip("1.1.1.1"));
        // A spoofed entry left of the real client is ignored.
        let h = xff(&["6.6.6.6, 1.1.1.1, 10.0.0.2"]);
        assert_eq!(effective(ip("10.0.0.1"), &h, &t), ip("1.1.1.1"));
    }

    #[test]
    fn no_xff_or_all_trusted_or_garbage() {
        let t = [cidr("10.0.0.0/8")];
        assert_eq!(
            effective(ip("10.0.0.1"), &HeaderMap::new(), &t),
            ip("10.0.0.1")
        );
        assert_eq!(
            effective(ip("10.0.0.1"), &xff(&["10.0.0.3, 10.0.0.2"]), &t),
            ip("10.0.0.3")
        );
        assert_eq!(
            effective(ip("10.0.0.1"), &xff(&["1.1.1.1, bogus, 10.0.0.2"]), &t),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn entry_forms() {
        assert_eq!(parse_entry("1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_entry("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_entry("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_entry("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_entry("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_entry("::ffff:1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_entry("unknown"), None);
        assert_eq!(parse_entry("1.2.3.4:x"), None);
        assert_eq!(parse_entry("[::1]x"), None);
    }
}
