//! Wires everything together: binds listeners, builds the first snapshot,
//! runs background tasks, handles SIGHUP (reload) and SIGTERM/SIGINT (drain).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::backend::{clock_ms, Registry};
use crate::config::Config;
use crate::health::active::ActiveChecks;
use crate::health::dns;
use crate::metrics::Metrics;
use crate::proxy::Shared;
use crate::routing::RoutingTable;
use crate::server::{self, RunningListener};

/// Why the daemon could not start; maps to SPEC's exit codes.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Bind { .. } => 2,
            AppError::Signals(_) => 1,
        }
    }
}

/// The result of the last reload attempt, for the status page.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at_unix: f64,
    pub generation: u64,
    /// `None` when it succeeded.
    pub error: Option<String>,
}

/// State shared by the admin endpoints, reloads and shutdown.
pub struct AppState {
    pub shared: Arc<Shared>,
    pub started: AtomicBool,
    pub last_reload: std::sync::Mutex<Option<ReloadOutcome>>,
    pub config_path: PathBuf,
    generation: AtomicU64,
    listeners: tokio::sync::Mutex<Vec<RunningListener>>,
    shutdown_timeout_ms: Arc<AtomicU64>,
    /// Serialises snapshot swaps (reload, health changes, DNS changes) so a
    /// slower builder can never overwrite a newer config with an older one.
    swap: tokio::sync::Mutex<()>,
    /// Serialises whole reloads (SIGHUP and `--watch`), so a reload that
    /// read the file earlier can never publish after one that read it later.
    reloading: tokio::sync::Mutex<()>,
    checks: ActiveChecks,
    acme: Arc<crate::acme::Acme>,
}

impl AppState {
    fn current(&self) -> Arc<Config> {
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
    fn publish(&self, config: Arc<Config>, generation: u64) -> Arc<RoutingTable> {
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

/// Addresses actually bound, for callers (demo, tests) that asked for port 0.
pub struct Bound {
    pub admin: SocketAddr,
    pub listeners: Vec<(String, SocketAddr)>,
}

/// How `run` behaves beyond the config file.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// `--watch`: also reload when the config file or a certificate changes.
    pub watch: bool,
}

/// Runs until SIGTERM/SIGINT and a graceful drain. `on_bound` is called once
/// every listener is bound and serving.
pub async fn run(config: Config, on_bound: impl FnOnce(&Bound)) -> Result<(), AppError> {
    run_with(config, RunOptions::default(), on_bound).await
}

/// [`run`] with options.
pub async fn run_with(
    config: Config,
    options: RunOptions,
    on_bound: impl FnOnce(&Bound),
) -> Result<(), AppError> {
    let signals = Signals::install().map_err(AppError::Signals)?;
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::new(metrics.clone());
    let acme_store = Arc::new(crate::acme::Store::default());
    let acme = crate::acme::Acme::new(acme_store.clone(), metrics.clone());
    let mut config = config;
    acme.attach(&mut config);
    let config = Arc::new(config);

    // Bind everything first: nothing starts unless every address is ours.
    let admin_sock = server::bind(config.admin.listen).map_err(|source| AppError::Bind {
        addr: config.admin.listen,
        source,
    })?;
    let mut socks = Vec::new();
    for l in &config.listeners {
        let s = server::bind(l.listen).map_err(|source| AppError::Bind {
            addr: l.listen,
            source,
        })?;
        socks.push(s);
    }

    let table = RoutingTable::build(config.clone(), &registry, 1);
    metrics.config_generation.set(1);
    metrics
        .config_last_reload_success_timestamp_seconds
        .set(unix_now());
    let shared = Arc::new(Shared {
        table: ArcSwap::from_pointee(table),
        registry,
        shutting_down: AtomicBool::new(false),
        acme: acme_store,
    });
    let state = Arc::new(AppState {
        shared: shared.clone(),
        started: AtomicBool::new(false),
        last_reload: std::sync::Mutex::new(None),
        config_path: config.path.clone(),
        generation: AtomicU64::new(1),
        listeners: tokio::sync::Mutex::new(Vec::new()),
        shutdown_timeout_ms: Arc::new(AtomicU64::new(
            config.global.shutdown_timeout.as_millis() as u64
        )),
        swap: tokio::sync::Mutex::new(()),
        reloading: tokio::sync::Mutex::new(()),
        checks: ActiveChecks::default(),
        acme,
    });
    state.checks.reconcile(&shared.table.load_full());

    let admin_addr = admin_sock.local_addr().unwrap_or(config.admin.listen);
    crate::admin::spawn(admin_sock, state.clone()).map_err(|source| AppError::Bind {
        addr: config.admin.listen,
        source,
    })?;
    let mut bound = Bound {
        admin: admin_addr,
        listeners: Vec::new(),
    };
    {
        let mut running = state.listeners.lock().await;
        let table = shared.table.load();
        for (sock, l) in socks.into_iter().zip(&table.listeners) {
            let r = start_listener(&state, sock, l.settings.clone())?;
            bound.listeners.push((r.name.clone(), r.local));
            running.push(r);
        }
    }
    tracing::info!(addr = %admin_addr, "admin listening");
    for (name, addr) in &bound.listeners {
        tracing::info!(listener = %name, addr = %addr, "listening");
    }
    state.started.store(true, Ordering::Relaxed);
    tokio::spawn(evict_idle_connections(shared.clone()));
    tokio::spawn(follow_health(state.clone()));
    tokio::spawn(follow_dns(state.clone()));
    // After the listeners: http-01 and tls-alpn-01 are answered from the start.
    state.acme.reconcile(&config);
    if options.watch {
        crate::watch::spawn(state.clone());
    }
    on_bound(&bound);
    tracing::info!(generation = 1, "fulcrum ready");

    signals.serve(&state).await;
    shutdown(&state).await;
    Ok(())
}

fn start_listener(
    state: &Arc<AppState>,
    sock: std::net::TcpListener,
    settings: Arc<crate::config::ListenerConfig>,
) -> Result<RunningListener, AppError> {
    let timeout = state.shutdown_timeout_ms.clone();
    let configured = settings.listen;
    server::spawn(
        sock,
        configured,
        settings,
        state.shared.clone(),
        Arc::new(move || Duration::from_millis(timeout.load(Ordering::Relaxed))),
    )
    .map_err(|source| AppError::Bind {
        addr: configured,
        source,
    })
}

/// Signal streams, installed before anything is announced as ready so that
/// an early SIGHUP reloads instead of killing the process.
#[cfg(unix)]
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
    async fn serve(mut self, state: &Arc<AppState>) {
        loop {
            tokio::select! {
                // Signals that arrive during a reload are coalesced by the
                // stream into one more reload.
                _ = self.hup.recv() => reload(state).await,
                // /ready turns 503 before anything says we are draining.
                _ = self.term.recv() => { stop_ready(state); tracing::info!("SIGTERM: draining"); return }
                _ = self.int.recv() => { stop_ready(state); tracing::info!("SIGINT: draining"); return }
            }
        }
    }
}

#[cfg(unix)]
fn stop_ready(state: &AppState) {
    state.shared.shutting_down.store(true, Ordering::Relaxed);
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn serve(self, _state: &Arc<AppState>) {
        let _ = tokio::signal::ctrl_c().await;
    }
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
        let r = start_listener(state, sock, s).map_err(|e| e.to_string())?;
        tracing::info!(listener = %r.name, addr = %r.local, "listening");
        running.push(r);
    }
    state.acme.reconcile(&config);
    Ok(generation)
}

async fn shutdown(state: &Arc<AppState>) {
    state.shared.shutting_down.store(true, Ordering::Relaxed);
    state.checks.stop_all();
    state.acme.stop_all();
    let timeout = state.current().global.shutdown_timeout;
    let running: Vec<_> = state.listeners.lock().await.drain(..).collect();
    for r in &running {
        r.stop_accepting();
    }
    let drains = running.into_iter().map(|r| r.drain(timeout));
    for d in drains.collect::<Vec<_>>() {
        d.await;
    }
    tracing::info!("shutdown complete");
}

/// Rebuilds the snapshot when a server's eligibility changes (active check
/// verdict, passive ejection) and when an ejection's time is over.
async fn follow_health(state: Arc<AppState>) {
    let registry = state.shared.registry.clone();
    loop {
        let next_expiry = state
            .shared
            .table
            .load()
            .upstreams
            .iter()
            .flat_map(|u| u.servers.iter())
            .filter_map(|s| s.ejected_until())
            .min();
        let wait = next_expiry.map(|t| Duration::from_millis(t.saturating_sub(clock_ms())));
        tokio::select! {
            _ = registry.health_changed.notified() => {}
            _ = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let _swap = state.swap.lock().await;
        let current = state.shared.table.load_full();
        let now = clock_ms();
        for s in current.upstreams.iter().flat_map(|u| u.servers.iter()) {
            s.end_ejection_if_due(now);
        }
        state.publish(current.config.clone(), current.generation);
    }
}

/// Re-resolves DNS-named servers on their `resolve_interval` and swaps in
/// the new membership.
async fn follow_dns(state: Arc<AppState>) {
    let last: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>> =
        Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let current = state.shared.table.load_full();
        let due = |name: &str, every: Duration| {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            match last.get(name) {
                Some(t) if now.duration_since(*t) < every => false,
                _ => {
                    last.insert(name.to_string(), now);
                    true
                }
            }
        };
        let Some(next) = dns::refresh(&current.config, due).await else {
            continue;
        };
        let _swap = state.swap.lock().await;
        // A reload that landed meanwhile already re-resolved everything.
        if Arc::ptr_eq(&state.shared.table.load().config, &current.config) {
            state.publish(Arc::new(next), current.generation);
        }
    }
}

/// Closes pooled upstream connections idle past `pool_idle_timeout`.
async fn evict_idle_connections(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let table = shared.table.load_full();
        for u in &table.upstreams {
            for s in &u.servers {
                s.pool.evict(u.config.pool_idle_timeout);
            }
        }
    }
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
