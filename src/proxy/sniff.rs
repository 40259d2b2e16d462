//! The inbound sniffer: tells mesh mTLS (a TLS ClientHello offering ALPN `weft/1`) from
//! everything else by reading the first bytes, and a stream that replays those bytes to
//! whoever handles the connection next. `sniff` reads untrusted bytes: it never panics and
//! never asks for more than [`MAX_SNIFF_BYTES`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::contract::ALPN_WEFT;

/// A ClientHello larger than this is not one a weft proxy sends; stop reading and treat the
/// connection as opaque TLS.
pub const MAX_SNIFF_BYTES: usize = 16 * 1024;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXTENSION_ALPN: u16 = 0x0010;
const EXTENSION_SERVER_NAME: u16 = 0x0000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not decided yet: read more (until the timeout).
    NeedMore,
    /// Not TLS: an application protocol in plaintext.
    Plaintext,
    /// TLS that is not weft's: the app's own TLS, passed through as opaque bytes.
    OtherTls,
    /// A ClientHello offering ALPN `weft/1`: mesh mTLS to terminate.
    Weft,
}

/// Classifies the first bytes of a connection.
pub fn sniff(buf: &[u8]) -> Sniffed {
    let Some(&first) = buf.first() else {
        return Sniffed::NeedMore;
    };
    if first != RECORD_HANDSHAKE {
        return Sniffed::Plaintext;
    }
    if buf.len() >= 2 && buf[1] != 0x03 {
        return Sniffed::Plaintext;
    }
    match client_hello(buf) {
        Hello::NeedMore if buf.len() >= MAX_SNIFF_BYTES => Sniffed::OtherTls,
        Hello::NeedMore => Sniffed::NeedMore,
        Hello::Malformed => Sniffed::OtherTls,
        Hello::Complete(body) => {
            if offers_weft(&body) {
                Sniffed::Weft
            } else {
                Sniffed::OtherTls
            }
        }
    }
}

/// The server name a TLS client asks for, read off its first bytes (egress matching by SNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    NeedMore,
    /// Not a TLS ClientHello (or one too broken to read).
    NotTls,
    /// A ClientHello, and the `host_name` of its server_name extension if it has one.
    Hello(Option<String>),
}

/// Reads the SNI of a ClientHello from the first bytes of a connection.
pub fn server_name(buf: &[u8]) -> ServerName {
    match buf.first() {
        None => return ServerName::NeedMore,
        Some(&b) if b != RECORD_HANDSHAKE => return ServerName::NotTls,
        _ => {}
    }
    match client_hello(buf) {
        Hello::NeedMore if buf.len() >= MAX_SNIFF_BYTES => ServerName::NotTls,
        Hello::NeedMore => ServerName::NeedMore,
        Hello::Malformed => ServerName::NotTls,
        Hello::Complete(body) => match extension(&body, EXTENSION_SERVER_NAME) {
            None => ServerName::NotTls,
            Some(None) => ServerName::Hello(None),
            Some(Some(data)) => ServerName::Hello(host_name(data)),
        },
    }
}

/// The first `host_name` entry of a server_name extension (RFC 6066 §3).
fn host_name(data: &[u8]) -> Option<String> {
    let mut r = Reader(data);
    let list_len = r.u16()?;
    let mut list = Reader(r.take(list_len)?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let len = list.u16()?;
        let name = list.take(len)?;
        if kind == 0 {
            return std::str::from_utf8(name).ok().map(str::to_ascii_lowercase);
        }
    }
    None
}

/// The data of extension `wanted` of a ClientHello body: `None` when malformed,
/// `Some(None)` when the hello does not carry it.
fn extension(body: &[u8], wanted: u16) -> Option<Option<&[u8]>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = r.u8()?;
    r.take(compression)?;
    if r.0.is_empty() {
        return Some(None);
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if ty as u16 == wanted {
            return Some(Some(data));
        }
    }
    Some(None)
}

enum Hello {
    NeedMore,
    Malformed,
    Complete(Vec<u8>),
}

/// Reassembles the ClientHello handshake message from one or more TLS records.
fn client_hello(buf: &[u8]) -> Hello {
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Hello::NeedMore;
        }
        if rest[0] != RECORD_HANDSHAKE || rest[1] != 0x03 {
            return Hello::Malformed;
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len == 0 || len > 16384 + 256 {
            return Hello::Malformed;
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Hello::NeedMore;
        };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            if handshake[0] != HANDSHAKE_CLIENT_HELLO {
                return Hello::Malformed;
            }
            let body_len =
                u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
            if body_len > MAX_SNIFF_BYTES {
                return Hello::Malformed;
            }
            if handshake.len() >= 4 + body_len {
                handshake.truncate(4 + body_len);
                return Hello::Complete(handshake.split_off(4));
            }
        }
    }
}

/// A cursor over a ClientHello body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

fn offers_weft(body: &[u8]) -> bool {
    alpn_protocols(body)
        .map(|protos| protos.contains(&ALPN_WEFT))
        .unwrap_or(false)
}

/// The ALPN protocols a ClientHello body offers; `None` when malformed.
fn alpn_protocols(body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = r.u8()?;
    r.take(compression)?;
    if r.0.is_empty() {
        return Some(Vec::new());
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if ty as u16 == EXTENSION_ALPN {
            let mut a = Reader(data);
            let list_len = a.u16()?;
            let mut list = Reader(a.take(list_len)?);
            let mut out = Vec::new();
            while !list.0.is_empty() {
                let n = list.u8()?;
                out.push(list.take(n)?);
            }
            return Some(out);
        }
    }
    Some(Vec::new())
}

// === impl Prefixed ===

/// A stream that first yields bytes already read off `inner` (the sniffed prefix), then reads
/// `inner`; writes go straight through.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    // Forwarded, so hyper's head and body still leave in one writev through a prefixed
    // stream.
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
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello as rustls writes it, with the given ALPN list.
    fn client_hello_bytes(alpn: &[&[u8]]) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("example.test").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_of_a_client_hello_is_read_for_egress() {
        let hello = client_hello_bytes(&[b"h2"]);
        assert_eq!(
            server_name(&hello),
            ServerName::Hello(Some("example.test".into()))
        );
        for cut in 0..hello.len() {
            assert_eq!(
                server_name(&hello[..cut]),
                ServerName::NeedMore,
                "prefix of {cut}"
            );
        }
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), ServerName::NotTls);
    }

    #[test]
    fn a_weft_client_hello_is_recognised() {
        let hello = client_hello_bytes(&[b"h2", ALPN_WEFT]);
        assert_eq!(sniff(&hello), Sniffed::Weft);
    }

    #[test]
    fn other_tls_and_plaintext_are_told_apart() {
        assert_eq!(sniff(&client_hello_bytes(&[b"h2"])), Sniffed::OtherTls);
        assert_eq!(sniff(&client_hello_bytes(&[])), Sniffed::OtherTls);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Plaintext);
        assert_eq!(sniff(b"\x16\x01"), Sniffed::Plaintext);
        assert_eq!(sniff(b""), Sniffed::NeedMore);
    }

    #[test]
    fn every_prefix_of_a_hello_asks_for_more_and_never_misjudges() {
        let hello = client_hello_bytes(&[ALPN_WEFT]);
        for n in 1..hello.len() {
            assert_eq!(sniff(&hello[..n]), Sniffed::NeedMore, "prefix {n}");
        }
    }

    #[test]
    fn a_hello_split_across_records_is_reassembled() {
        let hello = client_hello_bytes(&[ALPN_WEFT]);
        let payload = &hello[5..];
        let (a, b) = payload.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 0x03, 0x01]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(sniff(&split), Sniffed::Weft);
    }

    #[test]
    fn corrupted_hellos_never_panic() {
        let hello = client_hello_bytes(&[ALPN_WEFT]);
        // Flip every byte in turn and truncate at every length: the result is whatever it is,
        // but sniff must return.
        for i in 0..hello.len() {
            let mut bad = hello.clone();
            bad[i] ^= 0xff;
            let _ = sniff(&bad);
            let _ = sniff(&bad[..i]);
        }
        let mut huge = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
        huge.resize(MAX_SNIFF_BYTES + 10, 0);
        assert_eq!(sniff(&huge), Sniffed::OtherTls);
    }

    #[tokio::test]
    async fn prefixed_replays_the_sniffed_bytes_first() {
        use tokio::io::AsyncReadExt;
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .unwrap();
        drop(a);
        let mut p = Prefixed::new(b"hello".to_vec(), b);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
