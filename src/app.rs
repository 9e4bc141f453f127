//! Wires everything together: binds listeners, builds the first snapshot,
//! runs background tasks, handles SIGHUP (reload) and SIGTERM/SIGINT (drain).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::backend::Registry;
use crate::clock::{clock_ms, unix_now};
use crate::config::Config;
use crate::health::active::ActiveChecks;
use crate::health::dns;
use crate::metrics::Metrics;
use crate::proxy::Shared;
use crate::reload::{reload, start_listener, AppState};
use crate::routing::RoutingTable;
use crate::server;

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

    // Runtime overrides from the last run apply to the servers the first
    // snapshot creates; the rest (servers no longer configured) are dropped.
    if let Some(path) = &config.admin.state_file {
        registry.restore(crate::backend::overrides::load(path));
    }
    let table = RoutingTable::build(config.clone(), &registry, 1);
    let dropped = registry.forget_restored();
    if let (Some(path), true) = (&config.admin.state_file, dropped > 0) {
        // What was dropped (servers no longer configured) leaves the file now,
        // so it cannot come back with the server in a later config. (A file
        // that could not be read is left as it is, for a person to look at.)
        let servers = table.upstreams.iter().flat_map(|u| u.servers.iter());
        if let Err(e) = registry.save_overrides(path, servers.map(|s| &**s)) {
            tracing::error!(path = %path.display(), error = %e, "cannot write the state file");
        }
    }
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
        admin: tokio::sync::Mutex::new(None),
        acme,
    });
    state.checks.reconcile(&shared.table.load_full());

    let admin_addr = admin_sock.local_addr().unwrap_or(config.admin.listen);
    let admin = crate::admin::spawn(
        admin_sock,
        config.admin.listener.clone(),
        crate::reload::admin_handle(&state),
        ADMIN_DRAIN,
    )
    .map_err(|source| AppError::Bind {
        addr: config.admin.listen,
        source,
    })?;
    *state.admin.lock().await = Some(admin);
    let mut bound = Bound {
        admin: admin_addr,
        listeners: Vec::new(),
    };
    {
        let mut running = state.listeners.lock().await;
        let table = shared.table.load();
        for (sock, l) in socks.into_iter().zip(&table.listeners) {
            let addr = l.settings.listen;
            let r = start_listener(&state, sock, l.settings.clone())
                .map_err(|source| AppError::Bind { addr, source })?;
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

/// How long admin connections get to finish at shutdown.
const ADMIN_DRAIN: Duration = Duration::from_secs(5);

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
    // The admin listener last: /ready says 503 and /metrics stays readable
    // while the proxy drains.
    if let Some(admin) = state.admin.lock().await.take() {
        admin.drain(ADMIN_DRAIN).await;
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
        // Same config, so the probes need no reconcile: only the balancers
        // of upstreams whose up servers changed are rebuilt.
        if let Some(table) = current.after_health_change() {
            state.shared.table.store(Arc::new(table));
        }
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
