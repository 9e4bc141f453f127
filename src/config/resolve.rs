//! Name resolution for server addresses, shared by validation and the DNS
//! refresher so both see the same answer.
//!
//! `FULCRUM_HOSTS_FILE`, when set, names a hosts-format file (`IP name...` per
//! line) consulted before the system resolver and re-read on every lookup.
//! It lets tests and operators steer membership without touching
//! /etc/hosts or a DNS server.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = match hosts_override(host) {
        Some(ips) => ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
        None => (host, port).to_socket_addrs()?.collect(),
    };
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

fn hosts_override(host: &str) -> Option<Vec<IpAddr>> {
    let path = std::env::var_os("FULCRUM_HOSTS_FILE")?;
    let text = std::fs::read_to_string(path).ok()?;
    let ips: Vec<IpAddr> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let ip: IpAddr = parts.next()?.parse().ok()?;
            parts.any(|n| n.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect();
    // A name the file knows but with no addresses left is an empty answer,
    // not a fall-through to the system resolver.
    (!ips.is_empty()
        || text
            .split_whitespace()
            .any(|w| w.eq_ignore_ascii_case(host)))
    .then_some(ips)
}
