//! `basic_auth` state: the users and a short cache of verified credentials.

use crate::config::policy::BasicAuthConfig;

pub struct BasicAuth {
    pub realm: String,
}

impl BasicAuth {
    pub fn new(config: &BasicAuthConfig) -> BasicAuth {
        BasicAuth {
            realm: config.realm.clone(),
        }
    }
}
