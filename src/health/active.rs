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
use crate::config::{HealthCheckConfig, UpstreamConfig, UpstreamProtocol};
use crate::routing::RoutingTable;
use rustls_pki_types::ServerName;

type Key = (Arc<str>, SocketAddr);

/// What a probe needs besides the check settings: how to talk to the server.
#[derive(Clone)]
struct Target {
    protocol: UpstreamProtocol,
    /// Client TLS settings and the name to verify, for TLS protocols.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Target {
    fn of(u: &UpstreamConfig, addr: SocketAddr) -> Target {
        Target {
            protocol: u.protocol,
            tls: u
                .tls
                .as_ref()
                .zip(u.tls_name_for(addr))
                .map(|(t, name)| (t.client.clone(), name)),
        }
    }

    fn same(&self, other: &Target) -> bool {
        self.protocol == other.protocol
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some((a, n)), Some((b, m))) => Arc::ptr_eq(a, b) && n == m,
                _ => false,
            }
    }
}

/// The running probe tasks, reconciled with each new snapshot.
#[derive(Default)]
pub struct ActiveChecks {
    tasks: Mutex<HashMap<Key, Probe>>,
}

/// A running probe task and what it was started with.
type Probe = (HealthCheckConfig, Target, JoinHandle<()>);

impl ActiveChecks {
    /// Starts probes for servers that gained a health check, stops those of
    /// servers that left (or lost their check), restarts changed ones. Probe
    /// state (pass/fail streaks) restarts; the server's up/down state does not.
    pub fn reconcile(&self, table: &RoutingTable) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted: HashMap<Key, (&HealthCheckConfig, Target, &Arc<ServerState>)> =
            HashMap::new();
        for u in &table.upstreams {
            if let Some(hc) = &u.config.health_check {
                for s in &u.servers {
                    let target = Target::of(&u.config, s.addr);
                    wanted.insert((u.name.clone(), s.addr), (hc, target, s));
                }
            }
        }
        tasks.retain(|key, (cfg, target, handle)| {
            let keep = wanted
                .get(key)
                .is_some_and(|(c, t, _)| *c == cfg && t.same(target));
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, (cfg, target, server)) in wanted {
            tasks.entry(key).or_insert_with(|| {
                let handle = tokio::spawn(probe_loop(server.clone(), cfg.clone(), target.clone()));
                (cfg.clone(), target, handle)
            });
        }
    }

    pub fn stop_all(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (_, (_, _, h)) in tasks.drain() {
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

async fn probe_loop(server: Arc<ServerState>, cfg: HealthCheckConfig, target: Target) {
    let mut jitter = Jitter::new(server.addr);
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        let verdict = probe(&server, &cfg, &target).await;
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

/// One probe on a fresh connection, in the upstream's protocol: passes when
/// the status is in range within `timeout`.
async fn probe(
    server: &ServerState,
    cfg: &HealthCheckConfig,
    target: &Target,
) -> Result<(), String> {
    match tokio::time::timeout(cfg.timeout, probe_once(server, cfg, target)).await {
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
        Ok(r) => r,
    }
}

async fn probe_once(
    server: &ServerState,
    cfg: &HealthCheckConfig,
    target: &Target,
) -> Result<(), String> {
    let stream = TcpStream::connect(server.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let host = cfg.host.clone().unwrap_or_else(|| server.addr.to_string());
    let h2 = target.protocol.is_h2();
    let mut builder = Request::get(if h2 {
        format!("http://{host}{}", cfg.path)
    } else {
        cfg.path.clone()
    })
    .header(http::header::USER_AGENT, "fulcrum-health-check");
    if !h2 {
        builder = builder
            .header(http::header::HOST, host.as_str())
            .header(http::header::CONNECTION, "close");
    }
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let status = match &target.tls {
        Some((client, name)) => {
            let tls = crate::tls::client::connect(client.clone(), name.clone(), stream)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            exchange(TokioIo::new(tls), h2, req).await?
        }
        None => exchange(TokioIo::new(stream), h2, req).await?,
    };
    let (lo, hi) = cfg.expect_status;
    if (lo..=hi).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}

/// Sends one request over `io` with HTTP/1.1 or HTTP/2 and returns the status.
async fn exchange<I>(io: I, h2: bool, req: Request<Empty<Bytes>>) -> Result<StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let r = sender.send_request(req).await;
        conn.abort();
        r
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let r = sender.send_request(req).await;
        conn.abort();
        r
    };
    resp.map(|r| r.status())
        .map_err(|e| format!("request: {e}"))
}
