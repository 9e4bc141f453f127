//! Health and failover, against real misbehaving backends.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw TCP "server" that hands every connection to `f`; counts connections.
async fn raw_backend<F, Fut>(f: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let f = Arc::new(f);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(f(s));
        }
    });
    (addr, conns)
}

/// Reads until the end of a request head.
async fn read_head(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
}

/// Closes with RST instead of FIN (SO_LINGER 0).
fn reset(s: TcpStream) {
    let s = s.into_std().unwrap();
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

fn upstream(addrs: &[SocketAddr], extra: &str) -> String {
    let s: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{}]\n{extra}\n",
        s.join(", ")
    ))
}

async fn post(addr: SocketAddr) -> StatusCode {
    let req = Request::post("/")
        .header("host", "x")
        .body(full("payload"))
        .unwrap();
    Client::connect(addr)
        .await
        .send(req)
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn killed_backend_causes_no_client_errors() {
    let good = Backend::named("good").await;
    let doomed = Backend::named("doomed").await;
    let f = Fulcrum::start(&upstream(
        &[doomed.addr, good.addr],
        "[upstream.u.passive_health]\nconsecutive_failures = 2\nejection_time = \"30s\"",
    ));
    let mut c = Client::connect(f.addr("web")).await;
    assert_eq!(c.get("/", "x").await.status, 200);
    doomed.stop();
    drop(doomed);
    // the listener is gone: connects are refused from now on
    for _ in 0..20 {
        let r = c.get("/", "x").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "good");
    }
}

#[tokio::test]
async fn hung_backend_gets_504_get_retried_post_not() {
    let (hung, _) = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let good = Backend::named("good").await;
    // hung first in rotation for the first request of each pair
    let f = Fulcrum::start(&upstream(
        &[hung, good.addr],
        "response_timeout = \"300ms\"",
    ));
    let started = Instant::now();
    let r = get(f.addr("web"), "/").await;
    assert_eq!(r.status, 200, "GET must be retried on the other server");
    assert_eq!(r.text(), "good");
    assert!(started.elapsed() >= Duration::from_millis(280));
    // round-robin sends one of two POSTs to the hung server: it is not replayed
    let started = Instant::now();
    let mut codes = vec![post(f.addr("web")).await, post(f.addr("web")).await];
    codes.sort();
    assert_eq!(codes, [StatusCode::OK, StatusCode::GATEWAY_TIMEOUT]);
    assert!(started.elapsed() < Duration::from_secs(3));
    // only the GETs reached `good` twice at most; the hung POST never did
    assert_eq!(
        good.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == "POST")
            .count(),
        1
    );
}

#[tokio::test]
async fn reset_before_status_line_get_retried_post_502() {
    let (resetter, _) = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        reset(s);
    })
    .await;
    let good = Backend::named("good").await;
    let f = Fulcrum::start(&upstream(&[resetter, good.addr], ""));
    let r = get(f.addr("web"), "/").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "good"));
    let mut codes = vec![post(f.addr("web")).await, post(f.addr("web")).await];
    codes.sort();
    assert_eq!(
        codes,
        [StatusCode::OK, StatusCode::BAD_GATEWAY],
        "one POST meets the resetter and is not replayed"
    );
    let m = scrape(&f).await;
    assert!(
        metric(
            &m,
            "fulcrum_upstream_errors_total",
            &[("server", &resetter.to_string()), ("kind", "reset")]
        )
        .unwrap()
            >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn backend_dying_mid_body_aborts_the_client_response() {
    let (dying, _) = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly part of it")
            .await;
        let _ = s.flush().await;
        reset(s);
    })
    .await;
    let f = Fulcrum::start(&upstream(&[dying], ""));
    let mut c = Client::connect(f.addr("web")).await;
    let resp = c
        .send(
            Request::get("/")
                .header("host", "x")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await;
    assert!(body.is_err(), "a truncated body must not end cleanly");
}

#[tokio::test]
async fn invalid_response_is_502_and_connection_discarded() {
    let (liar, conns) = raw_backend(|mut s| async move {
        loop {
            read_head(&mut s).await;
            if s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            )
            .await
            .is_err()
            {
                return;
            }
        }
    })
    .await;
    let f = Fulcrum::start(&upstream(&[liar], "retries = 0"));
    let mut c = Client::connect(f.addr("web")).await;
    for i in 1..=3 {
        let r = c.get("/", "x").await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(
            conns.load(Ordering::SeqCst),
            i,
            "each lie costs its connection"
        );
    }
}

#[tokio::test]
async fn idle_pooled_connection_closed_by_backend_is_transparent() {
    // answers one request per connection, then closes it after a short idle
    let closed = Arc::new(AtomicUsize::new(0));
    let cl = closed.clone();
    let (b, _) = raw_backend(move |mut s| {
        let closed = cl.clone();
        async move {
            read_head(&mut s).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            let mut buf = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await;
            drop(s);
            closed.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let f = Fulcrum::start(&upstream(&[b], "retries = 0"));
    let mut c = Client::connect(f.addr("web")).await;
    for i in 1..=5usize {
        assert_eq!(c.get("/", "x").await.status, 200);
        // the next request must not fail once the backend closed this one
        eventually(Duration::from_secs(5), "backend closes idle conn", || {
            let n = closed.load(Ordering::SeqCst);
            async move { n >= i }
        })
        .await;
    }
}

#[tokio::test]
async fn active_checks_mark_flapping_server_down_then_up() {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let flappy = Backend::start(move |req| {
        let h = h.clone();
        async move {
            let ok = h.load(Ordering::SeqCst) || req.uri().path() != "/healthz";
            let mut r = Response::new(full("flappy"));
            if !ok {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await;
    let steady = Backend::named("steady").await;
    let f = Fulcrum::start(&upstream(
        &[flappy.addr, steady.addr],
        "[upstream.u.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 3\nhealthy_threshold = 2\njitter = \"0%\"",
    ));
    assert_eq!(server_state(&f, "u", flappy.addr).await, "up");
    healthy.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "flappy marked down", || async {
        server_state(&f, "u", flappy.addr).await == "down"
    })
    .await;
    f.wait_log("server down", Duration::from_secs(2));
    // while down it gets no traffic
    let before = flappy
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.uri != "/healthz")
        .count();
    let mut c = Client::connect(f.addr("web")).await;
    for _ in 0..10 {
        assert_eq!(c.get("/", "x").await.text(), "steady");
    }
    let after = flappy
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.uri != "/healthz")
        .count();
    assert_eq!(before, after);
    let m = scrape(&f).await;
    assert_eq!(
        metric(
            &m,
            "fulcrum_upstream_server_up",
            &[("server", &flappy.addr.to_string())]
        ),
        Some(0.0)
    );
    assert!(
        metric(
            &m,
            "fulcrum_health_checks_total",
            &[("server", &flappy.addr.to_string()), ("result", "fail")]
        )
        .unwrap()
            >= 3.0
    );
    healthy.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "flappy back up", || async {
        server_state(&f, "u", flappy.addr).await == "up"
    })
    .await;
    f.wait_log("server up", Duration::from_secs(2));
    let mut texts = Vec::new();
    for _ in 0..4 {
        texts.push(c.get("/", "x").await.text());
    }
    assert!(texts.iter().any(|t| t == "flappy"), "{texts:?}");
}

#[tokio::test]
async fn initial_state_down_waits_for_passes_and_all_down_is_503_without_connecting() {
    let (never_healthy, conns) = raw_backend(|s| async move { reset(s) }).await;
    let f = Fulcrum::start(&upstream(
        &[never_healthy],
        "[upstream.u.health_check]\ninterval = \"5s\"\ninitial_state = \"down\"",
    ));
    // the first probe runs at once; the next is 5 s away
    eventually(Duration::from_secs(5), "first probe", || {
        let n = conns.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    let probes = conns.load(Ordering::SeqCst);
    let started = Instant::now();
    let r = get(f.addr("web"), "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no healthy upstream\n");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(
        conns.load(Ordering::SeqCst),
        probes,
        "no connection attempt for a request when all are down"
    );
    let ready = get(f.admin, "/ready").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.text().contains("no server up in upstream u"),
        "{}",
        ready.text()
    );
}

#[tokio::test]
async fn passive_ejection_on_5xx_respects_max_percent_and_returns() {
    let bad = Backend::start(|_r| async {
        let mut r = Response::new(full("bad"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
    .await;
    let good = Backend::named("good").await;
    let f = Fulcrum::start(&upstream(
        &[bad.addr, good.addr],
        "[upstream.u.passive_health]\nconsecutive_failures = 3\nejection_time = \"700ms\"\nmax_ejection_percent = 50",
    ));
    let mut c = Client::connect(f.addr("web")).await;
    let mut fives = 0;
    for _ in 0..20 {
        if c.get("/", "x").await.status == 500 {
            fives += 1;
        }
    }
    assert_eq!(fives, 3, "ejected after 3 consecutive 5xx");
    assert_eq!(server_state(&f, "u", bad.addr).await, "ejected");
    let m = scrape(&f).await;
    assert_eq!(
        metric(
            &m,
            "fulcrum_upstream_ejections_total",
            &[("server", &bad.addr.to_string())]
        ),
        Some(1.0)
    );
    // the ejection ends by itself
    eventually(Duration::from_secs(5), "ejection ends", || async {
        server_state(&f, "u", bad.addr).await == "up"
    })
    .await;
    // now make the good one fail too: 50% cap means it is never ejected
    drop(c);
    let f2 = Fulcrum::start(&upstream(
        &[bad.addr],
        "[upstream.u.passive_health]\nconsecutive_failures = 1\nmax_ejection_percent = 50",
    ));
    for _ in 0..5 {
        assert_eq!(get(f2.addr("web"), "/").await.status, 500);
    }
    assert_eq!(server_state(&f2, "u", bad.addr).await, "up");
}

#[tokio::test]
async fn retries_stay_within_budget_when_every_server_fails() {
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let (a, _) = raw_backend(|mut s| async move {
            read_head(&mut s).await;
            reset(s);
        })
        .await;
        addrs.push(a);
    }
    let f = Fulcrum::start(&upstream(&addrs, "retries = 2\nretry_budget = 0.1"));
    let addr = f.addr("web");
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for _ in 0..100 {
                assert_eq!(c.get("/", "x").await.status, 502);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let m = scrape(&f).await;
    let retries = metric(&m, "fulcrum_retries_total", &[("upstream", "u")]).unwrap();
    // 400 requests: 10% is 40, plus the floor of 10/s over the seconds the run took
    assert!(retries > 0.0, "{m}");
    assert!(
        retries <= 40.0 + 10.0 * 11.0,
        "retries {retries} exceed the budget"
    );
    assert!(retries < 400.0, "retries {retries}: budget not applied");
}

#[tokio::test]
async fn dns_membership_follows_the_resolver_without_reload() {
    // two loopback addresses on one port, named "app.fulcrum.test"
    let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = first.local_addr().unwrap().port();
    let second = TcpListener::bind(("127.0.0.3", port)).await.unwrap();
    let a = Backend::on(first, |_r| async { Response::new(full("a")) });
    let b = Backend::on(second, |_r| async { Response::new(full("b")) });
    let dir = temp_dir();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.2 app.fulcrum.test\n").unwrap();
    let f = Fulcrum::start_with_env(
        &config(&format!(
            "[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{{ address = \"app.fulcrum.test:{port}\" }}]\nresolve_interval = \"200ms\"\n"
        )),
        &[("FULCRUM_HOSTS_FILE", hosts.to_str().unwrap())],
    );
    assert_eq!(get(f.addr("web"), "/").await.text(), "a");
    std::fs::write(
        &hosts,
        "127.0.0.2 app.fulcrum.test\n127.0.0.3 app.fulcrum.test\n",
    )
    .unwrap();
    eventually(Duration::from_secs(5), "new record joins", || async {
        server_state(&f, "u", b.addr).await == "up"
    })
    .await;
    let mut seen = String::new();
    for _ in 0..4 {
        seen += &get(f.addr("web"), "/").await.text();
    }
    assert!(seen.contains('a') && seen.contains('b'), "{seen}");
    // the first record vanishes: it leaves
    std::fs::write(&hosts, "127.0.0.3 app.fulcrum.test\n").unwrap();
    eventually(Duration::from_secs(5), "old record leaves", || async {
        server_state(&f, "u", a.addr).await == "absent"
    })
    .await;
    for _ in 0..4 {
        assert_eq!(get(f.addr("web"), "/").await.text(), "b");
    }
    // resolution failure (name gone from the file entirely and unknown to DNS) keeps the last set
    std::fs::write(&hosts, "# empty\n").unwrap();
    f.wait_log("DNS resolution failed", Duration::from_secs(5));
    assert_eq!(get(f.addr("web"), "/").await.text(), "b");
}
