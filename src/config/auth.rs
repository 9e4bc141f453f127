//! Validation of `basic_auth` and `forward_auth` on a route.

use std::path::Path;

use toml::Spanned;

use super::ctx::Ctx;
use super::policy::{BasicAuthConfig, ForwardAuthConfig};
use super::raw::{RawBasicAuth, RawForwardAuth};

pub(super) fn validate_basic_auth(
    _ctx: &mut Ctx<'_>,
    _config_path: &Path,
    _raw: &Spanned<RawBasicAuth>,
    _key: &str,
) -> Option<BasicAuthConfig> {
    todo!("issue 16: basic_auth")
}

pub(super) fn validate_forward_auth(
    _ctx: &mut Ctx<'_>,
    _raw: &Spanned<RawForwardAuth>,
    _key: &str,
) -> Option<ForwardAuthConfig> {
    todo!("issue 16: forward_auth")
}
