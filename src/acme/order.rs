//! One certificate order: account (loaded or created), new order, one
//! challenge per authorization published to the `Store`, finalize with our
//! own CSR, download the chain. instant-acme does the JWS and the protocol
//! state machine; this file only chooses and publishes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::client::Client;
use super::storage;
use super::store::Store;
use crate::config::{AcmeChallenge, AcmeConfig};

/// Why an order failed; every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("ACME storage {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ACME account file {path}: {message}")]
    AccountFile { path: String, message: String },
    #[error("cannot use the ACME directory {directory}: {source}")]
    Directory {
        directory: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("the CA says: {0}")]
    Ca(#[source] instant_acme::Error),
    #[error("the CA did not offer the {challenge} challenge for {name}")]
    NoChallenge {
        name: String,
        challenge: &'static str,
    },
    #[error("validation failed: {0}")]
    Invalid(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("directory_ca: {0}")]
    Trust(String),
    #[error("the order did not finish within {0:?}")]
    Timeout(Duration),
}

impl OrderError {
    /// The CA says the account does not exist (RFC 8555 §7.3.1).
    pub fn account_unknown(&self) -> bool {
        match self {
            OrderError::Ca(instant_acme::Error::Api(p)) => {
                p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist")
            }
            _ => false,
        }
    }
}

/// Polling of the order and of the certificate: the CA validates in the
/// background; this is how long we wait for it.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// The account for the configured CA: from the account file, or created
/// (and written) on first use.
pub(super) async fn account(cfg: &AcmeConfig) -> Result<Account, OrderError> {
    let client = || -> Result<Box<Client>, OrderError> {
        Client::new(cfg.directory_ca.as_deref())
            .map(Box::new)
            .map_err(OrderError::Trust)
    };
    let storage_err = |path: &Path, source| OrderError::Storage {
        path: path.display().to_string(),
        source,
    };
    let dir = storage::ca_dir(&cfg.storage, &cfg.directory);
    storage::ensure_dir(&cfg.storage, &dir).map_err(|e| storage_err(&dir, e))?;
    let path = storage::account_path(&dir);
    let directory = |source| OrderError::Directory {
        directory: cfg.directory.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let creds: AccountCredentials =
                serde_json::from_slice(&bytes).map_err(|e| OrderError::AccountFile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            Account::builder_with_http(client()?)
                .from_credentials(creds)
                .await
                .map_err(directory)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The account must be saved before it is used, so probe first:
            // an unwritable folder fails before the CA sees an account.
            storage::write_private(&path.with_extension("probe"), b"")
                .map_err(|e| storage_err(&cfg.storage, e))?;
            let _ = std::fs::remove_file(path.with_extension("probe"));
            let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
            let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
            let (account, creds) = Account::builder_with_http(client()?)
                .create(
                    &NewAccount {
                        contact: &contacts,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    cfg.directory.clone(),
                    None,
                )
                .await
                .map_err(directory)?;
            let json = serde_json::to_vec_pretty(&creds).map_err(|e| OrderError::AccountFile {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            storage::write_private(&path, &json).map_err(|e| storage_err(&path, e))?;
            tracing::info!(directory = %cfg.directory, file = %path.display(), "ACME account created");
            Ok(account)
        }
        Err(e) => Err(storage_err(&path, e)),
    }
}

/// Removes the published challenge answers when the order ends, however
/// it ends (success, error, or the task being aborted by a reload).
struct Published<'a> {
    store: &'a Store,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.store.remove_http01(t);
        }
        for n in &self.names {
            self.store.remove_alpn01(n);
        }
    }
}

/// A certificate chain (PEM) and its new private key (PEM).
pub(super) struct Obtained {
    pub(super) chain_pem: String,
    pub(super) key_pem: String,
}

/// Runs one order for `names` to the end.
pub(super) async fn issue(
    account: &Account,
    cfg: &AcmeConfig,
    store: &Store,
    names: &[String],
) -> Result<Obtained, OrderError> {
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(OrderError::Ca)?;
    let kind = match cfg.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut published = Published {
        store,
        tokens: Vec::new(),
        names: Vec::new(),
    };
    // Scoped: the authorizations borrow the order.
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(OrderError::Ca)?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(OrderError::Invalid(format!(
                    "authorization for {name} is {other:?}"
                )))
            }
        }
        let mut challenge =
            authz
                .challenge(kind.clone())
                .ok_or_else(|| OrderError::NoChallenge {
                    name: name.clone(),
                    challenge: cfg.challenge.as_str(),
                })?;
        let key_auth = challenge.key_authorization();
        match cfg.challenge {
            AcmeChallenge::Http01 => {
                store.add_http01(&challenge.token, key_auth.as_str());
                published.tokens.push(challenge.token.clone());
            }
            AcmeChallenge::TlsAlpn01 => {
                let cert = alpn_challenge_cert(&name, key_auth.digest().as_ref())?;
                store.add_alpn01(&name, Arc::new(cert));
                published.names.push(name.clone());
            }
        }
        challenge.set_ready().await.map_err(OrderError::Ca)?;
    }

    let status = order.poll_ready(&POLL).await.map_err(OrderError::Ca)?;
    if status != OrderStatus::Ready {
        return Err(OrderError::Invalid(validation_errors(&mut order).await));
    }
    drop(published);

    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| OrderError::Certificate(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    let key = KeyPair::generate().map_err(|e| OrderError::Certificate(e.to_string()))?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| OrderError::Certificate(e.to_string()))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(OrderError::Ca)?;
    let chain_pem = order
        .poll_certificate(&POLL)
        .await
        .map_err(OrderError::Ca)?;
    Ok(Obtained {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// What the CA says about each failed challenge (its own words: "connection
/// refused", "incorrect key authorization", ...).
async fn validation_errors(order: &mut instant_acme::Order) -> String {
    let mut out = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        for c in &authz.challenges {
            if let Some(e) = &c.error {
                out.push(format!("{name}: {e}"));
            }
        }
    }
    if out.is_empty() {
        "the order became invalid".to_string()
    } else {
        out.join("; ")
    }
}

/// The self-signed tls-alpn-01 certificate (RFC 8737): the name as its only
/// SAN and the key authorization's SHA-256 in a critical acmeIdentifier
/// extension.
fn alpn_challenge_cert(name: &str, digest: &[u8]) -> Result<CertifiedKey, OrderError> {
    let err = |e: rcgen::Error| OrderError::Certificate(e.to_string());
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(err)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = crate::tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| OrderError::Certificate(e.to_string()))?;
    // Not `CertifiedKey::from_der`: its consistency check parses the
    // certificate with webpki, which refuses the critical acmeIdentifier
    // extension that RFC 8737 requires.
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}
