//! `fulcrum run --watch`: reloads, through the same validate-then-swap path
//! as SIGHUP ([`reload::reload`]), when the config file or a certificate it
//! names changes on disk.
//!
//! The files are polled, not watched with inotify: every 500 ms each one is
//! read *through its path* and its content hashed. That follows every way a
//! file gets replaced — an in-place edit, an editor's write-and-rename, and a
//! Kubernetes ConfigMap update, which swaps the `..data` symlink to a new
//! directory (inotify on the file would keep watching the old inode, and
//! watching directories needs care for each of those cases). A change is
//! acted on once it has been stable for 200 ms, so a file written in several
//! steps is read whole. Reading a handful of small files twice a second
//! costs nothing measurable; a content hash (not mtime) also means a `touch`
//! or a rewrite with the same bytes does not reload.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::reload::{self, AppState};

/// How often the files are read.
pub const POLL: Duration = Duration::from_millis(500);
/// How long a change must stay unchanged before it is reloaded.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Each watched file's content hash; `None` when it cannot be read.
type Fingerprint = BTreeMap<PathBuf, Option<u128>>;

/// The files a config depends on: itself, every listener certificate and
/// key, every upstream `tls_ca`.
pub fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.path.clone()];
    for l in &config.listeners {
        if let Some(t) = &l.tls {
            files.extend(t.files.iter().cloned());
        }
    }
    for u in &config.upstreams {
        if let Some(ca) = u.tls.as_ref().and_then(|t| t.ca_file.clone()) {
            files.push(ca);
        }
    }
    files.sort();
    files.dedup();
    files
}

fn hash_file(path: &PathBuf) -> Option<u128> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = siphasher::sip128::SipHasher13::new();
    h.write(&bytes);
    Some(siphasher::sip128::Hasher128::finish128(&h).as_u128())
}

async fn fingerprint(files: Vec<PathBuf>) -> Fingerprint {
    tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|p| {
                let h = hash_file(&p);
                (p, h)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

fn current_files(state: &AppState) -> Vec<PathBuf> {
    watched_files(&state.shared.table.load().config)
}

/// Takes the baseline now (before the caller announces readiness, so that
/// no change after start-up is missed), then polls until the process exits.
pub fn spawn(state: Arc<AppState>) {
    let seen: Fingerprint = current_files(&state)
        .into_iter()
        .map(|p| {
            let h = hash_file(&p);
            (p, h)
        })
        .collect();
    tracing::info!(
        files = seen.len(),
        "watching the config file and its certificates"
    );
    tokio::spawn(run(state, seen));
}

async fn run(state: Arc<AppState>, mut seen: Fingerprint) {
    loop {
        tokio::time::sleep(POLL).await;
        let now = fingerprint(current_files(&state)).await;
        if now == seen {
            continue;
        }
        // Debounce: wait until the files stop changing.
        let mut settled = now;
        loop {
            tokio::time::sleep(SETTLE).await;
            let again = fingerprint(settled.keys().cloned().collect()).await;
            if again == settled {
                break;
            }
            settled = again;
        }
        let changed: Vec<String> = settled
            .iter()
            .filter(|(p, h)| seen.get(*p) != Some(h))
            .map(|(p, _)| p.display().to_string())
            .collect();
        tracing::info!(files = ?changed, "watched file changed: reloading");
        reload::reload(&state).await;
        // The hashes taken before the reload are the baseline: a change that
        // raced with the reload differs from them and reloads again. Files
        // the new config names for the first time are hashed now.
        let files = current_files(&state);
        let fresh: Vec<PathBuf> = files
            .iter()
            .filter(|p| !settled.contains_key(*p))
            .cloned()
            .collect();
        let mut next = fingerprint(fresh).await;
        for p in files {
            if let Some(h) = settled.get(&p) {
                next.insert(p, *h);
            }
        }
        seen = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_files_are_the_config_and_its_certificates() {
        let toml = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nupstream = \"a\"\n\n[upstream.a]\nservers = [{ address = \"127.0.0.1:1\" }]\n";
        let path = PathBuf::from("/etc/fulcrum/fulcrum.toml");
        let c = Config::from_toml(&path, toml).unwrap();
        assert_eq!(watched_files(&c), vec![path]);
    }
}
