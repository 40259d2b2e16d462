//! The proxy's DNS server (Istio's DNS proxying; docs/egress.md): on 127.0.0.1:15053 (UDP and
//! TCP) it answers A/AAAA queries for the ServiceEntry hosts of the pod's egress table and
//! forwards every other query, byte for byte, to the pod's own nameservers (CoreDNS), whose
//! answer goes back as is. Also the proxy's own resolver of a `resolution: DNS` host dialled at
//! its allocated address. Every packet is untrusted: bounded sizes, no panics, garbage dropped
//! or answered FORMERR.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::ProxyContext;
use crate::route::egress::{self, ExternalService};

/// TTL of the answers the proxy makes itself (Istio's DNS proxy answers with 30 s too): short,
/// so a changed ServiceEntry is seen soon, long enough to spare the proxy most repeats.
pub const ANSWER_TTL: u32 = 30;
/// The largest query read over UDP; anything longer is cut by the kernel and then fails to
/// parse (FORMERR). Queries are tens of bytes; 4 KiB leaves room for EDNS options.
pub const MAX_QUERY: usize = 4096;
/// The largest answer relayed from upstream (a TCP message's 16-bit length says no more).
const MAX_MESSAGE: usize = 65535;
/// Records of one family in a local answer: keeps every answer well under 512 bytes, the size
/// any client takes over UDP without EDNS.
const MAX_RECORDS: usize = 8;
/// Queries in flight at once (UDP forwards and TCP connections, each): past it, new ones are
/// dropped and the client retries, rather than the proxy growing without bound.
const MAX_IN_FLIGHT: usize = 512;
/// How long one upstream nameserver gets before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// A TCP client that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back (an answer from the table, or FORMERR).
    Answer(Vec<u8>),
    /// Not the table's: the pod's nameservers answer it.
    Forward,
    /// Not a query at all (too short to have an ID, or a response): no reply.
    Drop,
}

/// The decision for one query against `table`, pure (the fuzz target drives it).
pub fn reply(table: &[ExternalService], query: &[u8]) -> Reply {
    // Too short to hold a header, or a response (QR set; answering one could loop between
    // two servers): nothing to answer to.
    if query.len() < 12 || query.len() > MAX_MESSAGE || query[2] & 0x80 != 0 {
        return Reply::Drop;
    }
    let message = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return Reply::Answer(form_error(query)),
    };
    if message.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    let [question] = message.queries.as_slice() else {
        return Reply::Forward;
    };
    if message.metadata.op_code != OpCode::Query
        || question.query_class != DNSClass::IN
        || !matches!(question.query_type, RecordType::A | RecordType::AAAA)
    {
        return Reply::Forward;
    }
    let Some(found) = egress::dns_answer(table, &question.name.to_ascii()) else {
        return Reply::Forward;
    };
    let mut response = Message::new(
        message.metadata.id,
        MessageType::Response,
        message.metadata.op_code,
    );
    response.metadata.recursion_desired = message.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(question.clone());
    // A known name without records of the asked family is NODATA (NOERROR, no answer), so the
    // client does not wait for a family that will never come.
    let name = question.name.clone();
    let records: Vec<Record> = match question.query_type {
        RecordType::A => found
            .v4
            .iter()
            .take(MAX_RECORDS)
            .map(|ip| Record::from_rdata(name.clone(), ANSWER_TTL, RData::A(A(*ip))))
            .collect(),
        _ => found
            .v6
            .iter()
            .take(MAX_RECORDS)
            .map(|ip| Record::from_rdata(name.clone(), ANSWER_TTL, RData::AAAA(AAAA(*ip))))
            .collect(),
    };
    response.add_answers(records);
    match response.to_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => Reply::Answer(form_error(query)),
    }
}

/// FORMERR for a query that did not parse: its ID and opcode, nothing else (RFC 1035 4.1.1:
/// "the name server was unable to interpret the query"). The caller checked the length.
fn form_error(query: &[u8]) -> Vec<u8> {
    let id = u16::from_be_bytes([query[0], query[1]]);
    let op_code = OpCode::from_u8((query[2] >> 3) & 0x0f);
    Message::error_msg(id, op_code, ResponseCode::FormErr)
        .to_vec()
        .unwrap_or_default()
}

/// SERVFAIL for a query no nameserver answered (RFC 2308: the server failed, not the name).
fn server_failure(query: &[u8]) -> Vec<u8> {
    let id = u16::from_be_bytes([query[0], query[1]]);
    let op_code = OpCode::from_u8((query[2] >> 3) & 0x0f);
    let mut m = Message::error_msg(id, op_code, ResponseCode::ServFail);
    m.metadata.recursion_available = true;
    m.to_vec().unwrap_or_default()
}

// === Where forwarded queries go ===

/// The pod's nameservers, port 53 (the resolv.conf every container of the pod has: CoreDNS's
/// Service address in a ClusterFirst pod). Read once at start; the proxy's own queries to them
/// are not captured (its uid is excluded by `weft-init`).
static UPSTREAMS: RwLock<Vec<SocketAddr>> = RwLock::new(Vec::new());

/// Sets the nameservers forwarded queries go to (from the resolv.conf text).
pub fn set_upstreams(servers: Vec<SocketAddr>) {
    *UPSTREAMS.write().unwrap_or_else(|p| p.into_inner()) = servers;
}

pub fn upstreams() -> Vec<SocketAddr> {
    UPSTREAMS.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The nameservers of resolv.conf text, on port 53.
pub fn upstreams_of(resolv_conf: &str) -> Vec<SocketAddr> {
    super::iptables::resolv_conf_nameservers(resolv_conf)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Sends `query` over UDP to each nameserver in turn until one answers with its ID; the answer
/// is returned as is. A fresh socket per query: a random source port, and no answer meant for
/// another query can be taken for this one.
pub async fn forward_udp(servers: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for server in servers {
        let bind = match server {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.connect(server).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_MESSAGE];
        let wait = async {
            // A connected socket only takes datagrams from the server; one with another ID
            // (a late answer) is skipped.
            loop {
                let n = socket.recv(&mut buf).await.ok()?;
                if n >= 12 && buf[..2] == *id {
                    return Some(n);
                }
            }
        };
        if let Ok(Some(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, wait).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// The same over TCP (a client that asked over TCP, usually after a truncated UDP answer).
pub async fn forward_tcp(servers: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(query.len()).ok()?;
    for server in servers {
        let exchange = async {
            let mut s = TcpStream::connect(server).await.ok()?;
            let mut out = Vec::with_capacity(query.len() + 2);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(query);
            s.write_all(&out).await.ok()?;
            read_framed(&mut s).await
        };
        if let Ok(Some(answer)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await
            && answer.len() >= 12
            && answer[..2] == query[..2]
        {
            return Some(answer);
        }
    }
    None
}

/// One length-prefixed DNS message of a TCP stream (RFC 1035 4.2.2); None at the end of the
/// stream or on a message too short to have a header.
async fn read_framed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let len = usize::from(s.read_u16().await.ok()?);
    if len < 12 {
        return None;
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

/// The addresses `host` has according to the pod's nameservers (A records, CNAMEs followed by
/// the nameserver): where a `resolution: DNS` host dialled at its allocated address really
/// goes. Empty: it does not resolve (or no nameserver answered).
pub async fn resolve(servers: &[SocketAddr], host: &str) -> Vec<IpAddr> {
    match lookup(servers, host).await {
        Lookup::Found { ips, .. } => ips,
        Lookup::NotFound | Lookup::Failed(_) => Vec::new(),
    }
}

/// What one A lookup gave: an egress gateway keeps its last addresses on a failure (Envoy's
/// STRICT_DNS cluster keeps its hosts when a resolution fails) but drops them when the name
/// is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The addresses and the smallest TTL of the answer's records (CNAMEs included).
    Found { ips: Vec<IpAddr>, ttl: u32 },
    /// NXDOMAIN, or an answer without A records: the name has no IPv4 address.
    NotFound,
    /// No answer to use (no nameserver answered, SERVFAIL, a bad name or message): why.
    Failed(&'static str),
}

/// One A query for `host` (absolute: the search list is not tried, ServiceEntry hosts are
/// fully qualified) to the nameservers in turn, over UDP. An IP address (a ServiceEntry
/// endpoint may be one) is its own answer, asked of no nameserver, and never expires.
pub async fn lookup(servers: &[SocketAddr], host: &str) -> Lookup {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Lookup::Found {
            ips: vec![ip],
            ttl: u32::MAX,
        };
    }
    let Ok(name) = Name::from_ascii(format!("{}.", host.trim_end_matches('.'))) else {
        return Lookup::Failed("not a DNS name");
    };
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, RecordType::A));
    let Ok(bytes) = query.to_vec() else {
        return Lookup::Failed("not a DNS name");
    };
    let Some(answer) = forward_udp(servers, &bytes).await else {
        return Lookup::Failed("no nameserver answered");
    };
    let Ok(answer) = Message::from_vec(&answer) else {
        return Lookup::Failed("the nameserver's answer does not parse");
    };
    match answer.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Lookup::NotFound,
        _ => return Lookup::Failed("the nameserver answered an error (SERVFAIL, REFUSED)"),
    }
    let ips: Vec<IpAddr> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    if ips.is_empty() {
        return Lookup::NotFound;
    }
    let ttl = answer.answers.iter().map(|r| r.ttl).min().unwrap_or(0);
    Lookup::Found { ips, ttl }
}

// === The server ===

/// Binds the DNS server on `addr` (UDP and TCP), and on `[::1]` with the same port when `addr`
/// is 127.0.0.1 and the kernel has IPv6 (a pod whose nameserver is IPv6 is redirected there).
/// Reads the pod's nameservers from /etc/resolv.conf for the forwards.
pub async fn bind(addr: SocketAddr) -> std::io::Result<Vec<(UdpSocket, TcpListener)>> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    set_upstreams(upstreams_of(&text));
    let mut out = vec![(UdpSocket::bind(addr).await?, TcpListener::bind(addr).await?)];
    if addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port());
        // No IPv6 (the family, or ::1 on lo): IPv4 alone, as the other listeners do.
        if let (Ok(udp), Ok(tcp)) = (UdpSocket::bind(v6).await, TcpListener::bind(v6).await) {
            out.push((udp, tcp));
        }
    }
    tracing::info!(%addr, upstreams = ?upstreams(), "dns server listening");
    Ok(out)
}

/// The egress table of the proxy's current config (empty before the first one: then every
/// query is forwarded, so DNS never waits on the mesh).
fn table(ctx: &ProxyContext) -> Arc<[ExternalService]> {
    ctx.snapshot()
        .map(|s| Arc::from(s.snapshot.outbound.egress.as_slice()))
        .unwrap_or_else(|| Arc::from(Vec::new()))
}

/// Serves DNS over UDP on `socket` until the task is aborted.
pub async fn serve_udp(ctx: Arc<ProxyContext>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors of earlier replies surface here on some kernels; keep serving.
                tracing::debug!(error = %e, "dns: receive failed");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        match reply(&table(&ctx), &query) {
            Reply::Drop => {}
            Reply::Answer(bytes) => {
                let _ = socket.send_to(&bytes, peer).await;
            }
            Reply::Forward => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "dns: too many queries in flight; dropped");
                    continue;
                };
                let socket = socket.clone();
                tokio::spawn(async move {
                    let answer = forward_udp(&upstreams(), &query)
                        .await
                        .unwrap_or_else(|| server_failure(&query));
                    let _ = socket.send_to(&answer, peer).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Serves DNS over TCP on `listener` until the task is aborted: each connection may carry
/// several queries, answered in order.
pub async fn serve_tcp(ctx: Arc<ProxyContext>, listener: TcpListener) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Ok(Some(query)) =
                tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await
            {
                let answer = match reply(&table(&ctx), &query) {
                    Reply::Drop => break,
                    Reply::Answer(bytes) => bytes,
                    Reply::Forward => forward_tcp(&upstreams(), &query)
                        .await
                        .unwrap_or_else(|| server_failure(&query)),
                };
                let Ok(len) = u16::try_from(answer.len()) else {
                    break;
                };
                let mut out = Vec::with_capacity(answer.len() + 2);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&answer);
                if stream.write_all(&out).await.is_err() {
                    break;
                }
            }
            drop(permit);
        });
    }
}

/// A nameserver for tests, on loopback for the whole test process (its own thread, so no test's
/// runtime ending takes it away): `nx.*` is NXDOMAIN, `loopback.*` is 127.0.0.1, any other A
/// query 198.18.0.1 (the local cluster's node address), TTL 60.
#[cfg(test)]
pub(crate) fn test_upstream() -> SocketAddr {
    static ADDR: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.add_queries(q.queries.clone());
                if let Some(question) = q.queries.first() {
                    let name = question.name.to_ascii();
                    let ip = if name.starts_with("loopback.") {
                        Ipv4Addr::LOCALHOST
                    } else {
                        Ipv4Addr::new(198, 18, 0, 1)
                    };
                    if name.starts_with("nx.") {
                        r.metadata.response_code = ResponseCode::NXDomain;
                    } else {
                        r.add_answer(Record::from_rdata(
                            question.name.clone(),
                            60,
                            RData::A(A(ip)),
                        ));
                    }
                }
                if let Ok(bytes) = r.to_vec() {
                    let _ = socket.send_to(&bytes, peer);
                }
            }
        });
        addr
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seed_table() -> Vec<ExternalService> {
        let mut t = egress::compile(
            "payments",
            "seed",
            &json!({"hosts": ["api.payments-partner.com"], "resolution": "DNS",
                    "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}),
        )
        .unwrap()
        .services;
        t[0].allocated = Some(Ipv4Addr::new(198, 19, 240, 7));
        t
    }

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut q = Message::new(0x4242, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        q.to_vec().unwrap()
    }

    fn answered(r: Reply) -> Message {
        match r {
            Reply::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("not answered: {other:?}"),
        }
    }

    #[test]
    fn a_declared_host_is_answered_from_the_table_with_its_allocated_address() {
        let t = seed_table();
        let m = answered(reply(
            &t,
            &query("API.payments-partner.com.", RecordType::A),
        ));
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(m.queries.len(), 1, "the question is echoed");
        let [record] = m.answers.as_slice() else {
            panic!("one answer: {:?}", m.answers)
        };
        assert_eq!(record.ttl, ANSWER_TTL);
        assert_eq!(record.data, RData::A(A(Ipv4Addr::new(198, 19, 240, 7))));
        // AAAA of a name with only an IPv4 address: NODATA, not a forward.
        let m = answered(reply(
            &t,
            &query("api.payments-partner.com.", RecordType::AAAA),
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn everything_else_is_forwarded_and_non_queries_are_dropped() {
        let t = seed_table();
        for q in [
            query("example.com.", RecordType::A),
            query(
                "api.payments-partner.com.payments.svc.cluster.local.",
                RecordType::A,
            ),
            query("api.payments-partner.com.", RecordType::MX),
            query("kubernetes.default.svc.cluster.local.", RecordType::AAAA),
        ] {
            assert_eq!(reply(&t, &q), Reply::Forward);
        }
        assert_eq!(
            reply(&[], &query("api.payments-partner.com.", RecordType::A)),
            Reply::Forward
        );
        // A response (QR set) is never answered; too short to have an ID neither.
        let mut response = query("api.payments-partner.com.", RecordType::A);
        response[2] |= 0x80;
        assert_eq!(reply(&t, &response), Reply::Drop);
        assert_eq!(reply(&t, &[0x12, 0x34, 0x01]), Reply::Drop);
        assert_eq!(reply(&t, &[]), Reply::Drop);
    }

    #[test]
    fn garbage_and_truncated_queries_get_formerr_with_their_id_and_never_panic() {
        let t = seed_table();
        let whole = query("api.payments-partner.com.", RecordType::A);
        // Every truncation of a good query past the header, and a header claiming questions
        // that are not there.
        for cut in 12..whole.len() {
            match reply(&t, &whole[..cut]) {
                Reply::Answer(bytes) => {
                    let m = Message::from_vec(&bytes).unwrap();
                    assert_eq!(m.metadata.id, 0x4242);
                    assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "cut {cut}");
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        // A compression pointer to itself, a label longer than 63, random bytes.
        let mut looped = whole[..12].to_vec();
        looped.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        let mut long_label = whole[..12].to_vec();
        long_label.push(64);
        long_label.extend_from_slice(&[b'a'; 64]);
        long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
        for bad in [looped, long_label] {
            let m = answered(reply(&t, &bad));
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        }
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..600 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = reply(&t, &bytes);
        }
    }

    #[tokio::test]
    async fn forwarded_queries_return_the_upstream_answer_as_is_and_resolve_uses_it() {
        let server = test_upstream();
        let dead = {
            // A nameserver that never answers: the next one is tried.
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let a = s.local_addr().unwrap();
            std::mem::forget(s);
            a
        };
        let q = query("example.com.", RecordType::A);
        let answer = forward_udp(&[server], &q).await.unwrap();
        let m = Message::from_vec(&answer).unwrap();
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(198, 18, 0, 1))));
        let nx = Message::from_vec(
            &forward_udp(&[server], &query("nx.example.com.", RecordType::A))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            resolve(&[server], "api.payments-partner.com").await,
            vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))]
        );
        assert!(resolve(&[server], "nx.example.com").await.is_empty());
        // The first nameserver is silent: after its timeout the second answers.
        let started = tokio::time::Instant::now();
        assert!(forward_udp(&[dead, server], &q).await.is_some());
        assert!(started.elapsed() >= UPSTREAM_TIMEOUT);
        assert!(forward_udp(&[], &q).await.is_none());
        assert_eq!(
            upstreams_of("nameserver 198.19.0.10\nnameserver ::1\n"),
            vec![
                "198.19.0.10:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn the_servers_answer_the_table_and_forward_the_rest_over_udp_and_tcp() {
        set_upstreams(vec![test_upstream()]);
        let (ctx, inputs) = ProxyContext::new(Default::default());
        let snapshot = json!({
            "schemaVersion": 1, "version": "v1",
            "identity": "spiffe://cluster.local/ns/payments/sa/productpage",
            "trustDomain": "cluster.local",
            "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"policy": "REGISTRY_ONLY", "egress": seed_table()}
        });
        inputs
            .snapshot
            .offer(snapshot.to_string().as_bytes())
            .unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp_addr = udp.local_addr().unwrap();
        tokio::spawn(serve_udp(ctx.clone(), udp));
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        tokio::spawn(serve_tcp(ctx.clone(), tcp));

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(udp_addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut ask = async |q: Vec<u8>| {
            client.send(&q).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            Message::from_vec(&buf[..n]).unwrap()
        };
        let local = ask(query("api.payments-partner.com.", RecordType::A)).await;
        assert_eq!(
            local.answers[0].data,
            RData::A(A(Ipv4Addr::new(198, 19, 240, 7)))
        );
        let forwarded = ask(query("example.com.", RecordType::A)).await;
        assert_eq!(
            forwarded.answers[0].data,
            RData::A(A(Ipv4Addr::new(198, 18, 0, 1)))
        );
        assert_eq!(forwarded.answers[0].ttl, 60, "upstream's answer, as is");
        let mut garbage = query("x.", RecordType::A);
        garbage.truncate(14);
        assert_eq!(
            ask(garbage).await.metadata.response_code,
            ResponseCode::FormErr
        );

        // TCP: two queries on one connection, length-prefixed; the upstream has no TCP
        // listener here, so the forwarded one gets SERVFAIL rather than silence.
        let mut s = TcpStream::connect(tcp_addr).await.unwrap();
        for (q, want) in [
            (
                query("api.payments-partner.com.", RecordType::A),
                ResponseCode::NoError,
            ),
            (query("example.com.", RecordType::A), ResponseCode::ServFail),
        ] {
            s.write_all(&u16::try_from(q.len()).unwrap().to_be_bytes())
                .await
                .unwrap();
            s.write_all(&q).await.unwrap();
            let m = tokio::time::timeout(Duration::from_secs(10), read_framed(&mut s))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(Message::from_vec(&m).unwrap().metadata.response_code, want);
        }
        // A frame too short for a header closes the connection.
        s.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        // (a reset, when the unread rest of the frame is still queued, is a close too)
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{rest:?}");
    }
}
