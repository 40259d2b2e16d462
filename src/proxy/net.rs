//! Socket plumbing of the capture path: the original destination iptables recorded (IPv4 and
//! IPv6), connecting from a chosen source address, and the IPv6 passthrough address on `lo`.

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

// === The IPv6 passthrough address ===

/// Puts `address`/128 on `lo` of the current network namespace (rtnetlink `RTM_NEWADDR`, as
/// `ip -6 addr add <address>/128 dev lo nodad` would, without needing iproute2 in the image).
/// Already there is fine: `weft-proxy init` may run again after a container restart.
pub fn add_loopback_address(address: Ipv6Addr) -> io::Result<()> {
    use nix::libc;
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        socket,
    };
    let index = nix::net::if_::if_nametoindex("lo").map_err(io::Error::from)?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(io::Error::from)?;
    let request = new_address_request(index, address);
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut reply = [0u8; 1024];
    let n = recv(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &mut reply,
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    match netlink_ack(&reply[..n]) {
        Some(0) => Ok(()),
        Some(errno) if -errno == libc::EEXIST => Ok(()),
        Some(errno) => Err(io::Error::from_raw_os_error(-errno)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "rtnetlink answered something else than an acknowledgement",
        )),
    }
}

/// An `RTM_NEWADDR` message: `nlmsghdr`, `ifaddrmsg`, one `IFA_ADDRESS` attribute (16 bytes of
/// address). Native byte order, as netlink wants.
fn new_address_request(index: u32, address: Ipv6Addr) -> Vec<u8> {
    use nix::libc;
    const HEADER: usize = 16;
    const IFADDRMSG: usize = 8;
    const ATTRIBUTE: usize = 4 + 16;
    let length = HEADER + IFADDRMSG + ATTRIBUTE;
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut m = Vec::with_capacity(length);
    m.extend_from_slice(&(length as u32).to_ne_bytes());
    m.extend_from_slice(&libc::RTM_NEWADDR.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    m.push(libc::AF_INET6 as u8);
    m.push(128); // prefix length
    m.push(libc::IFA_F_NODAD as u8); // lo has no neighbours to ask
    m.push(libc::RT_SCOPE_UNIVERSE); // as `ip addr add` sends it
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&(ATTRIBUTE as u16).to_ne_bytes());
    m.extend_from_slice(&libc::IFA_ADDRESS.to_ne_bytes());
    m.extend_from_slice(&address.octets());
    m
}

/// The error code of an `NLMSG_ERROR` reply (0 is the acknowledgement), if it is one.
fn netlink_ack(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if i32::from(kind) != nix::libc::NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?))
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

    #[test]
    fn the_new_address_request_is_a_well_formed_netlink_message() {
        let m = new_address_request(1, "::6".parse().unwrap());
        assert_eq!(m.len(), 44);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 44);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 20); // RTM_NEWADDR
        assert_eq!((m[16], m[17]), (10, 128)); // AF_INET6, /128
        assert_eq!(u16::from_ne_bytes(m[24..26].try_into().unwrap()), 20);
        assert_eq!(m[43], 6);
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(netlink_ack(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(netlink_ack(&ack), Some(-17));
        assert_eq!(netlink_ack(&ack[..10]), None);
    }
}
