//! Route policy (0.2) except auth and compression: match keys with
//! fall-through, traffic splits, `redirect` and `respond`, prefix and header
//! rewrites, `deny`/`allow`, error pages, the per-route metrics, and what
//! `check` and a reload say about bad policy config.

mod common;
use common::*;

use http::Request;

/// A backend that echoes the path and query it got.
async fn echo(name: &'static str) -> Backend {
    Backend::start(
        move |req| async move { http::Response::new(full(format!("{name} {}", req.uri()))) },
    )
    .await
}

async fn send(f: &Fulcrum, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "example.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut c = Client::connect(f.addr("web")).await;
    collect(c.send(b.body(full("")).unwrap()).await.unwrap()).await
}

fn upstreams(pairs: &[(&str, &Backend)]) -> String {
    pairs
        .iter()
        .map(|(n, b)| format!("[upstream.{n}]\n{}\n", servers(&[b])))
        .collect()
}

#[tokio::test]
async fn methods_headers_and_query_match_and_fall_through() {
    let (a, b, c, d) = (
        echo("a").await,
        echo("b").await,
        echo("c").await,
        echo("d").await,
    );
    let toml = config(&format!(
        r#"
[[route]]
name = "reads"
methods = ["GET", "head"]
headers = {{ "X-Canary" = "1" }}
upstream = "a"

[[route]]
headers = {{ "X-Debug" = "*" }}
upstream = "b"

[[route]]
query = {{ "preview" = "true", "lang" = "en us" }}
upstream = "c"

[[route]]
upstream = "d"

{}"#,
        upstreams(&[("a", &a), ("b", &b), ("c", &c), ("d", &d)])
    ));
    let f = Fulcrum::start(&toml);
    let who = |r: Reply| r.text().split(' ').next().unwrap().to_string();
    assert_eq!(who(send(&f, "GET", "/", &[("x-canary", "1")]).await), "a");
    // Wrong value, wrong method: fall through to the next route.
    assert_eq!(who(send(&f, "GET", "/", &[("x-canary", "2")]).await), "d");
    assert_eq!(who(send(&f, "POST", "/", &[("x-canary", "1")]).await), "d");
    // "*": any value, names case-insensitive.
    assert_eq!(who(send(&f, "POST", "/", &[("X-DEBUG", "")]).await), "b");
    // Query parameters are percent-decoded ('+' is a space); all must match.
    assert_eq!(
        who(send(&f, "GET", "/x?preview=true&lang=en%20us", &[]).await),
        "c"
    );
    assert_eq!(
        who(send(&f, "GET", "/x?lang=en+us&preview=%74rue", &[]).await),
        "c"
    );
    assert_eq!(who(send(&f, "GET", "/x?preview=true", &[]).await), "d");
    assert_eq!(
        who(send(&f, "GET", "/x?preview=false&lang=en%20us", &[]).await),
        "d"
    );

    // fulcrum_route_requests_total counts by route name (default route<N>).
    let m = scrape(&f).await;
    let count = |route: &str| {
        metric(
            &m,
            "fulcrum_route_requests_total",
            &[("route", route), ("code", "200")],
        )
    };
    assert_eq!(count("reads"), Some(1.0), "{m}");
    assert_eq!(count("route1"), Some(1.0), "{m}");
    assert_eq!(count("route2"), Some(2.0), "{m}");
    assert_eq!(count("route3"), Some(4.0), "{m}");
}

#[tokio::test]
async fn split_by_request_is_exact_and_interleaved_and_keyed_splits_pin_clients() {
    let (stable, canary) = (
        Backend::named("stable").await,
        Backend::named("canary").await,
    );
    let toml = config(&format!(
        r#"
[[route]]
path_prefix = "/req"
split = [{{ upstream = "stable", weight = 95 }}, {{ upstream = "canary", weight = 5 }}]

[[route]]
path_prefix = "/cookie"
split = [{{ upstream = "stable", weight = 50 }}, {{ upstream = "canary", weight = 50 }}]
split_by = "cookie:uid"

{}"#,
        upstreams(&[("stable", &stable), ("canary", &canary)])
    ));
    let f = Fulcrum::start(&toml);
    let mut c = Client::connect(f.addr("web")).await;
    let mut seq = Vec::new();
    for _ in 0..200 {
        seq.push(c.get("/req", "example.test").await.text());
    }
    let canary_at: Vec<usize> = (0..200).filter(|i| seq[*i] == "canary").collect();
    assert_eq!(canary_at.len(), 10, "exactly 5 of every 100");
    assert!(
        canary_at.windows(2).all(|w| w[1] - w[0] == 20),
        "{canary_at:?}"
    );
    // The upstream label is the side chosen.
    let m = scrape(&f).await;
    assert_eq!(
        metric(
            &m,
            "fulcrum_requests_total",
            &[("upstream", "canary"), ("code", "200")]
        ),
        Some(10.0),
        "{m}"
    );

    // A cookie pins its user to one side on every request and on a second
    // instance with the same config.
    let g = Fulcrum::start(&toml);
    let mut sides = std::collections::HashSet::new();
    for u in 0..40 {
        let cookie = format!("uid=user{u}");
        let first = get_with(f.addr("web"), "/cookie", &[("cookie", &cookie)])
            .await
            .text();
        for inst in [&f, &g, &f] {
            let again = get_with(inst.addr("web"), "/cookie", &[("cookie", &cookie)]).await;
            assert_eq!(again.text(), first, "user{u}");
        }
        sides.insert(first);
    }
    assert_eq!(sides.len(), 2, "both sides get users");
}

#[tokio::test]
async fn redirect_and_respond_answer_without_an_upstream() {
    let toml = config(
        r#"
[[route]]
name = "to-https"
path_prefix = "/secure"
redirect = { scheme = "https" }

[[route]]
path_prefix = "/moved"
redirect = { host = "new.example.com", path_prefix = "/v2", status = 308 }

[[route]]
path_prefix = "/port"
redirect = { port = 8443, status = 302 }

[[route]]
path_prefix = "/same"
redirect = { path_prefix = "/other", status = 307 }

[[route]]
name = "maintenance"
respond = { status = 503, body = "down for maintenance\n" }
response_headers = { set = { "Retry-After" = "120" } }
"#,
    );
    let f = Fulcrum::start(&toml);
    let r = get_host(f.addr("web"), "/secure/a?b=1", "example.test:8080").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://example.test/secure/a?b=1")
    );
    assert!(r.header("x-request-id").is_some());
    let r = get_host(f.addr("web"), "/moved/x/y?q", "example.test:8080").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("http://new.example.com/v2/x/y?q")
    );
    let r = get_host(f.addr("web"), "/port", "example.test:8080").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://example.test:8443/port"));
    // Same scheme and host: the port the client used stays.
    let r = get_host(f.addr("web"), "/same/x", "example.test:8080").await;
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location"),
        Some("http://example.test:8080/other/x")
    );

    let r = get(f.addr("web"), "/anything").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "down for maintenance\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("retry-after"), Some("120"));

    // Answers count under upstream="" and under their route name.
    let m = scrape(&f).await;
    assert_eq!(
        metric(
            &m,
            "fulcrum_requests_total",
            &[("upstream", ""), ("code", "503")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "fulcrum_route_requests_total",
            &[("route", "to-https"), ("code", "301")]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn prefixes_and_header_rules_rewrite_both_ways() {
    let seen = Backend::start(|req| async move {
        let mut resp = http::Response::new(full(req.uri().to_string()));
        let h = resp.headers_mut();
        h.insert("server", "app/1.0".parse().unwrap());
        h.insert("x-powered-by", "php".parse().unwrap());
        h.append("x-multi", "one".parse().unwrap());
        resp
    })
    .await;
    let toml = config(&format!(
        r#"
[[route]]
path_prefix = "/v1"
strip_prefix = true
add_prefix = "/api"
request_headers = {{ set = {{ "X-Env" = "prod" }}, add = {{ "X-Tag" = "a" }}, remove = ["X-Debug"] }}
response_headers = {{ set = {{ "Strict-Transport-Security" = "max-age=63072000" }}, add = {{ "X-Multi" = "two" }}, remove = ["Server", "x-powered-by"] }}
upstream = "u"

[[route]]
path_prefix = "/strip"
strip_prefix = true
upstream = "u"

[upstream.u]
{}
"#,
        servers(&[&seen])
    ));
    let f = Fulcrum::start(&toml);
    let r = get_with(
        f.addr("web"),
        "/v1/users?id=7",
        &[("x-env", "dev"), ("x-tag", "client"), ("x-debug", "1")],
    )
    .await;
    assert_eq!(r.text(), "/api/users?id=7");
    let h = &seen.last().headers;
    assert_eq!(h.get_all("x-env").iter().count(), 1);
    assert_eq!(h["x-env"], "prod");
    let tags: Vec<_> = h
        .get_all("x-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["client", "a"]);
    assert!(h.get("x-debug").is_none());
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    assert!(r.header("server").is_none());
    assert!(r.header("x-powered-by").is_none());
    let multi: Vec<_> = r.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);

    assert_eq!(get(f.addr("web"), "/v1").await.text(), "/api");
    assert_eq!(get(f.addr("web"), "/strip").await.text(), "/");
    assert_eq!(get(f.addr("web"), "/strip/x/?q=1").await.text(), "/x/?q=1");
}

#[tokio::test]
async fn deny_and_allow_use_the_effective_client_ip() {
    let b = Backend::named("admin").await;
    let toml = with_listener_settings(
        &config(&format!(
            r#"[[route]]
name = "admin"
path_prefix = "/admin"
deny = ["10.0.0.66/32"]
allow = ["10.0.0.0/8", "::1/128"]
upstream = "u"

[[route]]
respond = {{ status = 200, body = "public" }}

[upstream.u]
{}
"#,
            servers(&[&b])
        )),
        "trusted_proxies = [\"127.0.0.0/8\"]",
    );
    let f = Fulcrum::start(&toml);
    let from = |ip: &'static str| {
        let addr = f.addr("web");
        async move { get_with(addr, "/admin/x", &[("x-forwarded-for", ip)]).await }
    };
    assert_eq!(from("10.1.2.3").await.status, 200);
    let r = from("10.0.0.66").await;
    assert_eq!(r.status, 403, "deny is checked first");
    assert_eq!(r.text(), "forbidden\n");
    assert_eq!(from("192.0.2.1").await.status, 403, "not in allow");
    assert_eq!(
        from("::ffff:10.9.9.9").await.status,
        200,
        "a mapped IPv4 is IPv4"
    );
    assert_eq!(b.hits(), 2);
    assert_eq!(
        get_with(f.addr("web"), "/", &[("x-forwarded-for", "192.0.2.1")])
            .await
            .text(),
        "public"
    );
    let m = scrape(&f).await;
    assert_eq!(
        metric(
            &m,
            "fulcrum_policy_rejections_total",
            &[("route", "admin"), ("reason", "deny")]
        ),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn error_pages_replace_generated_bodies_globally_and_per_route() {
    let dir = temp_dir();
    std::fs::write(dir.join("404.html"), "<h1>not here</h1>\n").unwrap();
    std::fs::write(dir.join("503.json"), "{\"error\":\"down\"}\n").unwrap();
    std::fs::write(dir.join("403.txt"), "go away\n").unwrap();
    std::fs::write(dir.join("429.txt"), "slow down\n").unwrap();
    let page = |n: &str| format!("{:?}", dir.join(n).display().to_string());
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = Backend::start(|_| async {
        let mut r = http::Response::new(full("upstream's own 404"));
        *r.status_mut() = http::StatusCode::NOT_FOUND;
        r
    })
    .await;
    let body = format!(
        r#"
[global]
error_pages = {{ "404" = {p404}, "502" = {p404}, "429" = {p429} }}

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[[route]]
path_prefix = "/down"
upstream = "dead"
error_pages = {{ "502" = {p503}, "403" = {p403} }}
allow = ["192.0.2.0/24"]

[[route]]
path_prefix = "/up"
upstream = "up"

[[route]]
path_prefix = "/limited"
upstream = "up"
rate_limit = {{ requests_per_second = 0.01, burst = 1 }}

[upstream.dead]
servers = [{{ address = "{dead}" }}]
retries = 0

[upstream.up]
{}
"#,
        servers(&[&up]),
        p404 = page("404.html"),
        p503 = page("503.json"),
        p403 = page("403.txt"),
        p429 = page("429.txt"),
    );
    let toml = format!("[admin]\nlisten = \"127.0.0.1:0\"\n{body}");
    let f = Fulcrum::start(&toml);
    // No route: the global page, with its type.
    let r = get(f.addr("web"), "/nowhere").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "<h1>not here</h1>\n");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    // A route's own pages win over the global ones.
    let r = get_with(f.addr("web"), "/down", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "go away\n");
    // An upstream's own 404 is forwarded untouched.
    let r = get(f.addr("web"), "/up").await;
    assert_eq!(r.text(), "upstream's own 404");

    // Answers Fulcrum makes on purpose get pages too, keeping their headers.
    assert_eq!(get(f.addr("web"), "/limited").await.status, 404);
    let r = get(f.addr("web"), "/limited").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.text(), "slow down\n");
    assert!(r.header("retry-after").is_some());

    // A page that goes missing fails the reload; the old pages stay.
    let broken = toml.replace(&page("404.html"), &page("missing.html"));
    let line = f.reload(&broken);
    assert!(line.contains("reload failed"), "{line}");
    assert!(f.logs().contains("missing.html"), "{}", f.logs());
    assert_eq!(
        get(f.addr("web"), "/nowhere").await.text(),
        "<h1>not here</h1>\n"
    );
}

#[test]
fn check_names_file_line_and_key_for_bad_policy_and_prints_warnings() {
    let dir = temp_dir();
    let bad = r#"[admin]
listen = "127.0.0.1:9901"
[[listener]]
name = "web"
listen = "127.0.0.1:8080"
[[route]]
upstream = "u"
redirect = { scheme = "https" }
[[route]]
request_headers = { set = { "Connection" = "x" }, remove = ["X-Request-Id"] }
methods = ["GE T"]
upstream = "u"
[[route]]
split = [{ upstream = "u", weight = 5000 }, { upstream = "nope", weight = 1 }]
split_by = "colour"
[[route]]
respond = { status = 99 }
redirect = { status = 200, port = 0 }
[upstream.u]
servers = [{ address = "127.0.0.1:1", weight = 2 }, { address = "127.0.0.1:2" }]
"#;
    let path = dir.join("bad.toml");
    let (code, err) = check_text(&path, bad);
    assert_eq!(code, 1, "{err}");
    let p = path.display();
    for want in [
        format!("{p}:6:1: route[0].upstream: a route needs exactly one action"),
        format!(
            "{p}:10:44: route[1].request_headers.set.Connection: \"Connection\" cannot be changed"
        ),
        format!(
            "{p}:10:61: route[1].request_headers.remove[0]: \"X-Request-Id\" cannot be changed"
        ),
        format!("{p}:11:12: route[1].methods[0]: \"GE T\" is not a method name"),
        format!("{p}:14:37: route[2].split[0].weight: 5000 must be a whole number from 0 to 1000"),
        format!("{p}:14:58: route[2].split[1].upstream: no upstream named \"nope\""),
        format!("{p}:15:12: route[2].split_by: \"colour\" must be"),
        format!("{p}:17:22: route[3].respond.status: 99 must be from 200 to 599"),
        format!("{p}:18:23: route[3].redirect.status: 200 must be 301, 302, 303, 307 or 308"),
        format!("{p}:18:35: route[3].redirect.port: 0 must be from 1 to 65535"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }

    // Warnings go to stderr and the exit status stays 0.
    let warn = bad
        .split("[[route]]\nrequest_headers")
        .next()
        .unwrap()
        .replace("redirect = { scheme = \"https\" }\n", "")
        + "[upstream.u]\nservers = [{ address = \"127.0.0.1:1\", weight = 2 }, { address = \"127.0.0.1:2\" }]\n";
    let (code, err) = check_text(&path, &warn);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("weights are ignored by strategy round-robin"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_swaps_policies_with_the_table() {
    let b = Backend::named("app").await;
    let toml = |answer: &str| {
        config(&format!(
            "[[route]]\npath_prefix = \"/m\"\n{answer}\n[[route]]\nupstream = \"u\"\n[upstream.u]\n{}\n",
            servers(&[&b])
        ))
    };
    let f = Fulcrum::start(&toml("respond = { status = 503, body = \"maintenance\" }"));
    assert_eq!(get(f.addr("web"), "/m").await.text(), "maintenance");
    let line = f.reload(&toml("upstream = \"u\""));
    assert!(line.contains("config reloaded"), "{line}");
    assert_eq!(get(f.addr("web"), "/m").await.text(), "app");
    // A bad policy keeps the table that serves.
    let line = f.reload(&toml("respond = { status = 1 }"));
    assert!(line.contains("reload failed"), "{line}");
    assert_eq!(get(f.addr("web"), "/m").await.text(), "app");
}

#[tokio::test]
async fn policy_applies_to_http2_clients_too() {
    let b = echo("app").await;
    let toml = config(&format!(
        r#"[[route]]
path_prefix = "/old"
redirect = {{ path_prefix = "/new", status = 308 }}

[[route]]
path_prefix = "/v1"
methods = ["POST"]
strip_prefix = true
add_prefix = "/api"
response_headers = {{ set = {{ "X-Policy" = "yes" }} }}
upstream = "u"

[upstream.u]
{}
"#,
        servers(&[&b])
    ));
    let f = Fulcrum::start(&toml);
    let tcp = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    let mut h2 = h2_client(tcp).await;
    let req = Request::post("http://example.test:8080/v1/users?id=7")
        .body(full("x"))
        .unwrap();
    let r = collect(h2.send_request(req).await.unwrap()).await;
    assert_eq!(r.text(), "app /api/users?id=7");
    assert_eq!(r.header("x-policy"), Some("yes"));
    let req = Request::get("http://example.test:8080/old/page?q=1")
        .body(full(""))
        .unwrap();
    let r = collect(h2.send_request(req).await.unwrap()).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("http://example.test:8080/new/page?q=1")
    );
    // GET does not match the POST-only route: no route.
    let req = Request::get("http://example.test/v1/users")
        .body(full(""))
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 404);
}
