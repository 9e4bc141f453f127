//! PROXY protocol v1/v2 (HAProxy's `proxy-protocol.txt`) on listeners with
//! `proxy_protocol = true`: the header an L4 balancer puts in front of every
//! connection, read before TLS and HTTP, whose source address becomes the
//! connection's client IP.
//!
//! Parsing is `ppp`'s; this module reads just enough of the stream, bounds
//! it (v1: 107 bytes, v2: 16 + the advertised length), decides which address
//! counts, and hands any bytes read past the header back to the HTTP/TLS
//! layer through [`PrefixedIo`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use ppp::{v1, v2, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Longest v1 line, CRLF included.
const V1_MAX: usize = 107;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// A parsed header: the client address it names, if any (`None` for v1
/// `UNKNOWN`, v2 `LOCAL` and v2 `UNSPEC`/`UNIX`, where the peer itself is
/// the client, e.g. the balancer's own health check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub source: Option<SocketAddr>,
    /// Bytes the header took on the wire.
    pub len: usize,
}

/// Parses a complete header at the start of `buf`; `Ok(None)` when more
/// bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, HeaderError> {
    if buf.first() == Some(&b'P') {
        parse_v1(buf)
    } else {
        parse_v2(buf)
    }
}

/// v1 is a line: wait for its CRLF (within 107 bytes), then parse it whole.
/// (`ppp`'s own partial detection misreads some splits, e.g. a line cut
/// right after a space, as malformed.)
fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, HeaderError> {
    const PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Err(HeaderError::Invalid("not a PROXY header".into()));
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let cr = window.iter().position(|&b| b == b'\r');
    let Some(cr) = cr.filter(|&cr| cr + 1 < window.len()) else {
        if buf.len() >= V1_MAX {
            return Err(HeaderError::Invalid("v1 line longer than 107 bytes".into()));
        }
        return Ok(None);
    };
    if window[cr + 1] != b'\n' {
        return Err(HeaderError::Invalid("v1 line must end with CRLF".into()));
    }
    let h = v1::Header::try_from(&buf[..cr + 2])
        .map_err(|e| HeaderError::Invalid(format!("v1: {e}")))?;
    let source = match h.addresses {
        v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        v1::Addresses::Unknown => None,
    };
    Ok(Some(ProxyHeader {
        source,
        len: cr + 2,
    }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, HeaderError> {
    let result = v2::Header::try_from(buf);
    if result.is_incomplete() {
        return Ok(None);
    }
    let h = result.map_err(|e| HeaderError::Invalid(format!("v2: {e}")))?;
    let source = match (h.command, h.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
    };
    Ok(Some(ProxyHeader {
        source,
        len: h.len(),
    }))
}

/// Reads the header from the start of `io`. Returns the header and the
/// bytes read past it (the beginning of the TLS or HTTP stream). The caller
/// bounds the time this may take.
pub async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<(ProxyHeader, Bytes), HeaderError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        buf.reserve(256);
        if io.read_buf(&mut buf).await? == 0 {
            return Err(HeaderError::Closed);
        }
        if let Some(h) = parse(&buf)? {
            let rest = buf.split_off(h.len).freeze();
            return Ok((h, rest));
        }
    }
}

/// The client IP for a connection from `peer` that sent `header`.
pub fn client_ip(header: &ProxyHeader, peer: SocketAddr) -> IpAddr {
    header.source.unwrap_or(peer).ip().to_canonical()
}

/// A stream with some already-read bytes put back in front of it.
pub struct PrefixedIo<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> PrefixedIo<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        PrefixedIo { prefix, inner }
    }

    /// No prefix: reads go straight to `inner`.
    pub fn plain(inner: S) -> Self {
        PrefixedIo::new(Bytes::new(), inner)
    }

    /// The bytes still to be handed out before `inner`'s.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            // Fill the rest from `inner` when it has bytes ready, so the
            // reader gets its first message whole rather than a short read
            // (hyper would grow its buffer for the remainder).
            if self.prefix.is_empty() && buf.remaining() > 0 {
                let _ = Pin::new(&mut self.inner).poll_read(cx, buf);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(ver_cmd);
        v.push(fam);
        v.extend((body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn v4_body() -> Vec<u8> {
        let mut b = vec![203, 0, 113, 7, 10, 0, 0, 1];
        b.extend(4321u16.to_be_bytes());
        b.extend(443u16.to_be_bytes());
        b
    }

    fn src(h: &ProxyHeader) -> Option<String> {
        h.source.map(|s| s.to_string())
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 4321 443\r\nGET /")
            .unwrap()
            .unwrap();
        assert_eq!(src(&h).as_deref(), Some("203.0.113.7:4321"));
        assert_eq!(h.len, 42);
        let h = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 4321 443\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(src(&h).as_deref(), Some("[2001:db8::7]:4321"));
        let h = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(h.source, None);
        assert_eq!(h.len, 15);
        let h = parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, None);
    }

    #[test]
    fn v1_partial_needs_more() {
        let full = b"PROXY TCP4 203.0.113.7 10.0.0.1 4321 443\r\n";
        for n in 0..full.len() {
            assert!(parse(&full[..n]).unwrap().is_none(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Over 107 bytes without a line end: refused, not buffered forever.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(107, b'a');
        assert!(parse(&long).is_err());
    }

    #[test]
    fn v2_inet_inet6_local_unspec() {
        let mut wire = v2(0x21, 0x11, &v4_body());
        wire.extend_from_slice(b"GET /");
        let h = parse(&wire).unwrap().unwrap();
        assert_eq!(src(&h).as_deref(), Some("203.0.113.7:4321"));
        assert_eq!(h.len, 16 + 12);

        let mut b6 = Vec::new();
        b6.extend(
            "2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        b6.extend([0u8; 16]);
        b6.extend(4321u16.to_be_bytes());
        b6.extend(443u16.to_be_bytes());
        let h = parse(&v2(0x21, 0x21, &b6)).unwrap().unwrap();
        assert_eq!(src(&h).as_deref(), Some("[2001:db8::7]:4321"));

        // LOCAL (the balancer's own health check): the peer is the client,
        // even when addresses are present.
        let h = parse(&v2(0x20, 0x11, &v4_body())).unwrap().unwrap();
        assert_eq!(h.source, None);
        let h = parse(&v2(0x21, 0x00, &[])).unwrap().unwrap();
        assert_eq!(h.source, None);
        assert_eq!(h.len, 16);
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut body = v4_body();
        body.extend([0x04, 0, 3, b'a', b'b', b'c']); // PP2_TYPE_NOOP
        let mut wire = v2(0x21, 0x11, &body);
        let header_len = wire.len();
        wire.extend_from_slice(b"\x16\x03\x01"); // a TLS ClientHello follows
        let h = parse(&wire).unwrap().unwrap();
        assert_eq!(h.len, header_len);
        assert_eq!(src(&h).as_deref(), Some("203.0.113.7:4321"));
    }

    #[test]
    fn v2_partial_and_malformed() {
        let full = v2(0x21, 0x11, &v4_body());
        for n in 0..full.len() {
            assert!(parse(&full[..n]).unwrap().is_none(), "prefix of {n} bytes");
        }
        // Bad version, bad command, bad family, length shorter than the
        // addresses, broken signature.
        assert!(parse(&v2(0x11, 0x11, &v4_body())).is_err());
        assert!(parse(&v2(0x22, 0x11, &v4_body())).is_err());
        assert!(parse(&v2(0x21, 0x41, &v4_body())).is_err());
        assert!(parse(&v2(0x21, 0x11, &v4_body()[..8])).is_err());
        let mut sig = full.clone();
        sig[3] = b'X';
        assert!(parse(&sig).is_err());
    }

    #[tokio::test]
    async fn reader_keeps_bytes_after_the_header() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut wire = v2(0x21, 0x11, &v4_body());
        wire.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // One byte at a time: the reader must cope with any split.
            for byte in wire {
                a.write_all(&[byte]).await.unwrap();
            }
        });
        let (h, rest) = read_header(&mut b).await.unwrap();
        assert_eq!(src(&h).as_deref(), Some("203.0.113.7:4321"));
        let mut io = PrefixedIo::new(rest, b);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn reader_refuses_plain_http_and_early_close() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        });
        assert!(matches!(
            read_header(&mut b).await,
            Err(HeaderError::Invalid(_))
        ));
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(matches!(
            read_header(&mut b).await,
            Err(HeaderError::Closed)
        ));
    }

    #[test]
    fn client_ip_falls_back_to_the_peer() {
        let peer: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let none = ProxyHeader {
            source: None,
            len: 15,
        };
        assert_eq!(client_ip(&none, peer).to_string(), "10.1.1.1");
        let mapped = ProxyHeader {
            source: Some("[::ffff:198.51.100.2]:1".parse().unwrap()),
            len: 0,
        };
        assert_eq!(client_ip(&mapped, peer).to_string(), "198.51.100.2");
    }
}
