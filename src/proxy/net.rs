//! Socket plumbing of the capture path: the original destination iptables recorded, and
//! connecting from a chosen source address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::{TcpSocket, TcpStream};

/// Where the client meant to go before iptables REDIRECTed it here; `None` when it was not
/// redirected. (`SO_ORIGINAL_DST` fails without conntrack, and with conntrack reports the
/// local address itself for a connection nobody NATed.)
pub fn redirected_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let orig = original_dst(stream).ok()?;
    let local = stream.local_addr().ok()?;
    (orig != local).then_some(orig)
}

/// `SO_ORIGINAL_DST` (or its IPv6 twin) of an accepted connection.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    if local.is_ipv4() {
        let sa = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )))
    } else {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            0,
            0,
        )))
    }
}

/// Connects to `dst`, from `source` when given (port chosen by the kernel), within `timeout`.
pub async fn connect(
    dst: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(dst))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {dst} timed out"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = connect(
            addr,
            Some("127.0.0.6".parse().unwrap()),
            Duration::from_secs(5),
        );
        let (client, accepted) = tokio::join!(client, listener.accept());
        let client = client.unwrap();
        let (server, peer) = accepted.unwrap();
        // The source is the one asked for: the loopback rules rely on it.
        assert_eq!(peer.ip(), "127.0.0.6".parse::<IpAddr>().unwrap());
        assert_eq!(redirected_dst(&server), None);
        drop(client);
    }
}
