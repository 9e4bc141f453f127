//! `rate_limit` on routes and `trusted_proxies`: the effective client IP
//! (peer, or the rightmost untrusted X-Forwarded-For address behind a
//! trusted proxy) keys rate limits and hashing and is what the access log
//! shows; over the limit is 429 with Retry-After, counted, and the limiter
//! survives a reload that keeps the route's limit.

mod common;
use common::*;

/// One listener "web" with `listener` extra keys, then `rest`.
fn cfg(listener: &str, rest: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[global]\naccess_log = true\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n{listener}\n\n{rest}"
    )
}

fn limited(b: &Backend, limit: &str) -> String {
    format!(
        "[[route]]\npath_prefix = \"/limited\"\nupstream = \"u\"\nrate_limit = {limit}\n\n[[route]]\nupstream = \"u\"\n\n[upstream.u]\n{}\n",
        servers(&[b])
    )
}

async fn from(f: &Fulcrum, path: &str, client: &str) -> Reply {
    get_with(f.addr("web"), path, &[("x-forwarded-for", client)]).await
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_per_client_ip() {
    let b = Backend::named("ok").await;
    let toml = cfg(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        &limited(&b, "{ requests_per_second = 0.2, burst = 3 }"),
    );
    let f = Fulcrum::start(&toml);
    for _ in 0..3 {
        assert_eq!(from(&f, "/limited", "203.0.113.1").await.status, 200);
    }
    let r = from(&f, "/limited", "203.0.113.1").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.text(), "too many requests\n");
    // One request every 5 s: the next one is due in 5 s.
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((4..=5).contains(&after), "Retry-After {after}");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(b.hits(), 3, "a limited request never reaches the server");

    // Another client (another XFF address behind the trusted proxy) has its
    // own bucket; a route without a limit is not limited.
    assert_eq!(from(&f, "/limited", "203.0.113.2").await.status, 200);
    assert_eq!(from(&f, "/other", "203.0.113.1").await.status, 200);
    // A spoofed entry left of the real client changes nothing.
    assert_eq!(
        from(&f, "/limited", "198.51.100.9, 203.0.113.1")
            .await
            .status,
        429
    );

    let m = scrape(&f).await;
    assert_eq!(
        metric(
            &m,
            "fulcrum_rate_limited_total",
            &[("listener", "web"), ("upstream", "u")]
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "fulcrum_requests_total",
            &[("listener", "web"), ("upstream", "u"), ("code", "429")]
        ),
        Some(2.0)
    );

    // A reload that keeps the route's limit keeps every client's bucket...
    let reloaded = toml.replace("[upstream.u]\n", "[upstream.u]\nretries = 0\n");
    assert!(f.reload(&reloaded).contains("config reloaded"));
    assert_eq!(from(&f, "/limited", "203.0.113.1").await.status, 429);
    // ...a changed limit starts fresh.
    assert!(f
        .reload(&reloaded.replace("burst = 3", "burst = 4"))
        .contains("config reloaded"));
    assert_eq!(from(&f, "/limited", "203.0.113.1").await.status, 200);
}

#[tokio::test]
async fn untrusted_peer_cannot_pick_its_rate_limit_key() {
    let b = Backend::named("ok").await;
    let f = Fulcrum::start(&cfg(
        "",
        &limited(&b, "{ requests_per_second = 0.1, burst = 2 }"),
    ));
    // Each request claims a new address; without trusted_proxies the peer
    // (127.0.0.1) is the key, so the third is limited.
    assert_eq!(from(&f, "/limited", "192.0.2.1").await.status, 200);
    assert_eq!(from(&f, "/limited", "192.0.2.2").await.status, 200);
    let r = from(&f, "/limited", "192.0.2.3").await;
    assert_eq!(r.status, 429);
    // The access log names the peer, not the claimed address.
    f.wait_log("status=429", std::time::Duration::from_secs(5));
    let logs = f.logs();
    let line = logs.lines().find(|l| l.contains("status=429")).unwrap();
    assert!(line.contains("client=127.0.0.1"), "{line}");
}

#[tokio::test]
async fn trusted_xff_is_the_client_for_hashing_logs_and_forwarding() {
    let backends = [
        Backend::named("a").await,
        Backend::named("b").await,
        Backend::named("c").await,
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let rest = format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"ip-hash\"\n{}\n",
        servers(&refs)
    );
    // Trusted: the XFF client picks the server, consistently.
    let f = Fulcrum::start(&cfg(
        "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]",
        &rest,
    ));
    let mut served = std::collections::HashSet::new();
    for i in 0..24 {
        let client = format!("198.51.100.{i}");
        let first = from(&f, "/", &client).await.text();
        // The same client, now via a second (trusted) proxy hop, and with a
        // spoofed entry in front: same server.
        let again = from(&f, "/", &format!("6.6.6.6, {client}, 10.1.2.3"))
            .await
            .text();
        assert_eq!(first, again, "client {client}");
        served.insert(first);
    }
    assert!(
        served.len() > 1,
        "hashing ignored the trusted XFF: {served:?}"
    );
    // X-Forwarded-For upstream: the incoming value with the peer appended.
    assert_eq!(from(&f, "/", "198.51.100.7").await.status, 200);
    let seen: Vec<String> = backends
        .iter()
        .flat_map(|b| b.seen.lock().unwrap().clone())
        .filter_map(|s| {
            s.headers
                .get("x-forwarded-for")
                .map(|v| v.to_str().unwrap().to_string())
        })
        .collect();
    assert!(
        seen.iter().any(|x| x == "198.51.100.7, 127.0.0.1"),
        "{seen:?}"
    );
    f.wait_log("client=198.51.100.7", std::time::Duration::from_secs(5));

    // Untrusted: XFF is ignored, every request is the peer's, one server.
    let f2 = Fulcrum::start(&cfg("", &rest));
    let mut served = std::collections::HashSet::new();
    for i in 0..12 {
        served.insert(from(&f2, "/", &format!("198.51.100.{i}")).await.text());
    }
    assert_eq!(
        served.len(),
        1,
        "an untrusted XFF moved the hash: {served:?}"
    );
}
