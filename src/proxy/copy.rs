//! Bidirectional copy between the two legs of a proxied connection: each direction ends on
//! its own EOF and half-closes the other side (so request/response protocols that shut their
//! write side still get an answer), with a fixed buffer per direction and an idle timeout.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Per-direction buffer. 16 KiB is one TLS record: larger buys nothing, smaller costs syscalls.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// Bytes moved by a finished relay, named from the side that accepted the connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// Downstream → upstream.
    pub sent: u64,
    /// Upstream → downstream.
    pub received: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("connection idle for {0:?}")]
    Idle(Duration),
    #[error("relay: {0}")]
    Io(#[from] io::Error),
    /// The caller's stop signal ([`relay_until`]): the config no longer allows the connection.
    #[error("connection no longer allowed by the config")]
    Revoked,
}

impl RelayError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            RelayError::Idle(_) => "idle_timeout",
            RelayError::Io(_) => "io",
            RelayError::Revoked => "revoked",
        }
    }
}

/// Copies until both directions have ended, or either fails, or nothing moved for `idle`.
pub async fn relay<D, U>(
    downstream: D,
    upstream: U,
    idle: Duration,
) -> (Transferred, Result<(), RelayError>)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    relay_until(downstream, upstream, idle, std::future::pending()).await
}

/// [`relay`], also ended (`RelayError::Revoked`) when `revoked` resolves; the bytes moved until
/// then are still reported.
pub async fn relay_until<D, U>(
    downstream: D,
    upstream: U,
    idle: Duration,
    revoked: impl Future<Output = ()>,
) -> (Transferred, Result<(), RelayError>)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last_activity = Arc::new(AtomicU64::new(0));
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let (mut dr, mut dw) = tokio::io::split(downstream);
    let (mut ur, mut uw) = tokio::io::split(upstream);

    let up = one_way(&mut dr, &mut uw, &sent, &last_activity, start);
    let down = one_way(&mut ur, &mut dw, &received, &last_activity, start);
    let watchdog = async {
        loop {
            let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
            let deadline = start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let result = tokio::select! {
        r = async { tokio::try_join!(up, down) } => r.map(|_| ()).map_err(RelayError::from),
        _ = watchdog => Err(RelayError::Idle(idle)),
        () = revoked => Err(RelayError::Revoked),
    };
    (
        Transferred {
            sent: sent.load(Ordering::Relaxed),
            received: received.load(Ordering::Relaxed),
        },
        result,
    )
}

async fn one_way<R, W>(
    r: &mut R,
    w: &mut W,
    counter: &AtomicU64,
    last_activity: &AtomicU64,
    start: Instant,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(n) => n,
            // A peer that closes TCP without TLS close_notify: treat as the end of its data.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            // Half-close: the other side may still send.
            return match w.shutdown().await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                Err(e) => Err(e),
            };
        }
        w.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_both_ways_and_half_closes() {
        let (mut client, proxy_down) = tokio::io::duplex(1024);
        let (proxy_up, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(proxy_down, proxy_up, Duration::from_secs(5)));
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        // The server sees the request and then EOF, yet can still answer.
        let mut req = Vec::new();
        server.read_to_end(&mut req).await.unwrap();
        assert_eq!(req, b"ping");
        server.write_all(b"pong!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut resp = Vec::new();
        client.read_to_end(&mut resp).await.unwrap();
        assert_eq!(resp, b"pong!");
        let (t, r) = relay.await.unwrap();
        assert!(r.is_ok());
        assert_eq!(
            t,
            Transferred {
                sent: 4,
                received: 5
            }
        );
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let (_client, proxy_down) = tokio::io::duplex(1024);
        let (proxy_up, _server) = tokio::io::duplex(1024);
        let (_, r) = relay(proxy_down, proxy_up, Duration::from_millis(100)).await;
        assert!(matches!(r, Err(RelayError::Idle(_))));
    }
}
