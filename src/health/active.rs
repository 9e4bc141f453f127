//! Active health checks: one task per server, each on its own schedule with
//! jitter and its own short-lived connections (never the request pool), so a
//! hung probe delays nobody else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::backend::ServerState;
use crate::config::HealthCheckConfig;
use crate::routing::RoutingTable;

type Key = (Arc<str>, SocketAddr);

/// The running probe tasks, reconciled with each new snapshot.
#[derive(Default)]
pub struct ActiveChecks {
    tasks: Mutex<HashMap<Key, (HealthCheckConfig, JoinHandle<()>)>>,
}

impl ActiveChecks {
    /// Starts probes for servers that gained a health check, stops those of
    /// servers that left (or lost their check), restarts changed ones. Probe
    /// state (pass/fail streaks) restarts; the server's up/down state does not.
    pub fn reconcile(&self, table: &RoutingTable) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted: HashMap<Key, (&HealthCheckConfig, &Arc<ServerState>)> = HashMap::new();
        for u in &table.upstreams {
            if let Some(hc) = &u.config.health_check {
                for s in &u.servers {
                    wanted.insert((u.name.clone(), s.addr), (hc, s));
                }
            }
        }
        tasks.retain(|key, (cfg, handle)| {
            let keep = wanted.get(key).is_some_and(|(c, _)| *c == cfg);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, (cfg, server)) in wanted {
            tasks.entry(key).or_insert_with(|| {
                let handle = tokio::spawn(probe_loop(server.clone(), cfg.clone()));
                (cfg.clone(), handle)
            });
        }
    }

    pub fn stop_all(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (_, (_, h)) in tasks.drain() {
            h.abort();
        }
    }
}

/// A cheap per-task PRNG for jitter (xorshift), seeded from the address.
struct Jitter(u64);

impl Jitter {
    fn new(addr: SocketAddr) -> Jitter {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(addr.to_string().as_bytes());
        Jitter(h.finish() | 1)
    }

    /// A uniform value in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `d` spread by up to ±`fraction`.
    fn spread(&mut self, d: Duration, fraction: f64) -> Duration {
        let f = 1.0 + fraction * (2.0 * self.next() - 1.0);
        d.mul_f64(f.max(0.0))
    }
}

async fn probe_loop(server: Arc<ServerState>, cfg: HealthCheckConfig) {
    let mut jitter = Jitter::new(server.addr);
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        let verdict = probe(&server, &cfg).await;
        match verdict {
            Ok(()) => {
                server.metrics.checks_pass.inc();
                passes += 1;
                fails = 0;
                if server.is_checked_down() && passes >= cfg.healthy_threshold {
                    server.set_checked_down(false);
                    tracing::info!(upstream = %server.upstream, server = %server.addr, passes, "server up");
                }
            }
            Err(reason) => {
                server.metrics.checks_fail.inc();
                fails += 1;
                passes = 0;
                if !server.is_checked_down() && fails >= cfg.unhealthy_threshold {
                    server.set_checked_down(true);
                    tracing::warn!(upstream = %server.upstream, server = %server.addr, reason = %reason, "server down");
                }
            }
        }
        tokio::time::sleep(jitter.spread(cfg.interval, cfg.jitter)).await;
    }
}

/// One probe on a fresh connection: passes when the status is in range
/// within `timeout`.
async fn probe(server: &ServerState, cfg: &HealthCheckConfig) -> Result<(), String> {
    match tokio::time::timeout(cfg.timeout, probe_once(server, cfg)).await {
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
        Ok(r) => r,
    }
}

async fn probe_once(server: &ServerState, cfg: &HealthCheckConfig) -> Result<(), String> {
    let stream = TcpStream::connect(server.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let host = cfg.host.clone().unwrap_or_else(|| server.addr.to_string());
    let req = Request::get(cfg.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "fulcrum-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    conn.abort();
    let status: StatusCode = resp.status();
    let (lo, hi) = cfg.expect_status;
    if (lo..=hi).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}
