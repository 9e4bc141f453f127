//! External programs the tests drive, installed by `.ci/run` with apt. A
//! developer without them can set FULCRUM_SKIP_TOOLS=1 to skip those checks
//! explicitly; otherwise a missing tool fails the test.

use std::process::{Command, Stdio};

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
