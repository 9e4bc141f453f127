//! Automatic certificates (ACME, RFC 8555): one background task per
//! certificate (a listener's `tls.acme` names) that serves the stored
//! certificate at once, orders a new one when there is none or when renewal
//! is due, and retries failures with capped exponential backoff. Serving
//! never waits for any of it: certificates reach the SNI resolver through
//! the `Store`, without a reload.
//!
//! ACME renewal information (ARI) is not used: renewal is `renew_before`
//! ahead of expiry.

mod client;
mod order;
mod storage;
mod store;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::Account;

pub use order::OrderError;
pub use store::{CertStatus, Store};

use crate::config::{AcmeConfig, Config};
use crate::metrics::Metrics;
use crate::tls::server::{server_config, CertSource};

/// Path prefix of http-01 challenge requests.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// First retry after a failed order; doubles up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// A whole order (all requests and polling) must end within this.
const ORDER_TIMEOUT: Duration = Duration::from_secs(600);

/// The ACME side of the process: its store, its tasks, its account.
pub struct Acme {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    tasks: Mutex<Vec<Task>>,
    /// The account of the current CA, loaded once and shared by the tasks
    /// (so two first orders cannot create two accounts).
    account: tokio::sync::Mutex<Option<(AcmeConfig, Account)>>,
}

/// A running certificate task.
struct Task {
    names: Vec<String>,
    cfg: AcmeConfig,
    handle: tokio::task::AbortHandle,
}

impl Acme {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>) -> Arc<Acme> {
        Arc::new(Acme {
            store,
            metrics,
            tasks: Mutex::new(Vec::new()),
            account: tokio::sync::Mutex::new(None),
        })
    }

    /// Points every TLS listener's resolver at the store (for issued
    /// certificates and tls-alpn-01 answers). Call on each loaded config
    /// before it is published.
    pub fn attach(&self, config: &mut Config) {
        if config.acme.is_none() {
            return;
        }
        let source: Arc<dyn CertSource> = self.store.clone();
        for tls in config.listeners.iter_mut().filter_map(|l| l.tls.as_mut()) {
            tls.server = server_config(tls.keys.clone(), tls.min_version, Some(source.clone()));
        }
    }

    /// Starts tasks for new certificates, stops those whose names left the
    /// config (their certificates stop being served and renewed), restarts
    /// all when `[acme]` itself changed.
    pub fn reconcile(self: &Arc<Self>, config: &Config) {
        let mut wanted: Vec<Vec<String>> = Vec::new();
        if config.acme.is_some() {
            for l in &config.listeners {
                if let Some(t) = l.tls.as_ref().filter(|t| !t.acme.is_empty()) {
                    if !wanted.contains(&t.acme) {
                        wanted.push(t.acme.clone());
                    }
                }
            }
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let keep = |t: &Task| wanted.contains(&t.names) && config.acme.as_ref() == Some(&t.cfg);
        let (kept, stopped): (Vec<Task>, Vec<Task>) = tasks.drain(..).partition(keep);
        *tasks = kept;
        for t in stopped {
            t.handle.abort();
            let gone: Vec<String> = t
                .names
                .iter()
                .filter(|n| !wanted.iter().any(|w| w.contains(n)))
                .cloned()
                .collect();
            self.store.remove(&gone);
            if !wanted.iter().any(|w| w[0] == t.names[0]) {
                self.store.remove_status(&t.names[0]);
                let _ = self
                    .metrics
                    .acme_certificate_expiry
                    .remove_label_values(&[&t.names[0]]);
            }
            if wanted.contains(&t.names) {
                tracing::info!(names = %t.names.join(","), "ACME: [acme] changed; restarting this certificate's task");
            } else {
                tracing::info!(names = %t.names.join(","), "ACME: certificate no longer configured; not served or renewed");
            }
        }
        let Some(cfg) = config.acme.as_ref() else {
            return;
        };
        for names in wanted {
            if tasks.iter().any(|t| t.names == names) {
                continue;
            }
            let handle = tokio::spawn(self.clone().run(cfg.clone(), names.clone())).abort_handle();
            tasks.push(Task {
                names,
                cfg: cfg.clone(),
                handle,
            });
        }
    }

    /// Stops every task (shutdown).
    pub fn stop_all(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.handle.abort();
        }
    }

    /// One certificate's life: stored copy first, then order / renew forever.
    async fn run(self: Arc<Self>, cfg: AcmeConfig, names: Vec<String>) {
        let label = names.join(",");
        self.store.set_status(CertStatus {
            names: names.clone(),
            expires_unix: None,
            last_error: None,
        });
        let mut wait = Duration::ZERO;
        let dir = storage::ca_dir(&cfg.storage, &cfg.directory);
        match storage::load(&dir, &names) {
            Ok(Some(c)) if c.not_after > SystemTime::now() => {
                self.serve(&names, &c);
                wait = renew_in(&c, cfg.renew_before);
                tracing::info!(names = %label, renew_in_s = wait.as_secs(), "ACME: serving the stored certificate");
            }
            Ok(Some(_)) => {
                tracing::info!(names = %label, "ACME: the stored certificate has expired")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(names = %label, error = %e, "ACME: stored certificate unusable; ordering a new one")
            }
        }
        let mut backoff = BACKOFF_FIRST;
        loop {
            tokio::time::sleep(wait).await;
            tracing::info!(names = %label, directory = %cfg.directory, challenge = cfg.challenge.as_str(), "ACME: ordering a certificate");
            let result = match tokio::time::timeout(ORDER_TIMEOUT, self.order(&cfg, &names)).await {
                Ok(r) => r,
                Err(_) => Err(OrderError::Timeout(ORDER_TIMEOUT)),
            };
            match result {
                Ok(c) => {
                    self.metrics
                        .acme_orders_total
                        .with_label_values(&["success"])
                        .inc();
                    self.serve(&names, &c);
                    backoff = BACKOFF_FIRST;
                    wait = renew_in(&c, cfg.renew_before);
                    tracing::info!(names = %label, expires_unix = unix(c.not_after), renew_in_s = wait.as_secs(), "ACME: certificate issued");
                }
                Err(e) => {
                    self.metrics
                        .acme_orders_total
                        .with_label_values(&["failure"])
                        .inc();
                    tracing::error!(names = %label, error = %e, retry_in_s = backoff.as_secs(), "ACME: order failed");
                    let message = e.to_string();
                    self.store
                        .update_status(&names[0], |s| s.last_error = Some(message));
                    wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Orders, parses and stores one certificate.
    async fn order(
        &self,
        cfg: &AcmeConfig,
        names: &[String],
    ) -> Result<storage::Issued, OrderError> {
        let account = self.account(cfg).await?;
        let got = match order::issue(&account, cfg, &self.store, names).await {
            Ok(got) => got,
            Err(e) => {
                if e.account_unknown() {
                    self.forget_account(cfg).await;
                }
                return Err(e);
            }
        };
        let issued = storage::parse(got.chain_pem.as_bytes(), got.key_pem.as_bytes(), names)
            .map_err(OrderError::Certificate)?;
        let dir = storage::ca_dir(&cfg.storage, &cfg.directory);
        if let Err(e) = storage::save(&cfg.storage, &dir, names, &got.chain_pem, &got.key_pem) {
            // Served anyway; only a restart would have to order again.
            tracing::error!(names = %names.join(","), storage = %cfg.storage.display(), error = %e, "ACME: cannot store the new certificate");
        }
        Ok(issued)
    }

    async fn account(&self, cfg: &AcmeConfig) -> Result<Account, OrderError> {
        let mut cached = self.account.lock().await;
        if let Some((c, a)) = cached.as_ref() {
            if c.directory == cfg.directory
                && c.directory_ca == cfg.directory_ca
                && c.storage == cfg.storage
            {
                return Ok(a.clone());
            }
        }
        let account = order::account(cfg).await?;
        *cached = Some((cfg.clone(), account.clone()));
        Ok(account)
    }

    /// The CA no longer knows our account (a test CA restarted, an account
    /// deactivated elsewhere): the file is set aside, so the next attempt
    /// creates a new account instead of failing forever.
    async fn forget_account(&self, cfg: &AcmeConfig) {
        let mut cached = self.account.lock().await;
        *cached = None;
        let path = storage::account_path(&storage::ca_dir(&cfg.storage, &cfg.directory));
        let aside = path.with_extension("json.unknown");
        match std::fs::rename(&path, &aside) {
            Ok(()) => {
                tracing::warn!(file = %path.display(), moved_to = %aside.display(), "ACME: the CA does not know this account; a new one is made on the next attempt")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ACME: cannot set aside the account the CA does not know")
            }
        }
    }

    fn serve(&self, names: &[String], c: &storage::Issued) {
        self.store.install(names, c.key.clone());
        let expires = unix(c.not_after);
        self.metrics
            .acme_certificate_expiry
            .with_label_values(&[&names[0]])
            .set(expires);
        self.store.update_status(&names[0], |s| {
            s.expires_unix = Some(expires);
            s.last_error = None;
        });
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How long until renewal: `renew_before` ahead of expiry, or when a third
/// of the lifetime is left if `renew_before` is not shorter than the whole
/// lifetime (short-lived certificates; a renewal loop otherwise).
fn renew_in(c: &storage::Issued, renew_before: Duration) -> Duration {
    let lifetime = c
        .not_after
        .duration_since(c.not_before)
        .unwrap_or(Duration::ZERO);
    let ahead = if renew_before < lifetime {
        renew_before
    } else {
        lifetime / 3
    };
    (c.not_after - ahead)
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(lifetime: Duration, left: Duration) -> storage::Issued {
        let now = SystemTime::now();
        let not_after = now + left;
        let key = Arc::new(rustls::sign::CertifiedKey::new(
            vec![],
            crate::tls::provider()
                .key_provider
                .load_private_key(
                    rcgen::KeyPair::generate()
                        .unwrap()
                        .serialize_der()
                        .try_into()
                        .unwrap(),
                )
                .unwrap(),
        ));
        storage::Issued {
            key,
            not_before: not_after - lifetime,
            not_after,
        }
    }

    #[test]
    fn renewal_time() {
        let day = Duration::from_secs(86400);
        // 90-day certificate, 60 days left, renew 30 days ahead: in 30 days.
        let r = renew_in(&issued(90 * day, 60 * day), 30 * day);
        assert!(
            r <= 30 * day && r > 30 * day - Duration::from_secs(5),
            "{r:?}"
        );
        // Inside the window: now.
        assert_eq!(
            renew_in(&issued(90 * day, 10 * day), 30 * day),
            Duration::ZERO
        );
        // 6-day certificate with the 30-day default: when 2 days are left.
        let r = renew_in(&issued(6 * day, 6 * day), 30 * day);
        assert!(
            r <= 4 * day && r > 4 * day - Duration::from_secs(5),
            "{r:?}"
        );
    }
}
