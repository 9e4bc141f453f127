//! `compress`: negotiating an encoding from the request and compressing the
//! response body as it streams.

use http::{Request, Response};
use hyper::body::Incoming;

use super::body::ProxyBody;
use crate::config::policy::{CompressConfig, Encoding};

/// The encoding the request accepts that the route offers (read before the
/// request is forwarded; `None` for HEAD or nothing acceptable).
pub(super) fn negotiate(_cfg: &CompressConfig, _req: &Request<Incoming>) -> Option<Encoding> {
    None
}

/// Compresses `resp` with `enc` when the response qualifies; returns the
/// response and the encoding it got, if any.
pub(super) fn apply(
    _cfg: &CompressConfig,
    _enc: Encoding,
    resp: Response<ProxyBody>,
) -> (Response<ProxyBody>, Option<Encoding>) {
    (resp, None)
}
