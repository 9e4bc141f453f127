//! The state a running Fulcrum shares between start-up, reloads, background
//! tasks and the admin endpoints, and the reload itself (SIGHUP or
//! `--watch`): load → validate → bind new listeners → build → swap; any
//! failure leaves the running config untouched.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::unix_now;
use crate::config::Config;
use crate::health::active::ActiveChecks;
use crate::proxy::Shared;
use crate::routing::RoutingTable;
use crate::server::{self, RunningListener};

pub use crate::admin::ReloadOutcome;

/// State shared by the admin endpoints, reloads and shutdown.
pub struct AppState {
    pub shared: Arc<Shared>,
    pub started: AtomicBool,
    pub last_reload: std::sync::Mutex<Option<ReloadOutcome>>,
    pub config_path: PathBuf,
    pub(crate) generation: AtomicU64,
    pub(crate) listeners: tokio::sync::Mutex<Vec<RunningListener>>,
    pub(crate) shutdown_timeout_ms: Arc<AtomicU64>,
    /// Serialises snapshot swaps (reload, health changes, DNS changes) so a
    /// slower builder can never overwrite a newer config with an older one.
    pub(crate) swap: tokio::sync::Mutex<()>,
    /// Serialises whole reloads (SIGHUP and `--watch`), so a reload that
    /// read the file earlier can never publish after one that read it later.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    pub(crate) checks: ActiveChecks,
    pub(crate) acme: Arc<crate::acme::Acme>,
    /// The admin listener, drained last at shutdown.
    pub(crate) admin: tokio::sync::Mutex<Option<RunningListener>>,
}

/// The admin listener's view of the application.
impl crate::admin::Host for AppState {
    fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    fn bound_addrs(&self) -> Vec<(String, SocketAddr)> {
        AppState::bound_addrs(self)
    }

    fn last_reload(&self) -> Option<ReloadOutcome> {
        self.last_reload.lock().ok().and_then(|l| l.clone())
    }

    fn republish(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _swap = self.swap.lock().await;
            let current = self.shared.table.load_full();
            self.publish(current.config.clone(), current.generation);
        })
    }
}

/// What the admin listener gets of the application: the shared snapshot
/// and registry, and `AppState` only through the narrow `admin::Host`.
pub(crate) fn admin_handle(state: &Arc<AppState>) -> crate::admin::AdminHandle {
    crate::admin::AdminHandle {
        shared: state.shared.clone(),
        host: state.clone(),
    }
}

impl AppState {
    pub(crate) fn current(&self) -> Arc<Config> {
        self.shared.table.load().config.clone()
    }

    /// Bound address of each running listener, by name (for the status
    /// page; empty while a reload holds the list).
    pub fn bound_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .try_lock()
            .map(|l| l.iter().map(|r| (r.name.clone(), r.local)).collect())
            .unwrap_or_default()
    }

    /// Builds and swaps in a snapshot; call with `swap` held.
    pub(crate) fn publish(&self, config: Arc<Config>, generation: u64) -> Arc<RoutingTable> {
        let table = Arc::new(RoutingTable::build(
            config,
            &self.shared.registry,
            generation,
        ));
        self.shared.table.store(table.clone());
        self.checks.reconcile(&table);
        table
    }
}

/// Starts serving a bound listener socket.
pub(crate) fn start_listener(
    state: &Arc<AppState>,
    sock: std::net::TcpListener,
    settings: Arc<crate::config::ListenerConfig>,
) -> std::io::Result<RunningListener> {
    let timeout = state.shutdown_timeout_ms.clone();
    let configured = settings.listen;
    server::spawn(
        sock,
        configured,
        settings,
        state.shared.clone(),
        Arc::new(move || Duration::from_millis(timeout.load(Ordering::Relaxed))),
    )
}

/// Reloads the config file; on any failure the running config is untouched.
pub async fn reload(state: &Arc<AppState>) {
    let _one_at_a_time = state.reloading.lock().await;
    let m = state.shared.registry.metrics.clone();
    let result = try_reload(state).await;
    if let Ok(mut last) = state.last_reload.lock() {
        *last = Some(ReloadOutcome {
            at_unix: unix_now(),
            generation: state.generation.load(Ordering::Relaxed),
            error: result.as_ref().err().cloned(),
        });
    }
    match result {
        Ok(generation) => {
            m.config_reloads_total.with_label_values(&["success"]).inc();
            m.config_last_reload_successful.set(1);
            m.config_last_reload_success_timestamp_seconds
                .set(unix_now());
            m.config_generation.set(generation as i64);
            tracing::info!(generation, "config reloaded");
            // Overrides of servers the reload removed are gone: the state
            // file follows.
            if let Err(e) = crate::admin::persist(&admin_handle(state)).await {
                tracing::error!(error = %e, "cannot write the state file");
            }
        }
        Err(e) => {
            m.config_reloads_total.with_label_values(&["failure"]).inc();
            m.config_last_reload_successful.set(0);
            tracing::error!(error = %e, "config reload failed; the previous config keeps serving");
        }
    }
}

async fn try_reload(state: &Arc<AppState>) -> Result<u64, String> {
    let path = state.config_path.clone();
    let mut config = tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    for w in &config.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    state.acme.attach(&mut config);
    let old = state.current();
    if config.admin.listen != old.admin.listen {
        tracing::warn!(old = %old.admin.listen, new = %config.admin.listen, "admin.listen changes only on restart");
    }
    let mut running = state.listeners.lock().await;
    // Bind new addresses before anything changes; a taken port fails here.
    let mut fresh = Vec::new();
    // A listener is the same listener when both its name and its configured
    // address are unchanged; it then keeps its socket and connections.
    let same = |r: &RunningListener, l: &crate::config::ListenerConfig| {
        r.name == l.name && r.configured == l.listen
    };
    for l in &config.listeners {
        if running.iter().any(|r| same(r, l)) {
            continue;
        }
        let sock = server::bind(l.listen).map_err(|e| {
            let renamed = running.iter().find(|r| r.configured == l.listen && l.listen.port() != 0);
            match renamed {
                Some(r) => format!(
                    "cannot listen on {} for listener \"{}\": {e} (held by listener \"{}\"; renaming a bound listener needs a restart)",
                    l.listen, l.name, r.name
                ),
                None => format!("cannot listen on {} for listener \"{}\": {e}", l.listen, l.name),
            }
        })?;
        fresh.push(sock);
    }
    let config = Arc::new(config);
    let generation = state.generation.load(Ordering::Relaxed) + 1;
    let table = {
        let _swap = state.swap.lock().await;
        state.publish(config.clone(), generation)
    };
    let settings: Vec<_> = table.listeners.iter().map(|l| l.settings.clone()).collect();
    state.generation.store(generation, Ordering::Relaxed);
    state.shutdown_timeout_ms.store(
        config.global.shutdown_timeout.as_millis() as u64,
        Ordering::Relaxed,
    );

    // Removed listeners stop accepting and drain in the background.
    let (keep, gone): (Vec<_>, Vec<_>) = running
        .drain(..)
        .partition(|r| config.listeners.iter().any(|l| same(r, l)));
    *running = keep;
    let timeout = config.global.shutdown_timeout;
    for r in gone {
        tracing::info!(listener = %r.name, addr = %r.local, "listener removed: draining");
        tokio::spawn(r.drain(timeout));
    }
    let mut fresh = fresh.into_iter();
    for s in settings {
        if running.iter().any(|r| same(r, &s)) {
            continue;
        }
        let Some(sock) = fresh.next() else { break };
        let addr = s.listen;
        let r =
            start_listener(state, sock, s).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        tracing::info!(listener = %r.name, addr = %r.local, "listening");
        running.push(r);
    }
    state.acme.reconcile(&config);
    Ok(generation)
}
