//! What the webhook knows about the world when it decides: the mesh's tags and revisions, the
//! pods each revision runs and the other injectors in the cluster (`MeshState`, refreshed by
//! watches outside this module), and the operator's own flags (`InjectorSettings`). Plain data,
//! so tests build it by hand.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

use crate::api::MeshConfigSpec;
use crate::api::meshconfig::{ImagePullPolicy, LogLevel};
use crate::contract;

/// The mesh as the injector sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshState {
    /// The value of `openservicemesh.io/monitored-by` that means weft (`--mesh-name`).
    pub mesh_name: String,
    /// RevisionTags: tag name → revision it points at (`spec.revision`).
    pub tags: BTreeMap<String, String>,
    /// MeshConfigs: revision name → spec.
    pub meshconfigs: BTreeMap<String, MeshConfigSpec>,
    /// Pod-injecting webhooks of other MutatingWebhookConfigurations (another mesh's
    /// injector, such as an Istio revision), reduced to their selectors.
    pub foreign_injectors: Vec<ForeignInjector>,
    /// Running pods per revision, from their `weft.dev/revision` label: revision →
    /// `namespace/name` of each, sorted. Only the validating webhook reads it (a revision is
    /// not deleted while pods run it), so the injector's snapshot may leave it empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub revision_pods: BTreeMap<String, Vec<String>>,
}

impl Default for MeshState {
    fn default() -> Self {
        Self {
            mesh_name: contract::DEFAULT_MESH_NAME.to_string(),
            tags: BTreeMap::new(),
            meshconfigs: BTreeMap::new(),
            foreign_injectors: Vec::new(),
            revision_pods: BTreeMap::new(),
        }
    }
}

/// One webhook of another MutatingWebhookConfiguration that mutates pods. The API server
/// calls it for a pod when both selectors match (a missing selector matches everything).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForeignInjector {
    /// `<configuration>/<webhook>`, for messages and events.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_selector: Option<LabelSelector>,
}

/// The operator's flags that shape injection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InjectorSettings {
    /// The operator's namespace: where MeshConfigs and RevisionTags live; never injected.
    pub operator_namespace: String,
    /// Proxy image for revisions whose MeshConfig names none (`--proxy-image`).
    pub proxy_image: String,
    /// Where injected proxies reach the control plane (`WEFT_DISCOVERY_ADDRESS`).
    pub discovery_address: String,
    /// The trust domain the mesh CA issues identities in (`--trust-domain`): what every
    /// MeshConfig must name when none names one yet.
    pub trust_domain: String,
}

impl Default for InjectorSettings {
    fn default() -> Self {
        Self {
            operator_namespace: contract::DEFAULT_OPERATOR_NAMESPACE.to_string(),
            proxy_image: DEFAULT_PROXY_IMAGE.to_string(),
            discovery_address: contract::DEFAULT_DISCOVERY_ADDRESS.to_string(),
            trust_domain: contract::DEFAULT_TRUST_DOMAIN.to_string(),
        }
    }
}

/// The image built from this source tree (both binaries in one image, SPEC §11).
pub const DEFAULT_PROXY_IMAGE: &str = concat!("ghcr.io/weft-mesh/weft:", env!("CARGO_PKG_VERSION"));

impl InjectorSettings {
    /// Namespaces injection never touches: the system ones and the operator's own.
    pub fn never_injects(&self, namespace: &str) -> bool {
        namespace == self.operator_namespace
            || contract::NEVER_INJECTED_NAMESPACES.contains(&namespace)
    }
}

/// A revision's settings with every default filled in: what injection writes into the pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveMeshConfig {
    pub image: String,
    pub image_pull_policy: String,
    pub resources: ResourceRequirements,
    pub log_level: String,
    pub drain_duration: String,
    pub concurrency: u32,
    pub trust_domain: String,
    /// Lifetime the proxy asks for (`certificate.workloadCertTTL`, Go duration).
    #[serde(rename = "workloadCertTTL")]
    pub workload_cert_ttl: String,
    /// Fraction of the lifetime at which the proxy renews (`certificate.renewAt`).
    pub renew_at: f64,
    pub exclude_inbound_ports: BTreeSet<u16>,
    pub exclude_outbound_ports: BTreeSet<u16>,
    #[serde(rename = "excludeOutboundIPRanges")]
    pub exclude_outbound_ip_ranges: BTreeSet<String>,
    /// `traffic.dnsCapture`: pods get `--capture-dns` unless their ProxyConfig says otherwise.
    pub dns_capture: bool,
}

// Built-in defaults, as the MeshConfig field descriptions state them.
const DEFAULT_PULL_POLICY: ImagePullPolicy = ImagePullPolicy::IfNotPresent;
const DEFAULT_LOG_LEVEL: LogLevel = LogLevel::Info;
const DEFAULT_DRAIN_DURATION: &str = "5s";
const DEFAULT_CONCURRENCY: u32 = 2;
const DEFAULT_WORKLOAD_CERT_TTL: &str = "24h";
const DEFAULT_RENEW_AT: f64 = 0.5;
const DEFAULT_CPU_REQUEST: &str = "10m";
const DEFAULT_MEMORY_REQUEST: &str = "16Mi";

impl EffectiveMeshConfig {
    /// The spec of a revision with the built-in defaults under it. (Defaults copied from the
    /// `default` tag's revision are already in the spec: the operator writes them at creation.)
    pub fn resolve(spec: &MeshConfigSpec, settings: &InjectorSettings) -> Self {
        let proxy = spec.proxy.clone().unwrap_or_default();
        let traffic = spec.traffic.clone().unwrap_or_default();
        let certificate = spec.certificate.clone().unwrap_or_default();
        Self {
            image: proxy
                .image
                .filter(|image| !image.is_empty())
                .unwrap_or_else(|| settings.proxy_image.clone()),
            image_pull_policy: pull_policy_name(
                proxy.image_pull_policy.unwrap_or(DEFAULT_PULL_POLICY),
            )
            .to_string(),
            resources: proxy.resources.unwrap_or_else(default_resources),
            log_level: log_level_name(proxy.log_level.unwrap_or(DEFAULT_LOG_LEVEL)).to_string(),
            drain_duration: proxy
                .drain_duration
                .unwrap_or_else(|| DEFAULT_DRAIN_DURATION.to_string()),
            concurrency: proxy.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            trust_domain: certificate
                .trust_domain
                .unwrap_or_else(|| contract::DEFAULT_TRUST_DOMAIN.to_string()),
            workload_cert_ttl: certificate
                .workload_cert_ttl
                .unwrap_or_else(|| DEFAULT_WORKLOAD_CERT_TTL.to_string()),
            renew_at: certificate.renew_at.unwrap_or(DEFAULT_RENEW_AT),
            exclude_inbound_ports: traffic
                .exclude_inbound_ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.0)
                .collect(),
            exclude_outbound_ports: traffic
                .exclude_outbound_ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.0)
                .collect(),
            exclude_outbound_ip_ranges: traffic
                .exclude_outbound_ip_ranges
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.0)
                .collect(),
            dns_capture: traffic.dns_capture.unwrap_or(false),
        }
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(DEFAULT_CPU_REQUEST.to_string())),
            (
                "memory".to_string(),
                Quantity(DEFAULT_MEMORY_REQUEST.to_string()),
            ),
        ])),
        ..Default::default()
    }
}

fn pull_policy_name(policy: ImagePullPolicy) -> &'static str {
    match policy {
        ImagePullPolicy::Always => "Always",
        ImagePullPolicy::IfNotPresent => "IfNotPresent",
        ImagePullPolicy::Never => "Never",
    }
}

fn log_level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::meshconfig::{Port, ProxySettings, TrafficSettings};

    #[test]
    fn empty_spec_gets_the_documented_defaults() {
        let settings = InjectorSettings::default();
        let effective = EffectiveMeshConfig::resolve(&MeshConfigSpec::default(), &settings);
        assert_eq!(effective.image, settings.proxy_image);
        assert_eq!(effective.image_pull_policy, "IfNotPresent");
        assert_eq!(effective.log_level, "info");
        assert_eq!(effective.drain_duration, "5s");
        assert_eq!(effective.concurrency, 2);
        assert_eq!(effective.trust_domain, "cluster.local");
        let requests = effective.resources.requests.unwrap_or_default();
        assert_eq!(requests["cpu"].0, "10m");
        assert_eq!(requests["memory"].0, "16Mi");
        assert!(effective.resources.limits.is_none());
    }

    #[test]
    fn spec_values_win_over_defaults() {
        let spec = MeshConfigSpec {
            proxy: Some(ProxySettings {
                image: Some("example.com/weft:canary".into()),
                log_level: Some(LogLevel::Debug),
                concurrency: Some(0),
                ..Default::default()
            }),
            traffic: Some(TrafficSettings {
                exclude_inbound_ports: Some(vec![Port(9090), Port(8081), Port(9090)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let effective = EffectiveMeshConfig::resolve(&spec, &InjectorSettings::default());
        assert_eq!(effective.image, "example.com/weft:canary");
        assert_eq!(effective.log_level, "debug");
        assert_eq!(effective.concurrency, 0);
        assert_eq!(
            effective
                .exclude_inbound_ports
                .into_iter()
                .collect::<Vec<_>>(),
            [8081, 9090]
        );
    }

    #[test]
    fn operator_and_system_namespaces_are_never_injected() {
        let settings = InjectorSettings::default();
        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "local-path-storage",
            "weft-system",
        ] {
            assert!(settings.never_injects(ns), "{ns}");
        }
        assert!(!settings.never_injects("pets"));
    }
}
