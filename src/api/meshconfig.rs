//! `MeshConfig`: one data-plane revision (its name is the revision), SPEC §3.
//!
//! Every spec field is optional on purpose: a MeshConfig created without a field gets it from
//! the revision the `default` tag points at (the operator's mutating webhook writes it into the
//! spec, so it is visible), and only then from the built-in default that the field's
//! description names. That is why the schema carries no structural `default:` — the API server
//! would apply it before the webhook could tell "left out" from "asked for".

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::GO_DURATION_PATTERN;

/// A data-plane revision of the weft mesh: the proxy image and settings, the mTLS mode and
/// certificate policy that pods injected by this revision use. Its name is the revision name
/// that `istio.io/rev` labels and RevisionTags refer to.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "mesh.weft.dev",
    version = "v1alpha1",
    kind = "MeshConfig",
    plural = "meshconfigs",
    singular = "meshconfig",
    shortname = "wmc",
    namespaced,
    status = "MeshConfigStatus",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.proxy.image"}"#,
    printcolumn = r#"{"name":"mTLS","type":"string","jsonPath":".spec.mtls.mode"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Injected","type":"integer","jsonPath":".status.injectedPods"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// The sidecar proxy injected into pods of this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySettings>,
    /// Mutual TLS between the proxies of this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSettings>,
    /// Traffic capture and egress policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSettings>,
    /// Workload certificates issued by the mesh CA to proxies of this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateSettings>,
    /// Access logs written by the proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSettings>,
}

/// The sidecar proxy container added by injection (always a native sidecar: Kubernetes >= 1.29).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySettings {
    /// Image of the proxy and its init container. Default: the image the operator was built with
    /// (its `--proxy-image` flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Pull policy of the proxy image. Default: IfNotPresent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// CPU and memory requests and limits of the proxy container. Default: requests of 10m CPU
    /// and 16Mi memory, no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Log level of the proxy. Default: info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    /// How long the proxy keeps serving open connections after SIGTERM, as a Go duration.
    /// Default: 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GO_DURATION_PATTERN))]
    pub drain_duration: Option<String>,
    /// Worker threads of the proxy; 0 means one per CPU the pod may use. Default: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 64))]
    pub concurrency: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Mutual TLS between the proxies of this revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsSettings {
    /// What a proxy of this revision accepts inbound when no PeerAuthentication applies:
    /// PERMISSIVE (plaintext and mTLS), STRICT (mTLS only) or DISABLE (plaintext only, and its
    /// proxies make no TLS handshakes between each other). Default: PERMISSIVE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Permissive,
    Strict,
    Disable,
}

/// Traffic capture and egress policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSettings {
    /// ALLOW_ANY lets pods reach destinations the mesh does not know; REGISTRY_ONLY refuses
    /// them (HTTP 502, other connections closed, as BlackHoleCluster) unless an Istio
    /// ServiceEntry declares them (Istio's outboundTrafficPolicy). Default: ALLOW_ANY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// With true, traffic between meshed pods is allowed when no authorization policy
    /// selects the destination (OSM's permissive traffic policy mode). Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_permissive_traffic_policy_mode: Option<bool>,
    /// CIDRs whose outbound traffic bypasses the proxy, such as "198.18.0.0/16". Default: none.
    #[serde(
        default,
        rename = "excludeOutboundIPRanges",
        skip_serializing_if = "Option::is_none"
    )]
    pub exclude_outbound_ip_ranges: Option<Vec<Cidr>>,
    /// Inbound ports that bypass the proxy. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_inbound_ports: Option<Vec<Port>>,
    /// Outbound ports that bypass the proxy. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_outbound_ports: Option<Vec<Port>>,
    /// With true, every pod of this revision has its DNS queries to its nameservers (UDP and
    /// TCP port 53) captured by its proxy, which answers ServiceEntry hosts and forwards the
    /// rest to them (Istio's mesh-wide `defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE`).
    /// A pod's `proxy.istio.io/config` `proxyMetadata.ISTIO_META_DNS_CAPTURE` overrides it
    /// either way. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_capture: Option<bool>,
}

/// An IPv4 or IPv6 CIDR, such as 198.18.0.0/16.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Cidr(
    #[schemars(regex(
        pattern = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9a-fA-F:]+/[0-9]{1,3})$"
    ))]
    pub String,
);

/// A TCP port number.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Port(#[schemars(range(min = 1, max = 65535))] pub u16);

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    AllowAny,
    RegistryOnly,
}

/// Workload certificates issued by the mesh CA to proxies of this revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.workloadCertTTL) || (duration(self.workloadCertTTL) >= duration('1h') && duration(self.workloadCertTTL) <= duration('2160h'))",
        "message": "workloadCertTTL must be between 1h and 2160h (90 days), such as \"24h\"",
        "fieldPath": ".workloadCertTTL",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct CertificateSettings {
    /// SPIFFE trust domain of workload identities (spiffe://<trustDomain>/ns/<ns>/sa/<sa>); must
    /// be the same in every MeshConfig. Default: cluster.local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub trust_domain: Option<String>,
    /// Lifetime of workload certificates, as a Go duration from 1h to 2160h. Default: 24h.
    #[serde(
        default,
        rename = "workloadCertTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = GO_DURATION_PATTERN))]
    pub workload_cert_ttl: Option<String>,
    /// Fraction of a certificate's lifetime after which the proxy renews it (with +-10%
    /// jitter), from 0.1 to 0.9. Default: 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1, max = 0.9))]
    pub renew_at: Option<f64>,
}

/// Access logs written by the proxies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessLogSettings {
    /// Write one log line per connection or HTTP request. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Format of access log lines: json or text. Default: json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AccessLogFormat>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    Json,
    Text,
}

/// Observed state of a revision, written by the mesh-config controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfigStatus {
    /// Ready: the revision can inject and its proxies can get certificates. Reconciled: the
    /// controller processed the latest generation. Unsupported: fields this version accepts but
    /// does not implement yet.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods running a proxy of this revision.
    #[serde(default)]
    pub injected_pods: i32,
    /// Namespaces whose labels resolve to this revision.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Pods of this revision whose proxy is ready: it holds a certificate and the config
    /// server's first snapshot.
    #[serde(default)]
    pub proxies: i32,
    /// RevisionTags pointing at this revision.
    #[serde(default)]
    pub tags: Vec<String>,
}
