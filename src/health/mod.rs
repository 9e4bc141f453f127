//! Server health: active probes (`active`), passive ejection from live
//! traffic (`passive`), the retry budget (`budget`) and DNS membership
//! (`dns`). Health lives in `ServerState`; a change of eligibility signals
//! `Registry::health_changed` and the app rebuilds the routing snapshot.

pub mod active;
pub mod dns;
pub mod passive;
