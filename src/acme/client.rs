//! The HTTPS client instant-acme talks to the CA with: one HTTP/1.1
//! connection per request over rustls (ring), trusting `directory_ca` or the
//! webpki roots, every request bounded in time.
//!
//! Our own instead of instant-acme's hyper-rustls client, which would pull
//! a second crypto provider and the platform verifier; ACME traffic is a
//! few requests per order, so connection reuse is not worth a pool.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Uri};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// A request, connection included, must finish within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct Client {
    tls: Arc<rustls::ClientConfig>,
}

impl Client {
    /// Trusts `ca` (PEM) when given, else the webpki roots.
    pub(super) fn new(ca: Option<&Path>) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                for c in crate::tls::load_certs(path)? {
                    roots
                        .add(c)
                        .map_err(|e| format!("{}: unusable trust anchor: {e}", path.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client { tls: Arc::new(tls) })
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, send(tls, req)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Str("the ACME server did not answer within 30 s")),
            }
        })
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Other(Box::new(e))
}

async fn send(
    tls: Arc<rustls::ClientConfig>,
    mut req: Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, Error> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(Error::Str("the ACME server sent a URL that is not https"));
    }
    let authority = uri
        .authority()
        .ok_or(Error::Str("URL without a host"))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host, port)).await.map_err(other)?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string()).map_err(other)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(other)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(other)?;
    // Ends when the response body has been read (or dropped).
    tokio::spawn(conn);
    // Origin-form request target, as HTTP/1.1 servers expect.
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = path.parse::<Uri>().map_err(|e| Error::Http(e.into()))?;
    let host_header =
        HeaderValue::from_str(authority.as_str()).map_err(|e| Error::Http(e.into()))?;
    req.headers_mut().insert(HOST, host_header);
    let resp = sender.send_request(req).await.map_err(other)?;
    Ok(BytesResponse::from(resp))
}
