//! Route policy state built with the routing snapshot: what a route's
//! policy keys need at run time besides their config (the basic-auth cache,
//! the forward-auth connection pool, the split schedule). The request path
//! applies it in `proxy`.

pub mod basic_auth;
pub mod forward_auth;
pub mod split;

use crate::config::PolicyConfig;

/// One route's policy: its config plus the state its keys keep.
pub struct Policy {
    pub config: PolicyConfig,
    pub basic_auth: Option<basic_auth::BasicAuth>,
    pub forward_auth: Option<forward_auth::ForwardAuth>,
}

impl Policy {
    pub fn new(config: &PolicyConfig) -> Policy {
        Policy {
            basic_auth: config.basic_auth.as_ref().map(basic_auth::BasicAuth::new),
            forward_auth: config
                .forward_auth
                .as_ref()
                .map(forward_auth::ForwardAuth::new),
            config: config.clone(),
        }
    }
}
