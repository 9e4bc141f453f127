//! `fulcrum run --watch`: a changed config file (in-place edit, atomic
//! rename, a Kubernetes ConfigMap's `..data` symlink swap) or certificate
//! reloads through the SIGHUP path; a broken edit keeps the old config and
//! records the failure.

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

const RELOAD: Duration = Duration::from_secs(10);

fn app(b: &Backend) -> String {
    config(&format!(
        "[[route]]\nupstream = \"app\"\n\n[upstream.app]\n{}\n",
        servers(&[b])
    ))
}

async fn body(f: &Fulcrum) -> String {
    get(f.addr("web"), "/").await.text()
}

#[tokio::test]
async fn in_place_edit_and_atomic_rename_reload() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let c = Backend::named("c").await;
    let f = Fulcrum::start_with_args(&app(&a), &["--watch"]);
    assert_eq!(body(&f).await, "a");

    // In place: truncate and write, as `echo > file` does.
    std::fs::write(&f.config_path, app(&b)).unwrap();
    f.wait_log("config reloaded", RELOAD);
    assert_eq!(body(&f).await, "b");

    // An editor's save: write a new file, rename it over the old one.
    let tmp = f.dir.join(".fulcrum.toml.swp");
    std::fs::write(&tmp, app(&c)).unwrap();
    std::fs::rename(&tmp, &f.config_path).unwrap();
    f.wait_log("config reloaded", RELOAD);
    assert_eq!(body(&f).await, "c");

    let text = scrape(&f).await;
    assert_eq!(metric(&text, "fulcrum_config_generation", &[]), Some(3.0));
    assert_eq!(
        metric(
            &text,
            "fulcrum_config_reloads_total",
            &[("result", "success")]
        ),
        Some(2.0)
    );
}

/// Writes `text` the way the kubelet updates a ConfigMap volume: a new
/// timestamped directory, a new `..data` symlink renamed over the old one.
fn configmap_update(dir: &Path, version: &str, text: &str) {
    let ts = dir.join(format!("..{version}"));
    std::fs::create_dir(&ts).unwrap();
    std::fs::write(ts.join("fulcrum.toml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test]
async fn configmap_symlink_swap_reloads() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let f = Fulcrum::start_with_args(&app(&a), &["--watch"]);
    let dir = &f.dir;

    // Turn the config into a ConfigMap mount: fulcrum.toml -> ..data/fulcrum.toml,
    // ..data -> ..v1. Same bytes, so (content-hashed) no reload is needed.
    configmap_update(dir, "v1", &app(&a));
    let link = dir.join("fulcrum.toml.link");
    std::os::unix::fs::symlink("..data/fulcrum.toml", &link).unwrap();
    std::fs::rename(&link, &f.config_path).unwrap();

    // The update: only the ..data symlink changes; fulcrum.toml itself
    // stays the same symlink, so only a watcher that follows the path sees it.
    configmap_update(dir, "v2", &app(&b));
    std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    f.wait_log("config reloaded", RELOAD);
    assert_eq!(body(&f).await, "b");
    assert!(std::fs::symlink_metadata(&f.config_path)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[tokio::test]
async fn broken_edit_keeps_the_old_config_and_records_the_failure() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let f = Fulcrum::start_with_args(&app(&a), &["--watch"]);

    std::fs::write(
        &f.config_path,
        app(&b).replace("[upstream.app]", "[upstream.app]\nstrategy = \"fastest\""),
    )
    .unwrap();
    let line = f.wait_log("config reload failed", RELOAD);
    assert!(line.contains("strategy"), "{line}");
    assert_eq!(body(&f).await, "a");
    let text = scrape(&f).await;
    assert_eq!(
        metric(&text, "fulcrum_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "fulcrum_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(1.0)
    );

    // Fixing the file reloads it; the broken version was tried once only.
    std::fs::write(&f.config_path, app(&b)).unwrap();
    f.wait_log("config reloaded", RELOAD);
    assert_eq!(body(&f).await, "b");
    let text = scrape(&f).await;
    assert_eq!(
        metric(&text, "fulcrum_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "fulcrum_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn rotated_certificate_reloads() {
    let ca = TestCa::new();
    let dir = temp_dir();
    write_leaf(&dir, "site", &ca.leaf(&["old.test"]));
    let b = Backend::named("app").await;
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n\n[[route]]\nupstream = \"app\"\n\n[upstream.app]\n{}\n",
        dir.join("site.pem").display().to_string(),
        dir.join("site.key").display().to_string(),
        servers(&[&b])
    );
    let f = Fulcrum::start_with_args(&toml, &["--watch"]);
    let a = f.addr("web");
    let client = ca.client_config(&[b"http/1.1"]);
    let s = tls_connect(a, "old.test", client.clone()).await.unwrap();
    assert!(String::from_utf8_lossy(peer_cert(&s).as_ref()).contains("old.test"));
    assert!(tls_connect(a, "new.test", client.clone()).await.is_err());

    // Only the certificate files change; the config file does not.
    write_leaf(&dir, "site", &ca.leaf(&["new.test"]));
    f.wait_log("config reloaded", RELOAD);
    let s = tls_connect(a, "new.test", client).await.unwrap();
    assert!(String::from_utf8_lossy(peer_cert(&s).as_ref()).contains("new.test"));
}
