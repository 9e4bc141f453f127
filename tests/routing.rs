//! Routing: host (exact, wildcard, case, port), path prefix, file order,
//! listener filter, 404; and the two core strategies' exact sequences.

mod common;
use common::*;

#[tokio::test]
async fn routes_by_host_wildcard_and_prefix_in_file_order() {
    let api = Backend::named("api").await;
    let v1 = Backend::named("v1").await;
    let wild = Backend::named("wild").await;
    let other = Backend::named("other").await;
    let f = Fulcrum::start(&config(&format!(
        r#"
[[route]]
host = "api.example.com"
path_prefix = "/v1"
upstream = "v1"

[[route]]
host = "api.example.com"
upstream = "api"

[[route]]
host = "*.example.com"
upstream = "wild"

[[route]]
path_prefix = "/other/"
upstream = "other"

[upstream.api]
{}
[upstream.v1]
{}
[upstream.wild]
{}
[upstream.other]
{}
"#,
        servers(&[&api]),
        servers(&[&v1]),
        servers(&[&wild]),
        servers(&[&other])
    )));
    let a = f.addr("web");
    assert_eq!(get_host(a, "/v1", "api.example.com").await.text(), "v1");
    assert_eq!(
        get_host(a, "/v1/users?x=1", "API.Example.COM:8080")
            .await
            .text(),
        "v1"
    );
    assert_eq!(get_host(a, "/v1x", "api.example.com").await.text(), "api");
    assert_eq!(get_host(a, "/", "api.example.com").await.text(), "api");
    assert_eq!(
        get_host(a, "/", "deep.sub.example.com").await.text(),
        "wild"
    );
    assert_eq!(get_host(a, "/other", "nothing.test").await.text(), "other");
    assert_eq!(
        get_host(a, "/other/x", "nothing.test").await.text(),
        "other"
    );
    // "*.example.com" does not match the bare domain, and nothing else does
    let r = get_host(a, "/", "example.com").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "no route\n");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(v1.last().uri, "/v1/users?x=1");
    let m = scrape(&f).await;
    assert_eq!(
        metric(
            &m,
            "fulcrum_requests_total",
            &[("listener", "web"), ("upstream", ""), ("code", "404")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn route_listener_filter() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let f = Fulcrum::start(&format!(
        r#"[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "one"
listen = "127.0.0.1:0"
[[listener]]
name = "two"
listen = "127.0.0.1:0"
[[route]]
listeners = ["two"]
upstream = "b"
[[route]]
upstream = "a"
[upstream.a]
{}
[upstream.b]
{}
"#,
        servers(&[&a]),
        servers(&[&b])
    ));
    assert_eq!(get(f.addr("one"), "/").await.text(), "a");
    assert_eq!(get(f.addr("two"), "/").await.text(), "b");
}

#[tokio::test]
async fn round_robin_rotates_exactly() {
    let (a, b, c) = (
        Backend::named("a").await,
        Backend::named("b").await,
        Backend::named("c").await,
    );
    let f = Fulcrum::start(&config(&format!(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nstrategy = \"round-robin\"\n{}\n",
        servers(&[&a, &b, &c])
    )));
    let mut client = Client::connect(f.addr("web")).await;
    let mut seq = String::new();
    for _ in 0..9 {
        seq += &client.get("/", "x").await.text();
    }
    assert_eq!(seq, "abcabcabc");
}

#[tokio::test]
async fn weighted_gives_the_smooth_nginx_sequence() {
    let (a, b, c) = (
        Backend::named("a").await,
        Backend::named("b").await,
        Backend::named("c").await,
    );
    let f = Fulcrum::start(&config(&format!(
        r#"[[route]]
upstream = "u"
[upstream.u]
strategy = "weighted"
servers = [{{ address = "{}", weight = 5 }}, {{ address = "{}" }}, {{ address = "{}", weight = 1 }}]
"#,
        a.addr, b.addr, c.addr
    )));
    let mut client = Client::connect(f.addr("web")).await;
    let mut seq = String::new();
    for _ in 0..14 {
        seq += &client.get("/", "x").await.text();
    }
    assert_eq!(seq, "aabacaaaabacaa");
}
