//! Test helpers: real backends on 127.0.0.1:0, a real `fulcrum` process, and
//! small HTTP clients. No mocks: everything talks over loopback sockets.
#![allow(dead_code, unreachable_pub)]

mod backend;
mod client;
mod daemon;
mod tls;
mod tools;

// Every helper keeps its old `common::name` path; a test file that uses
// nothing of one part would warn without the allow.
#[allow(unused_imports)]
pub use backend::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use daemon::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use tools::*;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

pub use rustls_pki_types::pem::PemObject;
pub use rustls_pki_types::{CertificateDer, ServerName};
pub use tokio_rustls::client::TlsStream as ClientTls;

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes (a readiness
/// wait on observable state, not a sleep standing in for synchronisation).
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
