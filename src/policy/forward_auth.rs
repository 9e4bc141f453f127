//! `forward_auth` state: the auth service's address, timeout and connections.

use crate::config::policy::ForwardAuthConfig;

pub struct ForwardAuth {
    pub config: ForwardAuthConfig,
}

impl ForwardAuth {
    pub fn new(config: &ForwardAuthConfig) -> ForwardAuth {
        ForwardAuth {
            config: config.clone(),
        }
    }
}
