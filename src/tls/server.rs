//! TLS termination: key loading, the SNI certificate resolver, the rustls
//! server settings (ALPN h2 + http/1.1, minimum version) and the handshake.
//!
//! The built `rustls::ServerConfig` lives in the listener's settings inside
//! the routing snapshot, so a reload that re-reads the certificates swaps
//! them for new connections without touching the socket; established
//! connections keep the config they were accepted with.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use super::{load_certs, provider};

/// Loads a certificate chain and its private key (PKCS#8, PKCS#1 or SEC1)
/// and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = load_certs(cert)?;
    let pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected): {e}",
            key.display()
        )
    })?;
    // Certificates must at least parse as X.509 end-entity certificates.
    webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| format!("{}: invalid certificate: {e}", cert.display()))?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
        format!(
            "{} and {} do not form a usable pair: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// ALPN protocol of the tls-alpn-01 ACME challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates that change while the process runs (ACME), consulted by
/// the SNI resolver before the configured ones.
pub trait CertSource: Send + Sync + fmt::Debug {
    /// The managed certificate for a (lower-case) SNI name, if any.
    fn certificate(&self, sni: &str) -> Option<Arc<CertifiedKey>>;
    /// The tls-alpn-01 challenge certificate pending for a name, if any.
    fn challenge(&self, sni: &str) -> Option<Arc<CertifiedKey>>;
}

/// Picks the certificate whose SANs match the client's SNI name (exact or
/// wildcard, as webpki matches them); the first certificate otherwise.
/// With a `CertSource`, its certificates win for their names, and a
/// ClientHello offering `acme-tls/1` gets only a challenge certificate.
pub struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
    dynamic: Option<Arc<dyn CertSource>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SniResolver({} certificates, dynamic: {})",
            self.keys.len(),
            self.dynamic.is_some()
        )
    }
}

impl SniResolver {
    /// The first of `keys` is the default; with no keys and no dynamic
    /// certificate for the name, the handshake fails.
    pub fn new(keys: Vec<Arc<CertifiedKey>>, dynamic: Option<Arc<dyn CertSource>>) -> SniResolver {
        SniResolver { keys, dynamic }
    }

    /// The configured certificate for an SNI name (`None`: no SNI sent).
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let default = self.keys.first()?;
        let Some(name) = sni.and_then(|s| ServerName::try_from(s).ok()) else {
            return Some(default);
        };
        if self.keys.len() == 1 {
            return Some(default);
        }
        // A handful of certificates per listener: a linear scan with webpki's
        // own name matching (parsing is zero-copy) is cheaper than the
        // handshake's signature by orders of magnitude.
        self.keys
            .iter()
            .find(|k| {
                k.end_entity_cert()
                    .ok()
                    .and_then(|c| webpki::EndEntityCert::try_from(c).ok())
                    .is_some_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
            })
            .or(Some(default))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if let Some(dynamic) = &self.dynamic {
            let name = sni.map(str::to_ascii_lowercase);
            let challenge = hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
            if challenge {
                // RFC 8737: only the challenge certificate, never a real one.
                return dynamic.challenge(name.as_deref()?);
            }
            if let Some(ck) = name.as_deref().and_then(|n| dynamic.certificate(n)) {
                return Some(ck);
            }
        }
        self.pick(sni).cloned()
    }
}

/// Minimum TLS protocol version of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// Builds a listener's rustls settings from loaded certificates and, for
/// ACME, the certificates that arrive while running.
pub fn server_config(
    keys: Vec<Arc<CertifiedKey>>,
    min: MinVersion,
    dynamic: Option<Arc<dyn CertSource>>,
) -> Arc<ServerConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(keys, dynamic.clone())));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if dynamic.is_some() {
        // Chosen only by a client that offers nothing else: the server's
        // order wins (ignore_client_order) and this comes last.
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    config.ignore_client_order = true;
    Arc::new(config)
}

/// Runs the server side of a TLS handshake, bounded by `timeout`.
pub async fn accept<S>(
    config: Arc<ServerConfig>,
    stream: S,
    timeout: Duration,
) -> io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}
