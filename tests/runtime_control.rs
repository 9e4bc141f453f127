//! Runtime control (SPEC "Runtime control"): the /api/v1 answers and
//! refusals, drain / disable / weight as clients see them (slow requests,
//! sticky clients, tunnels, 400 picks), overrides across reloads and
//! restarts, `fulcrum ctl` as a real process, and a rolling deploy under
//! load with zero failed requests.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

const TOKEN: &str = "0123456789abcdef0123456789abcdef-test-token";

/// A token file (absolute path) in a fresh folder.
fn token_file(token: &str) -> PathBuf {
    let p = temp_dir().join("admin.token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

/// `config(rest)` with `lines` added to `[admin]`.
fn with_admin(rest: &str, lines: &str) -> String {
    config(rest).replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{lines}\n"),
        1,
    )
}

fn controlled(rest: &str, token: &Path) -> String {
    with_admin(rest, &format!("token_file = \"{}\"", token.display()))
}

/// One upstream `u` over `backends` with `strategy` and extra lines.
fn upstream(backends: &[&Backend], strategy: &str, extra: &str) -> String {
    format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"{strategy}\"\n{}\n{extra}\n",
        servers(backends)
    )
}

fn enc(addr: SocketAddr) -> String {
    fulcrum::ctl::encode_segment(&addr.to_string())
}

fn server_path(upstream: &str, addr: SocketAddr, tail: &str) -> String {
    let p = format!("/api/v1/upstreams/{upstream}/servers/{}", enc(addr));
    if tail.is_empty() {
        p
    } else {
        format!("{p}/{tail}")
    }
}

/// One API request with the test token (or `auth`), extra headers, a body.
async fn api_with(
    f: &Fulcrum,
    method: &str,
    path: &str,
    auth: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(full(body.to_string())).unwrap();
    collect(Client::connect(f.admin).await.send(req).await.unwrap()).await
}

async fn api(f: &Fulcrum, method: &str, path: &str, body: &str) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    api_with(f, method, path, Some(&auth), &[], body).await
}

fn json(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// The API's view of one server.
async fn server(f: &Fulcrum, upstream: &str, addr: SocketAddr) -> Value {
    let r = api(f, "GET", &server_path(upstream, addr, ""), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    json(&r)
}

async fn set(f: &Fulcrum, action: &str, addr: SocketAddr) -> Value {
    let r = api(f, "POST", &server_path("u", addr, action), "").await;
    assert_eq!(r.status, 200, "{action}: {}", r.text());
    json(&r)
}

/// A backend whose requests wait for a permit; `arrived` gets one message
/// per request that reached it.
async fn gated(name: &'static str) -> (Backend, Arc<Semaphore>, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let b = Backend::start(move |req: Request<hyper::body::Incoming>| {
        let (tx, g) = (tx.clone(), g.clone());
        async move {
            if req.uri().path() == "/slow" {
                let _ = tx.send(());
                g.acquire().await.unwrap().forget();
            }
            Response::new(full(name))
        }
    })
    .await;
    (b, gate, rx)
}

/// (method, path, Authorization ("" = the right token), extra headers,
/// body, status, `result` label).
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Vec<(&'a str, &'a str)>,
    &'a str,
    u16,
    &'a str,
);

#[tokio::test]
async fn every_refusal_gets_its_answer_and_changes_nothing() {
    let a = Backend::named("a").await;
    let tok = token_file(TOKEN);
    // An IPv6 server: its address travels percent-encoded in the path.
    let v6: SocketAddr = "[::1]:1".parse().unwrap();
    let rest = format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"weighted\"\n\
         servers = [{{ address = \"{}\", weight = 2 }}, {{ address = \"{v6}\" }}]\n",
        a.addr
    );
    let f = Fulcrum::start(&controlled(&rest, &tok));
    let p = server_path("u", a.addr, "");
    let unchanged = |v: &Value| {
        assert_eq!(v["admin_state"], "none", "{v}");
        assert_eq!(v["effective_weight"], 2, "{v}");
        assert_eq!(v["weight"], 2, "{v}");
        assert_eq!(v["state"], "up", "{v}");
    };

    let drain = format!("{p}/drain");
    let weight = format!("{p}/weight");
    let wrong = format!("Bearer {}x", TOKEN);
    let unknown_upstream = drain.replace("/u/", "/nope/");
    let unknown_server = server_path("u", "127.0.0.1:9".parse().unwrap(), "drain");
    let big = format!("{{\"weight\": 5, \"pad\": \"{}\"}}", "x".repeat(5000));
    let cases: Vec<Case> = vec![
        ("POST", &drain, None, vec![], "", 401, "unauthorized"),
        (
            "POST",
            &drain,
            Some(&wrong),
            vec![],
            "",
            401,
            "unauthorized",
        ),
        (
            "POST",
            &drain,
            Some("Basic eDp5"),
            vec![],
            "",
            401,
            "unauthorized",
        ),
        (
            "POST",
            &drain,
            Some(""),
            vec![("origin", "http://evil.example")],
            "",
            403,
            "forbidden",
        ),
        (
            "GET",
            &drain,
            Some(""),
            vec![],
            "",
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            &weight,
            Some(""),
            vec![],
            "{\"weight\": 0}",
            400,
            "bad_request",
        ),
        (
            "PUT",
            &weight,
            Some(""),
            vec![],
            "{\"weight\": 1001}",
            400,
            "bad_request",
        ),
        (
            "PUT",
            &weight,
            Some(""),
            vec![],
            "{\"weight\": \"5\"}",
            400,
            "bad_request",
        ),
        ("PUT", &weight, Some(""), vec![], "5", 400, "bad_request"),
        ("PUT", &weight, Some(""), vec![], &big, 400, "bad_request"),
        (
            "POST",
            &unknown_upstream,
            Some(""),
            vec![],
            "",
            404,
            "not_found",
        ),
        (
            "POST",
            &unknown_server,
            Some(""),
            vec![],
            "",
            404,
            "not_found",
        ),
    ];
    let good = format!("Bearer {TOKEN}");
    for (method, path, auth, headers, body, status, result) in &cases {
        let auth = match auth {
            Some("") => Some(good.as_str()),
            other => *other,
        };
        let r = api_with(&f, method, path, auth, headers, body).await;
        assert_eq!(
            r.status.as_u16(),
            *status,
            "{method} {path} ({result}): {}",
            r.text()
        );
        assert!(json(&r)["error"].is_string(), "{}", r.text());
        if *status == 401 {
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        unchanged(&server(&f, "u", a.addr).await);
    }
    // Nothing reached the picks either: both servers still serve.
    let text = scrape(&f).await;
    for (action, result, n) in [
        ("drain", "unauthorized", 3.0),
        ("drain", "forbidden", 1.0),
        ("drain", "method_not_allowed", 1.0),
        ("drain", "not_found", 2.0),
        ("weight", "bad_request", 5.0),
        ("server", "ok", cases.len() as f64),
    ] {
        let got = metric(
            &text,
            "fulcrum_admin_requests_total",
            &[("action", action), ("result", result)],
        );
        assert_eq!(got, Some(n), "{action}/{result}\n{text}");
    }

    // The IPv6 server, percent-encoded.
    let v = set(&f, "disable", v6).await;
    assert_eq!(v["admin_state"], "disable");
    assert_eq!(v["address"], "[::1]:1");
    let all = json(&api(&f, "GET", "/api/v1/servers", "").await);
    let listed: Vec<&Value> = all["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(listed.len(), 2);
    for field in [
        "address",
        "weight",
        "effective_weight",
        "state",
        "admin_state",
        "in_flight",
    ] {
        assert!(listed.iter().all(|s| !s[field].is_null()), "{field}");
    }
    // Changes are only POST/PUT/DELETE; reads are GET.
    let r = api(&f, "POST", "/api/v1/servers", "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // Each request wrote an audit event (stderr is read by another thread).
    eventually(Duration::from_secs(5), "audit events", || async {
        let logs = f.logs();
        let audit: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("fulcrum::audit"))
            .collect();
        audit.len() > cases.len()
            && audit.iter().any(|l| {
                l.contains("peer=127.0.0.1")
                    && l.contains("action=disable")
                    && l.contains("server=[::1]:1")
                    && l.contains("upstream=u")
                    && l.contains("result=ok")
            })
    })
    .await;

    // Without token_file the API is off.
    let off = Fulcrum::start(&one_route(&[&a]));
    let r = api(&off, "GET", "/api/v1/servers", "").await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("admin API disabled"));
}

#[tokio::test]
async fn short_token_is_a_config_error_and_the_token_is_reread_on_reload() {
    let a = Backend::named("a").await;
    let short = token_file(&"k".repeat(31));
    let cfg = controlled(&one_route(&[&a]).replace(&config(""), ""), &short);
    let path = temp_dir().join("f.toml");
    std::fs::write(&path, &cfg).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.token_file") && err.contains("at least 32"),
        "{err}"
    );

    let tok = token_file(TOKEN);
    let rest = one_route(&[&a]).replace(&config(""), "");
    let f = Fulcrum::start(&controlled(&rest, &tok));
    assert_eq!(api(&f, "GET", "/api/v1/servers", "").await.status, 200);
    // A too-short token fails the reload; the old token keeps working.
    std::fs::write(&tok, "short\n").unwrap();
    assert!(f
        .reload(&controlled(&rest, &tok))
        .contains("config reload failed"));
    assert_eq!(api(&f, "GET", "/api/v1/servers", "").await.status, 200);
    // A new token takes effect on reload; the old one is refused.
    let new = "n".repeat(40);
    std::fs::write(&tok, &new).unwrap();
    assert!(f
        .reload(&controlled(&rest, &tok))
        .contains("config reloaded"));
    assert_eq!(api(&f, "GET", "/api/v1/servers", "").await.status, 401);
    let auth = format!("Bearer {new}");
    let r = api_with(&f, "GET", "/api/v1/servers", Some(&auth), &[], "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn drain_lets_a_slow_request_finish_and_takes_no_new_picks() {
    let (a, gate, mut arrived) = gated("a").await;
    let b = Backend::named("b").await;
    let tok = token_file(TOKEN);
    let f = Fulcrum::start(&controlled(&upstream(&[&a, &b], "round-robin", ""), &tok));
    let web = f.addr("web");
    // Round-robin starts at a: the slow request is held there.
    let slow = tokio::spawn(async move { get(web, "/slow").await });
    arrived.recv().await.unwrap();
    let v = set(&f, "drain", a.addr).await;
    assert_eq!(v["admin_state"], "drain");
    assert_eq!(v["state"], "draining");
    assert_eq!(v["in_flight"], 1);
    let before = a.hits();
    for _ in 0..20 {
        assert_eq!(get(web, "/").await.text(), "b");
    }
    assert_eq!(a.hits(), before, "a drained server got a new request");
    gate.add_permits(1);
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "a"));
    assert_eq!(server(&f, "u", a.addr).await["in_flight"], 0);
    let text = scrape(&f).await;
    let s = a.addr.to_string();
    let l = [("upstream", "u"), ("server", s.as_str())];
    assert_eq!(
        metric(&text, "fulcrum_upstream_server_admin_state", &l),
        Some(1.0)
    );

    // Enable: a is picked again.
    assert_eq!(set(&f, "enable", a.addr).await["state"], "up");
    let mut seen_a = false;
    for _ in 0..4 {
        seen_a |= get(web, "/").await.text() == "a";
    }
    assert!(seen_a);
}

#[tokio::test]
async fn drain_keeps_sticky_clients_and_disable_does_not() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let tok = token_file(TOKEN);
    let sticky = "[upstream.u.sticky]\ncookie = \"sid\"\n";
    let f = Fulcrum::start(&controlled(
        &upstream(&[&a, &b], "round-robin", sticky),
        &tok,
    ));
    let web = f.addr("web");
    // A client pinned to a.
    let (mut cookie_a, mut tries) = (None, 0);
    while cookie_a.is_none() {
        let r = get(web, "/").await;
        if r.text() == "a" {
            let c = r.header("set-cookie").unwrap();
            cookie_a = Some(c.split(';').next().unwrap().to_string());
        }
        tries += 1;
        assert!(tries < 10);
    }
    let cookie_a = cookie_a.unwrap();
    let pinned = |c: String| async move {
        let mut client = Client::connect(web).await;
        let req = Request::get("/")
            .header("host", "x")
            .header("cookie", c)
            .body(full(""))
            .unwrap();
        collect(client.send(req).await.unwrap()).await
    };
    set(&f, "drain", a.addr).await;
    for _ in 0..10 {
        let r = pinned(cookie_a.clone()).await;
        assert_eq!(r.text(), "a", "a sticky client of a draining server stays");
        assert!(r.header("set-cookie").is_none());
        assert_eq!(get(web, "/").await.text(), "b", "new clients avoid it");
    }
    set(&f, "disable", a.addr).await;
    let hits = a.hits();
    for _ in 0..10 {
        let r = pinned(cookie_a.clone()).await;
        assert_eq!(r.text(), "b", "nothing reaches a disabled server");
        assert!(r.header("set-cookie").is_some(), "re-pinned elsewhere");
    }
    assert_eq!(a.hits(), hits);

    // Drained and then stopped (a deploy): its sticky clients fail over to
    // the other server, even with only one left to try.
    set(&f, "drain", a.addr).await;
    a.stop();
    for _ in 0..5 {
        let r = pinned(cookie_a.clone()).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "b"));
    }
}

#[tokio::test]
async fn a_drained_servers_websocket_tunnel_stays_open() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (echo, _task) = websocket_echo().await;
    let tok = token_file(TOKEN);
    let rest = format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{{ address = \"{echo}\" }}]\n"
    );
    let f = Fulcrum::start(&controlled(&rest, &tok));
    let tcp = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://chat.test/s", tcp)
        .await
        .unwrap();
    set(&f, "drain", echo).await;
    assert_eq!(server(&f, "u", echo).await["in_flight"], 1);
    for i in 0..3 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply, Message::text(format!("echo:m{i}")));
    }
    // New requests find no server to pick.
    assert_eq!(get(f.addr("web"), "/").await.status, 503);
    ws.close(None).await.unwrap();
    drop(ws);
    eventually(Duration::from_secs(5), "tunnel closed", || async {
        server(&f, "u", echo).await["in_flight"] == 0
    })
    .await;
}

#[tokio::test]
async fn disable_keeps_active_checks_running() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let tok = token_file(TOKEN);
    let hc = "[upstream.u.health_check]\ninterval = \"50ms\"\ntimeout = \"200ms\"\n";
    let f = Fulcrum::start(&controlled(&upstream(&[&a, &b], "round-robin", hc), &tok));
    let v = set(&f, "disable", a.addr).await;
    assert_eq!(
        (v["state"].as_str(), v["admin_state"].as_str()),
        (Some("disabled"), Some("disable"))
    );
    let s = a.addr.to_string();
    let l = [
        ("upstream", "u"),
        ("server", s.as_str()),
        ("result", "pass"),
    ];
    let checks = metric(&scrape(&f).await, "fulcrum_health_checks_total", &l).unwrap_or(0.0);
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(get(f.addr("web"), "/").await.text(), "b");
    }
    eventually(Duration::from_secs(5), "checks go on", || async {
        metric(&scrape(&f).await, "fulcrum_health_checks_total", &l).unwrap_or(0.0) >= checks + 3.0
    })
    .await;
    // Only the checker reached a.
    assert!(a.seen.lock().unwrap()[before..]
        .iter()
        .all(|s| s.uri.contains("/healthz")));
    // A disabled server that fails its checks is down (and still disabled).
    a.stop();
    eventually(Duration::from_secs(5), "a down", || async {
        server(&f, "u", a.addr).await["state"] == "down"
    })
    .await;
    assert_eq!(server(&f, "u", a.addr).await["admin_state"], "disable");
}

/// Requests per backend over `n` fresh-connection GETs (with a distinct
/// key each, for the hashing strategies).
async fn spread(f: &Fulcrum, n: usize) -> (usize, usize) {
    let web = f.addr("web");
    let mut client = Client::connect(web).await;
    let (mut a, mut b) = (0, 0);
    for i in 0..n {
        let req = Request::get(format!("/?user={i}"))
            .header("host", "x")
            .header("x-user", format!("user-{i}"))
            .body(full(""))
            .unwrap();
        let r = collect(client.send(req).await.unwrap()).await;
        match r.text().as_str() {
            "a" => a += 1,
            "b" => b += 1,
            other => panic!("{other}"),
        }
    }
    (a, b)
}

#[tokio::test]
async fn weight_changes_apply_from_the_next_pick_over_400_picks() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let tok = token_file(TOKEN);
    let put = |_: &Fulcrum, w: u32| {
        let path = server_path("u", a.addr, "weight");
        (path, format!("{{\"weight\": {w}}}"))
    };
    // Expected share of a at 3:1: exact for smooth weighted round-robin;
    // statistical for the random and hashing strategies; every pick for
    // least-connections, since sequential requests leave both servers idle
    // and a has the lower load relative to its weight.
    for (strategy, extra, want) in [
        ("weighted", "", 295..=305),
        ("least-connections", "", 300..=400),
        ("power-of-two", "", 255..=345),
        ("consistent-hash", "hash_key = \"header:x-user\"", 255..=345),
    ] {
        let f = Fulcrum::start(&controlled(&upstream(&[&a, &b], strategy, extra), &tok));
        let (a0, b0) = spread(&f, 400).await;
        assert!((150..=250).contains(&a0), "{strategy} 1:1 gave {a0}:{b0}");
        let (path, body) = put(&f, 3);
        let r = api(&f, "PUT", &path, &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(json(&r)["effective_weight"], 3);
        assert_eq!(json(&r)["weight"], 1);
        let (a1, b1) = spread(&f, 400).await;
        assert!(want.contains(&a1), "{strategy} 3:1 gave {a1}:{b1}");
        eprintln!("{strategy}: 1:1 -> {a0}:{b0}, 3:1 -> {a1}:{b1}");
        let text = scrape(&f).await;
        let s = a.addr.to_string();
        let l = [("upstream", "u"), ("server", s.as_str())];
        assert_eq!(
            metric(&text, "fulcrum_upstream_server_weight", &l),
            Some(3.0)
        );
        let r = api(&f, "DELETE", &path, "").await;
        assert_eq!(json(&r)["effective_weight"], 1);
        let (a2, b2) = spread(&f, 400).await;
        assert!((150..=250).contains(&a2), "{strategy} reset gave {a2}:{b2}");
    }
    // round-robin: accepted and shown, picks unchanged.
    let f = Fulcrum::start(&controlled(&upstream(&[&a, &b], "round-robin", ""), &tok));
    let (path, body) = put(&f, 9);
    let r = api(&f, "PUT", &path, &body).await;
    assert_eq!(json(&r)["effective_weight"], 9);
    assert_eq!(spread(&f, 400).await, (200, 200));
}

#[tokio::test]
async fn overrides_survive_a_reload_and_leave_with_their_server() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let tok = token_file(TOKEN);
    let both = controlled(&upstream(&[&a, &b], "weighted", ""), &tok);
    let f = Fulcrum::start(&both);
    set(&f, "drain", a.addr).await;
    let r = api(
        &f,
        "PUT",
        &server_path("u", b.addr, "weight"),
        "{\"weight\": 7}",
    )
    .await;
    assert_eq!(r.status, 200);
    // Same servers, another setting: the overrides stay.
    let changed = both.replace(
        "strategy = \"weighted\"",
        "strategy = \"weighted\"\nretries = 2",
    );
    assert!(f.reload(&changed).contains("config reloaded"));
    assert_eq!(server(&f, "u", a.addr).await["admin_state"], "drain");
    assert_eq!(server(&f, "u", b.addr).await["effective_weight"], 7);
    for _ in 0..10 {
        assert_eq!(get(f.addr("web"), "/").await.text(), "b");
    }
    // a leaves the config: its override goes with it.
    let only_b = controlled(&upstream(&[&b], "weighted", ""), &tok);
    assert!(f.reload(&only_b).contains("config reloaded"));
    assert_eq!(
        api(&f, "GET", &server_path("u", a.addr, ""), "")
            .await
            .status,
        404
    );
    assert!(f.reload(&both).contains("config reloaded"));
    eventually(
        Duration::from_secs(5),
        "a back without its drain",
        || async { server(&f, "u", a.addr).await["admin_state"] == "none" },
    )
    .await;
    assert_eq!(server(&f, "u", b.addr).await["effective_weight"], 7);
}

#[tokio::test]
async fn overrides_survive_a_restart_through_the_state_file() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let c = Backend::named("c").await;
    let tok = token_file(TOKEN);
    let state = temp_dir().join("fulcrum.state");
    let cfg = |bs: &[&Backend]| {
        with_admin(
            &upstream(bs, "weighted", ""),
            &format!(
                "token_file = \"{}\"\nstate_file = \"{}\"",
                tok.display(),
                state.display()
            ),
        )
    };
    let f = Fulcrum::start(&cfg(&[&a, &b, &c]));
    set(&f, "drain", a.addr).await;
    let r = api(
        &f,
        "PUT",
        &server_path("u", b.addr, "weight"),
        "{\"weight\": 5}",
    )
    .await;
    assert_eq!(r.status, 200);
    set(&f, "disable", c.addr).await;
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        saved.contains(&a.addr.to_string()) && saved.contains("\"drain\""),
        "{saved}"
    );
    // No temporary file is left behind.
    let dir = state.parent().unwrap();
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["fulcrum.state"], "{names:?}");
    assert_eq!(f.terminate(), Some(0));

    // c left the config while Fulcrum was down: its override is dropped.
    let f = Fulcrum::start(&cfg(&[&a, &b]));
    assert_eq!(server(&f, "u", a.addr).await["admin_state"], "drain");
    assert_eq!(server(&f, "u", b.addr).await["effective_weight"], 5);
    for _ in 0..10 {
        assert_eq!(get(f.addr("web"), "/").await.text(), "b");
    }
    assert!(f.logs().contains("override restored"));
    // The dropped one left the file at start.
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(!saved.contains(&c.addr.to_string()), "{saved}");
    set(&f, "enable", a.addr).await;
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(!saved.contains(&a.addr.to_string()), "{saved}");
    assert!(!saved.contains(&c.addr.to_string()), "{saved}");
    assert!(saved.contains(&b.addr.to_string()), "{saved}");
}

#[tokio::test]
async fn a_corrupt_state_file_is_logged_and_ignored() {
    let a = Backend::named("a").await;
    let tok = token_file(TOKEN);
    let state = temp_dir().join("fulcrum.state");
    std::fs::write(&state, "{\"version\": 1, \"servers\": [garbage").unwrap();
    let f = Fulcrum::start(&with_admin(
        &upstream(&[&a], "round-robin", ""),
        &format!(
            "token_file = \"{}\"\nstate_file = \"{}\"",
            tok.display(),
            state.display()
        ),
    ));
    assert!(f.logs().contains("corrupt state file"), "{}", f.logs());
    assert_eq!(get(f.addr("web"), "/").await.text(), "a");
    assert_eq!(server(&f, "u", a.addr).await["admin_state"], "none");
    // The next change writes a good file over it.
    set(&f, "drain", a.addr).await;
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["servers"][0]["admin_state"], "drain");
    // An unreadable one (a folder) is ignored too.
    drop(f);
    let dir_state = temp_dir().join("is-a-folder");
    std::fs::create_dir_all(&dir_state).unwrap();
    let f = Fulcrum::start(&with_admin(
        &upstream(&[&a], "round-robin", ""),
        &format!(
            "token_file = \"{}\"\nstate_file = \"{}\"",
            tok.display(),
            dir_state.display()
        ),
    ));
    assert!(
        f.logs().contains("cannot read the state file"),
        "{}",
        f.logs()
    );
    assert_eq!(get(f.addr("web"), "/").await.text(), "a");
}

/// A config for `ctl --config` naming `f`'s bound admin port (on the
/// unspecified address, which ctl dials on loopback) and the token file.
fn ctl_config(f: &Fulcrum, tok: &Path) -> PathBuf {
    let p = temp_dir().join("ctl.toml");
    let text = format!(
        "[admin]\nlisten = \"0.0.0.0:{}\"\ntoken_file = \"{}\"\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
         [[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{{ address = \"127.0.0.1:1\" }}]\n",
        f.admin.port(),
        tok.display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `fulcrum ctl` with `args`; returns (exit code, stdout, stderr).
fn ctl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .arg("ctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_commands_and_exit_codes() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let tok = token_file(TOKEN);
    let f = Fulcrum::start(&controlled(&upstream(&[&a, &b], "weighted", ""), &tok));
    let conf = ctl_config(&f, &tok).to_str().unwrap().to_string();
    let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            ctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap()
    };
    let with_conf = |rest: &[&str]| {
        let mut v = vec!["--config".to_string(), conf.clone()];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    let (code, out, _) = run(with_conf(&["drain", "u", &sa])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("admin_state=drain"), "{out}");
    let (code, out, _) = run(with_conf(&["weight", "u", &sb, "4"])).await;
    assert_eq!(code, Some(0), "{out}");
    let admin = f.admin.to_string();
    let tokp = tok.to_str().unwrap().to_string();
    let (code, out, _) = run(vec![
        "--admin".into(),
        admin.clone(),
        "--token-file".into(),
        tokp.clone(),
        "servers".into(),
    ])
    .await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].split_whitespace().eq([
        "UPSTREAM",
        "ADDRESS",
        "STATE",
        "ADMIN",
        "WEIGHT",
        "EFFECTIVE",
        "IN-FLIGHT"
    ]));
    let row = |addr: &str| -> Vec<String> {
        lines
            .iter()
            .find(|l| l.contains(addr))
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        row(&sa),
        ["u", sa.as_str(), "draining", "drain", "1", "1", "0"]
    );
    assert_eq!(row(&sb), ["u", sb.as_str(), "up", "none", "1", "4", "0"]);
    let (code, out, _) = run(with_conf(&["weight", "u", &sb, "reset"])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("effective_weight=1"), "{out}");
    let (code, _, _) = run(with_conf(&["disable", "u", &sa])).await;
    assert_eq!(code, Some(0));
    let (code, out, _) = run(with_conf(&["enable", "u", &sa])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("state=up admin_state=none"), "{out}");

    // API errors: status and message, exit 1.
    let (code, _, err) = run(with_conf(&["drain", "u", "127.0.0.1:9"])).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("404") && err.contains("has no server"),
        "{err}"
    );
    let (code, _, err) = run(with_conf(&["weight", "u", &sa, "1001"])).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("400"), "{err}");
    let wrong = token_file(&"w".repeat(40));
    let (code, _, err) = run(vec![
        "--admin".into(),
        admin.clone(),
        "--token-file".into(),
        wrong.to_str().unwrap().into(),
        "servers".into(),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
    // No answer: exit 2.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, err) = run(vec![
        "--admin".into(),
        closed.to_string(),
        "--token-file".into(),
        tokp,
        "servers".into(),
    ])
    .await;
    assert_eq!(code, Some(2), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drain_wait_returns_when_the_last_request_ends() {
    let (a, gate, mut arrived) = gated("a").await;
    let b = Backend::named("b").await;
    let tok = token_file(TOKEN);
    let f = Fulcrum::start(&controlled(&upstream(&[&a, &b], "round-robin", ""), &tok));
    let web = f.addr("web");
    let slow = tokio::spawn(async move { get(web, "/slow").await });
    arrived.recv().await.unwrap();
    let conf = ctl_config(&f, &tok);
    let sa = a.addr.to_string();

    // With a short timeout it gives up: exit 1.
    let (code, _, err) = tokio::task::spawn_blocking({
        let (conf, sa) = (conf.clone(), sa.clone());
        move || {
            ctl(&[
                "--config",
                conf.to_str().unwrap(),
                "drain",
                "u",
                &sa,
                "--wait",
                "--timeout",
                "300ms",
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("still 1 in flight"), "{err}");

    let mut child = Command::new(bin())
        .args(["ctl", "--config"])
        .arg(&conf)
        .args(["drain", "u", &sa, "--wait", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    // While the request is in flight, ctl keeps waiting (checked over a
    // few of its polls).
    let held_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < held_until {
        assert!(guard.0.try_wait().unwrap().is_none(), "ctl returned early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let released = Instant::now();
    gate.add_permits(1);
    let r = slow.await.unwrap();
    assert_eq!(r.text(), "a");
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            released.elapsed() < Duration::from_secs(5),
            "ctl did not return"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let after = released.elapsed();
    assert_eq!(status.code(), Some(0));
    eprintln!("ctl drain --wait returned {after:?} after the last request was released");
    assert!(after < Duration::from_secs(1), "{after:?}");
}

#[tokio::test]
async fn admin_listener_has_the_protections_of_a_listener() {
    let a = Backend::named("a").await;
    let tok = token_file(TOKEN);
    let f = Fulcrum::start(&controlled(&upstream(&[&a], "round-robin", ""), &tok));
    let bad = raw(
        f.admin,
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let huge = format!(
        "GET /health HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "x".repeat(70_000)
    );
    let r = raw(f.admin, huge.as_bytes(), Duration::from_secs(5)).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // A head that stops coming: 408 after header_read_timeout (10 s).
    let t = Instant::now();
    let slow = raw(
        f.admin,
        b"GET /health HTTP/1.1\r\nhost: a\r\n",
        Duration::from_secs(15),
    )
    .await;
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    assert!(t.elapsed() >= Duration::from_secs(9), "{:?}", t.elapsed());
    // A keep-alive admin connection does not hold up shutdown.
    let mut idle = Client::connect(f.admin).await;
    assert_eq!(idle.get("/health", "a").await.status, 200);
    let started = Instant::now();
    assert_eq!(f.terminate(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_does_not_slow_serving() {
    let a = Backend::named("a").await;
    let tok = token_file(TOKEN);
    let f = Fulcrum::start(&controlled(&upstream(&[&a], "round-robin", ""), &tok));
    let web = f.addr("web");
    let measure = || async move {
        let mut client = Client::connect(web).await;
        let mut lat = Vec::new();
        for _ in 0..1000 {
            let t = Instant::now();
            assert_eq!(client.get("/", "x").await.status, 200);
            lat.push(t.elapsed());
        }
        lat.sort();
        (lat[500], lat[990])
    };
    let quiet = measure().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let admin = f.admin;
    // 64 guessers, each on a new connection per guess (a 401 is slow to
    // come, so reconnecting is the fastest way to guess).
    let mut flooders = Vec::new();
    for i in 0..64 {
        let (stop, refused) = (stop.clone(), refused.clone());
        flooders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let auth = format!("Bearer guess-{i}-0123456789abcdef0123456789");
                let req = Request::post("/api/v1/upstreams/u/servers/x/drain")
                    .header("host", "a")
                    .header("authorization", auth)
                    .body(full(""))
                    .unwrap();
                let mut c = Client::connect(admin).await;
                let r = collect(c.send(req).await.unwrap()).await;
                assert_eq!(r.status, 401);
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let t = Instant::now();
    let flooded = measure().await;
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in flooders {
        t.await.unwrap();
    }
    let n = refused.load(Ordering::Relaxed);
    eprintln!(
        "proxy p50/p99 quiet {quiet:?}; during {n} bad-token requests in {took:?}: {flooded:?}"
    );
    assert!(n > 300, "the flood was too small to mean anything: {n}");
    assert!(
        flooded.0 < Duration::from_millis(20) && flooded.1 < Duration::from_millis(100),
        "serving slowed: {quiet:?} -> {flooded:?}"
    );
}

/// A backend on a fixed address that can be stopped and started again
/// (a redeployed server keeps its port).
async fn start_on(addr: SocketAddr, name: &'static str) -> Backend {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Backend::on(l, move |_req| async move { Response::new(full(name)) }),
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_under_load_fails_no_request() {
    rolling_deploy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_with_sticky_clients_fails_no_request() {
    rolling_deploy(true).await;
}

/// What the clients saw, shared with the test.
#[derive(Default)]
struct Tally {
    /// Requests answered 200, by server name.
    per_server: std::collections::HashMap<String, usize>,
    /// During a server's drain window: (requests it answered, how many of
    /// them carried a cookie pinning them to it).
    in_window: std::collections::HashMap<String, (usize, usize)>,
    failed: Vec<String>,
}

/// Clients at a steady rate (4 connections, a request every 10 ms each;
/// with `sticky`, each keeps its cookie like a browser) while each of 3
/// servers in turn is drained, waited for, stopped, started again on the
/// same port and enabled. No request may fail, and a drained server gets
/// only requests pinned to it by their cookie (none without sticky).
async fn rolling_deploy(sticky: bool) {
    use fulcrum::balance::sticky::server_id_hex;
    let names = ["s0", "s1", "s2"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Backend::named(n).await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let ids: Arc<Vec<(String, &'static str)>> = Arc::new(
        addrs
            .iter()
            .zip(names)
            .map(|(a, n)| (server_id_hex("u", *a), n))
            .collect(),
    );
    let tok = token_file(TOKEN);
    let refs: Vec<&Backend> = backends.iter().collect();
    let extra = if sticky {
        "retries = 2\n[upstream.u.sticky]\ncookie = \"sid\""
    } else {
        "retries = 2"
    };
    let f = Fulcrum::start(&controlled(
        &upstream(&refs, "least-connections", extra),
        &tok,
    ));
    let web = f.addr("web");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    // The server in its drain window, if any.
    let window: Arc<std::sync::Mutex<Option<&'static str>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, sent, tally, window, ids) = (
            stop.clone(),
            sent.clone(),
            tally.clone(),
            window.clone(),
            ids.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut client = Client::connect(web).await;
            let mut cookie: Option<String> = None;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                sent.fetch_add(1, Ordering::Relaxed);
                let mut req = Request::get("/").header("host", "x");
                if let Some(c) = &cookie {
                    req = req.header("cookie", c.as_str());
                }
                let pinned_to = cookie.as_ref().and_then(|c| {
                    let id = c.strip_prefix("sid=")?;
                    ids.iter().find(|(i, _)| i == id).map(|(_, n)| *n)
                });
                // The server in its drain window when this request was sent
                // (so it was picked after the drain took effect).
                let sent_in_window = *window.lock().unwrap();
                match client.send(req.body(full("")).unwrap()).await {
                    Ok(r) => {
                        let r = collect(r).await;
                        if let Some(c) = r.header("set-cookie") {
                            cookie = Some(c.split(';').next().unwrap().to_string());
                        }
                        let mut t = tally.lock().unwrap();
                        if r.status != 200 {
                            t.failed.push(format!("{} {}", r.status, r.text()));
                            continue;
                        }
                        let name = r.text();
                        *t.per_server.entry(name.clone()).or_default() += 1;
                        let static_name = names_of(&ids, &name);
                        // Still in the window when the answer came: the
                        // window closes before `enable`, so the pick cannot
                        // have followed it (a client task descheduled
                        // between reading the window and sending could
                        // otherwise be picked after the enable).
                        let answered_in_window = *window.lock().unwrap();
                        if static_name.is_some()
                            && sent_in_window == static_name
                            && answered_in_window == static_name
                        {
                            let e = t.in_window.entry(name.clone()).or_default();
                            e.0 += 1;
                            e.1 += usize::from(pinned_to == static_name);
                        }
                    }
                    Err(e) => {
                        tally.lock().unwrap().failed.push(e.to_string());
                        client = Client::connect(web).await;
                    }
                }
            }
        }));
    }
    let count = |name: &str| {
        tally
            .lock()
            .unwrap()
            .per_server
            .get(name)
            .copied()
            .unwrap_or(0)
    };
    let mut windows = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let addr = addrs[i];
        let t = Instant::now();
        set(&f, "drain", addr).await;
        // Requests picked before the drain finish; after it, only sticky
        // ones are sent there. (With sticky clients pinned to it, in_flight
        // only reaches 0 once it is stopped, so wait for that only without.)
        if !sticky {
            eventually(Duration::from_secs(10), "drained", || async {
                server(&f, "u", addr).await["in_flight"] == 0
            })
            .await;
        }
        // Requests sent from now on were picked with the drain in effect.
        *window.lock().unwrap() = Some(name);
        // Traffic in the window, with the server up, then stopped.
        tokio::time::sleep(Duration::from_millis(200)).await;
        backends[i].stop();
        tokio::time::sleep(Duration::from_millis(200)).await;
        backends[i] = start_on(addr, name).await;
        *window.lock().unwrap() = None;
        set(&f, "enable", addr).await;
        windows.push(t.elapsed());
        // Back in rotation before the next server goes (sticky clients
        // stay where they were re-pinned, so only new picks would show it).
        if !sticky {
            let back = count(name);
            eventually(Duration::from_secs(10), "back in rotation", || async {
                count(name) > back + 5
            })
            .await;
        }
        assert_eq!(server(&f, "u", addr).await["state"], "up");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let t = tally.lock().unwrap();
    let total = sent.load(Ordering::Relaxed);
    for (name, w) in names.iter().zip(&windows) {
        let (n, pinned) = t.in_window.get(*name).copied().unwrap_or((0, 0));
        eprintln!(
            "sticky={sticky} {name}: {n} requests during its drain window ({w:?}), {pinned} of them sticky"
        );
        assert_eq!(
            n, pinned,
            "{name} got requests not pinned to it while drained"
        );
        if !sticky {
            assert_eq!(n, 0, "{name} got requests while drained (no sticky config)");
        }
    }
    eprintln!(
        "sticky={sticky}: {total} requests sent, {} failed, per server {:?}",
        t.failed.len(),
        t.per_server
    );
    assert!(t.failed.is_empty(), "failed requests: {:?}", t.failed);
    assert!(total > 300, "load too light: {total}");
}

fn names_of(ids: &[(String, &'static str)], name: &str) -> Option<&'static str> {
    ids.iter().find(|(_, n)| *n == name).map(|(_, n)| *n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_marks_drained_and_disabled_servers() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let c = Backend::named("c").await;
    let tok = token_file(TOKEN);
    let f = Fulcrum::start(&controlled(&upstream(&[&a, &b, &c], "weighted", ""), &tok));
    set(&f, "drain", a.addr).await;
    set(&f, "disable", b.addr).await;
    let r = api(
        &f,
        "PUT",
        &server_path("u", c.addr, "weight"),
        "{\"weight\": 6}",
    )
    .await;
    assert_eq!(r.status, 200);

    let v: Value = serde_json::from_slice(&get(f.admin, "/status.json").await.body).unwrap();
    let s = &v["upstreams"][0]["servers"];
    let find = |addr: SocketAddr| {
        s.as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == addr.to_string())
            .unwrap()
            .clone()
    };
    assert_eq!(find(a.addr)["state"], "draining");
    assert_eq!(find(a.addr)["admin_state"], "drain");
    assert_eq!(find(b.addr)["state"], "disabled");
    assert_eq!(find(b.addr)["admin_state"], "disable");
    assert_eq!(find(c.addr)["effective_weight"], 6);
    assert_eq!(find(c.addr)["weight"], 1);

    let Some(bin) = chromium() else { return };
    let profile = temp_dir().join("chromium-profile");
    let url = format!("http://{}/status", f.admin);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("status-page-runtime-control.png");
    let _ = std::fs::remove_file(&shot);
    let shot2 = shot.clone();
    let dom = tokio::task::spawn_blocking(move || {
        let chromium = |args: &[String]| run_chromium(bin, &profile, args);
        let dom = chromium(&["--dump-dom".into(), url.clone()]);
        chromium(&[
            "--window-size=1280,700".into(),
            format!("--screenshot={}", shot2.display()),
            url,
        ]);
        dom
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    eprintln!("screenshot: {}", shot.display());
    for (addr, state, admin) in [
        (a.addr, "draining", "drain"),
        (b.addr, "disabled", "disable"),
        (c.addr, "up", "none"),
    ] {
        let want =
            format!("data-server=\"{addr}\" data-state=\"{state}\" data-admin-state=\"{admin}\"");
        assert!(dom.contains(&want), "{want} not in:\n{dom}");
    }
    assert!(
        dom.contains("admin: drain") && dom.contains("admin: disable"),
        "{dom}"
    );
    assert!(
        dom.contains("title=\"runtime override; configured 1\">6<"),
        "{dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_holds_at_most_1024_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::named("a").await;
    let tok = token_file(TOKEN);
    let f = Fulcrum::start(&controlled(&upstream(&[&a], "round-robin", ""), &tok));
    let mut held = Vec::new();
    for _ in 0..1024 {
        held.push(tokio::net::TcpStream::connect(f.admin).await.unwrap());
    }
    // The 1025th waits in the accept queue: no answer while all are held
    // (they stay for header_read_timeout, 10 s).
    let mut extra = tokio::net::TcpStream::connect(f.admin).await.unwrap();
    extra
        .write_all(b"GET /health HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(1000), extra.read(&mut buf)).await;
    assert!(early.is_err(), "answered beyond 1024 connections");
    // The proxy listener is not affected.
    assert_eq!(get(f.addr("web"), "/").await.text(), "a");
    // One slot frees: the waiting connection is served.
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
