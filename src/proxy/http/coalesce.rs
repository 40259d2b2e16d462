//! Write coalescing for HTTP/2 connections: the frames of one request or response (HEADERS,
//! then DATA once the body's stream has been given flow-control capacity by the connection
//! task) reach the connection in separate flushes, each a syscall, a TLS record and a packet
//! of its own. Holding a flush back until the other tasks the runtime has ready have run once
//! lets those frames join the ones already written: one write instead of two or three.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before they are written through without waiting for a flush.
const HOLD_LIMIT: usize = 64 * 1024;

/// A stream whose writes are held until a flush, and whose first flush of each batch waits
/// for one pass of the runtime's ready tasks (it wakes itself at once, so it is polled again
/// right after them). Reads pass through.
pub struct Coalesce<S> {
    inner: S,
    held: Vec<u8>,
    /// Written of `held` so far (a write the stream took in part).
    sent: usize,
    /// The current batch's flush was held back once already.
    deferred: bool,
    /// Off: every call passes straight through (an HTTP/1 connection, whose response hyper
    /// writes whole in one go).
    on: bool,
    /// Turn on when the first bytes read are HTTP/2's connection preface; until then, how
    /// many of them matched it so far (reads may hand them over a few bytes at a time).
    sniffing: bool,
    matched: usize,
}

/// HTTP/2's client connection preface starts so (RFC 9113 §3.4); no HTTP/1 method does.
const PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<S> Coalesce<S> {
    /// Coalescing from the start (a connection that speaks HTTP/2).
    pub fn new(inner: S) -> Self {
        Coalesce {
            inner,
            held: Vec::new(),
            sent: 0,
            deferred: false,
            on: true,
            sniffing: false,
            matched: 0,
        }
    }

    /// Coalescing once the peer opens with HTTP/2's preface (a server connection that may
    /// speak either version); a pass-through otherwise.
    pub fn when_h2(inner: S) -> Self {
        Coalesce {
            on: false,
            sniffing: true,
            ..Coalesce::new(inner)
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes what is held to the inner stream (not flushing it).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.sniffing && buf.filled().len() > before {
            let read = &buf.filled()[before..];
            self.sniff(read);
        }
        polled
    }
}

impl<S> Coalesce<S> {
    /// Decides from the first bytes read, however few each read brings: on once the whole
    /// preface prefix matched, off at the first byte that differs (a 1-byte `P` may still be
    /// `POST`). Undecided, writes pass through.
    fn sniff(&mut self, read: &[u8]) {
        let want = &PREFACE[self.matched..];
        let n = read.len().min(want.len());
        if read[..n] != want[..n] {
            self.sniffing = false;
            return;
        }
        self.matched += n;
        if self.matched == PREFACE.len() {
            self.on = true;
            self.sniffing = false;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.on {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if self.held.len() >= HOLD_LIMIT {
            std::task::ready!(self.poll_drain(cx))?;
        }
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.on {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        if self.held.len() >= HOLD_LIMIT {
            std::task::ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.held.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.on || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.is_empty() {
            self.deferred = false;
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        if !self.deferred {
            // Once per batch: let the tasks already woken (a body waiting for capacity, the
            // next stream's head) add their frames first.
            self.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(self.poll_drain(cx))?;
        self.deferred = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach it.
    struct Counting {
        writes: usize,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_flushed_apart_in_one_pass_reach_the_stream_as_one() {
        let mut s = Coalesce::new(Counting {
            writes: 0,
            bytes: Vec::new(),
        });
        s.write_all(b"HEADERS").await.unwrap();
        s.write_all(b"DATA").await.unwrap();
        // The flush completes (after one pass of the runtime) and delivers both at once.
        s.flush().await.unwrap();
        assert_eq!(s.inner.writes, 1);
        assert_eq!(s.inner.bytes, b"HEADERSDATA");
        // Nothing held: a flush passes straight through.
        s.flush().await.unwrap();
        s.write_all(b"more").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(s.inner.bytes, b"HEADERSDATAmore");
    }

    #[tokio::test]
    async fn reads_pass_through_and_a_large_batch_is_written_without_a_flush() {
        let (a, mut b) = tokio::io::duplex(4 * HOLD_LIMIT);
        let mut s = Coalesce::new(a);
        s.write_all(&vec![7u8; HOLD_LIMIT]).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut got = vec![0u8; HOLD_LIMIT];
        b.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&x| x == 7));
        b.write_all(b"pong").await.unwrap();
        let mut pong = [0u8; 4];
        s.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"pong");
    }

    #[tokio::test]
    async fn a_server_connection_coalesces_only_after_an_h2_preface() {
        for (first, on) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], true),
            (&b"GET / HTTP/1.1\r\n\r\n"[..], false),
        ] {
            let (a, mut b) = tokio::io::duplex(1024);
            let mut s = Coalesce::when_h2(a);
            b.write_all(first).await.unwrap();
            let mut got = vec![0u8; first.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(s.on, on, "{:?}", String::from_utf8_lossy(first));
            s.write_all(b"reply").await.unwrap();
            s.flush().await.unwrap();
            let mut reply = [0u8; 5];
            b.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"reply");
        }
    }

    /// The first bytes may come a few at a time: a lone `P` is `PRI` (HTTP/2) or `POST`/`PUT`
    /// (HTTP/1), so nothing is decided until a byte differs or the whole prefix matched.
    #[tokio::test]
    async fn the_preface_is_recognised_across_short_reads() {
        for (pieces, on) in [
            (
                &[&b"P"[..], b"RI * HTT", b"P/2.0\r\n\r\nSM\r\n\r\n"][..],
                true,
            ),
            (&[&b"P"[..], b"OST / HTTP/1.1\r\n\r\n"][..], false),
            (&[&b"PU"[..], b"T / HTTP/1.1\r\n\r\n"][..], false),
            (&[&b"PRI * HTTP/1.1"[..]][..], false),
        ] {
            let (a, mut b) = tokio::io::duplex(1024);
            let mut s = Coalesce::when_h2(a);
            for (i, piece) in pieces.iter().enumerate() {
                b.write_all(piece).await.unwrap();
                let mut got = vec![0u8; piece.len()];
                s.read_exact(&mut got).await.unwrap();
                // A first piece the preface starts with decides nothing yet; `PU` already
                // differs from it.
                if i == 0 && pieces.len() > 1 {
                    let undecided = PREFACE.starts_with(piece);
                    assert_eq!(s.sniffing, undecided, "after {piece:?} alone");
                    assert!(!s.on, "on after {piece:?} alone");
                }
            }
            assert!(!s.sniffing, "{pieces:?}: still undecided");
            assert_eq!(s.on, on, "{pieces:?}");
        }
    }
}
