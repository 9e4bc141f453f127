//! Runtime overrides an operator sets through the admin API (drain, disable,
//! a weight), and the state file that keeps them across restarts.
//!
//! Overrides belong to (upstream, address), like health: they live in the
//! server's `ServerState`, so a reload that keeps the server keeps them and
//! one that removes it drops them. The state file is JSON, written whole to
//! a temporary file, fsynced and renamed over the old one (then the folder
//! is fsynced), so a crash leaves either the old or the new file.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use serde::{Deserialize, Serialize};

use super::ServerState;

/// The operator's drain/disable of one server. The numbers are the values
/// of `fulcrum_upstream_server_admin_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// No override: the server follows its health.
    None = 0,
    /// No new picks; sticky clients, in-flight requests and tunnels finish.
    Drain = 1,
    /// No requests at all (maintenance); active checks keep running.
    Disable = 2,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::None => "none",
            AdminState::Drain => "drain",
            AdminState::Disable => "disable",
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Disable,
            _ => AdminState::None,
        }
    }
}

/// Highest weight the API accepts (as for configured weights).
pub const MAX_WEIGHT: u32 = 1000;

/// The override group of a `ServerState`: plain atomics, read when a
/// snapshot is built and by the admin endpoints, never on the request path.
pub struct AdminOverride {
    state: AtomicU8,
    /// Runtime weight; 0 = none (use `configured`).
    weight: AtomicU32,
    /// The configured weight, as of the last snapshot build.
    configured: AtomicU32,
}

impl Default for AdminOverride {
    fn default() -> Self {
        AdminOverride {
            state: AtomicU8::new(AdminState::None as u8),
            weight: AtomicU32::new(0),
            configured: AtomicU32::new(1),
        }
    }
}

impl AdminOverride {
    #[inline]
    pub fn state(&self) -> AdminState {
        AdminState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(super) fn set_state(&self, s: AdminState) -> bool {
        self.state.swap(s as u8, Ordering::Relaxed) != s as u8
    }

    /// The runtime weight, if one is set.
    pub fn weight(&self) -> Option<u32> {
        match self.weight.load(Ordering::Relaxed) {
            0 => None,
            w => Some(w),
        }
    }

    pub(super) fn set_weight(&self, w: Option<u32>) -> bool {
        let v = w.unwrap_or(0);
        self.weight.swap(v, Ordering::Relaxed) != v
    }

    pub fn configured(&self) -> u32 {
        self.configured.load(Ordering::Relaxed)
    }

    pub(super) fn set_configured(&self, w: u32) {
        self.configured.store(w, Ordering::Relaxed);
    }

    pub fn effective_weight(&self) -> u32 {
        self.weight().unwrap_or_else(|| self.configured())
    }

    /// Whether anything is overridden (what the state file keeps).
    pub fn is_set(&self) -> bool {
        self.state() != AdminState::None || self.weight().is_some()
    }
}

/// One server's overrides as the state file stores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedOverride {
    pub upstream: String,
    pub address: SocketAddr,
    pub admin_state: AdminState,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    servers: Vec<SavedOverride>,
}

/// Overrides by (upstream, address), as read at start.
pub type Saved = HashMap<(String, SocketAddr), SavedOverride>;

/// Reads the state file. A missing file is an empty one; an unreadable or
/// corrupt one is logged and ignored — it never stops a start.
pub fn load(path: &Path) -> Saved {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Saved::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the state file; starting without runtime overrides");
            return Saved::new();
        }
    };
    match serde_json::from_str::<StateFile>(&text) {
        Ok(f) if f.version == 1 => f
            .servers
            .into_iter()
            .filter(|s| s.weight.is_none_or(|w| (1..=MAX_WEIGHT).contains(&w)))
            .map(|s| ((s.upstream.clone(), s.address), s))
            .collect(),
        Ok(f) => {
            tracing::warn!(path = %path.display(), version = f.version, "unknown state file version; ignored");
            Saved::new()
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "corrupt state file; starting without runtime overrides");
            Saved::new()
        }
    }
}

/// The state file's content for these servers (those with an override),
/// in a stable order so an unchanged set gives unchanged bytes.
pub fn render<'a>(servers: impl Iterator<Item = &'a ServerState>) -> String {
    let mut list: Vec<SavedOverride> = servers
        .filter(|s| s.admin.is_set())
        .map(|s| SavedOverride {
            upstream: s.upstream.to_string(),
            address: s.addr,
            admin_state: s.admin.state(),
            weight: s.admin.weight(),
        })
        .collect();
    list.sort_by(|a, b| (&a.upstream, a.address).cmp(&(&b.upstream, b.address)));
    list.dedup();
    let f = StateFile {
        version: 1,
        servers: list,
    };
    serde_json::to_string_pretty(&f).unwrap_or_default() + "\n"
}

/// Writes `content` to `path` atomically: temp file in the same folder,
/// fsync, rename, fsync the folder. Blocking: run it off the runtime.
pub fn write_atomic(path: &Path, content: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the folder is.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trips_and_bad_files_are_ignored() {
        let dir = std::env::temp_dir().join(format!("fulcrum-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fulcrum.state");
        assert!(load(&path).is_empty(), "missing file = no overrides");
        let text = r#"{"version":1,"servers":[
            {"upstream":"api","address":"127.0.0.1:1","admin_state":"drain"},
            {"upstream":"api","address":"[::1]:2","admin_state":"none","weight":7}]}"#;
        write_atomic(&path, text).unwrap();
        let got = load(&path);
        assert_eq!(got.len(), 2);
        let k = ("api".to_string(), "[::1]:2".parse().unwrap());
        assert_eq!(got[&k].weight, Some(7));
        for bad in [
            "{not json",
            r#"{"version":2,"servers":[]}"#,
            r#"{"version":1,"servers":[{"upstream":"a","address":"x","admin_state":"drain"}]}"#,
            r#"{"version":1,"servers":[{"upstream":"a","address":"127.0.0.1:1","admin_state":"off"}]}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(load(&path).is_empty(), "{bad}");
        }
        // A weight out of range is dropped, the rest kept.
        std::fs::write(
            &path,
            r#"{"version":1,"servers":[{"upstream":"a","address":"127.0.0.1:1","admin_state":"drain","weight":0}]}"#,
        )
        .unwrap();
        assert!(load(&path).is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
