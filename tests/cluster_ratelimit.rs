//! `scope = "cluster"` rate limits through a real `redis-server` (Debian's
//! package) that each test starts on a free loopback port with persistence
//! off and stops by PID: one budget across instances, keys with prefix and
//! expiry, every `on_error` mode through an outage and a hang, recovery,
//! and awkward input (IPv6 clients, odd route names, 10,000 clients).

mod common;
use common::*;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use redis::aio::MultiplexedConnection;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `redis-server` child on 127.0.0.1:`port`, killed on drop.
struct Redis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// Starts on `port` and returns once it answers PING.
    fn start_on(port: u16) -> Redis {
        let r = Redis::spawn(port, &["--port", &port.to_string()], temp_dir());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.pings() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// TLS only, with a certificate for "localhost" from `ca`; returns once
    /// the port accepts connections (Redis binds it when ready).
    fn start_tls(ca: &TestCa) -> Redis {
        let port = free_port();
        let dir = temp_dir();
        write_leaf(&dir, "redis", &ca.leaf(&["localhost"]));
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let file = |f: &str| dir.join(f).to_str().unwrap().to_string();
        let (cert, key, ca) = (file("redis.pem"), file("redis.key"), file("ca.pem"));
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ];
        let r = Redis::spawn(port, &args, dir);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn spawn(port: u16, args: &[&str], dir: std::path::PathBuf) -> Redis {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        Redis { child, port, dir }
    }

    fn pings(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn conn(&self) -> MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} redis failed");
    }

    /// SIGKILL and wait: the port is free again afterwards.
    fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn cmd<T: redis::FromRedisValue>(c: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await.unwrap()
}

/// One listener "web" trusting 127.0.0.0/8 for X-Forwarded-For, a route
/// "api" limited by `limit`, and `cluster` (a `[cluster]` table or "").
fn cfg(b: &Backend, cluster: &str, route_name: &str, limit: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n{cluster}\n\n[[route]]\nname = \"{route_name}\"\nupstream = \"u\"\nrate_limit = {limit}\n\n[upstream.u]\n{}\n",
        servers(&[b])
    )
}

fn cluster_table(r: &Redis, extra: &str) -> String {
    format!("[cluster]\nredis = \"{}\"\n{extra}\n", r.url())
}

/// A GET for a keep-alive `Client`, from `client` behind the trusted proxy.
fn xff(client: &str) -> Request<BoxBody> {
    Request::get("/")
        .header("host", "example.test")
        .header("x-forwarded-for", client)
        .body(full(""))
        .unwrap()
}

async fn from(addr: SocketAddr, client: &str) -> Reply {
    get_with(addr, "/", &[("x-forwarded-for", client)]).await
}

/// Waits until `f` reports `fulcrum_cluster_up` = `v`.
async fn cluster_up(f: &Fulcrum, v: f64) {
    wait_metric(f, "fulcrum_cluster_up", &[], |x| x == v).await;
}

#[tokio::test]
async fn two_instances_share_one_budget_and_instance_scope_gives_two() {
    let redis = Redis::start();
    let b = Backend::named("ok").await;
    let limit = "{ requests_per_second = 1, burst = 4, scope = \"cluster\" }";
    let toml = cfg(&b, &cluster_table(&redis, ""), "api", limit);
    let (f1, f2) = (Fulcrum::start(&toml), Fulcrum::start(&toml));
    cluster_up(&f1, 1.0).await;
    cluster_up(&f2, 1.0).await;
    let (a1, a2) = (f1.addr("web"), f2.addr("web"));

    // Burst: 8 requests alternating between the instances, 4 pass (plus
    // one per second the burst took: the refill, should the machine be slow;
    // two budgets would pass 8).
    let started = Instant::now();
    let mut passed = 0;
    for i in 0..8 {
        let r = from(if i % 2 == 0 { a1 } else { a2 }, "203.0.113.1").await;
        match r.status.as_u16() {
            200 => passed += 1,
            429 => assert_eq!(r.header("retry-after"), Some("1")),
            s => panic!("status {s}"),
        }
    }
    let refill = |since: Instant| since.elapsed().as_secs() as usize;
    assert!(
        passed >= 4 && passed <= 4 + refill(started),
        "one budget of 4 across both instances: {passed} passed in {:?}",
        started.elapsed()
    );
    let first = passed;

    // Refill: one request per second across both; after 2 s, two more.
    tokio::time::sleep(Duration::from_millis(2050)).await;
    let mut passed = 0;
    for i in 0..6 {
        if from(if i % 2 == 0 { a2 } else { a1 }, "203.0.113.1")
            .await
            .status
            == 200
        {
            passed += 1;
        }
    }
    assert!(
        passed >= 2 && first + passed <= 4 + refill(started),
        "refill at 1/s shared by both instances: {first} + {passed} in {:?}",
        started.elapsed()
    );
    assert_eq!(
        b.hits(),
        first + passed,
        "a refused request never reaches the server"
    );

    // Another client has its own bucket.
    assert_eq!(from(a1, "203.0.113.2").await.status, 200);

    // Control: the same limit per instance gives each instance a budget.
    let local = cfg(
        &b,
        "",
        "api",
        "{ requests_per_second = 1, burst = 4, scope = \"instance\" }",
    );
    let (g1, g2) = (Fulcrum::start(&local), Fulcrum::start(&local));
    let started = Instant::now();
    let mut passed = 0;
    for i in 0..10 {
        let addr = if i % 2 == 0 {
            g1.addr("web")
        } else {
            g2.addr("web")
        };
        if from(addr, "203.0.113.1").await.status == 200 {
            passed += 1;
        }
    }
    assert!(
        passed >= 8 && passed <= 8 + 2 * refill(started),
        "two budgets of 4: {passed} passed"
    );
    let m = scrape(&g1).await;
    assert!(!m.contains("fulcrum_cluster_up"), "no [cluster], no gauge");
}

#[tokio::test]
async fn keys_carry_the_prefix_and_expire_when_full_again() {
    let redis = Redis::start();
    let mut c = redis.conn().await;
    let b = Backend::named("ok").await;
    let f = Fulcrum::start(&cfg(
        &b,
        &cluster_table(&redis, "key_prefix = \"edge1:\""),
        "api",
        "{ requests_per_second = 10, burst = 5, scope = \"cluster\" }",
    ));
    cluster_up(&f, 1.0).await;
    for _ in 0..3 {
        assert_eq!(from(f.addr("web"), "198.51.100.7").await.status, 200);
    }
    let keys: Vec<String> = cmd(&mut c, &["KEYS", "*"]).await;
    assert_eq!(keys, vec!["edge1:api/198.51.100.7".to_string()]);
    // Three requests at 10/s: the bucket is full again in at most 300 ms.
    let ttl: i64 = cmd(&mut c, &["PTTL", &keys[0]]).await;
    assert!((1..=300).contains(&ttl), "PTTL {ttl}");
    eventually(Duration::from_secs(5), "the key expires", || {
        let mut c = c.clone();
        async move { cmd::<i64>(&mut c, &["EXISTS", "edge1:api/198.51.100.7"]).await == 0 }
    })
    .await;
    // SCRIPT FLUSH under a live connection: the next call loads it again.
    let _: String = cmd(&mut c, &["SCRIPT", "FLUSH"]).await;
    assert_eq!(from(f.addr("web"), "198.51.100.7").await.status, 200);
    assert_eq!(
        cmd::<i64>(&mut c, &["EXISTS", "edge1:api/198.51.100.7"]).await,
        1
    );

    // A key Fulcrum cannot use (another type): the script fails, on_error
    // ("local") answers, Redis stays up.
    let _: i64 = cmd(&mut c, &["HSET", "edge1:api/198.51.100.8", "x", "1"]).await;
    assert_eq!(from(f.addr("web"), "198.51.100.8").await.status, 200);
    let m = scrape(&f).await;
    assert_eq!(
        metric(&m, "fulcrum_cluster_errors_total", &[("kind", "script")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "fulcrum_cluster_errors_total", &[("kind", "timeout")]),
        Some(0.0)
    );
    assert_eq!(metric(&m, "fulcrum_cluster_up", &[]), Some(1.0));
}

#[tokio::test]
async fn reload_keeps_the_redis_connection_while_cluster_is_unchanged() {
    let redis = Redis::start();
    let mut c = redis.conn().await;
    let me: i64 = cmd(&mut c, &["CLIENT", "ID"]).await;
    let others = |list: String| -> Vec<String> {
        list.lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .filter(|id| *id != me.to_string())
            .map(str::to_string)
            .collect()
    };
    let b = Backend::named("ok").await;
    let limit = "{ requests_per_second = 10, burst = 5, scope = \"cluster\" }";
    let toml = cfg(&b, &cluster_table(&redis, ""), "api", limit);
    let f = Fulcrum::start(&toml);
    cluster_up(&f, 1.0).await;
    let before = others(cmd(&mut c, &["CLIENT", "LIST"]).await);
    assert_eq!(before.len(), 1, "one shared connection: {before:?}");

    let same_cluster = toml.replace("[upstream.u]\n", "[upstream.u]\nretries = 0\n");
    assert!(f.reload(&same_cluster).contains("config reloaded"));
    assert_eq!(from(f.addr("web"), "192.0.2.1").await.status, 200);
    assert_eq!(others(cmd(&mut c, &["CLIENT", "LIST"]).await), before);

    // A changed [cluster] gets a new connection; the old one closes.
    let changed = same_cluster.replace("[cluster]\n", "[cluster]\nkey_prefix = \"v2:\"\n");
    assert!(f.reload(&changed).contains("config reloaded"));
    eventually(
        Duration::from_secs(5),
        "a new connection replaces the old",
        || {
            let mut c = c.clone();
            let before = before.clone();
            async move {
                let now = others(cmd(&mut c, &["CLIENT", "LIST"]).await);
                now.len() == 1 && now != before
            }
        },
    )
    .await;
    cluster_up(&f, 1.0).await;
    assert_eq!(from(f.addr("web"), "192.0.2.1").await.status, 200);
    let keys: Vec<String> = cmd(&mut c, &["KEYS", "v2:*"]).await;
    assert_eq!(keys, vec!["v2:api/192.0.2.1".to_string()]);

    // Without [cluster] (and the cluster scope) the gauge goes away.
    let none = cfg(&b, "", "api", "{ requests_per_second = 10, burst = 5 }");
    assert!(f.reload(&none).contains("config reloaded"));
    let m = scrape(&f).await;
    assert!(
        !m.contains("fulcrum_cluster_up{}") && !m.contains("fulcrum_cluster_up "),
        "{m}"
    );
}

#[tokio::test]
async fn redis_outage_each_on_error_mode_then_recovery_without_5xx() {
    let redis = Redis::start();
    let b = Backend::named("ok").await;
    let limit = "{ requests_per_second = 0.2, burst = 3, scope = \"cluster\" }";
    let start = |mode: &str| {
        Fulcrum::start(&cfg(
            &b,
            &cluster_table(
                &redis,
                &format!("on_error = \"{mode}\"\nkey_prefix = \"{mode}:\"\ntimeout = \"200ms\""),
            ),
            "api",
            limit,
        ))
    };
    let (local, allow, deny) = (start("local"), start("allow"), start("deny"));
    for f in [&local, &allow, &deny] {
        cluster_up(f, 1.0).await;
        for _ in 0..3 {
            assert_eq!(from(f.addr("web"), "203.0.113.9").await.status, 200);
        }
        assert_eq!(from(f.addr("web"), "203.0.113.9").await.status, 429);
    }

    let port = redis.kill();
    let statuses = |f: &Fulcrum, client: &'static str, n: usize| {
        let addr = f.addr("web");
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let r = from(addr, client).await;
                assert!(r.status.as_u16() < 500, "a Redis outage gave {}", r.status);
                out.push((
                    r.status.as_u16(),
                    r.header("retry-after").map(str::to_string),
                ));
            }
            out
        }
    };
    // local: the local limiter saw the burst, so it is already spent...
    let s = statuses(&local, "203.0.113.9", 2).await;
    assert!(s.iter().all(|(c, _)| *c == 429), "{s:?}");
    // ...while a new client gets the same limit from this instance alone.
    let s = statuses(&local, "203.0.113.10", 4).await;
    let codes: Vec<u16> = s.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, [200, 200, 200, 429]);
    // allow: everything passes.
    let s = statuses(&allow, "203.0.113.9", 5).await;
    assert!(s.iter().all(|(c, _)| *c == 200), "{s:?}");
    // deny: 429 with Retry-After: 1, for every client.
    let s = statuses(&deny, "203.0.113.11", 3).await;
    assert!(
        s.iter()
            .all(|(c, ra)| *c == 429 && ra.as_deref() == Some("1")),
        "{s:?}"
    );
    for f in [&local, &allow, &deny] {
        cluster_up(f, 0.0).await;
        wait_metric(
            f,
            "fulcrum_cluster_errors_total",
            &[("kind", "connection")],
            |v| v >= 1.0,
        )
        .await;
    }

    // Redis back on the same port (empty): cluster decisions resume.
    let redis = Redis::start_on(port);
    for f in [&local, &allow, &deny] {
        let t = Instant::now();
        cluster_up(f, 1.0).await;
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "reconnect took {:?}",
            t.elapsed()
        );
    }
    // The local limiter would refuse this client; Redis has a fresh bucket.
    assert_eq!(from(local.addr("web"), "203.0.113.9").await.status, 200);
    assert_eq!(from(deny.addr("web"), "203.0.113.11").await.status, 200);
    let s = statuses(&allow, "203.0.113.12", 4).await;
    let codes: Vec<u16> = s.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, [200, 200, 200, 429], "allow limits again");
    let mut c = redis.conn().await;
    let keys: Vec<String> = cmd(&mut c, &["KEYS", "*"]).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
}

#[tokio::test]
async fn a_hung_redis_costs_each_request_at_most_the_timeout() {
    let redis = Redis::start();
    let b = Backend::named("ok").await;
    let f = Fulcrum::start(&cfg(
        &b,
        &cluster_table(&redis, "timeout = \"300ms\"\non_error = \"allow\""),
        "api",
        "{ requests_per_second = 0.2, burst = 2, scope = \"cluster\" }",
    ));
    cluster_up(&f, 1.0).await;
    let mut c = Client::connect(f.addr("web")).await;
    let mut send = async |client: &str| {
        let t = Instant::now();
        let r = collect(c.send(xff(client)).await.unwrap()).await;
        (r.status.as_u16(), t.elapsed())
    };
    assert_eq!(send("192.0.2.50").await.0, 200);

    redis.signal("STOP");
    let mut worst = Duration::ZERO;
    for i in 0..6 {
        let (status, took) = send(&format!("192.0.2.{i}")).await;
        assert_eq!(status, 200, "on_error = allow");
        worst = worst.max(took);
    }
    assert!(
        worst < Duration::from_millis(300 + 500),
        "a request waited {worst:?} on a hung Redis"
    );
    cluster_up(&f, 0.0).await;
    wait_metric(
        &f,
        "fulcrum_cluster_errors_total",
        &[("kind", "timeout")],
        |v| v >= 1.0,
    )
    .await;

    redis.signal("CONT");
    cluster_up(&f, 1.0).await;
    // Cluster decisions again: the bucket from before the hang is in Redis.
    assert_eq!(send("192.0.2.50").await.0, 200);
    assert_eq!(send("192.0.2.50").await.0, 429);
}

#[tokio::test]
async fn ipv6_clients_odd_route_names_and_ten_thousand_clients_stay_bounded() {
    let redis = Redis::start();
    let mut c = redis.conn().await;
    let b = Backend::named("ok").await;
    let name = "naïve route ☃ with spaces";
    let toml = cfg(
        &b,
        &cluster_table(&redis, ""),
        name,
        "{ requests_per_second = 1, burst = 1, scope = \"cluster\" }",
    )
    .replace(
        "trusted_proxies = [\"127.0.0.0/8\"]\n",
        "trusted_proxies = [\"127.0.0.0/8\"]\n\n[[listener]]\nname = \"v6\"\nlisten = \"[::1]:0\"\n",
    );
    let f = Fulcrum::start(&toml);
    cluster_up(&f, 1.0).await;

    // An IPv6 peer: its own bucket, keyed by its address.
    let v6 = f.addr("v6");
    assert!(v6.is_ipv6());
    assert_eq!(get(v6, "/").await.status, 200);
    assert_eq!(get(v6, "/").await.status, 429);
    let key = format!("fulcrum:{name}/::1");
    assert_eq!(cmd::<i64>(&mut c, &["EXISTS", &key]).await, 1, "{key}");

    // 10,000 distinct clients (X-Forwarded-For behind a trusted proxy).
    let addr = f.addr("web");
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut ok = 0;
            for i in 0..2500u32 {
                let n = t * 2500 + i;
                let ip = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
                if collect(c.send(xff(&ip)).await.unwrap()).await.status == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 10_000, "each new client has a full bucket");

    // At most one key per client, each with a TTL of at most 1 s.
    let keys: Vec<String> = cmd(&mut c, &["KEYS", "*"]).await;
    assert!(keys.len() <= 10_001, "{} keys", keys.len());
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("PTTL").arg(k);
    }
    let ttls: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
    // 0 or -2: expiring or expired since KEYS; -1 (no expiry) would be a leak.
    assert!(
        ttls.iter().all(|t| *t == -2 || (0..=1000).contains(t)),
        "{:?}",
        ttls.iter()
            .filter(|t| !(0..=1000).contains(*t))
            .collect::<Vec<_>>()
    );
    assert!(keys
        .iter()
        .all(|k| k.starts_with(&format!("fulcrum:{name}/"))));
    eventually(Duration::from_secs(20), "every key expires", || {
        let mut c = c.clone();
        async move { cmd::<i64>(&mut c, &["DBSIZE"]).await == 0 }
    })
    .await;
}

#[tokio::test]
async fn rediss_connects_over_tls_with_the_system_trust_store() {
    let ca = TestCa::new();
    let redis = Redis::start_tls(&ca);
    let b = Backend::named("ok").await;
    let toml = cfg(
        &b,
        &format!(
            "[cluster]\nredis = \"rediss://localhost:{}/0\"\non_error = \"allow\"\n",
            redis.port
        ),
        "api",
        "{ requests_per_second = 0.2, burst = 2, scope = \"cluster\" }",
    );
    // rustls-native-certs reads SSL_CERT_FILE: the test CA is the system's.
    let ca_file = redis.dir.join("ca.pem");
    let f = Fulcrum::start_with_env(&toml, &[("SSL_CERT_FILE", ca_file.to_str().unwrap())]);
    cluster_up(&f, 1.0).await;
    // on_error = "allow": a 429 can only come from Redis.
    assert_eq!(from(f.addr("web"), "192.0.2.9").await.status, 200);
    assert_eq!(from(f.addr("web"), "192.0.2.9").await.status, 200);
    assert_eq!(from(f.addr("web"), "192.0.2.9").await.status, 429);

    // Not trusted: no connection, and on_error answers.
    let g = Fulcrum::start(&toml);
    let line = g.logged("cannot connect to cluster Redis", Duration::from_secs(10));
    assert!(line.contains("certificate"), "{line}");
    assert_eq!(from(g.addr("web"), "192.0.2.9").await.status, 200);
    let m = scrape(&g).await;
    assert_eq!(metric(&m, "fulcrum_cluster_up", &[]), Some(0.0), "{m}");
}
