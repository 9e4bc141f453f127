//! Passive health: eject a server after `consecutive_failures` live-traffic
//! failures in a row, never more than `max_ejection_percent` of an upstream.

use crate::backend::ServerState;
use crate::routing::Upstream;

/// Feeds one attempt's outcome into the server's failure streak.
#[inline]
pub fn record(upstream: &Upstream, server: &ServerState, failed: bool) {
    if !failed {
        server.record_success();
        return;
    }
    let Some(p) = &upstream.config.passive_health else {
        return;
    };
    let streak = server.record_failure();
    if streak < p.consecutive_failures || server.is_ejected() {
        return;
    }
    let total = upstream.servers.len();
    let ejected = upstream.servers.iter().filter(|s| s.is_ejected()).count();
    if (ejected + 1) * 100 > p.max_ejection_percent as usize * total {
        tracing::warn!(upstream = %upstream.name, server = %server.addr, streak, "not ejecting: max_ejection_percent reached");
        return;
    }
    tracing::warn!(upstream = %upstream.name, server = %server.addr, streak, ejection_time = ?p.ejection_time, "server ejected");
    server.eject(p.ejection_time);
}
