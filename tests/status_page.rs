//! The /status page as a person sees it: rendered by headless Chromium,
//! checked for every upstream and every server's state, and saved as a
//! screenshot (target/status-page.png) for people to look at.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tokio::sync::{mpsc, Semaphore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_every_upstream_and_server_state() {
    let Some(bin) = chromium() else { return };
    let a = Backend::named("a").await;
    let c = Backend::named("c").await;
    let (tx, mut arrived) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let b = Backend::start(move |_req| {
        let (tx, g) = (tx.clone(), g.clone());
        async move {
            let _ = tx.send(());
            g.acquire().await.unwrap().forget();
            Response::new(full("b"))
        }
    })
    .await;
    let good = Backend::named("good").await;
    let bad = Backend::start(|_req| async {
        let mut r = Response::new(full("boom"));
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
    .await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let conf = |api: &[&Backend]| {
        config(&format!(
            "[[route]]\nhost = \"api.example.com\"\npath_prefix = \"/v1\"\nupstream = \"api\"\n\
             [[route]]\nhost = \"flaky.test\"\nupstream = \"flaky\"\n\
             [[route]]\nhost = \"db.test\"\nupstream = \"db\"\n\
             [[route]]\nname = \"admin\"\npath_prefix = \"/admin\"\nmethods = [\"GET\"]\n\
             deny = [\"127.0.0.1/32\"]\nresponse_headers = {{ remove = [\"Server\"] }}\nupstream = \"static\"\n\
             [[route]]\nupstream = \"static\"\n\
             [upstream.api]\nstrategy = \"weighted\"\n{}\n[upstream.static]\n{}\n\
             [upstream.flaky]\n{}\n[upstream.flaky.passive_health]\nconsecutive_failures = 1\n\
             ejection_time = \"5m\"\nmax_ejection_percent = 50\n\
             [upstream.db]\nservers = [{{ address = \"{dead}\" }}]\n\
             [upstream.db.health_check]\ninterval = \"100ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 1\n",
            servers(api),
            servers(&[&c]),
            servers(&[&good, &bad]),
        ))
    };
    let f = Fulcrum::start(&conf(&[&a, &b]));
    let web = f.addr("web");
    let mut client = Client::connect(web).await;
    for _ in 0..20 {
        client.get("/", "www.example.com").await;
    }
    // Weighted 1:1 alternates a, b: the second request is held on b.
    assert_eq!(client.get("/v1/x", "api.example.com").await.text(), "a");
    let held = tokio::spawn(async move { get_host(web, "/v1/y", "api.example.com").await });
    arrived.recv().await.unwrap();
    assert!(f.reload(&conf(&[&a])).contains("config reloaded"));
    for _ in 0..5 {
        client.get("/v1/z", "api.example.com").await;
    }
    client.get("/nothing", "api.example.com").await;
    assert_eq!(client.get("/admin", "www.example.com").await.status, 403);
    // One 500 ejects `bad`; the dead `db` server fails its checks.
    for _ in 0..4 {
        client.get("/", "flaky.test").await;
    }
    eventually(Duration::from_secs(5), "bad ejected, db down", || async {
        server_state(&f, "flaky", bad.addr).await == "ejected"
            && server_state(&f, "db", dead).await == "down"
    })
    .await;

    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let profile = temp_dir().join("chromium-profile");
    let url = format!("http://{}/status", f.admin);
    let shot: PathBuf = target.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let (bin2, profile2, url2, shot2) =
        (bin.to_string(), profile.clone(), url.clone(), shot.clone());
    let dom = tokio::task::spawn_blocking(move || {
        // Let the page's own refresh run once before the DOM is read.
        let dom = run_chromium(
            &bin2,
            &profile2,
            &[
                "--virtual-time-budget=2500".into(),
                "--dump-dom".into(),
                url2.clone(),
            ],
        );
        run_chromium(
            &bin2,
            &profile2,
            &[
                "--window-size=1280,1320".into(),
                format!("--screenshot={}", shot2.display()),
                url2,
            ],
        );
        dom
    })
    .await
    .unwrap();

    let row = |up: &str, addr: &str, state: &str| {
        format!("data-upstream=\"{up}\" data-server=\"{addr}\" data-state=\"{state}\"")
    };
    for (up, addr, state) in [
        ("api", a.addr, "up"),
        ("api", b.addr, "draining"),
        ("static", c.addr, "up"),
        ("flaky", good.addr, "up"),
        ("flaky", bad.addr, "ejected"),
        ("db", dead, "down"),
    ] {
        let want = row(up, &addr.to_string(), state);
        assert!(
            dom.contains(&want),
            "{want} not in the rendered page:\n{dom}"
        );
    }
    for want in [
        "data-upstream=\"api\"><h2>",
        "data-upstream=\"static\"><h2>",
        "data-upstream=\"flaky\"><h2>",
        "data-upstream=\"db\"><h2>",
        "id=\"ready\">not ready<",
        "Not ready: no server up in upstream db",
        "data-listener=\"web\"",
        "api.example.com",
        "id=\"generation\">2<",
        // The route panel: name, match keys, action, policy in order, and
        // the route's requests, rejections and compressed responses.
        "data-route=\"admin\"",
        "<td>GET</td><td>static</td>",
        "deny 1 \u{2192} response_headers</td><td>1</td><td>1</td><td>0</td>",
    ] {
        assert!(
            dom.contains(want),
            "{want} not in the rendered page:\n{dom}"
        );
    }
    let bound = format!("<td>{}</td>", f.addr("web"));
    assert!(
        dom.contains(&bound),
        "bound listener address {bound} missing"
    );
    // The page refreshed itself (swapped in a fresh copy) without failing.
    assert!(
        dom.contains("<body data-refreshes=\"1\""),
        "no refresh ran:\n{dom}"
    );
    assert!(
        !dom.contains("data-refresh-failed=\"1\""),
        "the refresh failed:\n{dom}"
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot too small"
    );
    eprintln!("status page screenshot: {}", shot.display());

    gate.add_permits(1);
    assert_eq!(held.await.unwrap().text(), "b");
}
