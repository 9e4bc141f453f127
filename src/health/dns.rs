//! DNS membership: servers written as names are re-resolved every
//! `resolve_interval`; records that appear join, records that vanish leave
//! (and drain), without a reload. Failures keep the last good set.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::resolve::resolve;
use crate::config::{Config, ServerConfig};

/// Re-resolves the DNS-named servers of the upstreams whose interval is due
/// (`due(upstream_name, interval)`); returns a config with the new membership
/// when any changed.
pub async fn refresh(config: &Config, due: impl Fn(&str, Duration) -> bool) -> Option<Config> {
    let mut changed = false;
    let mut next = config.clone();
    for u in &mut next.upstreams {
        if !u.servers.iter().any(|s| s.dns_name().is_some()) || !due(&u.name, u.resolve_interval) {
            continue;
        }
        let mut servers: Vec<ServerConfig> = Vec::new();
        // Entries in the order written; a name keeps its old set on failure.
        let mut seen_names: Vec<String> = Vec::new();
        for s in &u.servers {
            match s.dns_name() {
                None => push(&mut servers, s.clone()),
                Some((host, port)) => {
                    if seen_names.contains(&s.configured_as) {
                        continue;
                    }
                    seen_names.push(s.configured_as.clone());
                    let (h, written) = (host.to_string(), s.configured_as.clone());
                    let looked = tokio::task::spawn_blocking(move || resolve(&h, port)).await;
                    match looked {
                        Ok(Ok(addrs)) if !addrs.is_empty() => {
                            for a in addrs {
                                push(
                                    &mut servers,
                                    ServerConfig {
                                        address: a,
                                        weight: s.weight,
                                        configured_as: written.clone(),
                                    },
                                );
                            }
                        }
                        other => {
                            let why = match other {
                                Ok(Ok(_)) => "no addresses".to_string(),
                                Ok(Err(e)) => e.to_string(),
                                Err(e) => e.to_string(),
                            };
                            tracing::warn!(upstream = %u.name, name = %written, error = %why, "DNS resolution failed; keeping the last good addresses");
                            for old in u.servers.iter().filter(|o| o.configured_as == written) {
                                push(&mut servers, old.clone());
                            }
                        }
                    }
                }
            }
        }
        let before: Vec<SocketAddr> = u.servers.iter().map(|s| s.address).collect();
        let after: Vec<SocketAddr> = servers.iter().map(|s| s.address).collect();
        if before != after {
            tracing::info!(upstream = %u.name, before = ?before, after = ?after, "DNS membership changed");
            u.servers = servers;
            changed = true;
        }
    }
    changed.then_some(next)
}

fn push(servers: &mut Vec<ServerConfig>, s: ServerConfig) {
    if !servers.iter().any(|o| o.address == s.address) {
        servers.push(s);
    }
}
