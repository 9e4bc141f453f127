//! Validation of `compress` on a route.

use toml::Spanned;

use super::ctx::Ctx;
use super::policy::CompressConfig;

/// `true` (defaults), `false` (`None`) or a table.
pub(super) fn validate_compress(
    _ctx: &mut Ctx<'_>,
    _raw: &Spanned<toml::Value>,
    _key: &str,
) -> Option<CompressConfig> {
    todo!("issue 16: compress")
}
