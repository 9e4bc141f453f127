//! A real ACME server for tests: Let's Encrypt's `pebble` with
//! `pebble-challtestsrv` as its DNS (every name is 127.0.0.1), both on
//! loopback ports, stopped by PID when dropped. Validation is real: pebble
//! connects to Fulcrum's listeners for http-01 and tls-alpn-01.
#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;

use crate::common::{temp_dir, Client, TestCa};

/// A free loopback TCP port (bound, then released for the process that
/// needs it: pebble's validation ports must be known before it starts).
/// Never the same port twice in this test binary, so parallel tests cannot
/// be handed one port between its release and its use.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Everything decided before pebble runs: its ports and the throw-away
/// certificate of its own HTTPS (the `directory_ca` given to Fulcrum).
pub struct PebbleSetup {
    pub dir: PathBuf,
    pub ca: TestCa,
    /// `directory_ca` for Fulcrum.
    pub ca_file: PathBuf,
    pub acme_port: u16,
    pub management_port: u16,
    /// Where pebble validates http-01 and tls-alpn-01: Fulcrum's listeners.
    pub http_port: u16,
    pub tls_port: u16,
    /// Seconds; `None` = pebble's default (years).
    pub validity: Option<u64>,
    pub blocklist: Vec<String>,
}

impl PebbleSetup {
    pub fn new(http_port: u16, tls_port: u16) -> PebbleSetup {
        let dir = temp_dir();
        let ca = TestCa::new();
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("pebble.pem"), &leaf.chain_pem).unwrap();
        std::fs::write(dir.join("pebble.key"), &leaf.key_pem).unwrap();
        let ca_file = dir.join("pebble-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        PebbleSetup {
            dir,
            ca,
            ca_file,
            acme_port: free_port(),
            management_port: free_port(),
            http_port,
            tls_port,
            validity: None,
            blocklist: Vec::new(),
        }
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The `[acme]` table for Fulcrum (storage in `storage`).
    pub fn acme_toml(&self, challenge: &str, storage: &std::path::Path) -> String {
        format!(
            "[acme]\ndirectory = \"{}\"\nstorage = \"{}\"\ndirectory_ca = \"{}\"\nchallenge = \"{challenge}\"\n",
            self.directory(),
            storage.display(),
            self.ca_file.display()
        )
    }

    /// Starts challtestsrv and pebble; returns once both accept connections.
    pub fn start(&self) -> Pebble {
        let dns_port = free_port();
        let dns_mgmt = free_port();
        let dns_log = std::fs::File::create(self.dir.join("challtestsrv.log")).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdout(dns_log.try_clone().unwrap())
            .stderr(dns_log)
            .spawn()
            .expect("pebble-challtestsrv (apt install pebble)");
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", self.acme_port),
                "managementListenAddress": format!("127.0.0.1:{}", self.management_port),
                "certificate": self.dir.join("pebble.pem"),
                "privateKey": self.dir.join("pebble.key"),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "domainBlocklist": self.blocklist,
            }
        });
        if let Some(v) = self.validity {
            config["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let config_file = self.dir.join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = std::fs::File::create(self.dir.join("pebble.log")).unwrap();
        let mut guard = Pebble {
            dns,
            pebble: None,
            log: self.dir.join("pebble.log"),
            management: SocketAddr::from(([127, 0, 0, 1], self.management_port)),
            ca: self.ca.client_config(&[b"http/1.1"]),
        };
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // Full speed, real validation (never PEBBLE_VA_ALWAYS_VALID).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (apt install pebble)");
        guard.pebble = Some(pebble);
        for port in [dns_mgmt, self.acme_port, self.management_port] {
            guard.wait_port(port);
        }
        guard
    }
}

/// Running pebble and its DNS; both killed on drop.
pub struct Pebble {
    dns: Child,
    pebble: Option<Child>,
    log: PathBuf,
    management: SocketAddr,
    ca: Arc<rustls::ClientConfig>,
}

impl Pebble {
    pub fn log(&self) -> String {
        let dns = self.log.with_file_name("challtestsrv.log");
        format!(
            "pebble:\n{}\nchalltestsrv:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(dns).unwrap_or_default()
        )
    }

    /// Waits for `port` to accept; fails at once if either process exited
    /// (a port taken by someone else, say), with both logs.
    fn wait_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = self.dns.try_wait().unwrap().is_some()
                || self
                    .pebble
                    .as_mut()
                    .is_some_and(|p| p.try_wait().unwrap().is_some());
            assert!(
                !exited && Instant::now() < deadline,
                "port {port} never opened (exited: {exited}); logs:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pebble's root certificate (regenerated at each start), from its
    /// management API.
    pub async fn root(&self) -> rustls::RootCertStore {
        let tls = crate::common::tls_connect(self.management, "127.0.0.1", self.ca.clone())
            .await
            .unwrap();
        let reply = Client::over(tls).await.get("/roots/0", "127.0.0.1").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&reply.body) {
            roots.add(c.unwrap()).unwrap();
        }
        assert!(!roots.is_empty());
        roots
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(p) = self.pebble.as_mut() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}
