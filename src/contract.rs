//! The contract between the injector and the proxy (SPEC §5, §6): every port, path, environment
//! variable, label and annotation key that both sides must agree on lives here and nowhere else.
//! Kube-free: the proxy binary compiles this module.

// === Ports (SPEC §6) ===

/// Outbound capture: iptables redirects the pod's outgoing TCP here.
pub const PORT_OUTBOUND: u16 = 15001;
/// Inbound capture: iptables redirects incoming TCP here (mTLS or plaintext).
pub const PORT_INBOUND: u16 = 15006;
/// `/stats/prometheus` and `/app-health/<container>/{livez,readyz,startupz}`.
pub const PORT_STATS: u16 = 15020;
/// `/healthz/ready`.
pub const PORT_HEALTH: u16 = 15021;
/// Admin, bound to 127.0.0.1 only: `/config_dump`, `/certs`, `/logging`.
pub const PORT_ADMIN: u16 = 15000;
/// The proxy's DNS server (UDP and TCP), bound to 127.0.0.1 (and ::1) only: the app's DNS to
/// its resolv.conf nameservers is redirected here when DNS capture is on (Istio's 15053).
pub const PORT_DNS: u16 = 15053;
/// Operator: CSR endpoint and proxy config stream (TLS).
pub const PORT_DISCOVERY: u16 = 15012;
/// Operator: admission webhook (the `weft-webhook` Service maps 443 here).
pub const PORT_WEBHOOK: u16 = 15017;
/// Operator: `/metrics`, `/healthz`, `/readyz`.
pub const PORT_MONITORING: u16 = 15014;

/// Every port the proxy itself listens on; iptables never captures traffic to them.
pub const PROXY_PORTS: [u16; 5] = [
    PORT_OUTBOUND,
    PORT_INBOUND,
    PORT_STATS,
    PORT_HEALTH,
    PORT_ADMIN,
];

// === Identity of the proxy process ===

/// UID and GID the proxy runs as; iptables lets their traffic out uncaptured.
pub const PROXY_UID: u32 = 1337;
pub const PROXY_GID: u32 = 1337;
/// Source address of connections the proxy forwards inbound to the app, so the loopback
/// rules can tell them from the app's own traffic (as Istio does).
pub const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6";
/// The same for IPv6 (Istio's `::6`); `weft-proxy init` adds it to `lo`, where IPv6 has only
/// `::1` by itself.
pub const INBOUND_PASSTHROUGH_SOURCE_V6: &str = "::6";
/// ALPN protocol spoken between weft proxies.
pub const ALPN_WEFT: &[u8] = b"weft/1";

// === HTTP paths ===

pub const PATH_READY: &str = "/healthz/ready";
pub const PATH_STATS: &str = "/stats/prometheus";
pub const PATH_APP_HEALTH_PREFIX: &str = "/app-health/";
pub const PATH_INJECT: &str = "/inject";
/// The validating webhook `weft-validator`: MeshConfig and RevisionTag rules (SPEC §3).
pub const PATH_VALIDATE: &str = "/validate";
/// The mutating webhook that fills a new MeshConfig from the `default` tag's revision.
pub const PATH_DEFAULT_MESHCONFIG: &str = "/default-meshconfig";
pub const PATH_CERTIFICATES: &str = "/v1/certificates";
pub const PATH_CONFIG_STREAM: &str = "/v1/config/stream";
pub const PATH_CONFIG_ACK: &str = "/v1/config/ack";
/// Monitoring port: this operator replica's connected proxies (`weft proxy-status`).
pub const PATH_DEBUG_PROXIES: &str = "/debug/proxies";

// === Environment of the injected proxy (set by the webhook, read by the proxy) ===

pub const ENV_POD_NAME: &str = "POD_NAME";
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const ENV_POD_IP: &str = "POD_IP";
pub const ENV_SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
pub const ENV_NODE_NAME: &str = "NODE_NAME";
pub const ENV_REVISION: &str = "WEFT_REVISION";
pub const ENV_DISCOVERY_ADDRESS: &str = "WEFT_DISCOVERY_ADDRESS";
pub const ENV_TRUST_DOMAIN: &str = "WEFT_TRUST_DOMAIN";
/// JSON map `container name -> {livez,readyz,startupz: original probe}`.
pub const ENV_APP_PROBERS: &str = "WEFT_APP_PROBERS";
/// JSON of the app's own `prometheus.io/{scrape,port,path}` annotations, merged into
/// `/stats/prometheus`.
pub const ENV_PROMETHEUS_ANNOTATIONS: &str = "WEFT_PROMETHEUS_ANNOTATIONS";
pub const ENV_LOG_LEVEL: &str = "WEFT_LOG_LEVEL";
/// Certificate lifetime the proxy asks the CA for (Go duration).
pub const ENV_CERT_VALIDITY: &str = "WEFT_CERT_VALIDITY";
/// Fraction of the certificate lifetime at which the proxy renews.
pub const ENV_RENEW_AT: &str = "WEFT_RENEW_AT";
pub const ENV_DRAIN_DURATION: &str = "WEFT_DRAIN_DURATION";
pub const ENV_CONCURRENCY: &str = "WEFT_CONCURRENCY";

/// Where the control plane is reached from a pod, unless the revision says otherwise.
pub const DEFAULT_DISCOVERY_ADDRESS: &str = "weft-operator.weft-system.svc:15012";
/// TLS server name of the operator's discovery endpoint.
pub const DISCOVERY_SERVER_NAME: &str = "weft-operator.weft-system.svc";

// === Files mounted into the proxy ===

pub const TOKEN_AUDIENCE: &str = "weft-ca";
pub const TOKEN_EXPIRATION_SECONDS: i64 = 12 * 3600;
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_FILE: &str = "weft-token";
pub const ROOT_CERT_DIR: &str = "/var/run/secrets/weft/root";
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
pub const ROOT_CERT_CONFIGMAP: &str = "weft-ca-root-cert";
/// In-memory working directory of the proxy (its key never touches a disk).
pub const WORK_DIR: &str = "/var/run/weft";

// === Container and volume names added by injection ===

pub const CONTAINER_INIT: &str = "weft-init";
pub const CONTAINER_PROXY: &str = "weft-proxy";
pub const VOLUME_TOKEN: &str = "weft-token";
pub const VOLUME_ROOT_CERT: &str = "weft-ca-root-cert";
pub const VOLUME_WORK: &str = "weft-work";

// === Labels and annotations (SPEC §4, §5) ===

pub const ANNOTATION_STATUS: &str = "weft.dev/status";
pub const LABEL_REVISION: &str = "weft.dev/revision";
pub const LABEL_ISTIO_REV: &str = "istio.io/rev";
pub const LABEL_ISTIO_INJECTION: &str = "istio-injection";
pub const LABEL_SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
pub const ANNOTATION_ISTIO_STATUS: &str = "sidecar.istio.io/status";
pub const LABEL_OSM_MONITORED_BY: &str = "openservicemesh.io/monitored-by";
pub const ANNOTATION_OSM_INJECTION: &str = "openservicemesh.io/sidecar-injection";
pub const ANNOTATION_REWRITE_PROBES: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// Pod annotation: a shorter certificate lifetime for this pod's proxy (Go duration, at least
/// 1m; the revision's `workloadCertTTL` otherwise). For rotation drills and tests.
pub const ANNOTATION_CERT_VALIDITY: &str = "proxy.weft.dev/cert-validity";
pub const LABEL_CANONICAL_NAME: &str = "service.istio.io/canonical-name";
pub const LABEL_CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
pub const ANNOTATION_INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const ANNOTATION_EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const ANNOTATION_EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES: &str =
    "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES: &str =
    "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const ANNOTATION_INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub const ANNOTATION_EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
pub const ANNOTATION_KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
/// Istio's per-pod ProxyConfig overrides (YAML or JSON).
pub const ANNOTATION_PROXY_CONFIG: &str = "proxy.istio.io/config";
pub const ANNOTATION_PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
pub const ANNOTATION_PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
pub const ANNOTATION_PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
pub const ANNOTATION_PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
/// The proxy's status port (weft's 15020: `/stats/prometheus` and `/app-health/...`).
pub const ANNOTATION_STATUS_PORT: &str = "status.sidecar.istio.io/port";
/// `readiness.status.sidecar.istio.io/{initialDelaySeconds,periodSeconds,failureThreshold,
/// applicationPorts}`: the proxy's readiness probe.
pub const ANNOTATION_READINESS_PREFIX: &str = "readiness.status.sidecar.istio.io/";
/// Istio's pod annotations that shape the injected containers (`webhook/README.md` says which
/// weft honours and which it answers with a warning).
pub const ANNOTATION_INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
pub const ANNOTATION_PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
pub const ANNOTATION_NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
pub const ANNOTATION_USER_VOLUME: &str = "sidecar.istio.io/userVolume";
pub const ANNOTATION_USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
/// Istio's annotation selecting the injection template: `gateway` makes the webhook fill the
/// `istio-proxy` container (image `auto`) as a gateway instead of adding a sidecar.
pub const ANNOTATION_INJECT_TEMPLATES: &str = "inject.istio.io/templates";
/// On an injected pod: what weft did instead of what one of its annotations asked (JSON array
/// of the admission warnings), kept where `kubectl describe pod` shows it, since the warnings
/// of a pod a controller creates reach only that controller.
pub const ANNOTATION_WARNINGS: &str = "weft.dev/warnings";
pub const ANNOTATION_PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
pub const ANNOTATION_PROMETHEUS_PORT: &str = "prometheus.io/port";
pub const ANNOTATION_PROMETHEUS_PATH: &str = "prometheus.io/path";
/// On a MeshConfig whose left-out fields were copied at creation: the revision they came from.
pub const ANNOTATION_DEFAULTED_FROM: &str = "weft.dev/defaulted-from";
/// Next to it: the copied fields, comma-separated dotted paths under `spec`.
pub const ANNOTATION_DEFAULTED_FIELDS: &str = "weft.dev/defaulted-fields";

/// Field manager of every write weft makes (server-side apply and patches): one name, so
/// ownership of fields is the same whichever part of weft wrote them.
pub const FIELD_MANAGER: &str = "weft";

/// The tag that serves `istio-injection=enabled`, `sidecar.istio.io/inject=true` and
/// `openservicemesh.io/monitored-by=<mesh>`.
pub const DEFAULT_TAG: &str = "default";

/// SPIFFE identity of a workload: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

// === Injection details shared by the webhook and the proxy (appended by the injector) ===

/// Program the injected containers run; the proxy image has it on its PATH. The webhook sets
/// it as the container `command` so one image can carry both `weft` and `weft-proxy`.
pub const PROXY_COMMAND: &str = "weft-proxy";
/// `weft-proxy init ...`: install the iptables capture rules, then exit.
pub const PROXY_SUBCOMMAND_INIT: &str = "init";
/// `weft-proxy run`: the sidecar proxy itself.
pub const PROXY_SUBCOMMAND_RUN: &str = "run";
/// Gateway mode: the same proxy as a Deployment's only container (ingress or egress gateway),
/// with no capture; it listens on the ports its Gateways' servers name (docs/gateway.md).
pub const PROXY_SUBCOMMAND_GATEWAY: &str = "gateway";
/// The Role (and RoleBinding to the operator's ServiceAccount) in a gateway's namespace that
/// lets the operator read that namespace's TLS Secrets (gateway `credentialName`s): the
/// operator has no cluster-wide Secret grant.
pub const GATEWAY_SECRETS_ROLE: &str = "weft-gateway-secrets";
/// The container a gateway pod (`inject.istio.io/templates: gateway`) carries for the webhook
/// to fill as its proxy: Istio's name, with the image `auto` (`GATEWAY_IMAGE_AUTO`).
pub const CONTAINER_GATEWAY_PROXY: &str = "istio-proxy";
pub const GATEWAY_IMAGE_AUTO: &str = "auto";
/// The injection template that makes a pod a gateway (value of `ANNOTATION_INJECT_TEMPLATES`).
pub const TEMPLATE_GATEWAY: &str = "gateway";
/// Flags of `weft-proxy init`, written as `--flag=value`. Each appears only when it has a
/// value, except that `--include-inbound-ports=` (empty) means "capture no inbound port", as
/// Istio's annotation does; without the flag every inbound port is captured (`*`).
pub const INIT_FLAG_INCLUDE_INBOUND_PORTS: &str = "--include-inbound-ports";
/// Comma-separated ports; the proxy's own ports are always excluded by `init` itself.
pub const INIT_FLAG_EXCLUDE_INBOUND_PORTS: &str = "--exclude-inbound-ports";
pub const INIT_FLAG_EXCLUDE_OUTBOUND_PORTS: &str = "--exclude-outbound-ports";
/// Comma-separated CIDRs.
pub const INIT_FLAG_EXCLUDE_OUTBOUND_IP_RANGES: &str = "--exclude-outbound-ip-ranges";
/// Comma-separated CIDRs (IPv4 and IPv6) whose outbound traffic alone is captured; `*` (the
/// default, flag absent) captures every destination, empty none.
pub const INIT_FLAG_INCLUDE_OUTBOUND_IP_RANGES: &str = "--include-outbound-ip-ranges";
/// Comma-separated ports captured outbound whatever the destination's range.
pub const INIT_FLAG_INCLUDE_OUTBOUND_PORTS: &str = "--include-outbound-ports";
/// Comma-separated interface names whose traffic is never captured, either way.
pub const INIT_FLAG_EXCLUDE_INTERFACES: &str = "--exclude-interfaces";
/// Comma-separated interface names (a VM inside the pod) whose incoming traffic is outbound.
pub const INIT_FLAG_KUBEVIRT_INTERFACES: &str = "--kubevirt-interfaces";
/// No value: capture the app's DNS (UDP/TCP 53 to the pod's resolv.conf nameservers) to
/// `PORT_DNS`. Written when the pod opts in (ProxyConfig `proxyMetadata.ISTIO_META_DNS_CAPTURE`).
pub const INIT_FLAG_CAPTURE_DNS: &str = "--capture-dns";
/// Istio's proxy metadata key (in `proxy.istio.io/config` `proxyMetadata`) that turns DNS
/// capture on for a pod.
pub const PROXY_METADATA_DNS_CAPTURE: &str = "ISTIO_META_DNS_CAPTURE";
/// `weft-proxy run`: the port of the stats and app-health listener (`PORT_STATS` by default).
pub const ENV_STATUS_PORT: &str = "WEFT_STATUS_PORT";

/// Whether `name` can be an interface name in `--exclude-interfaces`/`--kubevirt-interfaces`:
/// 1-15 bytes (IFNAMSIZ - 1), a letter or digit first (a leading `-` would read as an iptables
/// option), then letters, digits, `.`, `_` or `-`, and an optional trailing `+` (iptables'
/// prefix match). Stricter than Linux, which takes almost any byte: these names are written
/// into iptables rules. The injector refuses what `init` would.
pub fn is_interface_name(name: &str) -> bool {
    let stem = name.strip_suffix('+').unwrap_or(name);
    name.len() <= 15
        && stem
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Last path segment of `/app-health/<container>/<kind>` and the keys of each container's
/// entry in `WEFT_APP_PROBERS`. Each entry holds the original probe's handler (`httpGet`,
/// `tcpSocket` or `grpc`, with a named port resolved to its number) and `timeoutSeconds`.
pub const APP_HEALTH_LIVEZ: &str = "livez";
pub const APP_HEALTH_READYZ: &str = "readyz";
pub const APP_HEALTH_STARTUPZ: &str = "startupz";

/// Names of the proxy's container ports (IANA service names: at most 15 characters).
pub const PORT_NAME_STATS: &str = "http-weft-prom";
pub const PORT_NAME_HEALTH: &str = "http-weft-ready";

/// The annotation `istio.io/rev` (same key as the label) carries the resolved revision.
pub const ANNOTATION_ISTIO_REV: &str = LABEL_ISTIO_REV;
/// Workload labels the canonical service name and revision are read from, in Istio's order.
pub const LABEL_APP: &str = "app";
pub const LABEL_VERSION: &str = "version";
pub const LABEL_K8S_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_K8S_VERSION: &str = "app.kubernetes.io/version";
/// Set by the ReplicaSet controller; stripped from a pod's name to find its Deployment.
pub const LABEL_POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Namespaces the injector never touches (besides the operator's own).
pub const NEVER_INJECTED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];
/// The operator's namespace unless `--namespace` says otherwise.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "weft-system";
/// The operator's ServiceAccount (config/rbac/service_account.yaml).
pub const OPERATOR_SERVICE_ACCOUNT: &str = "weft-operator";
/// Value of `openservicemesh.io/monitored-by` that enrols a namespace in weft (`--mesh-name`).
pub const DEFAULT_MESH_NAME: &str = "weft";
/// Trust domain of workload identities unless the MeshConfig names another.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

// === Inputs of `weft-proxy run` (appended by the proxy) ===

/// Directory holding the workload certificate files below (`weft-proxy run --cert-dir`).
pub const ENV_CERT_DIR: &str = "WEFT_CERT_DIR";
/// A config snapshot file (`weft-proxy run --snapshot-file`): used until the config stream
/// client lands, and by tests and benchmarks that run the proxy without an operator.
pub const ENV_SNAPSHOT_FILE: &str = "WEFT_SNAPSHOT_FILE";
/// Files in the certificate directory: the leaf first then intermediates, the PKCS#8 key;
/// the trust roots use the root ConfigMap's key name, `ROOT_CERT_KEY`.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
pub const KEY_FILE: &str = "key.pem";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_ports_are_distinct_and_include_capture_ports() {
        let mut ports = PROXY_PORTS.to_vec();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), PROXY_PORTS.len());
        assert!(PROXY_PORTS.contains(&PORT_INBOUND) && PROXY_PORTS.contains(&PORT_OUTBOUND));
    }

    #[test]
    fn spiffe_id_has_the_istio_shape() {
        assert_eq!(
            spiffe_id("cluster.local", "pets", "web"),
            "spiffe://cluster.local/ns/pets/sa/web"
        );
    }
}
