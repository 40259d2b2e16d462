//! The `weft-proxy` command line: `init` (the weft-init container) and `run` (the sidecar).
//! Every flag can also come from an environment variable; the binary only parses and calls
//! [`main`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::Settings;
use super::config_stream::ConfigStreamConfig;
use super::identity::CsrClientConfig;
use super::inputs::FileSources;
use super::iptables::{self, InitOptions};
use super::run::{Listeners, Mode, RunOptions};
use crate::contract;

/// weft-proxy: weft's sidecar proxy and its init container.
#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Program the pod's iptables capture rules (runs in the weft-init container).
    Init(Box<InitArgs>),
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Run the proxy as a gateway (a Deployment's only container): no capture; it listens
    /// on the ports of the Istio Gateways that select its pod (docs/gateway.md).
    Gateway(Box<RunArgs>),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Inbound ports to capture: `*` (all), empty (none) or a list (traffic.sidecar.istio.io/includeInboundPorts).
    #[arg(long, env = "WEFT_INCLUDE_INBOUND_PORTS", default_value = "*")]
    pub include_inbound_ports: String,
    /// Inbound ports never captured (traffic.sidecar.istio.io/excludeInboundPorts).
    #[arg(long, env = "WEFT_EXCLUDE_INBOUND_PORTS", default_value = "")]
    pub exclude_inbound_ports: String,
    /// Outbound ports never captured (traffic.sidecar.istio.io/excludeOutboundPorts).
    #[arg(long, env = "WEFT_EXCLUDE_OUTBOUND_PORTS", default_value = "")]
    pub exclude_outbound_ports: String,
    /// Outbound CIDRs, IPv4 or IPv6, never captured (traffic.sidecar.istio.io/excludeOutboundIPRanges).
    #[arg(
        long = "exclude-outbound-ip-ranges",
        env = "WEFT_EXCLUDE_OUTBOUND_IP_RANGES",
        default_value = ""
    )]
    pub exclude_outbound_ip_ranges: String,
    /// Outbound CIDRs captured: `*` (all), empty (none) or a list, IPv4 and IPv6
    /// (traffic.sidecar.istio.io/includeOutboundIPRanges).
    #[arg(
        long = "include-outbound-ip-ranges",
        env = "WEFT_INCLUDE_OUTBOUND_IP_RANGES",
        default_value = "*"
    )]
    pub include_outbound_ip_ranges: String,
    /// Outbound ports captured whatever the destination (traffic.sidecar.istio.io/includeOutboundPorts).
    #[arg(long, env = "WEFT_INCLUDE_OUTBOUND_PORTS", default_value = "")]
    pub include_outbound_ports: String,
    /// Interfaces whose traffic is never captured (traffic.sidecar.istio.io/excludeInterfaces).
    #[arg(long, env = "WEFT_EXCLUDE_INTERFACES", default_value = "")]
    pub exclude_interfaces: String,
    /// Interfaces of a VM in the pod, whose incoming traffic is captured as outbound
    /// (traffic.sidecar.istio.io/kubevirtInterfaces).
    #[arg(long, env = "WEFT_KUBEVIRT_INTERFACES", default_value = "")]
    pub kubevirt_interfaces: String,
    /// Program ip6tables too: `auto` (when the pod has IPv6), `true` or `false`.
    #[arg(long, env = "WEFT_IPV6", default_value = "auto")]
    pub ipv6: String,
    /// UID the proxy runs as; its traffic is not captured.
    #[arg(long, env = "WEFT_PROXY_UID", default_value_t = contract::PROXY_UID)]
    pub proxy_uid: u32,
    /// GID the proxy runs as; its traffic is not captured.
    #[arg(long, env = "WEFT_PROXY_GID", default_value_t = contract::PROXY_GID)]
    pub proxy_gid: u32,
    /// Print the rules without applying them.
    #[arg(long, env = "WEFT_INIT_DRY_RUN")]
    pub dry_run: bool,
    /// Capture the app's DNS (UDP and TCP 53 to the nameservers of `--resolv-conf`) to the
    /// proxy's DNS port 15053 (ProxyConfig proxyMetadata ISTIO_META_DNS_CAPTURE; docs/egress.md).
    #[arg(long, env = "WEFT_CAPTURE_DNS")]
    pub capture_dns: bool,
    /// The pod's resolver configuration, read for `--capture-dns`.
    #[arg(long, env = "WEFT_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: std::path::PathBuf,
}

impl InitArgs {
    pub fn options(&self) -> Result<InitOptions, iptables::InitError> {
        Ok(InitOptions {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            include_inbound_ports: iptables::parse_include_inbound(
                contract::INIT_FLAG_INCLUDE_INBOUND_PORTS,
                &self.include_inbound_ports,
            )?,
            exclude_inbound_ports: iptables::parse_ports(
                contract::INIT_FLAG_EXCLUDE_INBOUND_PORTS,
                &self.exclude_inbound_ports,
            )?,
            exclude_outbound_ports: iptables::parse_ports(
                contract::INIT_FLAG_EXCLUDE_OUTBOUND_PORTS,
                &self.exclude_outbound_ports,
            )?,
            exclude_outbound_ip_ranges: iptables::parse_cidrs(
                contract::INIT_FLAG_EXCLUDE_OUTBOUND_IP_RANGES,
                &self.exclude_outbound_ip_ranges,
            )?,
            include_outbound_ip_ranges: iptables::parse_include_outbound_ranges(
                contract::INIT_FLAG_INCLUDE_OUTBOUND_IP_RANGES,
                &self.include_outbound_ip_ranges,
            )?,
            include_outbound_ports: iptables::parse_ports(
                contract::INIT_FLAG_INCLUDE_OUTBOUND_PORTS,
                &self.include_outbound_ports,
            )?,
            exclude_interfaces: iptables::parse_interfaces(
                contract::INIT_FLAG_EXCLUDE_INTERFACES,
                &self.exclude_interfaces,
            )?,
            kubevirt_interfaces: iptables::parse_interfaces(
                contract::INIT_FLAG_KUBEVIRT_INTERFACES,
                &self.kubevirt_interfaces,
            )?,
            ipv6: iptables::parse_ipv6("--ipv6", &self.ipv6)?,
            ..InitOptions::default()
        })
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory with cert-chain.pem, key.pem and root-cert.pem; re-read when they change.
    #[arg(long, env = contract::ENV_CERT_DIR)]
    pub cert_dir: Option<PathBuf>,
    /// Operator address for the CSR endpoint (used when --cert-dir is not given).
    #[arg(long, env = contract::ENV_DISCOVERY_ADDRESS, default_value = contract::DEFAULT_DISCOVERY_ADDRESS)]
    pub discovery_address: String,
    /// The pod's namespace (with --service-account, names the identity to request).
    #[arg(long, env = contract::ENV_POD_NAMESPACE)]
    pub pod_namespace: Option<String>,
    /// The pod's service account.
    #[arg(long, env = contract::ENV_SERVICE_ACCOUNT)]
    pub service_account: Option<String>,
    /// Trust domain of the mesh.
    #[arg(long, env = contract::ENV_TRUST_DOMAIN, default_value = contract::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Projected service-account token sent with the CSR.
    #[arg(long, env = "WEFT_TOKEN_FILE", default_value_t = format!("{}/{}", contract::TOKEN_DIR, contract::TOKEN_FILE))]
    pub token_file: String,
    /// Mesh root certificate (verifies the operator, and peers until the CA sends roots).
    #[arg(long, env = "WEFT_ROOT_CERT_FILE", default_value_t = format!("{}/{}", contract::ROOT_CERT_DIR, contract::ROOT_CERT_KEY))]
    pub root_cert_file: String,
    /// Certificate lifetime to ask for (Go duration); default: the revision's workloadCertTTL.
    #[arg(long, env = contract::ENV_CERT_VALIDITY, value_parser = parse_duration)]
    pub cert_validity: Option<Duration>,
    /// Fraction of the certificate lifetime at which it is renewed (±10% jitter).
    #[arg(long, env = contract::ENV_RENEW_AT, default_value_t = 0.5)]
    pub renew_at: f64,
    /// Config snapshot file (JSON, see weft::snapshot); re-read when it changes. Without it
    /// the proxy follows the operator's config stream (needs --pod-name).
    #[arg(long, env = contract::ENV_SNAPSHOT_FILE)]
    pub snapshot_file: Option<PathBuf>,
    /// The pod's name, sent on the config stream (the operator checks it against the
    /// certificate's identity).
    #[arg(long, env = contract::ENV_POD_NAME)]
    pub pod_name: Option<String>,
    /// The pod's IP: inbound connections are forwarded to it.
    #[arg(long, env = contract::ENV_POD_IP)]
    pub pod_ip: Option<std::net::IpAddr>,
    /// How long to wait for open connections after SIGTERM (Go duration).
    #[arg(long, env = contract::ENV_DRAIN_DURATION, default_value = "5s", value_parser = parse_duration)]
    pub drain_duration: Duration,
    /// Close a proxied connection after this long without traffic (Go duration).
    #[arg(long, env = "WEFT_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How long the inbound sniffer waits for a client's first bytes (Go duration).
    #[arg(long, env = "WEFT_SNIFF_TIMEOUT", default_value = "200ms", value_parser = parse_duration)]
    pub sniff_timeout: Duration,
    /// How often the certificate and snapshot files are checked for changes (Go duration).
    #[arg(long, env = "WEFT_RELOAD_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Worker threads.
    #[arg(long, env = contract::ENV_CONCURRENCY, default_value_t = 2)]
    pub concurrency: usize,
    /// Log filter (tracing-subscriber syntax, e.g. `info` or `weft=debug`).
    #[arg(long, env = contract::ENV_LOG_LEVEL, default_value = "info")]
    pub log_level: String,
    /// Port of the stats and app-health listener (`status.sidecar.istio.io/port`).
    #[arg(long, env = contract::ENV_STATUS_PORT, default_value_t = contract::PORT_STATS)]
    pub status_port: u16,
    /// JSON of the app's original probes (set by the injector).
    #[arg(long, env = contract::ENV_APP_PROBERS, default_value = "", hide_env_values = true)]
    pub app_probers: String,
}

impl RunArgs {
    pub fn options(&self) -> RunOptions {
        RunOptions {
            settings: Settings {
                pod_ip: self.pod_ip,
                sniff_timeout: self.sniff_timeout,
                idle_timeout: self.idle_timeout,
                drain_duration: self.drain_duration,
                ..Settings::default()
            },
            listeners: Listeners {
                stats: std::net::SocketAddr::new(Listeners::default().stats.ip(), self.status_port),
                ..Listeners::default()
            },
            sources: FileSources {
                cert_dir: self.cert_dir.clone(),
                snapshot_file: self.snapshot_file.clone(),
                interval: self.reload_interval.max(Duration::from_millis(100)),
            },
            app_probers: self.app_probers.clone(),
            mode: Mode::Sidecar,
            csr: self.csr_client(),
            config_stream: self.config_stream(),
        }
    }

    /// The config stream runs when no snapshot file is given and the pod's name is known.
    fn config_stream(&self) -> Option<ConfigStreamConfig> {
        if self.snapshot_file.is_some() {
            return None;
        }
        Some(ConfigStreamConfig {
            address: self.discovery_address.clone(),
            server_name: contract::DISCOVERY_SERVER_NAME.to_string(),
            pod: self.pod_name.clone()?,
        })
    }

    /// The CSR client runs when no certificate directory is given and the downward API
    /// says who the pod is.
    fn csr_client(&self) -> Option<CsrClientConfig> {
        if self.cert_dir.is_some() {
            return None;
        }
        let (ns, sa) = (self.pod_namespace.as_ref()?, self.service_account.as_ref()?);
        Some(CsrClientConfig {
            address: self.discovery_address.clone(),
            server_name: contract::DISCOVERY_SERVER_NAME.to_string(),
            token_file: self.token_file.clone().into(),
            root_cert_file: self.root_cert_file.clone().into(),
            identity: contract::spiffe_id(&self.trust_domain, ns, sa),
            validity: self.cert_validity,
            renew_at: self.renew_at,
            pod: self.pod_name.clone(),
        })
    }
}

/// Runs a parsed command line; the process exit code says how it went.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Init(args) => init(&args),
        Command::Run(args) => run(&args, Mode::Sidecar),
        Command::Gateway(args) => run(&args, Mode::Gateway),
    }
}

fn init(args: &InitArgs) -> ExitCode {
    let mut opts = match args.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("weft-init: {e}");
            return ExitCode::from(2);
        }
    };
    if args.capture_dns {
        // The pod's own resolv.conf (the init container has the pod's, as every container).
        let text = std::fs::read_to_string(&args.resolv_conf).unwrap_or_default();
        opts.dns_servers = iptables::resolv_conf_nameservers(&text);
        if opts.dns_servers.is_empty() {
            eprintln!(
                "weft-init: --capture-dns: no nameserver in {}; DNS is not captured",
                args.resolv_conf.display()
            );
        }
    }
    if args.dry_run {
        for family in iptables::families(&opts) {
            println!("# {family}");
            print!("{}", iptables::rules(&opts, family));
        }
        return ExitCode::SUCCESS;
    }
    match iptables::apply(&opts) {
        Ok(applied) => {
            for (family, text) in applied {
                println!("weft-init: applied these {family} nat rules with --noflush:");
                print!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-init: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &RunArgs, mode: Mode) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    // One worker (the default, as a sidecar should be): everything on this thread, so no
    // wake-up ever crosses threads (a futex and a context switch per event otherwise).
    let runtime = if args.concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.concurrency)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = RunOptions {
        mode,
        ..args.options()
    };
    match runtime.block_on(super::run::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn init_takes_the_flags_the_injector_writes() {
        let cli = Cli::try_parse_from([
            "weft-proxy",
            "init",
            &format!("{}=", contract::INIT_FLAG_INCLUDE_INBOUND_PORTS),
            &format!("{}=8080,9090", contract::INIT_FLAG_EXCLUDE_INBOUND_PORTS),
            &format!(
                "{}=198.18.0.0/16",
                contract::INIT_FLAG_EXCLUDE_OUTBOUND_IP_RANGES
            ),
        ])
        .unwrap();
        let Command::Init(args) = cli.command else {
            panic!("not init");
        };
        let opts = args.options().unwrap();
        assert_eq!(
            opts.include_inbound_ports,
            iptables::InboundPorts::List(vec![])
        );
        assert_eq!(opts.exclude_inbound_ports, vec![8080, 9090]);
        assert_eq!(opts.exclude_outbound_ip_ranges.len(), 1);
        assert_eq!(
            opts.include_outbound_ip_ranges,
            iptables::OutboundRanges::All
        );

        let cli = Cli::try_parse_from([
            "weft-proxy",
            "init",
            &format!(
                "{}=198.18.2.0/24,fd00:7765:6674::/64",
                contract::INIT_FLAG_INCLUDE_OUTBOUND_IP_RANGES
            ),
            &format!("{}=8443", contract::INIT_FLAG_INCLUDE_OUTBOUND_PORTS),
            &format!("{}=eth1", contract::INIT_FLAG_EXCLUDE_INTERFACES),
            &format!("{}=vif0,vif1", contract::INIT_FLAG_KUBEVIRT_INTERFACES),
            "--ipv6=false",
            contract::INIT_FLAG_CAPTURE_DNS,
        ])
        .unwrap();
        let Command::Init(args) = cli.command else {
            panic!("not init");
        };
        assert!(args.capture_dns);
        let opts = args.options().unwrap();
        assert!(
            matches!(&opts.include_outbound_ip_ranges, iptables::OutboundRanges::List(l) if l.len() == 2)
        );
        assert_eq!(opts.include_outbound_ports, vec![8443]);
        assert_eq!(opts.exclude_interfaces, vec!["eth1".to_string()]);
        assert_eq!(opts.kubevirt_interfaces.len(), 2);
        assert_eq!(opts.ipv6, iptables::Ipv6Capture::Off);

        let bad = Cli::try_parse_from(["weft-proxy", "init", "--exclude-interfaces=a b"]).unwrap();
        let Command::Init(args) = bad.command else {
            panic!("not init");
        };
        assert!(args.options().is_err());
    }

    #[test]
    fn run_serves_stats_on_the_status_port_it_is_given() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["weft-proxy", "run"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Run(args) => args.options(),
                Command::Init(_) | Command::Gateway(_) => panic!("not run"),
            }
        };
        assert_eq!(parse(&[]).listeners.stats.port(), contract::PORT_STATS);
        assert_eq!(
            parse(&["--status-port", "15030"]).listeners.stats.port(),
            15030
        );
    }

    #[test]
    fn run_asks_the_operator_unless_given_a_cert_dir() {
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "weft-proxy",
                "run",
                "--pod-namespace",
                "pets",
                "--service-account",
                "web",
            ];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Run(args) => args.options(),
                Command::Init(_) | Command::Gateway(_) => panic!("not run"),
            }
        };
        let csr = parse(&[]).csr.unwrap();
        assert_eq!(csr.identity, "spiffe://cluster.local/ns/pets/sa/web");
        assert_eq!(csr.address, contract::DEFAULT_DISCOVERY_ADDRESS);
        assert!(parse(&["--cert-dir", "/tmp/x"]).csr.is_none());
    }
}
