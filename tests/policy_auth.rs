//! Route policy access: `basic_auth` against hashes made by reference tools
//! (Apache's `htpasswd -B`, the argon2 reference CLI), and `forward_auth`
//! against a real auth server started here that checks what it is sent.
//! Also what `check` and a reload say about a bad htpasswd file.

mod common;
use common::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

// Made once with Apache's reference tool (apache2-utils 2.4.71, Debian 12):
//   htpasswd -nbB -C 10 alice 'correct horse battery'
const ALICE: &str = "alice:$2y$10$FkS71ttTtEck7i58SGgyeumlKTSSbwnXL.AbYlH6ChqN4w4eMdwEu";
//   htpasswd -nbB -C 5 carol 's3cret:with:colons'
const CAROL: &str = "carol:$2y$05$RJQgsnJWtRzr/VRq0AAcQuWvRPTXuAGEs4EnvDpGtZD45LVTqNVya";
// Made once with the argon2 reference implementation's CLI (Debian package
// argon2 0~20171227):
//   echo -n 'argon pass' | argon2 fulcrumsaltfortests -id -t 2 -m 12 -p 1 -e
const BOB: &str = "bob:$argon2id$v=19$m=4096,t=2,p=1$ZnVsY3J1bXNhbHRmb3J0ZXN0cw$jeCcmvaT5vG7X29onYGY/4R3TPyBhHJoOnUX4NdRRAo";
// `htpasswd -nbm dave x`: MD5, refused.
const DAVE_MD5: &str = "dave:$apr1$u.tWOxJt$eJwyNXI50e6Vf7nzGvuc//";

fn basic(user_pass: &[u8]) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// An htpasswd file with `lines` in a fresh directory; its absolute path.
fn users_file(lines: &[&str]) -> PathBuf {
    let path = temp_dir().join("ops.htpasswd");
    std::fs::write(&path, format!("# ops users\n{}\n", lines.join("\n"))).unwrap();
    path
}

fn basic_route(users: &std::path::Path, b: &Backend) -> String {
    config(&format!(
        "[[route]]\nname = \"ops\"\nbasic_auth = {{ realm = \"ops\", users_file = \"{}\" }}\nupstream = \"u\"\n\n[upstream.u]\n{}\n",
        users.display(),
        servers(&[b])
    ))
}

async fn send(addr: SocketAddr, path: &str, headers: &[(&str, &[u8])]) -> Reply {
    let mut b = Request::get(path).header("host", "example.test");
    for (k, v) in headers {
        b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
    }
    let mut c = Client::connect(addr).await;
    collect(c.send(b.body(full("")).unwrap()).await.unwrap()).await
}

fn assert_401(r: &Reply, realm: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Basic realm=\"{realm}\"").as_str()),
        "{what}"
    );
    assert_eq!(r.text(), "unauthorized\n", "{what}");
}

async fn rejections(f: &Fulcrum, route: &str, reason: &str) -> f64 {
    metric(
        &scrape(f).await,
        "fulcrum_policy_rejections_total",
        &[("route", route), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn basic_auth_with_reference_bcrypt_and_argon2id_hashes() {
    let b = Backend::named("app").await;
    let users = users_file(&[ALICE, BOB, CAROL]);
    let f = Fulcrum::start(&basic_route(&users, &b));
    let web = f.addr("web");

    for (cred, what) in [
        (&b"alice:correct horse battery"[..], "bcrypt cost 10"),
        (b"bob:argon pass", "argon2id"),
        (b"carol:s3cret:with:colons", "a password with colons"),
    ] {
        let r = send(web, "/", &[("authorization", basic(cred).as_bytes())]).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(r.text(), "app");
        assert!(
            b.last().headers.get("authorization").is_none(),
            "{what}: the upstream must not see the credentials"
        );
    }
    assert_eq!(b.hits(), 3);

    let wrong = [
        basic(b"alice:correct horse batterz"),
        basic(b"alice:"),
        basic(b"bob:correct horse battery"),
        basic(b"mallory:correct horse battery"),
        basic(b"ALICE:correct horse battery"),
    ];
    for cred in &wrong {
        let r = send(web, "/", &[("authorization", cred.as_bytes())]).await;
        assert_401(&r, "ops", cred);
    }
    assert_401(&send(web, "/", &[]).await, "ops", "no Authorization");
    assert_eq!(b.hits(), 3, "a refused request never reaches the upstream");
    assert_eq!(rejections(&f, "ops", "basic_auth").await, 6.0);
}

#[tokio::test]
async fn malformed_authorization_is_401_never_400() {
    let b = Backend::named("app").await;
    let users = users_file(&[CAROL]);
    let f = Fulcrum::start(&basic_route(&users, &b));
    let web = f.addr("web");
    let good = basic(b"carol:s3cret:with:colons");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("scheme only", b"Basic".to_vec()),
        ("scheme and space", b"Basic ".to_vec()),
        ("not base64", b"Basic !!!!****".to_vec()),
        ("bad padding", b"Basic Y2Fyb2w6=x".to_vec()),
        ("no space", good.replace("Basic ", "Basic").into_bytes()),
        ("other scheme", good.replace("Basic", "Bearer").into_bytes()),
        ("no colon", basic(b"carol").into_bytes()),
        ("empty user", basic(b":s3cret:with:colons").into_bytes()),
        ("not UTF-8", basic(b"carol:\xff\xfe").into_bytes()),
        ("8-bit header bytes", b"Basic \xe4\xf6\xfc".to_vec()),
        ("huge", basic(&[b'a'; 6000]).into_bytes()),
    ];
    for (what, value) in &cases {
        let r = send(web, "/", &[("authorization", value)]).await;
        assert_401(&r, "ops", what);
    }
    // Two Authorization headers are ambiguous, even if one is right.
    let r = send(
        web,
        "/",
        &[
            ("authorization", good.as_bytes()),
            ("authorization", basic(b"carol:x").as_bytes()),
        ],
    )
    .await;
    assert_401(&r, "ops", "two headers");
    // The process is fine and the right credentials still work.
    let r = send(web, "/", &[("authorization", good.as_bytes())]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        rejections(&f, "ops", "basic_auth").await,
        cases.len() as f64 + 1.0
    );
}

#[tokio::test]
async fn a_verified_password_is_cached_and_a_reload_forgets_it() {
    let b = Backend::named("app").await;
    let users = users_file(&[ALICE]);
    let toml = basic_route(&users, &b);
    let f = Fulcrum::start(&toml);
    let web = f.addr("web");
    let cred = basic(b"alice:correct horse battery");
    let auth: &[(&str, &[u8])] = &[("authorization", cred.as_bytes())];

    // The first request pays for one bcrypt check (cost 10)...
    let start = Instant::now();
    assert_eq!(send(web, "/", auth).await.status, 200);
    let first = start.elapsed();
    // ...the next 50 together cost less than 10 checks would: each is a
    // cache hit, not a new bcrypt check.
    let mut c = Client::connect(web).await;
    let start = Instant::now();
    for _ in 0..50 {
        let req = Request::get("/")
            .header("host", "example.test")
            .header("authorization", &cred)
            .body(full(""))
            .unwrap();
        assert_eq!(collect(c.send(req).await.unwrap()).await.status, 200);
    }
    let fifty = start.elapsed();
    assert!(
        fifty < first * 10,
        "50 cached requests took {fifty:?}; one bcrypt check took {first:?}"
    );

    // A reload with a new password for alice: the old one is refused at
    // once (the cache went with the old users file).
    std::fs::write(&users, format!("{CAROL}\n").replace("carol", "alice")).unwrap();
    assert!(f.reload(&toml).contains("config reloaded"));
    assert_eq!(send(web, "/", auth).await.status, 401);
    let r = send(
        web,
        "/",
        &[(
            "authorization",
            basic(b"alice:s3cret:with:colons").as_bytes(),
        )],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_bad_htpasswd_file_fails_a_reload_and_keeps_the_old_users() {
    let b = Backend::named("app").await;
    let users = users_file(&[ALICE, CAROL]);
    let toml = basic_route(&users, &b);
    let f = Fulcrum::start(&toml);
    let web = f.addr("web");
    let carol = basic(b"carol:s3cret:with:colons");

    std::fs::write(&users, format!("{CAROL}\n{DAVE_MD5}\n")).unwrap();
    let line = f.reload(&toml);
    assert!(line.contains("reload failed"), "{line}");
    assert!(line.contains("ops.htpasswd:2"), "{line}");
    // The old users still hold: alice was removed by the bad file only.
    let r = send(
        web,
        "/",
        &[(
            "authorization",
            basic(b"alice:correct horse battery").as_bytes(),
        )],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        send(web, "/", &[("authorization", carol.as_bytes())])
            .await
            .status,
        200
    );
    // An empty file fails too.
    std::fs::write(&users, "# nobody\n").unwrap();
    assert!(f.reload(&toml).contains("reload failed"));
    assert_eq!(
        send(web, "/", &[("authorization", carol.as_bytes())])
            .await
            .status,
        200
    );
}

#[test]
fn check_names_the_htpasswd_file_line_and_key() {
    let dir = temp_dir();
    std::fs::write(
        dir.join("ops.htpasswd"),
        format!("# ops\n{ALICE}\n{DAVE_MD5}\n{BOB}\n"),
    )
    .unwrap();
    let toml = r#"[admin]
listen = "127.0.0.1:9901"
[[listener]]
name = "web"
listen = "127.0.0.1:8080"
[[route]]
name = "ops"
basic_auth = { users_file = "ops.htpasswd" }
upstream = "u"
[[route]]
forward_auth = { address = "127.0.0.1:9000", path = "verify", timeout = "0s", request_headers = ["Connection"] }
upstream = "u"
[upstream.u]
servers = [{ address = "127.0.0.1:1" }]
"#;
    let path = dir.join("fulcrum.toml");
    let (code, err) = check_text(&path, toml);
    assert_eq!(code, 1, "{err}");
    let p = path.display();
    let users = dir.join("ops.htpasswd");
    for want in [
        // The users_file value is on line 8, column 29 of the config; the
        // bad hash on line 3 of the htpasswd file.
        format!(
            "{p}:8:29: route[0].basic_auth.users_file: {}:3: user \"dave\": an Apache MD5 ($apr1$) hash",
            users.display()
        ),
        format!("{p}:11:53: route[1].forward_auth.path: \"verify\" must be a path starting with '/'"),
        format!("{p}:11:73: route[1].forward_auth.timeout: must be greater than 0"),
        format!("{p}:11:98: route[1].forward_auth.request_headers[0]: \"Connection\" cannot be listed"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }

    // Fixed, the same config passes.
    std::fs::write(dir.join("ops.htpasswd"), format!("{ALICE}\n{BOB}\n")).unwrap();
    let fixed = toml.replace(
        "path = \"verify\", timeout = \"0s\", request_headers = [\"Connection\"]",
        "path = \"/verify\"",
    );
    let (code, err) = check_text(&path, &fixed);
    assert_eq!(code, 0, "{err}");
}

// ---------------------------------------------------------------------------
// forward_auth

/// A small real auth service: HTTP/1.1 on a loopback port, counting the
/// connections it accepts and keeping the head of every request.
struct AuthServer {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthServer {
    async fn start<F, Fut>(handler: F) -> AuthServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (conns.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (handler, seen) = (handler.clone(), s.clone());
                // Held in the set, so aborting the server ends them too.
                open.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        seen.lock()
                            .unwrap()
                            .push((req.uri().to_string(), req.headers().clone()));
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        AuthServer {
            addr,
            conns,
            seen,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> (String, HeaderMap) {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn forward_route(auth: SocketAddr, timeout: &str, b: &Backend) -> String {
    config(&format!(
        r#"[[route]]
name = "app"
forward_auth = {{ address = "{auth}", path = "/verify?from=fulcrum", timeout = "{timeout}", request_headers = ["Authorization", "Cookie"], response_headers = ["X-User", "X-Email"] }}
upstream = "u"

[upstream.u]
{}
"#,
        servers(&[b])
    ))
}

/// Lets in a request whose cookie is `session=ok`, telling who it is;
/// otherwise sends the browser to sign in.
async fn session_auth() -> AuthServer {
    AuthServer::start(|req: Request<Incoming>| async move {
        let ok = req
            .headers()
            .get_all("cookie")
            .iter()
            .any(|c| c.as_bytes() == b"session=ok");
        if ok {
            Response::builder()
                .header("x-user", "alice")
                .header("x-other", "not listed")
                .body(full(""))
                .unwrap()
        } else if req.headers().contains_key("authorization") {
            Response::builder()
                .status(401)
                .header("www-authenticate", "Bearer realm=\"sso\"")
                .header("content-type", "application/json")
                .body(full("{\"error\":\"bad token\"}"))
                .unwrap()
        } else {
            Response::builder()
                .status(302)
                .header("location", "https://sso.example.com/login?rd=%2Fapp")
                .header("set-cookie", "csrf=abc; Path=/; HttpOnly")
                .body(full("sign in first\n"))
                .unwrap()
        }
    })
    .await
}

#[tokio::test]
async fn forward_auth_allows_with_copied_headers_and_sends_only_listed_ones() {
    let b = Backend::named("app").await;
    let auth = session_auth().await;
    let f = Fulcrum::start(&forward_route(auth.addr, "2s", &b));
    let web = f.addr("web");
    let r = send(
        web,
        "/app/page?a=1&b=%20",
        &[
            ("cookie", b"session=ok"),
            ("authorization", b"Bearer client-token"),
            ("x-user", b"mallory"),
            ("x-email", b"mallory@example.com"),
            ("x-secret", b"not for the auth service"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "app");

    // What the auth service got: the listed headers and X-Forwarded-*, and
    // nothing else.
    let (uri, h) = auth.last();
    assert_eq!(uri, "/verify?from=fulcrum");
    let names: std::collections::BTreeSet<&str> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "authorization",
            "cookie",
            "host",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-method",
            "x-forwarded-proto",
            "x-forwarded-uri"
        ],
        "{h:?}"
    );
    assert_eq!(h["host"], auth.addr.to_string().as_str());
    assert_eq!(h["authorization"], "Bearer client-token");
    assert_eq!(h["x-forwarded-method"], "GET");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "example.test");
    assert_eq!(h["x-forwarded-uri"], "/app/page?a=1&b=%20");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");

    // What the upstream got: the auth service's X-User, not the forged
    // one; the forged X-Email gone (the answer had none); the client's own
    // Authorization kept; the auth service's unlisted header not copied.
    let seen = b.last();
    assert_eq!(seen.uri, "/app/page?a=1&b=%20");
    assert_eq!(
        seen.headers.get_all("x-user").iter().collect::<Vec<_>>(),
        ["alice"]
    );
    assert!(seen.headers.get("x-email").is_none());
    assert_eq!(seen.headers["authorization"], "Bearer client-token");
    assert!(seen.headers.get("x-other").is_none());
    assert_eq!(seen.headers["x-secret"], "not for the auth service");

    // The auth service's connection is pooled: more requests, one connection.
    for _ in 0..5 {
        let r = send(web, "/", &[("cookie", b"session=ok")]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(auth.requests(), 6);
    assert_eq!(
        auth.conns.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
    assert_eq!(rejections(&f, "app", "forward_auth").await, 0.0);

    // A reload that keeps the auth service's address keeps its connection.
    let toml = forward_route(auth.addr, "3s", &b);
    assert!(f.reload(&toml).contains("config reloaded"));
    assert_eq!(
        send(web, "/", &[("cookie", b"session=ok")]).await.status,
        200
    );
    assert_eq!(
        auth.conns.load(Ordering::SeqCst),
        1,
        "kept across the reload"
    );
}

#[tokio::test]
async fn basic_auth_comes_before_forward_auth_and_keeps_its_header_to_itself() {
    let b = Backend::named("app").await;
    let auth = AuthServer::start(|req: Request<Incoming>| async move {
        // The Basic credentials were taken off before this service is asked.
        let status = if req.headers().contains_key("authorization") {
            500
        } else {
            204
        };
        Response::builder()
            .status(status)
            .header("x-user", "from-sso")
            .body(full(""))
            .unwrap()
    })
    .await;
    let users = users_file(&[CAROL]);
    let f = Fulcrum::start(&config(&format!(
        r#"[[route]]
name = "both"
basic_auth = {{ realm = "ops", users_file = "{}" }}
forward_auth = {{ address = "{}", request_headers = ["Authorization"], response_headers = ["X-User"] }}
upstream = "u"

[upstream.u]
{}
"#,
        users.display(),
        auth.addr,
        servers(&[&b])
    )));
    let web = f.addr("web");
    assert_401(&send(web, "/", &[]).await, "ops", "no credentials");
    assert_eq!(
        auth.requests(),
        0,
        "refused before the auth service is asked"
    );
    let cred = basic(b"carol:s3cret:with:colons");
    let r = send(web, "/", &[("authorization", cred.as_bytes())]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(auth.requests(), 1);
    assert_eq!(b.last().headers["x-user"], "from-sso");
    assert!(b.last().headers.get("authorization").is_none());
    assert_eq!(rejections(&f, "both", "basic_auth").await, 1.0);
}

#[tokio::test]
async fn forward_auth_denials_reach_the_client_as_the_auth_service_sent_them() {
    let b = Backend::named("app").await;
    let auth = session_auth().await;
    let f = Fulcrum::start(&forward_route(auth.addr, "2s", &b));
    let web = f.addr("web");

    let r = send(web, "/app", &[("cookie", b"session=expired")]).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("https://sso.example.com/login?rd=%2Fapp")
    );
    assert_eq!(r.header("set-cookie"), Some("csrf=abc; Path=/; HttpOnly"));
    assert_eq!(r.text(), "sign in first\n");
    assert!(r.header("x-request-id").is_some());

    let r = send(web, "/app", &[("authorization", b"Bearer stale")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"sso\""));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "{\"error\":\"bad token\"}");

    assert_eq!(b.hits(), 0, "a denied request never reaches the upstream");
    assert_eq!(rejections(&f, "app", "forward_auth").await, 2.0);
    assert_eq!(rejections(&f, "app", "forward_auth_error").await, 0.0);
    // The denials' connection went back to the pool too.
    assert_eq!(
        send(web, "/", &[("cookie", b"session=ok")]).await.status,
        200
    );
    assert_eq!(auth.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_hanging_auth_service_costs_the_client_its_timeout_not_more() {
    let b = Backend::named("app").await;
    let auth = AuthServer::start(|_req| async move {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await;
    let f = Fulcrum::start(&forward_route(auth.addr, "1s", &b));
    let start = Instant::now();
    let r = send(f.addr("web"), "/", &[]).await;
    let took = start.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.text(), "authentication service unavailable\n");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // Generous for a loaded CI machine; without the timeout this would hang.
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(auth.requests(), 1);
    assert_eq!(rejections(&f, "app", "forward_auth_error").await, 1.0);
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn an_unreachable_auth_service_is_503() {
    let b = Backend::named("app").await;
    // A port nobody listens on: bound, then closed.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let f = Fulcrum::start(&forward_route(closed, "2s", &b));
    let start = Instant::now();
    let r = send(f.addr("web"), "/", &[("cookie", b"session=ok")]).await;
    assert_eq!(r.status, 503);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refused is immediate"
    );
    assert_eq!(rejections(&f, "app", "forward_auth_error").await, 1.0);
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn a_10_mb_denial_body_streams_through() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 10 * 1024 * 1024;
    let b = Backend::named("app").await;
    // The auth service sends its first megabyte, then waits until the test
    // has seen bytes arrive at the client: a proxy that buffered the whole
    // body before answering would never let the client see any, and the
    // test would time out.
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let auth = AuthServer::start(move |_req| {
        let go = go_rx.clone();
        async move {
            let chunks = futures_util::stream::unfold((0usize, go), |(sent, mut go)| async move {
                if sent >= TOTAL {
                    return None;
                }
                if sent == 1024 * 1024 {
                    let _ = go.wait_for(|g| *g).await;
                }
                let frame = Frame::data(Bytes::from(vec![b'x'; CHUNK]));
                Some((
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(frame),
                    (sent + CHUNK, go),
                ))
            });
            Response::builder()
                .status(403)
                .header("content-type", "text/plain")
                .body(http_body_util::StreamBody::new(chunks).boxed())
                .unwrap()
        }
    })
    .await;
    let f = Fulcrum::start(&forward_route(auth.addr, "2s", &b));
    let mut c = Client::connect(f.addr("web")).await;
    let req = Request::get("/")
        .header("host", "example.test")
        .body(full(""))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.send(req))
        .await
        .expect("the response head comes before the body ends")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let mut body = resp.into_body();
    let mut got = 0usize;
    while got < CHUNK {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the first megabyte arrives while the auth service holds the rest")
            .unwrap()
            .unwrap();
        got += frame.data_ref().map_or(0, |d| d.len());
    }
    go_tx.send(true).unwrap();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("the rest streams")
    {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            assert!(d.iter().all(|b| *b == b'x'));
            got += d.len();
        }
    }
    assert_eq!(got, TOTAL);
    assert_eq!(rejections(&f, "app", "forward_auth").await, 1.0);
}

#[tokio::test]
async fn error_pages_cover_fulcrums_401_but_not_the_auth_services_own_answer() {
    let b = Backend::named("app").await;
    let auth = session_auth().await;
    let users = users_file(&[CAROL]);
    let page = users.with_file_name("401.html");
    std::fs::write(&page, "<h1>who are you?</h1>\n").unwrap();
    let toml = config(&format!(
        r#"[[route]]
path_prefix = "/ops"
basic_auth = {{ realm = "ops", users_file = "{users}" }}
error_pages = {{ "401" = "{page}" }}
upstream = "u"

[[route]]
forward_auth = {{ address = "{addr}", timeout = "2s", request_headers = ["Authorization"] }}
error_pages = {{ "401" = "{page}" }}
upstream = "u"

[upstream.u]
{servers}
"#,
        users = users.display(),
        page = page.display(),
        addr = auth.addr,
        servers = servers(&[&b]),
    ));
    let f = Fulcrum::start(&toml);
    let web = f.addr("web");
    // Fulcrum's own 401 gets the page and keeps its challenge.
    let r = send(web, "/ops", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), "<h1>who are you?</h1>\n");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"ops\""));
    // The auth service's 401 is its own: body and type as it sent them.
    let r = send(web, "/app", &[("authorization", b"Bearer bad")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), "{\"error\":\"bad token\"}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(b.hits(), 0);
}
