//! External programs the tests drive, installed by `.ci/run` with apt. A
//! developer without them can set FULCRUM_SKIP_TOOLS=1 to skip those checks
//! explicitly; otherwise a missing tool fails the test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first of `names` that runs (`NAME --version`), or `None` when none
/// does and FULCRUM_SKIP_TOOLS is set.
pub fn tool(names: &[&'static str], package: &str) -> Option<&'static str> {
    for name in names {
        let ok = Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(name);
        }
    }
    if std::env::var_os("FULCRUM_SKIP_TOOLS").is_some() {
        eprintln!(
            "{} not installed; skipped because FULCRUM_SKIP_TOOLS is set",
            names[0]
        );
        return None;
    }
    panic!(
        "{} is not installed (apt-get install {package}); set FULCRUM_SKIP_TOOLS=1 to skip",
        names[0]
    );
}

/// Headless Chromium, for the status page checks.
pub fn chromium() -> Option<&'static str> {
    tool(
        &["chromium", "chromium-browser", "google-chrome"],
        "chromium",
    )
}

/// Runs headless Chromium with `args` and returns its stdout.
pub fn run_chromium(bin: &str, profile: &Path, args: &[String]) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
