//! HTTP/2 attacks with hand-written frames on a prior-knowledge h2c
//! connection: Rapid Reset, CONTINUATION flood, SETTINGS/PING floods, too
//! many streams, and connection-specific headers. Each ends in GOAWAY,
//! RST_STREAM or a bounded connection; honest clients keep being served and
//! forbidden headers never reach the HTTP/1 server.

mod common;
use common::*;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const REFUSED_STREAM: u32 = 7;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal header without indexing, new name.
fn lit(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// GET http://a<path> plus `extra` headers, as an HPACK block.
fn get_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    b.push(0x04); // :path, literal value, indexed name 4
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b.push(0x01); // :authority, indexed name 1
    b.push(1);
    b.push(b'a');
    for (n, v) in extra {
        lit(&mut b, n, v);
    }
    b
}

struct H2 {
    s: TcpStream,
    buf: Vec<u8>,
}

impl H2 {
    async fn connect(f: &Fulcrum) -> H2 {
        let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
        s.write_all(PREFACE).await.unwrap();
        s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        H2 { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes).await
    }

    /// The next frame (type, flags, stream, payload), or None at EOF/timeout.
    async fn next(&mut self, timeout: Duration) -> Option<(u8, u8, u32, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    return Some((f[3], f[4], stream, f[9..].to_vec()));
                }
            }
            let mut tmp = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.s.read(&mut tmp)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&tmp[..n]),
                _ => return None,
            }
        }
    }

    /// Reads frames until GOAWAY or EOF; returns whether a GOAWAY came and
    /// the frames seen before it.
    async fn until_goaway(&mut self, timeout: Duration) -> (bool, Vec<(u8, u8, u32, Vec<u8>)>) {
        let mut seen = Vec::new();
        while let Some(f) = self.next(timeout).await {
            if f.0 == GOAWAY {
                return (true, seen);
            }
            seen.push(f);
        }
        (false, seen)
    }
}

async fn setup(delay: Duration) -> (Backend, Fulcrum) {
    let b = slow_backend("ok", delay).await;
    let f = Fulcrum::start(&one_route(&[&b]));
    (b, f)
}

async fn honest(f: &Fulcrum) {
    // An honest h2c client and an HTTP/1.1 client.
    let tcp = TcpStream::connect(f.addr("web")).await.unwrap();
    let mut h2 = h2_client(tcp).await;
    let req = http::Request::get(format!("http://{}/", f.addr("web")))
        .body(full(""))
        .unwrap();
    let r = collect(h2.send_request(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(get(f.addr("web"), "/").await.status, 200);
}

#[tokio::test]
async fn rapid_reset_gets_goaway() {
    let (b, f) = setup(Duration::from_millis(50)).await;
    let mut c = H2::connect(&f).await;
    let block = get_block("/", &[]);
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        let id = 1 + 2 * i;
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let _ = c.send(&burst).await;
    let (goaway, _) = c.until_goaway(Duration::from_secs(5)).await;
    assert!(goaway, "no GOAWAY after 5000 rapid resets");
    assert!(
        b.hits() < 1000,
        "{} of 5000 reset streams reached the server",
        b.hits()
    );
    honest(&f).await;
}

#[tokio::test]
async fn continuation_flood_is_cut() {
    let (b, f) = setup(Duration::ZERO).await;
    let mut c = H2::connect(&f).await;
    let mut block = get_block("/", &[]);
    lit(&mut block, "x-a", "b");
    let _ = c.send(&frame(HEADERS, 0, 1, &block)).await;
    // 16 KiB of header bytes per CONTINUATION, never END_HEADERS: 64 MiB offered.
    let mut junk = Vec::new();
    while junk.len() < 16 * 1024 - 300 {
        lit(&mut junk, "x-flood", &"v".repeat(120));
    }
    let cont = frame(CONTINUATION, 0, 1, &junk);
    let mut sent = 0usize;
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..4096 {
            if c.send(&cont).await.is_err() {
                break;
            }
            sent += cont.len();
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "the server kept reading CONTINUATION frames for 10 s"
    );
    let (goaway, _) = c.until_goaway(Duration::from_secs(5)).await;
    assert!(
        goaway || sent < 8 << 20,
        "accepted {sent} bytes of headers without GOAWAY"
    );
    assert_eq!(b.hits(), 0);
    honest(&f).await;
}

#[tokio::test]
async fn settings_and_ping_floods_stay_bounded() {
    let (_b, f) = setup(Duration::ZERO).await;
    let rss_before = std::fs::read_to_string(format!("/proc/{}/status", f.pid())).unwrap();
    let mut c = H2::connect(&f).await;
    let mut flood = Vec::new();
    for i in 0..20_000u64 {
        flood.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        flood.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    // Offer ~700 KB of frames without reading any ACK; the server either
    // keeps up (bounded by backpressure) or hangs up.
    let _ = tokio::time::timeout(Duration::from_secs(5), c.send(&flood)).await;
    honest(&f).await;
    // Now read: ACKs, or a GOAWAY / close. Either way the connection ends
    // or answers, and memory did not follow the flood.
    let mut acks = 0;
    while let Some((ty, flags, _, _)) = c.next(Duration::from_secs(2)).await {
        if (ty == PING || ty == SETTINGS) && flags & 1 == 1 {
            acks += 1;
        }
        if ty == GOAWAY {
            break;
        }
    }
    let kib = |s: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let rss_after = std::fs::read_to_string(format!("/proc/{}/status", f.pid())).unwrap();
    assert!(
        kib(&rss_after) < kib(&rss_before) + 32 * 1024,
        "RSS {} -> {} KiB",
        kib(&rss_before),
        kib(&rss_after)
    );
    eprintln!("SETTINGS/PING flood: {acks} ACKs read back");
    honest(&f).await;
}

#[tokio::test]
async fn too_many_streams_are_refused() {
    let (b, f) = setup(Duration::from_millis(1500)).await;
    let mut c = H2::connect(&f).await;
    // Wait for the server's SETTINGS (max_concurrent_streams = 100) and ack it.
    let (ty, _, _, _) = c.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(ty, SETTINGS);
    c.send(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
    let block = get_block("/", &[]);
    let mut burst = Vec::new();
    for i in 0..150u32 {
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &block));
    }
    c.send(&burst).await.unwrap();
    let mut refused = 0;
    let mut ok = 0;
    while let Some((ty, _, _, payload)) = c.next(Duration::from_secs(4)).await {
        match ty {
            RST_STREAM
                if u32::from_be_bytes(payload[..4].try_into().unwrap()) == REFUSED_STREAM =>
            {
                refused += 1
            }
            HEADERS => ok += 1,
            GOAWAY => break,
            _ => {}
        }
        if refused + ok >= 150 {
            break;
        }
    }
    assert_eq!(refused, 50, "streams past 100 are refused ({ok} answered)");
    assert!(b.hits() <= 100);
    honest(&f).await;
}

#[tokio::test]
async fn connection_specific_headers_never_reach_the_server() {
    let (b, f) = setup(Duration::ZERO).await;
    let mut c = H2::connect(&f).await;
    let bad: &[(&str, &str)] = &[
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("te", "gzip"),
        ("keep-alive", "timeout=5"),
        ("upgrade", "websocket"),
        ("proxy-connection", "keep-alive"),
    ];
    let mut id = 1;
    for h in bad {
        let _ = c
            .send(&frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                id,
                &get_block("/", &[*h]),
            ))
            .await;
        id += 2;
    }
    // te: trailers is the one allowed value.
    let _ = c
        .send(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            id,
            &get_block("/ok", &[("te", "trailers")]),
        ))
        .await;
    let mut answered_ok = false;
    while let Some((ty, _, stream, payload)) = c.next(Duration::from_secs(3)).await {
        if ty == HEADERS && stream == id {
            answered_ok = true;
            break;
        }
        if ty == GOAWAY {
            panic!("GOAWAY before the valid request: {payload:?}");
        }
    }
    assert!(answered_ok, "the valid request was not answered");
    for s in b.seen.lock().unwrap().iter() {
        for (name, _) in bad.iter().filter(|(n, _)| *n != "te") {
            assert!(
                !s.headers.contains_key(*name),
                "{name} reached the server: {s:?}"
            );
        }
        if let Some(te) = s.headers.get("te") {
            assert_eq!(te, "trailers");
        }
    }
    assert_eq!(b.hits(), 1, "only the valid request reached the server");
    honest(&f).await;
}
