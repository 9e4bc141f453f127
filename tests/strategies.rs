//! Strategies through the real proxy: load-aware strategies avoid a slow
//! server, hashing is stable per key, sticky cookies pin and re-pin.

mod common;
use common::*;

use std::time::Duration;

use fulcrum::balance::sticky::server_id_hex;

async fn slow_share(strategy: &str) -> (usize, usize) {
    let fast = Backend::named("fast").await;
    let slow = slow_backend("slow", Duration::from_millis(150)).await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"{strategy}\"\n{}\n",
        servers(&[&fast, &slow])
    )));
    let bodies = load(f.addr("web"), 12, 15).await;
    assert!(
        bodies.iter().all(|b| b == "fast" || b == "slow"),
        "{bodies:?}"
    );
    let slow_n = bodies.iter().filter(|b| *b == "slow").count();
    (slow_n, bodies.len())
}

/// The baseline the three tests below beat: round-robin sends half.
#[tokio::test]
async fn round_robin_baseline_sends_half_to_the_slow_server() {
    let (slow, total) = slow_share("round-robin").await;
    assert!(slow * 5 >= total * 2, "slow got {slow} of {total}");
}

#[tokio::test]
async fn least_connections_avoids_a_slow_server() {
    let (slow, total) = slow_share("least-connections").await;
    assert!(slow * 5 < total, "slow got {slow} of {total}");
}

#[tokio::test]
async fn power_of_two_avoids_a_slow_server() {
    let (slow, total) = slow_share("power-of-two").await;
    assert!(slow * 5 < total, "slow got {slow} of {total}");
}

#[tokio::test]
async fn peak_ewma_avoids_a_slow_server() {
    let (slow, total) = slow_share("peak-ewma").await;
    assert!(slow * 5 < total, "slow got {slow} of {total}");
}

#[tokio::test]
async fn consistent_hash_is_stable_per_key_with_client_ip_fallback() {
    let (a, b, c) = (
        Backend::named("a").await,
        Backend::named("b").await,
        Backend::named("c").await,
    );
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"consistent-hash\"\nhash_key = \"header:X-User\"\n{}\n",
        servers(&[&a, &b, &c])
    )));
    let addr = f.addr("web");
    let mut seen = std::collections::HashSet::new();
    for user in 0..24 {
        let u = format!("user-{user}");
        let first = get_with(addr, "/", &[("x-user", &u)]).await.text();
        for _ in 0..3 {
            assert_eq!(
                get_with(addr, "/x", &[("x-user", &u)]).await.text(),
                first,
                "{u}"
            );
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "24 keys spread over all servers: {seen:?}");
    // no header: the client IP (always 127.0.0.1 here) is the key
    let ip = get(addr, "/").await.text();
    for _ in 0..5 {
        assert_eq!(get(addr, "/").await.text(), ip);
    }
}

#[tokio::test]
async fn ip_hash_pins_a_client_and_config_is_checked() {
    let (a, b, c) = (
        Backend::named("a").await,
        Backend::named("b").await,
        Backend::named("c").await,
    );
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"ip-hash\"\nhash_balance_factor = 1.5\n{}\n",
        servers(&[&a, &b, &c])
    )));
    let bodies = load(f.addr("web"), 1, 20).await;
    assert!(bodies.iter().all(|x| *x == bodies[0]), "{bodies:?}");
    // a reload with a hash_key on ip-hash is refused with file/line/key
    let line = f.reload(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"ip-hash\"\nhash_key = \"path\"\n{}\n",
        servers(&[&a, &b, &c])
    )));
    assert!(line.contains("config reload failed"), "{line}");
    assert!(f.logs().contains("upstream.u.hash_key"), "{}", f.logs());
}

fn cookie_of(r: &Reply) -> Option<String> {
    let v = r.header("set-cookie")?;
    let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
    assert_eq!(
        attrs.trim(),
        "Path=/; Max-Age=3600; HttpOnly; SameSite=Lax",
        "{v}"
    );
    Some(
        pair.strip_prefix("sid=")
            .expect("cookie name from config")
            .to_string(),
    )
}

#[tokio::test]
async fn sticky_cookie_pins_repins_and_agrees_across_instances() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    // a server that refuses connections: "down" as far as traffic can tell
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let sticky = "[upstream.u.sticky]\ncookie = \"sid\"\nmax_age = \"1h\"\n";
    let cfg = config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"round-robin\"\nretries = 1\nservers = [{{ address = \"{}\" }}, {{ address = \"{}\" }}, {{ address = \"{dead}\" }}]\n{sticky}",
        a.addr, b.addr
    ));
    let f = Fulcrum::start(&cfg);
    let addr = f.addr("web");
    let id = |addr: std::net::SocketAddr| server_id_hex("u", addr);

    // no cookie: the strategy picks, the response pins
    let r = get(addr, "/").await;
    let name = r.text();
    let (pinned, other) = if name == "a" { (&a, &b) } else { (&b, &a) };
    let token = cookie_of(&r).expect("first response sets the cookie");
    assert_eq!(token, id(pinned.addr));
    assert!(!token.contains("127.0.0.1") && !token.contains(&pinned.addr.port().to_string()));

    // with the cookie: same server every time, and no new Set-Cookie
    for _ in 0..6 {
        let r = get_with(addr, "/", &[("cookie", &format!("x=1; sid={token}"))]).await;
        assert_eq!(r.text(), name);
        assert_eq!(r.header("set-cookie"), None);
    }

    // another instance with the same config agrees on the ids
    let g = Fulcrum::start(&cfg);
    let r = get_with(g.addr("web"), "/", &[("cookie", &format!("sid={token}"))]).await;
    assert_eq!((r.text(), r.header("set-cookie")), (name.clone(), None));

    // a cookie for a server that is down: another one answers and re-pins
    let r = get_with(addr, "/", &[("cookie", &format!("sid={}", id(dead)))]).await;
    assert_eq!(r.status, 200);
    let new = cookie_of(&r).expect("re-pinned");
    assert!(new == id(a.addr) || new == id(b.addr), "{new}");
    assert_eq!(new, id(if r.text() == "a" { a.addr } else { b.addr }));

    // an unknown or garbled cookie: re-pinned too
    let r = get_with(addr, "/", &[("cookie", "sid=0123456789abcdef")]).await;
    assert!(cookie_of(&r).is_some());
    let r = get_with(addr, "/", &[("cookie", "sid=10.0.0.1:80")]).await;
    assert!(cookie_of(&r).is_some());

    // the pinned server leaves the config: its clients move and are re-pinned
    let line = f.reload(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\n{}\n{sticky}",
        servers(&[other])
    )));
    assert!(line.contains("config reloaded"), "{line}");
    let r = get_with(addr, "/", &[("cookie", &format!("sid={token}"))]).await;
    assert_eq!(r.text(), if name == "a" { "b" } else { "a" });
    assert_eq!(cookie_of(&r), Some(id(other.addr)));
}

#[tokio::test]
async fn sticky_server_marked_down_by_health_checks_repins() {
    let (a, healthy) = toggled_backend("a").await;
    let b = Backend::named("b").await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\n{}\n[upstream.u.sticky]\ncookie = \"sid\"\nmax_age = \"1h\"\n\
         [upstream.u.health_check]\ninterval = \"100ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\njitter = \"0%\"\n",
        servers(&[&a, &b])
    )));
    let token = server_id_hex("u", a.addr);
    let cookie = format!("sid={token}");
    let r = get_with(f.addr("web"), "/", &[("cookie", &cookie)]).await;
    assert_eq!((r.text().as_str(), r.header("set-cookie")), ("a", None));
    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(
        std::time::Duration::from_secs(5),
        "a marked down",
        || async { server_state(&f, "u", a.addr).await == "down" },
    )
    .await;
    let r = get_with(f.addr("web"), "/", &[("cookie", &cookie)]).await;
    assert_eq!(r.text(), "b", "a down server's clients move");
    assert_eq!(
        cookie_of(&r),
        Some(server_id_hex("u", b.addr)),
        "and are re-pinned"
    );
}

#[tokio::test]
async fn slow_start_ramps_a_server_that_comes_back_up() {
    use std::sync::atomic::Ordering;
    let (a, healthy) = toggled_backend("a").await;
    let b = Backend::named("b").await;
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"round-robin\"\nslow_start = \"20s\"\n{}\n\
         [upstream.u.health_check]\ninterval = \"100ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\njitter = \"0%\"\n",
        servers(&[&a, &b])
    )));
    // present at start: full weight, an even split
    let even = load(f.addr("web"), 1, 40).await;
    assert_eq!(even.iter().filter(|x| *x == "a").count(), 20);
    healthy.store(false, Ordering::SeqCst);
    eventually(std::time::Duration::from_secs(5), "a down", || async {
        server_state(&f, "u", a.addr).await == "down"
    })
    .await;
    healthy.store(true, Ordering::SeqCst);
    eventually(std::time::Duration::from_secs(5), "a up again", || async {
        server_state(&f, "u", a.addr).await == "up"
    })
    .await;
    // just back: ~10% of its weight, far below its even share
    let ramping = load(f.addr("web"), 1, 200).await;
    let to_a = ramping.iter().filter(|x| *x == "a").count();
    assert!(
        (1..=60).contains(&to_a),
        "a got {to_a} of 200 right after coming back (even share: 100)"
    );
}
