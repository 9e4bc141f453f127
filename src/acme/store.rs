//! What the serving side reads from ACME: issued certificates by name (for
//! the SNI resolver), pending http-01 tokens and tls-alpn-01 challenge
//! certificates, and each certificate's status for the status page.
//!
//! Handshakes read the certificate map through one `ArcSwap` load; the
//! challenge maps are behind mutexes because only a CA's validation
//! requests (and requests under `/.well-known/acme-challenge/`) look there.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use crate::tls::server::CertSource;

/// Shared between the ACME tasks (writers) and listeners (readers).
#[derive(Default)]
pub struct Store {
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    http01: Mutex<HashMap<String, String>>,
    alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    status: Mutex<BTreeMap<String, CertStatus>>,
}

/// One managed certificate as the status page shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CertStatus {
    /// Every name of the certificate, first is its label.
    pub names: Vec<String>,
    /// Unix time the served certificate expires; `None` until there is one.
    pub expires_unix: Option<f64>,
    /// The last order's error, cleared by a success.
    pub last_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "acme::Store({} names)", self.certs.load().len())
    }
}

impl Store {
    /// Serves `key` for every one of `names` from the next handshake on.
    pub(super) fn install(&self, names: &[String], key: Arc<CertifiedKey>) {
        self.certs.rcu(|m| {
            let mut m = HashMap::clone(m);
            for n in names {
                m.insert(n.clone(), key.clone());
            }
            m
        });
    }

    /// Stops serving managed certificates for `names`.
    pub(super) fn remove(&self, names: &[String]) {
        self.certs.rcu(|m| {
            let mut m = HashMap::clone(m);
            for n in names {
                m.remove(n);
            }
            m
        });
    }

    pub(super) fn add_http01(&self, token: &str, key_authorization: &str) {
        lock(&self.http01).insert(token.to_string(), key_authorization.to_string());
    }

    pub(super) fn remove_http01(&self, token: &str) {
        lock(&self.http01).remove(token);
    }

    pub(super) fn add_alpn01(&self, name: &str, cert: Arc<CertifiedKey>) {
        lock(&self.alpn01).insert(name.to_string(), cert);
    }

    pub(super) fn remove_alpn01(&self, name: &str) {
        lock(&self.alpn01).remove(name);
    }

    /// The key authorization for a pending http-01 token.
    pub fn http01(&self, token: &str) -> Option<String> {
        lock(&self.http01).get(token).cloned()
    }

    pub(super) fn set_status(&self, status: CertStatus) {
        lock(&self.status).insert(status.names[0].clone(), status);
    }

    pub(super) fn update_status(&self, first: &str, f: impl FnOnce(&mut CertStatus)) {
        if let Some(s) = lock(&self.status).get_mut(first) {
            f(s);
        }
    }

    pub(super) fn remove_status(&self, first: &str) {
        lock(&self.status).remove(first);
    }

    /// Every managed certificate, by first name.
    pub fn statuses(&self) -> Vec<CertStatus> {
        lock(&self.status).values().cloned().collect()
    }
}

impl CertSource for Store {
    fn certificate(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.load().get(sni).cloned()
    }

    fn challenge(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.alpn01).get(sni).cloned()
    }
}
