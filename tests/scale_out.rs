//! Several Fulcrum instances behind DNS or an L4 balancer: two real
//! processes with the same config make the same consistent-hash and ip-hash
//! decisions for the same inputs (ip-hash over the PROXY protocol's source
//! address), also when their configs list the servers in another order.
//! (Sticky cookies agreeing across instances: tests/strategies.rs.)

mod common;
use common::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

fn two_listener_config(order: &[&Backend]) -> String {
    let list = servers(order);
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
proxy_protocol = true

[[route]]
listeners = ["web"]
upstream = "by-user"

[[route]]
listeners = ["edge"]
upstream = "by-ip"

[upstream.by-user]
strategy = "consistent-hash"
hash_key = "header:X-User"
{list}

[upstream.by-ip]
strategy = "ip-hash"
{list}
"#
    )
}

/// The server (body) each of 40 users lands on.
async fn by_user(addr: SocketAddr) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for i in 0..40 {
        let user = format!("user-{i}");
        let body = get_with(addr, "/", &[("x-user", &user)]).await.text();
        out.insert(user, body);
    }
    out
}

/// The server (body) each of 40 client IPs, announced in a PROXY v1
/// header, lands on.
async fn by_ip(addr: SocketAddr) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for i in 0..40u8 {
        let ip = format!("198.51.{}.{}", 100 + i % 3, 10 + i);
        let wire = format!(
            "PROXY TCP4 {ip} 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        );
        let resp = raw(addr, wire.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        out.insert(ip, body);
    }
    out
}

fn spread(m: &BTreeMap<String, String>) -> usize {
    m.values().collect::<std::collections::BTreeSet<_>>().len()
}

#[tokio::test]
async fn two_instances_make_the_same_hash_decisions() {
    let (a, b, c) = (
        Backend::named("a").await,
        Backend::named("b").await,
        Backend::named("c").await,
    );
    let cfg = two_listener_config(&[&a, &b, &c]);
    let f1 = Fulcrum::start(&cfg);
    let f2 = Fulcrum::start(&cfg);
    // A third instance whose config lists the servers in another order (as
    // generated configs or DNS answers may): the Maglev table depends on
    // the set of servers only.
    let f3 = Fulcrum::start(&two_listener_config(&[&c, &a, &b]));

    let users = by_user(f1.addr("web")).await;
    assert_eq!(
        spread(&users),
        3,
        "keys spread over every server: {users:?}"
    );
    assert_eq!(by_user(f2.addr("web")).await, users);
    assert_eq!(by_user(f3.addr("web")).await, users);

    let ips = by_ip(f1.addr("edge")).await;
    assert_eq!(
        spread(&ips),
        3,
        "client IPs spread over every server: {ips:?}"
    );
    assert_eq!(by_ip(f2.addr("edge")).await, ips);
    assert_eq!(by_ip(f3.addr("edge")).await, ips);

    // The backend saw the announced client, not the balancer's address.
    let last_ip = ips.keys().last().unwrap();
    let seen: Vec<String> = [&a, &b, &c]
        .iter()
        .flat_map(|b| b.seen.lock().unwrap().clone())
        .filter_map(|s| {
            s.headers
                .get("x-forwarded-for")
                .map(|v| v.to_str().unwrap().to_string())
        })
        .collect();
    assert!(seen.iter().any(|x| x == last_ip), "{seen:?}");
}
