//! Client-facing listeners: bind, accept, serve HTTP/1.1 and h2c (or h2 by
//! ALPN), enforce connection limits, drain gracefully.

pub mod conn;
mod head_scan;
pub mod proxy_protocol;
mod serve;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::ListenerConfig;
use crate::conn_state::ConnState;
use crate::proxy::{self, ConnInfo, Shared};
use crate::tls;
use proxy_protocol::PrefixedIo;
use serve::{count_unparsed, serve, sniff, Proto, Serving};

/// Binds a listening socket. Done before anything is started or swapped, so a
/// taken port fails start-up (exit 2) or a reload (old config kept).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(true);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A running listener: its accept loop and its connections.
pub struct RunningListener {
    pub name: String,
    pub configured: SocketAddr,
    pub local: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningListener {
    /// Stops accepting, lets connections finish (up to `timeout`), returns
    /// when they are done.
    pub async fn drain(self, timeout: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(timeout + Duration::from_secs(1), self.task).await;
    }

    pub fn stop_accepting(&self) {
        let _ = self.stop.send(true);
    }
}

/// What answers the requests of a listener's connections: the proxy, or
/// the admin endpoints. Both get the same accept path (limits, timeouts,
/// 400/431, drain).
pub trait Handler: Clone + Unpin + Send + Sync + 'static {
    /// Taken by value (a clone per request, an `Arc` bump) so the future
    /// borrows nothing.
    fn call(
        self,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<proxy::body::ProxyBody>> + Send + 'static;

    /// Accounts for a response hyper sent on its own (a request head that
    /// did not parse: 400, 414, 431) or our 408; such a request never
    /// reaches `call`.
    fn unparsed(&self, _conn: &ConnInfo, _code: u16) {}
}

/// The proxy as a listener's handler. It holds nothing: the shared state
/// comes with each connection's `ConnInfo`, so the connection task keeps
/// one handle to it, not two.
#[derive(Clone)]
struct ProxyHandler;

impl Handler for ProxyHandler {
    #[inline]
    fn call(
        self,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<proxy::body::ProxyBody>> + Send + 'static {
        proxy::handle(conn.shared.clone(), conn, req)
    }

    fn unparsed(&self, conn: &ConnInfo, code: u16) {
        count_unparsed(&conn.shared, conn, code);
    }
}

/// The counters a listener keeps about its connections.
pub struct ConnCounters {
    active: prometheus::IntGauge,
    total: prometheus::IntCounter,
    rejected_per_client: prometheus::IntCounter,
    rejected_proxy_protocol: prometheus::IntCounter,
    handshake_errors: prometheus::IntCounter,
}

impl ConnCounters {
    /// The listener's series of the `fulcrum_connections_*` families.
    fn of_listener(metrics: &crate::metrics::Metrics, name: &str) -> ConnCounters {
        ConnCounters {
            active: metrics.connections_active.with_label_values(&[name]),
            total: metrics.connections_total.with_label_values(&[name]),
            rejected_per_client: metrics
                .connections_rejected_total
                .with_label_values(&[name, "max_connections_per_client"]),
            rejected_proxy_protocol: metrics
                .connections_rejected_total
                .with_label_values(&[name, "proxy_protocol"]),
            handshake_errors: metrics
                .tls_handshake_errors_total
                .with_label_values(&[name]),
        }
    }

    /// Counters exported nowhere (the admin listener is not a `listener`
    /// in SPEC's metrics).
    pub fn unexported() -> ConnCounters {
        let c = || prometheus::IntCounter::new("unexported", "-").expect("valid");
        ConnCounters {
            active: prometheus::IntGauge::new("unexported", "-").expect("valid"),
            total: c(),
            rejected_per_client: c(),
            rejected_proxy_protocol: c(),
            handshake_errors: c(),
        }
    }
}

/// A listener's settings as of now: a reload may change them; `None` once
/// a reload removed the listener (it keeps its last known settings).
pub type CurrentSettings = Box<dyn Fn(&str) -> Option<Arc<ListenerConfig>> + Send + Sync>;

/// Starts the accept loop of a proxy listener for a bound socket.
pub fn spawn(
    std_listener: std::net::TcpListener,
    configured: SocketAddr,
    settings: Arc<ListenerConfig>,
    shared: Arc<Shared>,
    drain_timeout: Arc<dyn Fn() -> Duration + Send + Sync>,
) -> io::Result<RunningListener> {
    let counters = ConnCounters::of_listener(&shared.registry.metrics, &settings.name);
    let table_shared = shared.clone();
    let current: CurrentSettings = Box::new(move |name: &str| {
        let table = table_shared.table.load();
        table.listener(name).map(|l| l.settings.clone())
    });
    spawn_with(
        std_listener,
        configured,
        settings,
        shared,
        ProxyHandler,
        current,
        counters,
        drain_timeout,
    )
}

/// Starts an accept loop with any handler: the admin listener uses it with
/// fixed settings.
#[allow(clippy::too_many_arguments)]
pub fn spawn_with<H: Handler>(
    std_listener: std::net::TcpListener,
    configured: SocketAddr,
    settings: Arc<ListenerConfig>,
    shared: Arc<Shared>,
    handler: H,
    current: CurrentSettings,
    counters: ConnCounters,
    drain_timeout: Arc<dyn Fn() -> Duration + Send + Sync>,
) -> io::Result<RunningListener> {
    let local = std_listener.local_addr()?;
    let listener = TcpListener::from_std(std_listener)?;
    let (stop, stop_rx) = watch::channel(false);
    let name = settings.name.clone();
    let task = tokio::spawn(accept_loop(
        listener,
        settings,
        Site {
            shared,
            handler,
            current,
            counters,
        },
        stop_rx,
        drain_timeout,
    ));
    Ok(RunningListener {
        name,
        configured,
        local,
        stop,
        task,
    })
}

/// Connections per client IP, for `max_connections_per_client`.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

struct ClientSlot(Arc<PerClient>, IpAddr);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

impl PerClient {
    fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot(self.clone(), ip))
    }
}

/// What an accept loop serves with.
struct Site<H> {
    shared: Arc<Shared>,
    handler: H,
    current: CurrentSettings,
    counters: ConnCounters,
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    initial: Arc<ListenerConfig>,
    site: Site<H>,
    mut stop: watch::Receiver<bool>,
    drain_timeout: Arc<dyn Fn() -> Duration + Send + Sync>,
) {
    let name: Arc<str> = Arc::from(initial.name.as_str());
    let Site {
        shared,
        handler,
        current,
        counters:
            ConnCounters {
                active: active_gauge,
                total,
                rejected_per_client,
                rejected_proxy_protocol,
                handshake_errors,
            },
    } = site;
    let limit = Arc::new(Semaphore::new(initial.max_connections));
    let per_client = Arc::new(PerClient::default());
    let graceful = GracefulShutdown::new();

    loop {
        // Past max_connections we stop calling accept(): new connections wait
        // in the kernel's accept queue, as with HAProxy's maxconn.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        total.inc();
        // Per-request settings come from the current snapshot (they reload);
        // a listener that a reload removed keeps its last known settings.
        let settings = current(&name).unwrap_or_else(|| initial.clone());
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            name: name.clone(),
            shared: shared.clone(),
            handler: handler.clone(),
            per_client: per_client.clone(),
            rejected_per_client: rejected_per_client.clone(),
            rejected_proxy_protocol: rejected_proxy_protocol.clone(),
            handshake_errors: handshake_errors.clone(),
            drain: graceful.watcher(),
            watcher: graceful.watcher(),
            stop: stop.clone(),
        };
        let accepted = Accepted::new(permit, active_gauge.clone());
        // Spawned as is: a wrapping async block would hold the arguments as
        // well as the future made from them.
        tokio::spawn(conn.run(stream, peer, settings, accepted));
    }
    drop(listener);
    let timeout = drain_timeout();
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, ?timeout, "connections still open after the drain timeout");
    }
}

/// One accepted connection and the listener's handles it needs.
struct Conn<H> {
    name: Arc<str>,
    shared: Arc<Shared>,
    handler: H,
    per_client: Arc<PerClient>,
    rejected_per_client: prometheus::IntCounter,
    rejected_proxy_protocol: prometheus::IntCounter,
    handshake_errors: prometheus::IntCounter,
    drain: Watcher,
    watcher: Watcher,
    /// The listener's stop signal: HTTP/1 connections begin their graceful
    /// shutdown on it (hyper-util's `Watcher` does this for the others).
    stop: watch::Receiver<bool>,
}

/// A connection's place under `max_connections`, and its count in
/// `fulcrum_connections_active`; both given back when its task ends.
struct Accepted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    active: prometheus::IntGauge,
}

impl Accepted {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, active: prometheus::IntGauge) -> Accepted {
        active.inc();
        Accepted {
            _permit: permit,
            active,
        }
    }
}

impl Drop for Accepted {
    fn drop(&mut self) {
        self.active.dec();
    }
}

impl<H: Handler> Conn<H> {
    /// PROXY header (when configured), per-client limit, TLS, then HTTP.
    /// An async block, not an async fn: the task's state is paid by every
    /// connection for its whole life, and an async fn keeps a second copy
    /// of its arguments in it (rust-lang/rust#62958).
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    fn run(
        self,
        mut stream: TcpStream,
        peer: SocketAddr,
        settings: Arc<ListenerConfig>,
        accepted: Accepted,
    ) -> impl Future<Output = ()> + Send {
        async move {
            // Held to the end of the task, whichever way it ends.
            let _accepted = accepted;
            let (stream, client_ip) = if settings.proxy_protocol {
                // Bounded like a request head: a silent or trickling peer
                // cannot hold the connection slot.
                // Boxed, like every path most connections don't take: the
                // connection's task is sized for its largest state, and that
                // size is paid by every connection for its whole life.
                let read = Box::pin(tokio::time::timeout(
                    settings.header_read_timeout,
                    proxy_protocol::read_header(&mut stream),
                ))
                .await;
                match read {
                    Ok(Ok((header, rest))) => (
                        PrefixedIo::new(rest, stream),
                        proxy_protocol::client_ip(&header, peer),
                    ),
                    Ok(Err(e)) => {
                        self.rejected_proxy_protocol.inc();
                        tracing::debug!(listener = %self.name, peer = %peer, error = %e, "connection rejected: PROXY header");
                        return;
                    }
                    Err(_) => {
                        self.rejected_proxy_protocol.inc();
                        tracing::debug!(listener = %self.name, peer = %peer, "connection rejected: no PROXY header within header_read_timeout");
                        return;
                    }
                }
            } else {
                (PrefixedIo::plain(stream), peer.ip().to_canonical())
            };
            let _slot = if settings.max_connections_per_client > 0 {
                match self
                    .per_client
                    .acquire(client_ip, settings.max_connections_per_client)
                {
                    Some(s) => Some(s),
                    None => {
                        self.rejected_per_client.inc();
                        return;
                    }
                }
            } else {
                None
            };
            // The TLS settings (certificates) of the current snapshot: a reload
            // changes them for new connections only.
            let tls_config = settings.tls.as_ref().map(|t| t.server.clone());
            let info = Arc::new(ConnInfo {
                shared: self.shared,
                listener: self.name.clone(),
                client_ip,
                client_ip_value: HeaderValue::from_str(&client_ip.to_string())
                    .unwrap_or(HeaderValue::from_static("unknown")),
                tls: tls_config.is_some(),
                state: Arc::new(ConnState::default()),
                drain: std::sync::Mutex::new(Some(self.drain)),
                listener_hint: std::sync::atomic::AtomicUsize::new(0),
            });
            let serving = Serving {
                handler: self.handler,
                info,
                watcher: self.watcher,
                stop: self.stop,
            };
            match tls_config {
                None => {
                    let mut stop = serving.stop.clone();
                    let proto = match stream.prefix() {
                        [] => tokio::select! {
                            p = sniff(stream.get_ref(), settings.header_read_timeout) => match p {
                                Some(p) => p,
                                // Silent past header_read_timeout, or closed: quietly.
                                None => return,
                            },
                            // Nothing sent yet: a drain closes it at once.
                            _ = stop.changed() => return,
                        },
                        first => Proto::of(first),
                    };
                    serve(stream, proto, &settings, serving).await
                }
                Some(cfg) => {
                    Box::pin(serve_tls(
                        cfg,
                        stream,
                        &settings,
                        serving,
                        &self.handshake_errors,
                    ))
                    .await
                }
            }
        }
    }
}

/// TLS handshake, then HTTP by ALPN. The handshake runs in the connection's
/// task, bounded by header_read_timeout, so a slow client never stalls
/// accept().
async fn serve_tls<H: Handler>(
    cfg: Arc<rustls::ServerConfig>,
    stream: PrefixedIo<TcpStream>,
    settings: &ListenerConfig,
    serving: Serving<H>,
    handshake_errors: &prometheus::IntCounter,
) {
    match tls::server::accept(cfg, stream, settings.header_read_timeout).await {
        Ok(stream) => {
            let proto = match stream.get_ref().1.alpn_protocol() {
                // A tls-alpn-01 validation ends with the handshake.
                Some(tls::server::ACME_TLS_ALPN) => return,
                Some(b"h2") => Proto::H2,
                Some(b"http/1.1") => Proto::H1,
                _ => Proto::Detect,
            };
            serve(stream, proto, settings, serving).await
        }
        Err(e) => {
            handshake_errors.inc();
            let info = &serving.info;
            tracing::debug!(listener = %info.listener, client = %info.client_ip, error = %e, "TLS handshake failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection pays its task's size for its whole life (a parked
    /// keep-alive connection holds little else), so the size is a budget:
    /// the largest state of `Conn::run` must stay plain HTTP/1 serving, with
    /// the rare paths boxed. The stable toolchain lays it out in 1,280 bytes
    /// in debug and release builds alike; a change that grows it fails here.
    #[tokio::test]
    async fn connection_task_stays_within_its_size_budget() {
        const BUDGET: usize = 1_280;
        let config = crate::config::Config::from_toml(
            std::path::Path::new("t.toml"),
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"a\"\n[upstream.a]\nservers = [{ address = \"127.0.0.1:1\" }]\n",
        )
        .unwrap();
        let config = Arc::new(config);
        let registry = crate::backend::Registry::new(Arc::new(crate::metrics::Metrics::new()));
        let table = crate::routing::RoutingTable::build(config.clone(), &registry, 1);
        let shared = Arc::new(Shared {
            table: arc_swap::ArcSwap::from_pointee(table),
            registry,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            acme: Default::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let graceful = GracefulShutdown::new();
        let (_stop_tx, stop) = watch::channel(false);
        let counter = || prometheus::IntCounter::new("c", "c").unwrap();
        let conn = Conn {
            name: "web".into(),
            shared,
            handler: ProxyHandler,
            per_client: Arc::new(PerClient(Mutex::default())),
            rejected_per_client: counter(),
            rejected_proxy_protocol: counter(),
            handshake_errors: counter(),
            drain: graceful.watcher(),
            watcher: graceful.watcher(),
            stop,
        };
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let accepted = Accepted::new(permit, prometheus::IntGauge::new("g", "g").unwrap());
        let settings = Arc::new(config.listeners[0].clone());
        let task = conn.run(stream, addr, settings, accepted);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= BUDGET,
            "the connection task grew to {size} bytes (budget {BUDGET}): box the new state \
             if most connections never reach it"
        );
    }

    #[test]
    fn protocol_from_the_first_bytes() {
        assert_eq!(Proto::of(b"GET / HTTP/1.1\r\n"), Proto::H1);
        assert_eq!(Proto::of(b"POST / HTTP/1.1\r\n"), Proto::H1);
        assert_eq!(Proto::of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Proto::H2);
        assert_eq!(
            Proto::of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Proto::H2
        );
        // Too short to tell: hyper-util's detection reads on.
        assert_eq!(Proto::of(b"P"), Proto::Detect);
        assert_eq!(Proto::of(b"PRI * HTTP/2.0\r\n"), Proto::Detect);
        assert_eq!(Proto::of(b"PRIX"), Proto::H1);
    }
}
