//! The command line: check, exit codes and their messages, --version.

mod common;
use common::*;

use std::process::Command;

fn check(toml: &str) -> (i32, String, String) {
    let dir = temp_dir();
    let path = dir.join("fulcrum.toml");
    std::fs::write(&path, toml).unwrap();
    check_file(&path)
}

const GOOD: &str = r#"[admin]
listen = "127.0.0.1:9901"

[[listener]]
name = "web"
listen = "127.0.0.1:8080"

[[route]]
upstream = "app"

[upstream.app]
servers = [{ address = "127.0.0.1:9001" }]
"#;

#[test]
fn shipped_example_configs_pass_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(bin())
                .args(["check", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn check_accepts_a_good_config() {
    let (code, out, _) = check(GOOD);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "config ok");
}

#[test]
fn typo_key_names_file_line_and_key() {
    let (code, _, err) =
        check(&GOOD.replace("listen = \"127.0.0.1:8080\"", "lisen = \"127.0.0.1:8080\""));
    assert_eq!(code, 1);
    assert!(err.contains("fulcrum.toml:6:1:"), "{err}");
    assert!(err.contains("lisen"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn missing_upstream_and_every_other_error_reported() {
    let bad = GOOD
        .replace("upstream = \"app\"", "upstream = \"ap\"")
        .replace(
            "{ address = \"127.0.0.1:9001\" }",
            "{ address = \"127.0.0.1:9001\", weight = 5000 }",
        )
        .replace(
            "[[listener]]",
            "[global]\nshutdown_timeout = \"30\"\n\n[[listener]]",
        );
    let (code, _, err) = check(&bad);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        err.contains("fulcrum.toml:5:20: global.shutdown_timeout: duration \"30\" needs a unit"),
        "{err}"
    );
    assert!(
        err.contains("fulcrum.toml:12:12: route[0].upstream: no upstream named \"ap\""),
        "{err}"
    );
    assert!(
        err.contains("upstream.app.servers[0].weight: 5000 is out of range"),
        "{err}"
    );
}

#[test]
fn unbuilt_strategy_and_bad_address_are_rejected() {
    let (code, _, err) = check(&GOOD.replace(
        "servers = [{ address = \"127.0.0.1:9001\" }]",
        "strategy = \"fastest\"\nservers = [{ address = \"nope\" }]",
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("upstream.app.strategy: unknown strategy \"fastest\""),
        "{err}"
    );
    assert!(
        err.contains("upstream.app.servers[0].address: \"nope\" is not a host:port address"),
        "{err}"
    );
}

#[test]
fn run_with_bad_config_exits_1() {
    let dir = temp_dir();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[admin]\nlisten = \"x\"\n").unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2:10: admin.listen"), "{err}");
}

#[test]
fn port_in_use_exits_2_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = temp_dir();
    let path = dir.join("fulcrum.toml");
    std::fs::write(
        &path,
        GOOD.replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"{addr}\""),
        )
        .replace("listen = \"127.0.0.1:9901\"", "listen = \"127.0.0.1:0\""),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn version_is_the_crate_version() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("fulcrum {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
#[allow(clippy::zombie_processes)]
fn demo_serves_round_robin_with_health_checks() {
    use std::io::{BufRead, BufReader, Read, Write};
    // demo takes a fixed port (admin on port + 1): find a pair that binds
    // now (after a full test run, port + 1 is often a client's TIME_WAIT),
    // and try another if it was taken in between
    let free_pair = || {
        (0..200)
            .find_map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = l.local_addr().unwrap().port();
                let next = port.checked_add(1)?;
                std::net::TcpListener::bind(("127.0.0.1", next)).ok()?;
                Some(port)
            })
            .expect("a free port pair")
    };
    let (mut child, port, printed) = (0..5)
        .find_map(|_| {
            let port = free_pair();
            let mut child = Command::new(bin())
                .args(["demo", "--port", &port.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut printed = String::new();
            loop {
                let mut line = String::new();
                if out.read_line(&mut line).unwrap() == 0 {
                    let _ = child.wait();
                    return None;
                }
                printed += &line;
                if line.contains("stop with Ctrl-C") {
                    return Some((child, port, printed));
                }
            }
        })
        .expect("demo started");
    let fetch = |port: u16, path: &str| {
        // the demo prints once its listeners are bound: connect at once
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    let bodies: Vec<String> = (0..3).map(|_| fetch(port, "/hello")).collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        printed.contains(&format!("curl -s http://127.0.0.1:{port}/hello")),
        "{printed}"
    );
    for (i, name) in ["backend-1", "backend-2", "backend-3"].iter().enumerate() {
        assert!(bodies.iter().any(|b| b.contains(name)), "{i}: {bodies:?}");
    }
}
