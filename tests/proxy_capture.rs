//! `weft-proxy init`'s capture rules on real iptables and ip6tables (issue 21 items 10 and 11):
//! network namespaces joined by veth pairs, dual stack (198.18.x.0/24 and the ULA
//! fd00:7765:6674::/48, "weft" in hex; both exist only inside these namespaces). The Istio
//! traffic annotations are proven with listeners on 15001/15006 that say whether a connection
//! was captured and where it was going; IPv6 with two real proxies speaking mTLS.
//! Needs root, `ip`, `iptables-restore`, `ip6tables-restore` and `setpriv`; without them each
//! test fails and says so (`e2e/scripts/install-netns-tools.sh` installs the tools).
#![cfg(feature = "proxy")]

use support::*;

// === The traffic annotations (item 11), one rule each ===

/// `traffic.sidecar.istio.io/includeOutboundIPRanges`: only the listed destinations are
/// captured, each family from its own ranges; the others reach the network untouched.
#[test]
fn include_outbound_ip_ranges_capture_only_those_ranges() {
    require_privileges();
    let net = Pair::new("incl");
    net.init(&[]);
    // By default every destination is captured, in both families.
    assert_eq!(
        net.call(&net.remote_v4(2, 8080)),
        captured_outbound(&net.remote_v4(2, 8080))
    );
    assert_eq!(
        net.call(&net.remote_v6(3, 8080)),
        captured_outbound(&net.remote_v6(3, 8080))
    );

    net.init(&[&format!(
        "--include-outbound-ip-ranges={},{}/128",
        net.remote_ip_v4(2),
        net.remote_ip_v6(2)
    )]);
    for addr in [net.remote_v4(2, 8080), net.remote_v6(2, 8080)] {
        assert_eq!(
            net.call(&addr),
            captured_outbound(&addr),
            "{addr} is included"
        );
    }
    for addr in [net.remote_v4(3, 8080), net.remote_v6(3, 8080)] {
        assert_eq!(net.call(&addr), app_reply(8080), "{addr} is not included");
    }

    // Present and empty: nothing is captured outbound.
    net.init(&["--include-outbound-ip-ranges="]);
    assert_eq!(net.call(&net.remote_v4(2, 8080)), app_reply(8080));
    assert_eq!(net.call(&net.remote_v6(2, 8080)), app_reply(8080));
}

/// `excludeOutboundIPRanges` with an IPv6 range: the ip6tables rules take it, the IPv4 ones
/// are untouched.
#[test]
fn ipv6_capture_follows_the_ipv6_ranges() {
    require_privileges();
    let net = Pair::new("v6ex");
    net.init(&[&format!(
        "--exclude-outbound-ip-ranges={}/128",
        net.remote_ip_v6(3)
    )]);
    assert_eq!(net.call(&net.remote_v6(3, 8080)), app_reply(8080));
    assert_eq!(
        net.call(&net.remote_v6(2, 8080)),
        captured_outbound(&net.remote_v6(2, 8080))
    );
    assert_eq!(
        net.call(&net.remote_v4(3, 8080)),
        captured_outbound(&net.remote_v4(3, 8080))
    );
}

/// `includeOutboundPorts`: these ports are captured whatever the ranges say.
#[test]
fn include_outbound_ports_are_captured_outside_the_included_ranges() {
    require_privileges();
    let net = Pair::new("inport");
    net.init(&[
        "--include-outbound-ip-ranges=",
        "--include-outbound-ports=8443",
    ]);
    for addr in [net.remote_v4(2, 8443), net.remote_v6(2, 8443)] {
        assert_eq!(net.call(&addr), captured_outbound(&addr));
    }
    for addr in [net.remote_v4(2, 8080), net.remote_v6(2, 8080)] {
        assert_eq!(net.call(&addr), app_reply(8080));
    }
}

/// `excludeInterfaces`: nothing entering or leaving the interface is captured; before the
/// exclusion the same connections were.
#[test]
fn excluded_interfaces_are_not_captured_either_way() {
    require_privileges();
    let net = Pair::new("exif");
    net.init(&[]);
    let outbound = net.remote_v4(2, 8080);
    assert_eq!(net.call(&outbound), captured_outbound(&outbound));
    let inbound = net.pod_v6(7070);
    assert_eq!(net.call_from_remote(&inbound), captured_inbound(&inbound));

    net.init(&["--exclude-interfaces=eth0"]);
    assert_eq!(net.call(&outbound), app_reply(8080));
    assert_eq!(net.call(&net.remote_v6(2, 8080)), app_reply(8080));
    assert_eq!(net.call_from_remote(&inbound), "pod-app".to_string());
    assert_eq!(
        net.call_from_remote(&net.pod_v4(7070)),
        "pod-app".to_string()
    );
}

/// `kubevirtInterfaces`: what a VM inside the pod sends in through its interface is the pod's
/// outbound traffic (15001), not inbound (15006, where it lands without the annotation).
#[test]
fn kubevirt_interfaces_are_captured_as_outbound() {
    require_privileges();
    let net = Pair::new("kvirt");
    let vm = net.add_vm();
    net.init(&[]);
    let target = net.remote_v4(2, 8080);
    assert_eq!(vm.call(&target), captured_inbound(&target));

    net.init(&["--kubevirt-interfaces=vif0"]);
    assert_eq!(vm.call(&target), captured_outbound(&target));
    let target_v6 = net.remote_v6(2, 8080);
    assert_eq!(vm.call(&target_v6), captured_outbound(&target_v6));

    // With include ranges, the VM's traffic outside them is not captured at all.
    net.init(&[
        "--kubevirt-interfaces=vif0",
        &format!("--include-outbound-ip-ranges={}/32", net.remote_ip_v4(3)),
    ]);
    let included = net.remote_v4(3, 8080);
    assert_eq!(vm.call(&included), captured_outbound(&included));
    assert_eq!(vm.call(&target), app_reply(8080));
}

// === IPv6 and dual stack (item 10) ===

/// `init` programs ip6tables with the IPv4 rules' shape, puts `::6` on `lo`, and is idempotent;
/// `--ipv6=false` leaves ip6tables alone.
#[test]
fn init_programs_ip6tables_and_the_ipv6_passthrough_address() {
    require_privileges();
    let net = Pair::new("v6init");
    let first = net.init(&["--exclude-inbound-ports=9090"]);
    assert!(
        first.contains("applied these IPv6 nat rules"),
        "init says what it applied:\n{first}"
    );
    let rules = net.pod.rules("ip6tables-save");
    for rule in [
        "-A PREROUTING -p tcp -j WEFT_INBOUND",
        "-A OUTPUT -p tcp -j WEFT_OUTPUT",
        "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A WEFT_INBOUND -p tcp -m tcp --dport 9090 -j RETURN",
        "-A WEFT_OUTPUT -s ::6/128 -o lo -j RETURN",
        "-A WEFT_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j WEFT_IN_REDIRECT",
        "-A WEFT_OUTPUT -d ::1/128 -j RETURN",
        "-A WEFT_OUTPUT -j WEFT_REDIRECT",
    ] {
        assert_eq!(count_lines(&rules, rule), 1, "{rule} in:\n{rules}");
    }
    assert!(
        net.pod
            .output("ip", &["-6", "addr", "show", "dev", "lo"])
            .contains("inet6 ::6/128"),
        "::6 on lo"
    );
    net.init(&["--exclude-inbound-ports=9090"]);
    assert_eq!(
        rule_lines(&net.pod.rules("ip6tables-save")),
        rule_lines(&rules)
    );

    let off = Pair::new("v6off");
    off.init(&["--ipv6=false"]);
    assert!(!off.pod.rules("ip6tables-save").contains("WEFT"));
    assert!(
        off.pod
            .rules("iptables-save")
            .contains("-A OUTPUT -p tcp -j WEFT_OUTPUT")
    );
}

/// Two pods with dual-stack capture and real proxies: a meshed client reaches the server over
/// IPv6 and IPv4 Service addresses with mTLS; the IPv6 connection's original destination is
/// read with IP6T_SO_ORIGINAL_DST on both sides and the app sees it come from `::6`; under
/// STRICT a direct plaintext IPv6 call to the server pod is captured and refused.
#[test]
fn a_meshed_client_reaches_the_server_over_ipv6_and_ipv4_with_mutual_tls() {
    require_privileges();
    let mesh = DualStackMesh::start();

    assert_eq!(
        mesh.echo(&mesh.service_v6(), b"over ipv6"),
        Ok(b"over ipv6".to_vec())
    );
    assert_eq!(
        mesh.echo(&mesh.service_v4(), b"over ipv4"),
        Ok(b"over ipv4".to_vec())
    );
    // The server's proxy forwarded each from the passthrough source of its family.
    let peers = mesh.app_peers();
    assert!(peers.contains(&"::6".to_string()), "app peers: {peers:?}");
    assert!(
        peers.contains(&"127.0.0.6".to_string()),
        "app peers: {peers:?}"
    );

    let server = mesh.server_stats();
    let mtls: u64 = server
        .lines()
        .filter(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(mtls, 2, "server metrics:\n{server}");

    // Not through the client's proxy (its init excludes the app port): plaintext on STRICT.
    assert!(
        mesh.echo(&mesh.server_pod_v6(), b"let me in").is_err(),
        "a direct IPv6 call was let through"
    );
    assert_eq!(
        mesh.app_peers().len(),
        2,
        "the refused call reached the app"
    );
    let server = mesh.server_stats();
    assert!(
        server.contains(
            "weft_connections_refused_total{direction=\"inbound\",reason=\"plaintext_on_strict\"}"
        ),
        "server metrics:\n{server}"
    );
}

/// The same pods over HTTP: the client's proxy routes an HTTP/1.1 request for the IPv6
/// ClusterIP of an `http` Service, the server's proxy terminates it and sends it on from `::6`.
#[test]
fn http_requests_cross_the_mesh_over_ipv6() {
    require_privileges();
    let mesh = DualStackMesh::start();
    let (status, body) = mesh.http_get(&mesh.web_service_v6(), "/hello");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "GET /hello from ::6");
    let server = mesh.server_stats();
    assert!(
        server
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("response_code=\"200\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")),
        "server metrics:\n{server}"
    );
}

fn captured_outbound(addr: &str) -> String {
    format!("outbound {addr}")
}

fn captured_inbound(addr: &str) -> String {
    format!("inbound {addr}")
}

fn app_reply(port: u16) -> String {
    format!("app:{port}")
}

// === plumbing ===

mod support {
    use std::fs;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use nix::sys::socket::{getsockopt, sockopt};

    const IO_TIMEOUT: Duration = Duration::from_secs(5);
    /// The remote pod's app ports: each answers `app:<port>`.
    const APP_PORTS: [u16; 3] = [8080, 8443, 9090];
    /// A port the pod itself serves (`pod-app`), for inbound calls.
    const POD_APP_PORT: u16 = 7070;

    static SEQ: AtomicUsize = AtomicUsize::new(0);

    fn unique(tag: &str) -> String {
        format!(
            "weft-c{}-{}-{tag}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Fails (never skips) with what is missing: these tests are part of the suite.
    pub fn require_privileges() {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        assert_eq!(
            uid.as_deref().unwrap_or("?"),
            "0",
            "proxy_capture tests need root (network namespaces, iptables); run them as root"
        );
        let have = |tool: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let tools = [
            "ip",
            "iptables-restore",
            "iptables-save",
            "ip6tables-restore",
            "ip6tables-save",
            "setpriv",
        ];
        if tools.iter().any(|t| !have(t)) {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/scripts/install-netns-tools.sh");
            let _ = Command::new("bash").arg(script).status();
        }
        for tool in tools {
            assert!(
                have(tool),
                "{tool} is missing: run e2e/scripts/install-netns-tools.sh"
            );
        }
    }

    fn run(cmd: &mut Command) -> Output {
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    fn describe(out: &Output) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn must(cmd: &mut Command) -> String {
        let out = run(cmd);
        assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn count_lines(text: &str, line: &str) -> usize {
        text.lines().filter(|l| l.trim() == line).count()
    }

    /// The rule lines of an `*tables-save` dump (no comments, counters or table markers).
    pub fn rule_lines(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("-A") || l.starts_with(':'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect()
    }

    // === impl Netns ===

    pub struct Netns {
        pub name: String,
    }

    impl Netns {
        pub fn new(tag: &str) -> Self {
            let name = unique(tag);
            must(Command::new("ip").args(["netns", "add", &name]));
            let ns = Netns { name };
            must(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
            ns
        }

        pub fn exec(&self, program: &str, args: &[&str]) -> Command {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.name, program]).args(args);
            cmd
        }

        pub fn output(&self, program: &str, args: &[&str]) -> String {
            must(&mut self.exec(program, args))
        }

        pub fn ip(&self, args: &[&str]) {
            must(Command::new("ip").arg("-n").arg(&self.name).args(args));
        }

        pub fn rules(&self, save: &str) -> String {
            self.output(save, &["-t", "nat"])
        }

        /// Runs `f` on a thread inside this namespace: sockets it opens live here.
        pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let path = format!("/var/run/netns/{}", self.name);
            std::thread::spawn(move || {
                let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|_| panic!("thread in netns panicked"))
        }

        /// Connects from this namespace (as root, so outbound capture applies), and returns
        /// the first line the other end sends.
        pub fn call(&self, addr: &str) -> String {
            let addr: SocketAddr = addr.parse().expect("address");
            self.run_in(move || {
                let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
                    .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
                s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                let mut line = String::new();
                BufReader::new(&mut s)
                    .read_line(&mut line)
                    .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
                line.trim_end().to_string()
            })
        }

        /// Listens on `addrs`; each connection is answered with `reply(local, original
        /// destination)` on one line, then closed.
        fn serve_lines(
            &self,
            addrs: Vec<SocketAddr>,
            reply: impl Fn(SocketAddr, Option<SocketAddr>) -> String + Send + Sync + 'static,
        ) {
            let reply = Arc::new(reply);
            for addr in addrs {
                let listener = self.run_in(move || bind(addr));
                let reply = reply.clone();
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        let Ok(mut stream) = stream else { continue };
                        let local = stream.local_addr().expect("local");
                        let line = reply(local, original_dst(&stream));
                        let _ = writeln!(stream, "{line}");
                        let _ = stream.shutdown(Shutdown::Write);
                    }
                });
            }
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    /// An IPv6 listener is IPv6 only, so the IPv4 wildcard on the same port can be bound too.
    fn bind(addr: SocketAddr) -> TcpListener {
        let socket = if addr.is_ipv4() {
            nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )
        } else {
            nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet6,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )
        }
        .expect("socket");
        if addr.is_ipv6() {
            nix::sys::socket::setsockopt(&socket, sockopt::Ipv6V6Only, &true).expect("v6only");
        }
        nix::sys::socket::setsockopt(&socket, sockopt::ReuseAddr, &true).expect("reuseaddr");
        let sockaddr = nix::sys::socket::SockaddrStorage::from(addr);
        nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &sockaddr)
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        nix::sys::socket::listen(
            &socket,
            nix::sys::socket::Backlog::new(128).expect("backlog"),
        )
        .expect("listen");
        TcpListener::from(socket)
    }

    /// Where the connection was going before a REDIRECT, or `None` when nothing redirected
    /// it (SO_ORIGINAL_DST then fails, or names the local address itself).
    fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
        let local = stream.local_addr().ok()?;
        let orig = if local.is_ipv4() {
            let sa = getsockopt(stream, sockopt::OriginalDst).ok()?;
            SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(sa.sin_addr.s_addr).into(),
                u16::from_be(sa.sin_port),
            ))
        } else {
            let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
            SocketAddr::V6(SocketAddrV6::new(
                sa.sin6_addr.s6_addr.into(),
                u16::from_be(sa.sin6_port),
                0,
                0,
            ))
        };
        (orig != local).then_some(orig)
    }

    fn link(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
        must(Command::new("ip").args([
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ]));
        a.ip(&["link", "set", a_if, "up"]);
        b.ip(&["link", "set", b_if, "up"]);
    }

    fn addr(ns: &Netns, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            ns.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            ns.ip(&["addr", "add", cidr, "dev", dev]);
        }
    }

    fn wildcards(port: u16) -> Vec<SocketAddr> {
        vec![
            SocketAddr::from(([0, 0, 0, 0], port)),
            SocketAddr::from(([0u16; 8], port)),
        ]
    }

    // === impl Pair ===

    /// The pod under test (`eth0`: 198.18.<n>.1/24 and fd00:7765:6674:<n>::1/64) and a remote
    /// network (`.2` and `.3` of both) with apps on 8080, 8443 and 9090. In the pod, listeners
    /// on 15001 and 15006 stand in for the proxy and say what they caught; an app on 7070
    /// answers `pod-app`. `init` runs the real `weft-proxy init`.
    pub struct Pair {
        pub pod: Netns,
        pub remote: Netns,
        subnet: u8,
    }

    impl Pair {
        pub fn new(tag: &str) -> Pair {
            let subnet = 10 + (SEQ.fetch_add(1, Ordering::Relaxed) % 200) as u8;
            let pod = Netns::new(&format!("{tag}-pod"));
            let remote = Netns::new(&format!("{tag}-far"));
            link(&pod, "eth0", &remote, "eth0");
            let pair = Pair {
                pod,
                remote,
                subnet,
            };
            addr(&pair.pod, "eth0", &format!("198.18.{subnet}.1/24"));
            addr(&pair.pod, "eth0", &format!("fd00:7765:6674:{subnet}::1/64"));
            for host in [2, 3] {
                addr(
                    &pair.remote,
                    "eth0",
                    &format!("{}/24", pair.remote_ip_v4(host)),
                );
                addr(
                    &pair.remote,
                    "eth0",
                    &format!("{}/64", pair.remote_ip_v6(host)),
                );
            }
            for port in APP_PORTS {
                pair.remote
                    .serve_lines(wildcards(port), move |_, _| format!("app:{port}"));
            }
            for (port, direction) in [(15001, "outbound"), (15006, "inbound")] {
                pair.pod
                    .serve_lines(wildcards(port), move |local, orig| match orig {
                        Some(orig) => format!("{direction} {orig}"),
                        None => format!("{direction} not redirected (local {local})"),
                    });
            }
            pair.pod
                .serve_lines(wildcards(POD_APP_PORT), |_, _| "pod-app".to_string());
            pair
        }

        /// Runs `weft-proxy init` in the pod with `args`; returns what it printed.
        pub fn init(&self, args: &[&str]) -> String {
            let bin = env!("CARGO_BIN_EXE_weft-proxy");
            let out = run(&mut self.pod.exec(bin, &[&["init"], args].concat()));
            assert!(out.status.success(), "init {args:?}: {}", describe(&out));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        pub fn call(&self, addr: &str) -> String {
            self.pod.call(addr)
        }

        /// From the remote network into the pod.
        pub fn call_from_remote(&self, addr: &str) -> String {
            self.remote.call(addr)
        }

        pub fn remote_ip_v4(&self, host: u8) -> String {
            format!("198.18.{}.{host}", self.subnet)
        }

        pub fn remote_ip_v6(&self, host: u8) -> String {
            format!("fd00:7765:6674:{}::{host}", self.subnet)
        }

        pub fn remote_v4(&self, host: u8, port: u16) -> String {
            format!("{}:{port}", self.remote_ip_v4(host))
        }

        pub fn remote_v6(&self, host: u8, port: u16) -> String {
            format!("[{}]:{port}", self.remote_ip_v6(host))
        }

        pub fn pod_v4(&self, port: u16) -> String {
            format!("198.18.{}.1:{port}", self.subnet)
        }

        pub fn pod_v6(&self, port: u16) -> String {
            format!("[fd00:7765:6674:{}::1]:{port}", self.subnet)
        }

        /// A VM in the pod, as KubeVirt wires it: its own namespace behind the pod's `vif0`
        /// (198.18.<n+100>.0/24, fd00:7765:6674:<n+100>::/64), routed through the pod.
        pub fn add_vm(&self) -> Netns {
            let vm = Netns::new("vm");
            link(&self.pod, "vif0", &vm, "eth0");
            let n = u16::from(self.subnet) + 100;
            addr(&self.pod, "vif0", &format!("198.18.{n}.1/24"));
            addr(&vm, "eth0", &format!("198.18.{n}.2/24"));
            addr(&self.pod, "vif0", &format!("fd00:7765:6674:{n}::1/64"));
            addr(&vm, "eth0", &format!("fd00:7765:6674:{n}::2/64"));
            vm.ip(&["route", "add", "default", "via", &format!("198.18.{n}.1")]);
            vm.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:7765:6674:{n}::1"),
            ]);
            // What capture leaves alone is routed on by the pod, as a VM's traffic would be.
            self.pod
                .output("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
            self.remote.ip(&[
                "route",
                "add",
                &format!("198.18.{n}.0/24"),
                "via",
                &format!("198.18.{}.1", self.subnet),
            ]);
            vm
        }
    }

    // === impl DualStackMesh ===

    const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
    const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";
    const APP_PORT: u16 = 8080;
    /// An HTTP app on the server: answers `<method> <path> from <peer address>`.
    const WEB_PORT: u16 = 8081;
    const SERVICE_PORT: u16 = 80;

    /// A client pod and a server pod, dual stack, each with `weft-proxy init` and a proxy
    /// running as UID 1337 from the test's certificates and snapshots; an echo app on the
    /// server's port 8080 records the peer address of every connection. `echo.demo` has a
    /// ClusterIP in each family.
    pub struct DualStackMesh {
        _client_proxy: Proxy,
        server_proxy: Proxy,
        peers: Arc<Mutex<Vec<String>>>,
        client: Netns,
        server: Netns,
        _dir: Workdir,
    }

    impl DualStackMesh {
        pub fn start() -> DualStackMesh {
            let dir = Workdir::new();
            let client = Netns::new("v6client");
            let server = Netns::new("v6server");
            link(&client, "eth0", &server, "eth0");
            addr(&client, "eth0", "198.18.250.1/24");
            addr(&server, "eth0", "198.18.250.2/24");
            addr(&client, "eth0", "fd00:7765:6674:250::1/64");
            addr(&server, "eth0", "fd00:7765:6674:250::2/64");
            for (ns, extra) in [
                (&client, vec!["--exclude-outbound-ports=8080"]),
                (&server, vec![]),
            ] {
                let bin = dir.bin.to_string_lossy().into_owned();
                let mut args = vec!["init"];
                args.extend(extra);
                let out = run(&mut ns.exec(&bin, &args));
                assert!(out.status.success(), "init: {}", describe(&out));
            }

            let peers = Arc::new(Mutex::new(Vec::new()));
            for listen in wildcards(APP_PORT) {
                let listener = server.run_in(move || bind(listen));
                let peers = peers.clone();
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        let Ok(mut stream) = stream else { continue };
                        if let Ok(peer) = stream.peer_addr() {
                            peers.lock().expect("peers").push(peer.ip().to_string());
                        }
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = stream.read(&mut buf) {
                                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = stream.shutdown(Shutdown::Write);
                        });
                    }
                });
            }

            for listen in wildcards(WEB_PORT) {
                let listener = server.run_in(move || bind(listen));
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        let Ok(stream) = stream else { continue };
                        std::thread::spawn(move || answer_http(stream));
                    }
                });
            }

            let ca = certs::TestCa::new("cluster.local root");
            let endpoint = |ip: &str| {
                serde_json::json!({
                    "ip": ip, "port": APP_PORT, "meshed": true, "identity": SERVER_ID,
                    "mtlsModeForPort": "STRICT",
                    "workload": {"name": "server", "namespace": "demo"}
                })
            };
            let client_snapshot = serde_json::json!({
                "schemaVersion": 1,
                "version": "client-v1",
                "identity": CLIENT_ID,
                "trustDomain": "cluster.local",
                "workload": {"name": "client", "namespace": "demo"},
                "inbound": {"defaultMode": "PERMISSIVE"},
                "outbound": {
                    "policy": "REGISTRY_ONLY",
                    "services": [{
                        "clusterIp": "fd00:7765:6674:250::100", "port": SERVICE_PORT,
                        "name": "echo.demo.svc.cluster.local",
                        "endpoints": [endpoint("fd00:7765:6674:250::2")]
                    }, {
                        "clusterIp": "fd00:7765:6674:250::101", "port": SERVICE_PORT,
                        "name": "web.demo.svc.cluster.local", "protocol": "http",
                        "endpoints": [{
                            "ip": "fd00:7765:6674:250::2", "port": WEB_PORT, "meshed": true,
                            "identity": SERVER_ID, "mtlsModeForPort": "STRICT"
                        }]
                    }, {
                        "clusterIp": "198.18.250.100", "port": SERVICE_PORT,
                        "name": "echo.demo.svc.cluster.local",
                        "endpoints": [endpoint("198.18.250.2")]
                    }]
                }
            });
            let server_snapshot = serde_json::json!({
                "schemaVersion": 1,
                "version": "server-v1",
                "identity": SERVER_ID,
                "trustDomain": "cluster.local",
                "workload": {"name": "server", "namespace": "demo"},
                "inbound": {
                    "defaultMode": "STRICT",
                    "services": {
                        APP_PORT.to_string(): ["echo.demo.svc.cluster.local"],
                        WEB_PORT.to_string(): ["web.demo.svc.cluster.local"]
                    },
                    "protocols": {WEB_PORT.to_string(): "http"}
                },
                "outbound": {"policy": "ALLOW_ANY"}
            });
            let server_proxy = Proxy::start(
                &server,
                &dir,
                "server",
                &ca.issue(SERVER_ID),
                &ca.cert_pem,
                &server_snapshot,
                "198.18.250.2",
            );
            let client_proxy = Proxy::start(
                &client,
                &dir,
                "client",
                &ca.issue(CLIENT_ID),
                &ca.cert_pem,
                &client_snapshot,
                "198.18.250.1",
            );
            DualStackMesh {
                _client_proxy: client_proxy,
                server_proxy,
                peers,
                client,
                server,
                _dir: dir,
            }
        }

        pub fn service_v6(&self) -> String {
            format!("[fd00:7765:6674:250::100]:{SERVICE_PORT}")
        }

        pub fn service_v4(&self) -> String {
            format!("198.18.250.100:{SERVICE_PORT}")
        }

        pub fn web_service_v6(&self) -> String {
            format!("[fd00:7765:6674:250::101]:{SERVICE_PORT}")
        }

        /// An HTTP/1.0 GET from the client pod's app (captured).
        pub fn http_get(&self, addr: &str, path: &str) -> (u16, String) {
            let (addr, owned) = (addr.to_string(), path.to_string());
            self.client
                .run_in(move || http_get(&addr, &owned))
                .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        }

        pub fn server_pod_v6(&self) -> String {
            format!("[fd00:7765:6674:250::2]:{APP_PORT}")
        }

        /// Sends `msg` from the client pod's app (root: captured), half-closes, reads all.
        pub fn echo(&self, addr: &str, msg: &[u8]) -> Result<Vec<u8>, String> {
            let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
            let msg = msg.to_vec();
            self.client.run_in(move || {
                let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
                    .map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                s.write_all(&msg).map_err(|e| format!("write: {e}"))?;
                s.shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
                if out.is_empty() {
                    Err("closed without a reply".into())
                } else {
                    Ok(out)
                }
            })
        }

        pub fn app_peers(&self) -> Vec<String> {
            self.peers.lock().expect("peers").clone()
        }

        /// The server proxy's metrics, read over IPv6 from inside its pod (the stats listener
        /// is dual stack too).
        pub fn server_stats(&self) -> String {
            self.server_proxy.stats(&self.server, "[::1]:15020")
        }
    }

    // === impl Workdir ===

    /// A directory UID 1337 can read: the proxy binary, certificates, snapshots, logs.
    pub struct Workdir {
        pub path: PathBuf,
        pub bin: PathBuf,
    }

    impl Workdir {
        pub fn new() -> Self {
            use std::os::unix::fs::PermissionsExt;
            let path = std::env::temp_dir().join(unique("work"));
            fs::create_dir_all(&path).expect("workdir");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
            // The build directory may sit under a home UID 1337 cannot enter.
            let bin = path.join("weft-proxy");
            fs::copy(env!("CARGO_BIN_EXE_weft-proxy"), &bin).expect("copy weft-proxy");
            fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
            Workdir { path, bin }
        }
    }

    impl Drop for Workdir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.path);
        }
    }

    // === impl Proxy ===

    pub struct Proxy {
        child: Option<Child>,
        log: PathBuf,
        ns: String,
    }

    impl Proxy {
        #[allow(clippy::too_many_arguments)]
        fn start(
            ns: &Netns,
            dir: &Workdir,
            name: &str,
            cert: &certs::Issued,
            roots: &str,
            snapshot: &serde_json::Value,
            pod_ip: &str,
        ) -> Proxy {
            let certs = dir.path.join(format!("{name}-certs"));
            fs::create_dir_all(&certs).expect("certs dir");
            fs::write(certs.join("cert-chain.pem"), &cert.chain_pem).expect("write");
            fs::write(certs.join("key.pem"), &cert.key_pem).expect("write");
            fs::write(certs.join("root-cert.pem"), roots).expect("write");
            let snapshot_file = dir.path.join(format!("{name}-snapshot.json"));
            fs::write(&snapshot_file, snapshot.to_string()).expect("write");
            let log = dir.path.join(format!("{name}.log"));
            let log_file = fs::File::create(&log).expect("log");
            let child = ns
                .exec(
                    "setpriv",
                    &[
                        "--reuid=1337",
                        "--regid=1337",
                        "--clear-groups",
                        &dir.bin.to_string_lossy(),
                        "run",
                        "--cert-dir",
                        &certs.to_string_lossy(),
                        "--snapshot-file",
                        &snapshot_file.to_string_lossy(),
                        "--pod-ip",
                        pod_ip,
                        "--drain-duration",
                        "1s",
                        "--log-level",
                        "weft=debug,info",
                    ],
                )
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log"))
                .stderr(log_file)
                .spawn()
                .expect("spawn weft-proxy");
            let mut proxy = Proxy {
                child: Some(child),
                log,
                ns: ns.name.clone(),
            };
            proxy.wait_ready(ns);
            proxy
        }

        fn log_text(&self) -> String {
            fs::read_to_string(&self.log).unwrap_or_default()
        }

        fn wait_ready(&mut self, ns: &Netns) {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!(
                        "proxy in {} exited with {status}:\n{}",
                        self.ns,
                        self.log_text()
                    );
                }
                let status = ns.run_in(|| http_get("127.0.0.1:15021", "/healthz/ready"));
                if status.as_ref().is_ok_and(|(s, _)| *s == 200) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "proxy in {} never became ready ({status:?}):\n{}",
                    self.ns,
                    self.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        fn stats(&self, ns: &Netns, addr: &'static str) -> String {
            match ns.run_in(move || http_get(addr, "/stats/prometheus")) {
                Ok((200, body)) => body,
                other => panic!("stats from {addr}: {other:?}\n{}", self.log_text()),
            }
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if std::thread::panicking() {
                eprintln!("--- proxy log ({}) ---\n{}", self.ns, self.log_text());
            }
        }
    }

    /// One HTTP/1.x request: the answer names the method, path and the peer's address.
    fn answer_http(mut stream: TcpStream) {
        let peer = stream
            .peer_addr()
            .map(|p| p.ip().to_string())
            .unwrap_or_default();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head);
        let mut line = head.split_whitespace();
        let body = format!(
            "{} {} from {peer}",
            line.next().unwrap_or("?"),
            line.next().unwrap_or("?")
        );
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no status line")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    mod certs {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            SanType,
        };

        /// A test CA made with rcgen (the product's CA is `weft::pki`).
        pub struct TestCa {
            pub cert_pem: String,
            issuer: Issuer<'static, KeyPair>,
        }

        pub struct Issued {
            pub chain_pem: String,
            pub key_pem: String,
        }

        impl TestCa {
            pub fn new(name: &str) -> Self {
                let key = KeyPair::generate().expect("key");
                let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, name);
                let cert = params.self_signed(&key).expect("self-signed");
                TestCa {
                    cert_pem: cert.pem(),
                    issuer: Issuer::new(params, key),
                }
            }

            pub fn issue(&self, spiffe_id: &str) -> Issued {
                let key = KeyPair::generate().expect("key");
                let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
                params.subject_alt_names =
                    vec![SanType::URI(spiffe_id.try_into().expect("spiffe id"))];
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                let cert = params.signed_by(&key, &self.issuer).expect("sign");
                Issued {
                    chain_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                }
            }
        }
    }
}
