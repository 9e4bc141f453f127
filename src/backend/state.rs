//! `ServerState`: everything long-lived about one server of one upstream,
//! in groups by concern — health (active checks, slow-start ramp), ejection
//! (passive health), load (in-flight counts, latency), the connection pool,
//! and the operator's runtime override (`admin`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::ewma::PeakEwma;
use super::overrides::{AdminOverride, AdminState};
use super::Registry;
use crate::clock::{clock_ms, clock_ms_at};
use crate::metrics::ServerMetrics;
use crate::pool::Pool;

/// Active health checks, and when the server last came up.
pub struct Health {
    /// Down by active health checks.
    checked_down: AtomicBool,
    /// When the server last came up, as `clock_ms + 1`; 0 = not ramping.
    up_since: AtomicU64,
}

/// Passive health: live-traffic failures and the ejection they cause.
#[derive(Default)]
pub struct Ejection {
    /// Ejected; cleared when `until` passes.
    ejected: AtomicBool,
    /// End of the current ejection, in ms on the process clock.
    until: AtomicU64,
    /// Live-traffic failures in a row.
    consecutive_failures: AtomicU32,
}

/// What the load-aware strategies look at.
pub struct Load {
    pub(super) in_flight: AtomicUsize,
    /// In-flight requests over every server of this upstream (shared).
    pub(super) group: Arc<AtomicUsize>,
    /// Peak-EWMA of response-head latency (used by `peak-ewma`).
    pub ewma: PeakEwma,
    /// Told about every in-flight change (used by `least-connections`).
    pub(crate) hook: ArcSwapOption<LoadHook>,
}

/// State of one server of one upstream.
pub struct ServerState {
    pub upstream: Arc<str>,
    pub addr: SocketAddr,
    /// `ip:port`, the `server` metric label.
    pub label: String,
    pub health: Health,
    pub ejection: Ejection,
    pub load: Load,
    /// Runtime control: drain/disable and a weight override.
    pub admin: AdminOverride,
    pub pool: Pool,
    pub metrics: ServerMetrics,
    pub(super) registry: Weak<Registry>,
}

impl ServerState {
    pub(super) fn new(
        registry: &Arc<Registry>,
        upstream: Arc<str>,
        addr: SocketAddr,
        initial_up: bool,
        group: Arc<AtomicUsize>,
    ) -> ServerState {
        let label = addr.to_string();
        let s = ServerState {
            metrics: ServerMetrics::new(&registry.metrics, &upstream, &label),
            upstream,
            addr,
            label,
            health: Health {
                checked_down: AtomicBool::new(!initial_up),
                up_since: AtomicU64::new(0),
            },
            ejection: Ejection::default(),
            load: Load {
                in_flight: AtomicUsize::new(0),
                group,
                ewma: PeakEwma::default(),
                hook: ArcSwapOption::empty(),
            },
            admin: AdminOverride::default(),
            pool: Pool::default(),
            registry: Arc::downgrade(registry),
        };
        s.metrics.up.set(initial_up as i64);
        s
    }

    pub fn in_flight(&self) -> usize {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    /// Healthy: not down by active checks, not ejected. Says nothing about
    /// the operator's override (see `is_pickable`).
    #[inline]
    pub fn is_up(&self) -> bool {
        !self.health.checked_down.load(Ordering::Relaxed)
            && !self.ejection.ejected.load(Ordering::Relaxed)
    }

    /// Eligible for new requests chosen by the strategy: healthy and
    /// neither drained nor disabled.
    #[inline]
    pub fn is_pickable(&self) -> bool {
        self.is_up() && self.admin.state() == AdminState::None
    }

    /// Eligible for requests whose sticky cookie names it: healthy and not
    /// disabled (a draining server still takes its sticky clients).
    #[inline]
    pub fn takes_sticky(&self) -> bool {
        self.is_up() && self.admin.state() != AdminState::Disable
    }

    pub fn is_checked_down(&self) -> bool {
        self.health.checked_down.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejection.ejected.load(Ordering::Relaxed)
    }

    /// "up", "down", "ejected", "disabled" or "draining", for people. Health
    /// comes first: a disabled server whose checks fail is "down" (its
    /// `admin_state` still says "disable").
    pub fn state_name(&self) -> &'static str {
        if self.is_checked_down() {
            "down"
        } else if self.is_ejected() {
            "ejected"
        } else {
            match self.admin.state() {
                AdminState::Disable => "disabled",
                AdminState::Drain => "draining",
                AdminState::None => "up",
            }
        }
    }

    /// Records an active-check verdict; returns true when it changed.
    pub fn set_checked_down(&self, down: bool) -> bool {
        let changed = self.health.checked_down.swap(down, Ordering::Relaxed) != down;
        if changed && !down {
            // Coming back: `slow_start` ramps it up from here.
            self.set_up_since(Some(Instant::now()));
        }
        if changed {
            self.metrics.up.set(self.is_up() as i64);
            self.eligibility_changed();
        }
        changed
    }

    /// A live request succeeded: the failure streak ends.
    #[inline]
    pub fn record_success(&self) {
        let e = &self.ejection;
        if e.consecutive_failures.load(Ordering::Relaxed) != 0 {
            e.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A live request failed; returns the length of the failure streak.
    pub fn record_failure(&self) -> u32 {
        self.ejection
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1
    }

    /// Takes the server out of rotation for `time`.
    pub fn eject(&self, time: Duration) {
        let e = &self.ejection;
        e.until
            .store(clock_ms() + time.as_millis() as u64, Ordering::Relaxed);
        e.consecutive_failures.store(0, Ordering::Relaxed);
        if !e.ejected.swap(true, Ordering::Relaxed) {
            self.metrics.ejections.inc();
            self.metrics.up.set(0);
            self.eligibility_changed();
        }
    }

    /// When the ejection ends (process-clock ms), if ejected.
    pub fn ejected_until(&self) -> Option<u64> {
        self.is_ejected()
            .then(|| self.ejection.until.load(Ordering::Relaxed))
    }

    /// Ends an ejection whose time is over; returns true if it did.
    pub fn end_ejection_if_due(&self, now_ms: u64) -> bool {
        let e = &self.ejection;
        if self.is_ejected() && e.until.load(Ordering::Relaxed) <= now_ms {
            e.ejected.store(false, Ordering::Relaxed);
            self.set_up_since(Some(Instant::now()));
            self.metrics.up.set(self.is_up() as i64);
            tracing::info!(upstream = %self.upstream, server = %self.addr, "server back from ejection");
            return true;
        }
        false
    }

    /// Sets the operator's drain/disable; returns true when it changed.
    /// The snapshot must be rebuilt for picks to follow (see
    /// `Registry::health_changed`).
    pub fn set_admin_state(&self, state: AdminState) -> bool {
        let changed = self.admin.set_state(state);
        if changed {
            self.metrics.admin_state.set(state as i64);
            if state == AdminState::None && self.is_up() {
                // Back in rotation: ramp up as after a health recovery.
                self.set_up_since(Some(Instant::now()));
            }
        }
        changed
    }

    /// Sets (`Some`) or clears the runtime weight; returns true when it
    /// changed.
    pub fn set_weight_override(&self, weight: Option<u32>) -> bool {
        let changed = self.admin.set_weight(weight);
        if changed {
            self.metrics.weight.set(self.effective_weight() as i64);
        }
        changed
    }

    /// The weight strategies use: the runtime override, else the configured
    /// weight (as of the last snapshot build).
    #[inline]
    pub fn effective_weight(&self) -> u32 {
        self.admin.effective_weight()
    }

    /// Records the configured weight (called when a snapshot is built).
    pub fn set_configured_weight(&self, weight: u32) {
        self.admin.set_configured(weight);
        self.metrics.weight.set(self.effective_weight() as i64);
    }

    /// Asks for the snapshot to be rebuilt, off the request path.
    pub fn eligibility_changed(&self) {
        if let Some(r) = self.registry.upgrade() {
            r.health_changed.notify_one();
        }
    }

    /// Records when the server came up, which starts its `slow_start` ramp;
    /// `None` means it has been up long enough (full weight).
    pub fn set_up_since(&self, at: Option<Instant>) {
        let v = at.map_or(0, |t| clock_ms_at(t) + 1);
        self.health.up_since.store(v, Ordering::Relaxed);
    }

    /// `clock_ms` at which the server came up, if a ramp may be running.
    #[inline]
    pub fn up_since_ms(&self) -> Option<u64> {
        match self.health.up_since.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v - 1),
        }
    }

    /// In-flight requests over every server of this server's upstream.
    #[inline]
    pub fn group_in_flight(&self) -> usize {
        self.load.group.load(Ordering::Relaxed)
    }

    /// The shared upstream-wide in-flight counter.
    pub(crate) fn group_in_flight_handle(&self) -> Arc<AtomicUsize> {
        self.load.group.clone()
    }

    #[inline]
    pub(super) fn load_changed(&self) {
        if let Some(h) = &*self.load.hook.load() {
            h.update(self);
        }
    }
}

impl Drop for ServerState {
    fn drop(&mut self) {
        let Some(reg) = self.registry.upgrade() else {
            return;
        };
        let mut inner = reg.lock();
        let Some(of_upstream) = inner.servers.get_mut(&*self.upstream) else {
            return;
        };
        // A reload may already have created a successor for the same key; its
        // series are the same series, so only remove them if nobody took over.
        if of_upstream
            .get(&self.addr)
            .is_some_and(|w| w.strong_count() == 0)
        {
            of_upstream.remove(&self.addr);
            if of_upstream.is_empty() {
                inner.servers.remove(&*self.upstream);
            }
            self.metrics.remove_series();
        }
    }
}

/// A least-connections tree that wants to hear when a server's in-flight
/// count changes (balance/least.rs implements it). A trait object, so that
/// per-server state does not depend on the balancers.
pub trait LoadTree: Send + Sync {
    fn update(&self, leaf: usize, server: &ServerState);
}

/// Registered on a server by the newest least-connections tree that holds it.
pub struct LoadHook {
    pub tree: Arc<dyn LoadTree>,
    pub leaf: u32,
}

impl LoadHook {
    /// The server's in-flight count changed.
    #[inline]
    pub(crate) fn update(&self, server: &ServerState) {
        self.tree.update(self.leaf as usize, server);
    }
}
