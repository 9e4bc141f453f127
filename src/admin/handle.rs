//! The admin listener's narrow view of the application: what the endpoints
//! read, plus the one thing runtime control needs done (rebuild the routing
//! snapshot). The application implements `Host`; the admin module never
//! sees the application's state.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::proxy::Shared;

/// The result of the last reload attempt, for the status page.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at_unix: f64,
    pub generation: u64,
    /// `None` when it succeeded.
    pub error: Option<String>,
}

/// What the application provides to the admin listener.
pub trait Host: Send + Sync + 'static {
    /// Every listener is bound and serving.
    fn started(&self) -> bool;
    /// Bound address of each running listener, by name.
    fn bound_addrs(&self) -> Vec<(String, SocketAddr)>;
    fn last_reload(&self) -> Option<ReloadOutcome>;
    /// Rebuilds the routing snapshot from the current config (the same
    /// rebuild a health change triggers); returns once it is swapped in, so
    /// the next pick sees a runtime override.
    fn republish(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// What the admin endpoints hold: the snapshot, the registry and the
/// shutdown flag (all in `Shared`), and the host.
#[derive(Clone)]
pub struct AdminHandle {
    pub shared: Arc<Shared>,
    pub host: Arc<dyn Host>,
}

impl AdminHandle {
    pub fn shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::Relaxed)
    }
}
