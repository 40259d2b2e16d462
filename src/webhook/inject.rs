//! What injection adds to a pod (SPEC §5), as an RFC 6902 JSON Patch built from typed
//! `PatchOperation`s. Pure: the pod and the decision in, the patch out. Every map or array the
//! patch writes into is created when the pod lacks it, and keys are escaped by `jsonptr`
//! (`/` → `~1`, `~` → `~0`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::annotations;
use super::decision::Injection;
use super::probes::rewrite_app_probes;
use super::state::InjectorSettings;
use crate::contract;

/// A pod weft cannot inject as asked. Every variant says what to change.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error(
        "annotation {key}={value:?} is not valid: {problem}. Write {expected}, or remove the annotation"
    )]
    InvalidAnnotation {
        key: &'static str,
        value: String,
        problem: String,
        expected: &'static str,
    },
    #[error(
        "the pod already has a {kind} named {name:?}, a name weft's injection adds; rename it, \
         or opt the pod out with the label {optout}=false",
        optout = contract::LABEL_SIDECAR_INJECT
    )]
    NameTaken { kind: &'static str, name: String },
    #[error(
        "annotation {key}={template} fills the pod's container {container:?} (image {auto:?}) as \
         its gateway proxy, and the pod has no container of that name; add one (`weft gateway \
         install` writes such a Deployment), or remove the annotation",
        key = contract::ANNOTATION_INJECT_TEMPLATES,
        template = contract::TEMPLATE_GATEWAY,
        container = contract::CONTAINER_GATEWAY_PROXY,
        auto = contract::GATEWAY_IMAGE_AUTO
    )]
    NoGatewayContainer,
    #[error("the pod has no spec; a pod needs spec.containers")]
    NoSpec,
    #[error("cannot encode the injected {what} as JSON (a weft bug; please report it): {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl InjectError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            InjectError::InvalidAnnotation { .. } => "invalid_annotation",
            InjectError::NameTaken { .. } => "name_taken",
            InjectError::NoGatewayContainer => "no_gateway_container",
            InjectError::NoSpec => "no_spec",
            InjectError::Encode { .. } => "encode",
        }
    }
}

/// The `weft.dev/status` annotation: how the pod was injected and what was added. Its presence
/// makes re-admission a no-op; controllers read it to count pods per revision and tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectionStatus {
    pub revision: String,
    pub via: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub init_containers: Vec<String>,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
}

/// What injection answers: the patch, and what weft did instead of what the pod's annotations
/// asked (the AdmissionReview's `warnings`; also kept on the pod as `weft.dev/warnings`).
#[derive(Debug)]
pub struct Injected {
    pub patch: Patch,
    pub warnings: Vec<String>,
}

/// The JSON Patch that adds the proxy of `injection.revision` to `pod`.
pub fn inject(
    pod: &Pod,
    injection: &Injection,
    settings: &InjectorSettings,
) -> Result<Injected, InjectError> {
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    check_names_are_free(pod)?;
    let requests = annotations::read(pod)?;
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mesh = &injection.meshconfig;

    // A gateway's containers are not behind a capturing proxy: the kubelet reaches their probes
    // directly, so nothing is rewritten.
    let rewrite_probes = !requests.gateway
        && annotations
            .get(contract::ANNOTATION_REWRITE_PROBES)
            .is_none_or(|v| !v.eq_ignore_ascii_case("false"));
    let mut probes = if rewrite_probes {
        rewrite_app_probes(&spec.containers)
    } else {
        Default::default()
    };
    // The rewritten probes go to the status port, wherever the pod moved it.
    if let Some(port) = requests.status_port {
        for replacement in &mut probes.replacements {
            if let Some(get) = replacement.probe.http_get.as_mut() {
                get.port = IntOrString::Int(i32::from(port));
            }
        }
    }
    let probers = serde_json::to_string(&probes.probers).map_err(|source| InjectError::Encode {
        what: "app probers",
        source,
    })?;
    let prometheus = prometheus_merge(&annotations)?;

    let mut env = vec![
        field_env(contract::ENV_POD_NAME, "metadata.name"),
        field_env(contract::ENV_POD_NAMESPACE, "metadata.namespace"),
        field_env(contract::ENV_POD_IP, "status.podIP"),
        field_env(contract::ENV_SERVICE_ACCOUNT, "spec.serviceAccountName"),
        field_env(contract::ENV_NODE_NAME, "spec.nodeName"),
        env_var(contract::ENV_REVISION, &injection.revision),
        env_var(contract::ENV_DISCOVERY_ADDRESS, &settings.discovery_address),
        env_var(contract::ENV_TRUST_DOMAIN, &mesh.trust_domain),
        env_var(contract::ENV_APP_PROBERS, &probers),
    ];
    if let Some(PrometheusMerge {
        app_annotations: Some(app),
    }) = &prometheus
    {
        env.push(env_var(contract::ENV_PROMETHEUS_ANNOTATIONS, app));
    }
    env.extend([
        env_var(
            contract::ENV_CERT_VALIDITY,
            &cert_validity(&annotations, &mesh.workload_cert_ttl)?,
        ),
        env_var(contract::ENV_RENEW_AT, &mesh.renew_at.to_string()),
        env_var(contract::ENV_LOG_LEVEL, &mesh.log_level),
        env_var(
            contract::ENV_DRAIN_DURATION,
            requests
                .drain_duration
                .as_deref()
                .unwrap_or(&mesh.drain_duration),
        ),
        env_var(
            contract::ENV_CONCURRENCY,
            &requests.concurrency.unwrap_or(mesh.concurrency).to_string(),
        ),
    ]);
    if let Some(port) = requests.status_port {
        env.push(env_var(contract::ENV_STATUS_PORT, &port.to_string()));
    }
    let status_port = requests.status_port.unwrap_or(contract::PORT_STATS);

    // Checked even when nothing is captured, so a bad value is refused either way.
    let mut args = init_args(&annotations, injection, requests.status_port)?;
    // The pod's ProxyConfig wins over the revision's traffic.dnsCapture, either way.
    if requests.dns_capture.unwrap_or(mesh.dns_capture) {
        args.push(contract::INIT_FLAG_CAPTURE_DNS.to_string());
    }
    let image = requests.proxy_image.as_deref().unwrap_or(&mesh.image);
    let resources = resources(&mesh.resources, &requests.resources)?;
    // interceptionMode NONE: no weft-init. The proxy needs nothing else: its capture
    // listeners refuse connections that were not redirected, and probes, metrics and its
    // certificate work over the pod's own address.
    let init = (!requests.no_capture && !requests.gateway)
        .then(|| init_container(injection, image, args, resources.clone()));
    let mut proxy = proxy_container(injection, image, env, resources, status_port);
    if let Some(probe) = proxy.readiness_probe.as_mut() {
        for (field, value) in &requests.readiness {
            match *field {
                "initialDelaySeconds" => probe.initial_delay_seconds = Some(*value),
                "periodSeconds" => probe.period_seconds = Some(*value),
                "failureThreshold" => probe.failure_threshold = Some(*value),
                _ => {}
            }
        }
    }
    if let Some(mounts) = proxy.volume_mounts.as_mut() {
        mounts.extend(requests.user_mounts.iter().cloned());
    }
    let mut volumes = proxy_volumes();
    volumes.extend(requests.user_volumes.iter().cloned());
    // The gateway template: the pod's own istio-proxy container becomes the proxy, in place.
    let gateway = if requests.gateway {
        let index = spec
            .containers
            .iter()
            .position(|c| c.name == contract::CONTAINER_GATEWAY_PROXY)
            .ok_or(InjectError::NoGatewayContainer)?;
        let filled = gateway_container(proxy.clone(), &spec.containers[index])?;
        Some((index, filled))
    } else {
        None
    };

    let status = InjectionStatus {
        revision: injection.revision.clone(),
        via: injection.via.clone(),
        tag: injection.tag.clone(),
        init_containers: match gateway {
            Some(_) => Vec::new(),
            None => init
                .iter()
                .chain([&proxy])
                .map(|c| c.name.clone())
                .collect(),
        },
        containers: gateway.iter().map(|(_, c)| c.name.clone()).collect(),
        volumes: volumes.iter().map(|v| v.name.clone()).collect(),
    };
    let status = serde_json::to_string(&status).map_err(|source| InjectError::Encode {
        what: "status annotation",
        source,
    })?;

    let mut new_annotations = BTreeMap::from([
        (contract::ANNOTATION_STATUS.to_string(), status),
        (
            contract::ANNOTATION_ISTIO_REV.to_string(),
            injection.revision.clone(),
        ),
    ]);
    if !requests.warnings.is_empty() {
        let warnings =
            serde_json::to_string(&requests.warnings).map_err(|source| InjectError::Encode {
                what: "warnings annotation",
                source,
            })?;
        new_annotations.insert(contract::ANNOTATION_WARNINGS.to_string(), warnings);
    }
    if prometheus.is_some() {
        new_annotations.extend([
            (contract::ANNOTATION_PROMETHEUS_SCRAPE.into(), "true".into()),
            (
                contract::ANNOTATION_PROMETHEUS_PORT.into(),
                status_port.to_string(),
            ),
            (
                contract::ANNOTATION_PROMETHEUS_PATH.into(),
                contract::PATH_STATS.into(),
            ),
        ]);
    }
    let mut new_labels = BTreeMap::from([(
        contract::LABEL_REVISION.to_string(),
        injection.revision.clone(),
    )]);
    if !labels.contains_key(contract::LABEL_CANONICAL_NAME) {
        new_labels.insert(contract::LABEL_CANONICAL_NAME.into(), canonical_name(pod));
    }
    if !labels.contains_key(contract::LABEL_CANONICAL_REVISION) {
        new_labels.insert(
            contract::LABEL_CANONICAL_REVISION.into(),
            canonical_revision(&labels),
        );
    }

    let mut patch = PatchBuilder::default();
    patch.set_entries(
        "annotations",
        pod.metadata.annotations.as_ref(),
        new_annotations,
    );
    patch.set_entries("labels", pod.metadata.labels.as_ref(), new_labels);

    if let Some((index, container)) = &gateway {
        patch.replace(
            &["spec", "containers", &index.to_string()],
            encode(container, "gateway proxy container")?,
        );
        unprivileged_ports_sysctl(&mut patch, spec.security_context.as_ref());
    } else {
        // weft-init, then the proxy, then the user's init containers: the proxy is up before
        // any user code runs, and iptables is in place before the proxy starts.
        let ours = init
            .iter()
            .map(|c| encode(c, "init container"))
            .chain([encode(&proxy, "proxy container")])
            .collect::<Result<Vec<_>, _>>()?;
        match &spec.init_containers {
            None => patch.add(&["spec", "initContainers"], Value::Array(ours)),
            Some(_) => {
                for (index, container) in ours.into_iter().enumerate() {
                    patch.add(&["spec", "initContainers", &index.to_string()], container);
                }
            }
        }
    }

    for replacement in &probes.replacements {
        let index = replacement.container.to_string();
        patch.replace(
            &["spec", "containers", &index, replacement.field],
            encode(&replacement.probe, "rewritten probe")?,
        );
    }

    let volumes = volumes
        .iter()
        .map(|v| encode(v, "volume"))
        .collect::<Result<Vec<_>, _>>()?;
    match &spec.volumes {
        None => patch.add(&["spec", "volumes"], Value::Array(volumes)),
        Some(_) => {
            for volume in volumes {
                patch.add(&["spec", "volumes", "-"], volume);
            }
        }
    }
    Ok(Injected {
        patch: Patch(patch.ops),
        warnings: requests.warnings,
    })
}

/// The lifetime the proxy asks for: the pod's `proxy.weft.dev/cert-validity`, checked here so
/// a typo is refused at admission instead of leaving a proxy without a certificate; else the
/// revision's `workloadCertTTL`. The CA still caps it at its own maximum.
fn cert_validity(
    annotations: &BTreeMap<String, String>,
    revision_ttl: &str,
) -> Result<String, InjectError> {
    let Some(value) = annotations.get(contract::ANNOTATION_CERT_VALIDITY) else {
        return Ok(revision_ttl.to_string());
    };
    let invalid = |problem: String| InjectError::InvalidAnnotation {
        key: contract::ANNOTATION_CERT_VALIDITY,
        value: value.clone(),
        problem,
        expected: "a Go duration of at least 1m, such as \"90s\" or \"1h\"",
    };
    let duration = crate::duration::parse(value).map_err(|e| invalid(e.to_string()))?;
    if duration < crate::pki::MIN_WORKLOAD_VALIDITY {
        return Err(invalid("the CA issues nothing shorter than 1m".into()));
    }
    Ok(value.clone())
}

/// The injected containers' resources: the revision's, with the pod's `proxyCPU`,
/// `proxyMemory`, `proxyCPULimit` and `proxyMemoryLimit` over them (Istio sets them on both of
/// its containers too). A request above its limit is refused here, naming the annotation,
/// rather than by the API server with a message about a container.
fn resources(
    revision: &ResourceRequirements,
    overrides: &[annotations::ResourceOverride],
) -> Result<ResourceRequirements, InjectError> {
    let mut out = revision.clone();
    for o in overrides {
        let map = if o.limit {
            out.limits.get_or_insert_with(Default::default)
        } else {
            out.requests.get_or_insert_with(Default::default)
        };
        map.insert(o.resource.to_string(), Quantity(o.value.clone()));
    }
    for resource in ["cpu", "memory"] {
        let get = |m: &Option<BTreeMap<String, Quantity>>| {
            m.as_ref()
                .and_then(|m| m.get(resource))
                .map(|q| q.0.clone())
        };
        let (Some(request), Some(limit)) = (get(&out.requests), get(&out.limits)) else {
            continue;
        };
        let (Some(r), Some(l)) = (
            annotations::quantity_value(&request),
            annotations::quantity_value(&limit),
        ) else {
            continue;
        };
        if r > l {
            // Name the annotation the pod gave; the revision's own values are consistent.
            let Some(given) = overrides.iter().rev().find(|o| o.resource == resource) else {
                continue;
            };
            return Err(InjectError::InvalidAnnotation {
                key: given.key,
                value: given.value.clone(),
                problem: format!(
                    "the proxy's {resource} request {request} would exceed its limit {limit} \
                     (the request or limit the annotation does not set is the revision's)"
                ),
                expected: "a request no larger than the limit: set both the request and \
                           the ...Limit annotation",
            });
        }
    }
    Ok(out)
}

// === Patch building ===

#[derive(Default)]
struct PatchBuilder {
    ops: Vec<PatchOperation>,
}

impl PatchBuilder {
    fn add(&mut self, path: &[&str], value: Value) {
        self.ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(path.iter().copied()),
            value,
        }));
    }

    fn replace(&mut self, path: &[&str], value: Value) {
        self.ops.push(PatchOperation::Replace(ReplaceOperation {
            path: PointerBuf::from_tokens(path.iter().copied()),
            value,
        }));
    }

    /// Writes `entries` into `metadata.<field>`: the whole map when the pod has none, else one
    /// `add` per changed key (`add` on an existing member replaces it, RFC 6902 §4.1).
    fn set_entries(
        &mut self,
        field: &str,
        existing: Option<&BTreeMap<String, String>>,
        entries: BTreeMap<String, String>,
    ) {
        match existing {
            None => {
                let map = entries.into_iter().map(|(k, v)| (k, Value::String(v)));
                self.add(&["metadata", field], Value::Object(map.collect()));
            }
            Some(existing) => {
                for (key, value) in entries {
                    if existing.get(&key) != Some(&value) {
                        self.add(&["metadata", field, &key], Value::String(value));
                    }
                }
            }
        }
    }
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Value, InjectError> {
    serde_json::to_value(value).map_err(|source| InjectError::Encode { what, source })
}

/// A pod that already uses one of our names would end up with duplicates, which the API
/// server rejects with a message about the patch rather than about the pod.
fn check_names_are_free(pod: &Pod) -> Result<(), InjectError> {
    let Some(spec) = &pod.spec else {
        return Ok(());
    };
    let ours = [contract::CONTAINER_INIT, contract::CONTAINER_PROXY];
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| c.name.as_str());
    for name in containers {
        if ours.contains(&name) {
            return Err(InjectError::NameTaken {
                kind: "container",
                name: name.into(),
            });
        }
    }
    let our_volumes = [
        contract::VOLUME_TOKEN,
        contract::VOLUME_ROOT_CERT,
        contract::VOLUME_WORK,
    ];
    for volume in spec.volumes.iter().flatten() {
        if our_volumes.contains(&volume.name.as_str()) {
            return Err(InjectError::NameTaken {
                kind: "volume",
                name: volume.name.clone(),
            });
        }
    }
    Ok(())
}

// === The containers ===

/// `image` is the revision's, or the pod's `sidecar.istio.io/proxyImage` (Istio sets that on
/// both of its containers too).
fn init_container(
    injection: &Injection,
    image: &str,
    args: Vec<String>,
    resources: ResourceRequirements,
) -> Container {
    let mesh = &injection.meshconfig;
    Container {
        name: contract::CONTAINER_INIT.into(),
        image: Some(image.into()),
        image_pull_policy: Some(mesh.image_pull_policy.clone()),
        command: Some(vec![contract::PROXY_COMMAND.into()]),
        args: Some(args),
        resources: Some(resources),
        // Root with NET_ADMIN and NET_RAW only: enough for iptables, nothing else.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn proxy_container(
    injection: &Injection,
    image: &str,
    env: Vec<EnvVar>,
    resources: ResourceRequirements,
    status_port: u16,
) -> Container {
    let mesh = &injection.meshconfig;
    let ready = |period, failures| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(contract::PATH_READY.into()),
            port: IntOrString::Int(i32::from(contract::PORT_HEALTH)),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Default::default()
    };
    let port = |number: u16, name: &str| ContainerPort {
        container_port: i32::from(number),
        name: Some(name.into()),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    Container {
        name: contract::CONTAINER_PROXY.into(),
        image: Some(image.into()),
        image_pull_policy: Some(mesh.image_pull_policy.clone()),
        command: Some(vec![contract::PROXY_COMMAND.into()]),
        args: Some(vec![contract::PROXY_SUBCOMMAND_RUN.into()]),
        // A native sidecar: runs for the pod's lifetime, and the kubelet starts the next init
        // container (then the app) only once its startup probe passes.
        restart_policy: Some("Always".into()),
        ports: Some(vec![
            port(status_port, contract::PORT_NAME_STATS),
            port(contract::PORT_HEALTH, contract::PORT_NAME_HEALTH),
        ]),
        env: Some(env),
        resources: Some(resources),
        // Polled every second for up to 10 minutes: app start waits on this, so be quick to
        // notice readiness and patient with a slow certificate.
        startup_probe: Some(ready(1, 600)),
        readiness_probe: Some(ready(15, 4)),
        security_context: Some(SecurityContext {
            run_as_user: Some(i64::from(contract::PROXY_UID)),
            run_as_group: Some(i64::from(contract::PROXY_GID)),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount(contract::VOLUME_TOKEN, contract::TOKEN_DIR, true),
            mount(contract::VOLUME_ROOT_CERT, contract::ROOT_CERT_DIR, true),
            mount(contract::VOLUME_WORK, contract::WORK_DIR, false),
        ]),
        ..Default::default()
    }
}

// === The gateway template ===

/// The sysctl Istio's gateway template sets so a non-root proxy may bind ports below 1024:
/// container runtimes do not give a non-root process the capabilities its container adds (no
/// ambient capabilities), so `NET_BIND_SERVICE` alone works only where the runtime grants
/// them (the local cluster's node agent does).
const SYSCTL_UNPRIVILEGED_PORT_START: &str = "net.ipv4.ip_unprivileged_port_start";

/// The sidecar proxy turned into a gateway's only proxy: `weft-proxy gateway`, an ordinary
/// container (no restartPolicy), allowed to bind 80 and 443, then the pod's own `istio-proxy`
/// fields laid over it as Istio does (webhook/README.md, "The gateway template").
fn gateway_container(sidecar: Container, declared: &Container) -> Result<Container, InjectError> {
    let mut ours = sidecar;
    ours.name = contract::CONTAINER_GATEWAY_PROXY.into();
    ours.args = Some(vec![contract::PROXY_SUBCOMMAND_GATEWAY.into()]);
    ours.restart_policy = None;
    if let Some(capabilities) = ours
        .security_context
        .as_mut()
        .and_then(|sc| sc.capabilities.as_mut())
    {
        capabilities.add = Some(vec!["NET_BIND_SERVICE".into()]);
    }
    overlay_declared_container(&ours, declared)
}

/// Istio's rule for the container a pod declares under the proxy's name: the template is the
/// base and every field the pod sets wins, maps merged key by key and `env`, `ports` and
/// `volumeMounts` merged by their keys (a strategic merge); but `image: auto` means "the
/// injector's image", and the pull policy the API server defaulted for `auto` goes with it.
fn overlay_declared_container(
    ours: &Container,
    declared: &Container,
) -> Result<Container, InjectError> {
    let mut base = encode(ours, "gateway proxy container")?;
    let mut over = encode(declared, "declared istio-proxy container")?;
    if let Value::Object(over) = &mut over
        && declared
            .image
            .as_deref()
            .is_none_or(|i| i.is_empty() || i == contract::GATEWAY_IMAGE_AUTO)
    {
        over.remove("image");
        over.remove("imagePullPolicy");
    }
    merge_values(&mut base, over, "");
    serde_json::from_value(base).map_err(|source| InjectError::Encode {
        what: "merged istio-proxy container",
        source,
    })
}

/// Lists merged by a key field (a strategic merge patch's `patchMergeKey`), by the path of
/// the list inside the container.
const MERGE_KEYS: [(&str, &str); 3] = [
    ("env", "name"),
    ("ports", "containerPort"),
    ("volumeMounts", "mountPath"),
];

fn merge_values(base: &mut Value, over: Value, path: &str) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match base.get_mut(&key) {
                    Some(existing) if !value.is_null() => merge_values(existing, value, &child),
                    Some(_) => {}
                    None if value.is_null() => {}
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(over)) => {
            match MERGE_KEYS.iter().find(|(list, _)| *list == path) {
                Some((_, merge_key)) => {
                    for item in over {
                        let slot = item
                            .get(*merge_key)
                            .and_then(|k| base.iter_mut().find(|b| b.get(*merge_key) == Some(k)));
                        match slot {
                            Some(slot) => *slot = item,
                            None => base.push(item),
                        }
                    }
                }
                None => *base = over,
            }
        }
        (base, over) => *base = over,
    }
}

/// `net.ipv4.ip_unprivileged_port_start=0` on the pod, unless the pod sets it itself.
fn unprivileged_ports_sysctl(
    patch: &mut PatchBuilder,
    security_context: Option<&k8s_openapi::api::core::v1::PodSecurityContext>,
) {
    let sysctl = serde_json::json!({"name": SYSCTL_UNPRIVILEGED_PORT_START, "value": "0"});
    match security_context {
        None => patch.add(
            &["spec", "securityContext"],
            serde_json::json!({"sysctls": [sysctl]}),
        ),
        Some(sc) => match &sc.sysctls {
            None => patch.add(
                &["spec", "securityContext", "sysctls"],
                Value::Array(vec![sysctl]),
            ),
            Some(sysctls)
                if sysctls
                    .iter()
                    .any(|s| s.name == SYSCTL_UNPRIVILEGED_PORT_START) => {}
            Some(_) => patch.add(&["spec", "securityContext", "sysctls", "-"], sysctl),
        },
    }
}

fn proxy_volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: contract::VOLUME_TOKEN.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(contract::TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(contract::TOKEN_EXPIRATION_SECONDS),
                        path: contract::TOKEN_FILE.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: contract::VOLUME_ROOT_CERT.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: contract::ROOT_CERT_CONFIGMAP.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: contract::VOLUME_WORK.into(),
            // Memory-backed: the workload key never touches a disk.
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// === Traffic capture flags ===

/// `weft-proxy init` arguments from the `traffic.sidecar.istio.io/*` annotations and the
/// revision's `traffic` excludes. Excludes are the union of both (a pod can exclude more than
/// the mesh, never less); the includes and interfaces are the pod's alone, as in Istio. A
/// status port moved off 15020 is excluded from inbound capture, as `init` excludes 15020.
fn init_args(
    annotations: &BTreeMap<String, String>,
    injection: &Injection,
    status_port: Option<u16>,
) -> Result<Vec<String>, InjectError> {
    let mesh = &injection.meshconfig;
    let mut args = vec![contract::PROXY_SUBCOMMAND_INIT.to_string()];
    let flag = |name: &str, value: String| format!("{name}={value}");

    if let Some(value) = annotations.get(contract::ANNOTATION_INCLUDE_INBOUND_PORTS) {
        let value = if value.trim() == "*" {
            "*".to_string()
        } else {
            join(&parse_ports(
                contract::ANNOTATION_INCLUDE_INBOUND_PORTS,
                value,
                true,
            )?)
        };
        args.push(flag(contract::INIT_FLAG_INCLUDE_INBOUND_PORTS, value));
    }

    let mut inbound = mesh.exclude_inbound_ports.clone();
    inbound.extend(status_port);
    if let Some(value) = annotations.get(contract::ANNOTATION_EXCLUDE_INBOUND_PORTS) {
        inbound.extend(parse_ports(
            contract::ANNOTATION_EXCLUDE_INBOUND_PORTS,
            value,
            false,
        )?);
    }
    if !inbound.is_empty() {
        args.push(flag(
            contract::INIT_FLAG_EXCLUDE_INBOUND_PORTS,
            join(&inbound),
        ));
    }

    let mut outbound = mesh.exclude_outbound_ports.clone();
    if let Some(value) = annotations.get(contract::ANNOTATION_EXCLUDE_OUTBOUND_PORTS) {
        outbound.extend(parse_ports(
            contract::ANNOTATION_EXCLUDE_OUTBOUND_PORTS,
            value,
            false,
        )?);
    }
    if !outbound.is_empty() {
        args.push(flag(
            contract::INIT_FLAG_EXCLUDE_OUTBOUND_PORTS,
            join(&outbound),
        ));
    }

    let mut ranges = mesh.exclude_outbound_ip_ranges.clone();
    if let Some(value) = annotations.get(contract::ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES) {
        ranges.extend(parse_cidrs(
            contract::ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES,
            value,
        )?);
    }
    if !ranges.is_empty() {
        let ranges: Vec<_> = ranges.into_iter().collect();
        args.push(flag(
            contract::INIT_FLAG_EXCLUDE_OUTBOUND_IP_RANGES,
            ranges.join(","),
        ));
    }

    // Present and empty means "capture no outbound range", as for includeInboundPorts.
    if let Some(value) = annotations.get(contract::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES) {
        let value = if value.trim() == "*" {
            "*".to_string()
        } else {
            let cidrs =
                parse_cidrs_or_star(contract::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, value)?;
            cidrs.into_iter().collect::<Vec<_>>().join(",")
        };
        args.push(flag(contract::INIT_FLAG_INCLUDE_OUTBOUND_IP_RANGES, value));
    }
    if let Some(value) = annotations.get(contract::ANNOTATION_INCLUDE_OUTBOUND_PORTS) {
        let ports = parse_ports(contract::ANNOTATION_INCLUDE_OUTBOUND_PORTS, value, false)?;
        if !ports.is_empty() {
            args.push(flag(
                contract::INIT_FLAG_INCLUDE_OUTBOUND_PORTS,
                join(&ports),
            ));
        }
    }
    for (key, init_flag) in [
        (
            contract::ANNOTATION_EXCLUDE_INTERFACES,
            contract::INIT_FLAG_EXCLUDE_INTERFACES,
        ),
        (
            contract::ANNOTATION_KUBEVIRT_INTERFACES,
            contract::INIT_FLAG_KUBEVIRT_INTERFACES,
        ),
    ] {
        if let Some(value) = annotations.get(key) {
            let names = parse_interfaces(key, value)?;
            if !names.is_empty() {
                args.push(flag(
                    init_flag,
                    names.into_iter().collect::<Vec<_>>().join(","),
                ));
            }
        }
    }
    Ok(args)
}

const INTERFACE_LIST: &str = "a comma-separated list of interface names such as \"eth1,net1\" \
                              (a trailing '+' matches every name with that prefix)";

fn parse_interfaces(key: &'static str, value: &str) -> Result<BTreeSet<String>, InjectError> {
    let mut names = BTreeSet::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !contract::is_interface_name(item) {
            return Err(InjectError::InvalidAnnotation {
                key,
                value: value.into(),
                problem: format!(
                    "{item:?} is not an interface name: 1-15 characters, a letter or digit \
                     first, then letters, digits, '.', '_' or '-'"
                ),
                expected: INTERFACE_LIST,
            });
        }
        names.insert(item.to_string());
    }
    Ok(names)
}

/// `includeOutboundIPRanges` is a CIDR list or `*`; a `*` among CIDRs is a mistake worth
/// refusing (Istio would read the whole value as a wildcard or fail).
fn parse_cidrs_or_star(key: &'static str, value: &str) -> Result<BTreeSet<String>, InjectError> {
    if value.split(',').any(|i| i.trim() == "*") {
        return Err(InjectError::InvalidAnnotation {
            key,
            value: value.into(),
            problem: "\"*\" stands alone: it already means every destination".into(),
            expected: CIDR_LIST_OR_STAR,
        });
    }
    parse_cidrs(key, value).map_err(|e| match e {
        InjectError::InvalidAnnotation {
            key,
            value,
            problem,
            ..
        } => InjectError::InvalidAnnotation {
            key,
            value,
            problem,
            expected: CIDR_LIST_OR_STAR,
        },
        other => other,
    })
}

fn join(ports: &BTreeSet<u16>) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

const PORT_LIST: &str = "a comma-separated list of port numbers such as \"8080,9090\"";
const PORT_LIST_OR_STAR: &str =
    "a comma-separated list of port numbers such as \"8080,9090\", or \"*\" for every port";
const CIDR_LIST: &str = "a comma-separated list of CIDRs such as \"10.0.0.0/8,169.254.169.254/32\"";
const CIDR_LIST_OR_STAR: &str = "a comma-separated list of CIDRs such as \"198.19.0.0/16,fd00::/8\" \
                                 (only these are captured), \"*\" for every destination, or \
                                 nothing for none";

fn parse_ports(
    key: &'static str,
    value: &str,
    star_allowed: bool,
) -> Result<BTreeSet<u16>, InjectError> {
    let expected = if star_allowed {
        PORT_LIST_OR_STAR
    } else {
        PORT_LIST
    };
    let invalid = |problem: String| InjectError::InvalidAnnotation {
        key,
        value: value.into(),
        problem,
        expected,
    };
    let mut ports = BTreeSet::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(port) if port > 0 => {
                ports.insert(port);
            }
            _ => {
                return Err(invalid(format!(
                    "{item:?} is not a port number from 1 to 65535"
                )));
            }
        }
    }
    Ok(ports)
}

fn parse_cidrs(key: &'static str, value: &str) -> Result<BTreeSet<String>, InjectError> {
    let mut cidrs = BTreeSet::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let valid = item.split_once('/').is_some_and(|(address, length)| {
            let max = match address.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            length.parse::<u8>().is_ok_and(|len| len <= max)
        });
        if !valid {
            return Err(InjectError::InvalidAnnotation {
                key,
                value: value.into(),
                problem: format!("{item:?} is not a CIDR (address/prefix length)"),
                expected: CIDR_LIST,
            });
        }
        cidrs.insert(item.to_string());
    }
    Ok(cidrs)
}

// === Prometheus ===

/// `Some` when the proxy takes over scraping; carries the app's own `prometheus.io/*` values
/// (JSON) when it had any, so the proxy can merge the app's metrics as Istio does.
struct PrometheusMerge {
    app_annotations: Option<String>,
}

/// An app that says `prometheus.io/scrape: "false"` asked not to be scraped; weft keeps that.
fn prometheus_merge(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<PrometheusMerge>, InjectError> {
    let keys = [
        ("scrape", contract::ANNOTATION_PROMETHEUS_SCRAPE),
        ("port", contract::ANNOTATION_PROMETHEUS_PORT),
        ("path", contract::ANNOTATION_PROMETHEUS_PATH),
    ];
    let app: BTreeMap<&str, &String> = keys
        .iter()
        .filter_map(|(short, key)| annotations.get(*key).map(|v| (*short, v)))
        .collect();
    if app
        .get("scrape")
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
    {
        return Ok(None);
    }
    let app_annotations = if app.is_empty() {
        None
    } else {
        Some(
            serde_json::to_string(&app).map_err(|source| InjectError::Encode {
                what: "prometheus annotations",
                source,
            })?,
        )
    };
    Ok(Some(PrometheusMerge { app_annotations }))
}

// === Canonical service labels ===

/// Istio's order: `app.kubernetes.io/name`, then `app`, then the workload's name.
fn canonical_name(pod: &Pod) -> String {
    let labels = pod.metadata.labels.as_ref();
    let from_label = [contract::LABEL_K8S_NAME, contract::LABEL_APP]
        .iter()
        .find_map(|key| labels.and_then(|l| l.get(*key)))
        .cloned();
    label_value(&from_label.unwrap_or_else(|| crate::kube::workload::workload_name(pod)))
}

fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    [contract::LABEL_K8S_VERSION, contract::LABEL_VERSION]
        .iter()
        .find_map(|key| labels.get(*key))
        .map(|v| label_value(v))
        .unwrap_or_else(|| "latest".into())
}

/// Fits a derived name into a label value: at most 63 characters, alphanumeric at both ends.
fn label_value(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "unknown".into()
    } else {
        trimmed.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MeshConfigSpec;
    use crate::webhook::state::EffectiveMeshConfig;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use serde_json::json;

    fn injection() -> Injection {
        Injection {
            revision: "stable".into(),
            tag: Some("default".into()),
            via: "namespace label istio-injection=enabled (tag default)".into(),
            meshconfig: EffectiveMeshConfig::resolve(
                &MeshConfigSpec::default(),
                &InjectorSettings::default(),
            ),
            conflict: None,
        }
    }

    fn bare_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                generate_name: Some("web-".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("busybox".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn patched(pod: &Pod) -> Value {
        let patch = inject(pod, &injection(), &InjectorSettings::default())
            .unwrap()
            .patch;
        let mut doc = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    #[test]
    fn bare_pod_gets_maps_and_arrays_created() {
        let doc = patched(&bare_pod());
        assert_eq!(doc["metadata"]["labels"]["weft.dev/revision"], "stable");
        assert_eq!(
            doc["metadata"]["labels"]["service.istio.io/canonical-name"],
            "web"
        );
        assert_eq!(
            doc["metadata"]["labels"]["service.istio.io/canonical-revision"],
            "latest"
        );
        assert_eq!(doc["metadata"]["annotations"]["istio.io/rev"], "stable");
        assert_eq!(
            doc["metadata"]["annotations"]["prometheus.io/port"],
            "15020"
        );
        let names: Vec<_> = doc["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, [json!("weft-init"), json!("weft-proxy")]);
        assert_eq!(doc["spec"]["volumes"].as_array().map(Vec::len), Some(3));
        let status: InjectionStatus = serde_json::from_str(
            doc["metadata"]["annotations"]["weft.dev/status"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status.revision, "stable");
        assert_eq!(status.tag.as_deref(), Some("default"));
        assert_eq!(
            status.volumes,
            ["weft-token", "weft-ca-root-cert", "weft-work"]
        );
    }

    #[test]
    fn user_init_containers_run_after_the_proxy() {
        let mut pod = bare_pod();
        if let Some(spec) = pod.spec.as_mut() {
            spec.init_containers = Some(vec![Container {
                name: "migrate".into(),
                ..Default::default()
            }]);
        }
        let doc = patched(&pod);
        let names: Vec<_> = doc["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(names, ["weft-init", "weft-proxy", "migrate"]);
    }

    #[test]
    fn keys_with_slash_and_tilde_are_escaped() {
        let mut pod = bare_pod();
        pod.metadata.annotations = Some(BTreeMap::from([("a~b/c".into(), "x".into())]));
        let patch = inject(&pod, &injection(), &InjectorSettings::default())
            .unwrap()
            .patch;
        let text = serde_json::to_string(&patch).unwrap();
        assert!(
            text.contains("/metadata/annotations/weft.dev~1status"),
            "{text}"
        );
        let doc = patched(&pod);
        assert_eq!(doc["metadata"]["annotations"]["a~b/c"], "x");
    }

    #[test]
    fn patch_paths_escape_tilde_and_slash() {
        let mut patch = PatchBuilder::default();
        let entries = BTreeMap::from([("a~b/c".to_string(), "v".to_string())]);
        patch.set_entries("annotations", Some(&BTreeMap::new()), entries);
        let text = serde_json::to_string(&Patch(patch.ops)).unwrap();
        assert!(
            text.contains(r#""/metadata/annotations/a~0b~1c""#),
            "{text}"
        );
    }

    #[test]
    fn traffic_annotations_become_init_flags_and_merge_with_the_mesh() {
        let mut injection = injection();
        injection.meshconfig.exclude_inbound_ports = BTreeSet::from([9999]);
        injection.meshconfig.exclude_outbound_ip_ranges =
            BTreeSet::from(["169.254.169.254/32".into()]);
        let annotations = BTreeMap::from([
            (
                contract::ANNOTATION_INCLUDE_INBOUND_PORTS.to_string(),
                "8080, 80".to_string(),
            ),
            (
                contract::ANNOTATION_EXCLUDE_INBOUND_PORTS.to_string(),
                "9090".to_string(),
            ),
            (
                contract::ANNOTATION_EXCLUDE_OUTBOUND_PORTS.to_string(),
                "5432,".to_string(),
            ),
            (
                contract::ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES.to_string(),
                "10.0.0.0/8,fd00::/8".to_string(),
            ),
        ]);
        assert_eq!(
            init_args(&annotations, &injection, None).unwrap(),
            [
                "init",
                "--include-inbound-ports=80,8080",
                "--exclude-inbound-ports=9090,9999",
                "--exclude-outbound-ports=5432",
                "--exclude-outbound-ip-ranges=10.0.0.0/8,169.254.169.254/32,fd00::/8",
            ]
        );
        let empty_include = BTreeMap::from([(
            contract::ANNOTATION_INCLUDE_INBOUND_PORTS.to_string(),
            String::new(),
        )]);
        assert_eq!(
            init_args(&empty_include, &injection, None).unwrap()[1],
            "--include-inbound-ports="
        );
    }

    #[test]
    fn outbound_includes_and_interfaces_become_init_flags() {
        let injection = injection();
        let annotations = BTreeMap::from([
            (
                contract::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES.to_string(),
                " 198.19.0.0/16 , fd00:7765:6674::/64".to_string(),
            ),
            (
                contract::ANNOTATION_INCLUDE_OUTBOUND_PORTS.to_string(),
                "8443,8080".to_string(),
            ),
            (
                contract::ANNOTATION_EXCLUDE_INTERFACES.to_string(),
                "net1, eth1".to_string(),
            ),
            (
                contract::ANNOTATION_KUBEVIRT_INTERFACES.to_string(),
                "k6t-eth0".to_string(),
            ),
        ]);
        assert_eq!(
            init_args(&annotations, &injection, Some(15030)).unwrap(),
            [
                "init",
                "--exclude-inbound-ports=15030",
                "--include-outbound-ip-ranges=198.19.0.0/16,fd00:7765:6674::/64",
                "--include-outbound-ports=8080,8443",
                "--exclude-interfaces=eth1,net1",
                "--kubevirt-interfaces=k6t-eth0",
            ]
        );
        for (value, flag) in [("*", "*"), ("", "")] {
            let annotations = BTreeMap::from([(
                contract::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES.to_string(),
                value.to_string(),
            )]);
            assert_eq!(
                init_args(&annotations, &injection, None).unwrap()[1],
                format!("--include-outbound-ip-ranges={flag}")
            );
        }
    }

    #[test]
    fn resource_annotations_override_the_revisions_and_a_request_over_its_limit_is_refused() {
        let revision = injection().meshconfig.resources;
        let over = |key, resource, limit, value: &str| annotations::ResourceOverride {
            key,
            resource,
            limit,
            value: value.into(),
        };
        let out = resources(
            &revision,
            &[
                over(contract::ANNOTATION_PROXY_CPU, "cpu", false, "200m"),
                over(
                    contract::ANNOTATION_PROXY_MEMORY_LIMIT,
                    "memory",
                    true,
                    "1Gi",
                ),
            ],
        )
        .unwrap();
        let requests = out.requests.unwrap();
        assert_eq!(requests["cpu"].0, "200m");
        assert_eq!(requests["memory"].0, "16Mi"); // the revision's
        assert_eq!(out.limits.unwrap()["memory"].0, "1Gi");
        let err = resources(
            &revision,
            &[over(
                contract::ANNOTATION_PROXY_MEMORY_LIMIT,
                "memory",
                true,
                "8Mi",
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(contract::ANNOTATION_PROXY_MEMORY_LIMIT)
                && err.contains("request 16Mi would exceed its limit 8Mi"),
            "{err}"
        );
    }

    #[test]
    fn bad_traffic_annotations_are_refused_with_the_fix() {
        for (key, value) in [
            (contract::ANNOTATION_EXCLUDE_INBOUND_PORTS, "http"),
            (contract::ANNOTATION_EXCLUDE_OUTBOUND_PORTS, "70000"),
            (contract::ANNOTATION_INCLUDE_INBOUND_PORTS, "0"),
            (contract::ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0"),
            (
                contract::ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES,
                "10.0.0.0/33",
            ),
            (
                contract::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES,
                "198.18.0.0/15,*",
            ),
            (
                contract::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES,
                "198.18.1.3",
            ),
            (contract::ANNOTATION_INCLUDE_OUTBOUND_PORTS, "https"),
            (contract::ANNOTATION_EXCLUDE_INTERFACES, "eth0,-j"),
            (contract::ANNOTATION_KUBEVIRT_INTERFACES, "a very long name"),
        ] {
            let annotations = BTreeMap::from([(key.to_string(), value.to_string())]);
            let err = init_args(&annotations, &injection(), None).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(key) && message.contains("such as"),
                "{message}"
            );
        }
    }

    #[test]
    fn the_certificate_lifetime_comes_from_the_revision_or_the_pod_annotation() {
        let env = |doc: &Value| -> BTreeMap<String, String> {
            doc["spec"]["initContainers"][1]["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
                .collect()
        };
        let doc = patched(&bare_pod());
        assert_eq!(env(&doc)[contract::ENV_CERT_VALIDITY], "24h");
        assert_eq!(env(&doc)[contract::ENV_RENEW_AT], "0.5");

        let mut pod = bare_pod();
        pod.metadata.annotations = Some(BTreeMap::from([(
            contract::ANNOTATION_CERT_VALIDITY.into(),
            "90s".into(),
        )]));
        assert_eq!(env(&patched(&pod))[contract::ENV_CERT_VALIDITY], "90s");

        for bad in ["30s", "soon", ""] {
            pod.metadata.annotations = Some(BTreeMap::from([(
                contract::ANNOTATION_CERT_VALIDITY.into(),
                bad.into(),
            )]));
            let err = inject(&pod, &injection(), &InjectorSettings::default()).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(contract::ANNOTATION_CERT_VALIDITY)
                    && message.contains("at least 1m"),
                "{message}"
            );
        }
    }

    fn annotated(annotations: &[(&str, &str)]) -> Pod {
        let mut pod = bare_pod();
        pod.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        pod
    }

    fn init_names(doc: &Value) -> Vec<String> {
        doc["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn interception_mode_none_drops_weft_init_and_says_so() {
        let pod = annotated(&[(contract::ANNOTATION_INTERCEPTION_MODE, "NONE")]);
        let injected = inject(&pod, &injection(), &InjectorSettings::default()).unwrap();
        assert_eq!(injected.warnings.len(), 1);
        let doc = patched(&pod);
        assert_eq!(init_names(&doc), ["weft-proxy"]);
        let status: InjectionStatus = serde_json::from_str(
            doc["metadata"]["annotations"]["weft.dev/status"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status.init_containers, ["weft-proxy"]);
        let kept: Vec<String> = serde_json::from_str(
            doc["metadata"]["annotations"][contract::ANNOTATION_WARNINGS]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(kept, injected.warnings);

        // With user init containers, the proxy still goes first.
        let mut pod = pod;
        if let Some(spec) = pod.spec.as_mut() {
            spec.init_containers = Some(vec![Container {
                name: "migrate".into(),
                ..Default::default()
            }]);
        }
        assert_eq!(init_names(&patched(&pod)), ["weft-proxy", "migrate"]);

        // A bad capture annotation is refused even though nothing would be captured.
        let pod = annotated(&[
            (contract::ANNOTATION_INTERCEPTION_MODE, "NONE"),
            (contract::ANNOTATION_EXCLUDE_INBOUND_PORTS, "http"),
        ]);
        assert!(inject(&pod, &injection(), &InjectorSettings::default()).is_err());
    }

    #[test]
    fn dns_capture_is_asked_for_in_proxy_metadata_and_only_then() {
        let init_args_of = |doc: &Value| doc["spec"]["initContainers"][0]["args"].clone();
        let pod = annotated(&[(
            contract::ANNOTATION_PROXY_CONFIG,
            "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n",
        )]);
        let args = init_args_of(&patched(&pod));
        assert_eq!(args[0], "init");
        assert!(
            args.as_array()
                .unwrap()
                .iter()
                .any(|a| a == contract::INIT_FLAG_CAPTURE_DNS),
            "{args}"
        );
        let off = annotated(&[(
            contract::ANNOTATION_PROXY_CONFIG,
            "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"false\"}",
        )]);
        for pod in [off, bare_pod()] {
            let args = init_args_of(&patched(&pod));
            assert!(
                !args
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a == contract::INIT_FLAG_CAPTURE_DNS),
                "{args}"
            );
        }
    }

    #[test]
    fn a_revision_wide_dns_capture_reaches_every_pod_unless_its_proxy_config_says_false() {
        let captures = |pod: &Pod, revision_wide: bool| {
            let mut injection = injection();
            injection.meshconfig.dns_capture = revision_wide;
            let patch = inject(pod, &injection, &InjectorSettings::default())
                .unwrap()
                .patch;
            let mut doc = serde_json::to_value(pod).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
            doc["spec"]["initContainers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == contract::INIT_FLAG_CAPTURE_DNS)
        };
        let off = annotated(&[(
            contract::ANNOTATION_PROXY_CONFIG,
            "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"false\"}",
        )]);
        let on = annotated(&[(
            contract::ANNOTATION_PROXY_CONFIG,
            "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}",
        )]);
        assert!(captures(&bare_pod(), true), "the revision's switch");
        assert!(!captures(&bare_pod(), false), "off by default");
        assert!(!captures(&off, true), "the pod opts out of the revision's");
        assert!(captures(&on, false), "the pod opts in by itself");
        // traffic.dnsCapture as the MeshConfig spells it.
        let spec: MeshConfigSpec =
            serde_json::from_value(serde_json::json!({"traffic": {"dnsCapture": true}})).unwrap();
        assert!(EffectiveMeshConfig::resolve(&spec, &InjectorSettings::default()).dns_capture);
    }

    #[test]
    fn a_pod_without_warnings_gets_no_warnings_annotation() {
        let doc = patched(&bare_pod());
        assert!(
            doc["metadata"]["annotations"]
                .get(contract::ANNOTATION_WARNINGS)
                .is_none()
        );
    }

    #[test]
    fn proxy_image_annotation_sets_both_containers() {
        let pod = annotated(&[(contract::ANNOTATION_PROXY_IMAGE, "registry.test/weft:debug")]);
        let doc = patched(&pod);
        for container in doc["spec"]["initContainers"].as_array().unwrap() {
            assert_eq!(container["image"], "registry.test/weft:debug");
        }
        assert_eq!(init_names(&doc), ["weft-init", "weft-proxy"]);
    }

    #[test]
    fn user_volumes_join_the_pod_and_their_mounts_the_proxy() {
        let mut pod = annotated(&[
            (
                contract::ANNOTATION_USER_VOLUME,
                r#"{"extra":{"secret":{"secretName":"extra"}}}"#,
            ),
            (
                contract::ANNOTATION_USER_VOLUME_MOUNT,
                r#"{"extra":{"mountPath":"/etc/extra","readOnly":true},"app-data":{"mountPath":"/data"}}"#,
            ),
        ]);
        if let Some(spec) = pod.spec.as_mut() {
            spec.volumes = Some(vec![Volume {
                name: "app-data".into(),
                empty_dir: Some(Default::default()),
                ..Default::default()
            }]);
        }
        let doc = patched(&pod);
        let volumes: Vec<_> = doc["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            volumes,
            [
                "app-data",
                "weft-token",
                "weft-ca-root-cert",
                "weft-work",
                "extra"
            ]
        );
        assert_eq!(doc["spec"]["volumes"][4]["secret"]["secretName"], "extra");
        let mounts = doc["spec"]["initContainers"][1]["volumeMounts"]
            .as_array()
            .unwrap();
        assert_eq!(mounts.len(), 5);
        assert_eq!(
            mounts[3],
            json!({"name": "extra", "mountPath": "/etc/extra", "readOnly": true})
        );
        assert_eq!(mounts[4], json!({"name": "app-data", "mountPath": "/data"}));
        let status: InjectionStatus = serde_json::from_str(
            doc["metadata"]["annotations"]["weft.dev/status"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status.volumes.last().map(String::as_str), Some("extra"));
    }

    #[test]
    fn a_pod_using_our_names_is_refused() {
        let mut pod = bare_pod();
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers[0].name = "weft-proxy".into();
        }
        let err = inject(&pod, &injection(), &InjectorSettings::default()).unwrap_err();
        assert!(err.to_string().contains("rename it"), "{err}");
    }

    #[test]
    fn app_prometheus_annotations_are_kept_for_the_proxy() {
        let mut pod = bare_pod();
        pod.metadata.annotations = Some(BTreeMap::from([
            ("prometheus.io/scrape".into(), "true".into()),
            ("prometheus.io/port".into(), "9102".into()),
        ]));
        let doc = patched(&pod);
        assert_eq!(
            doc["metadata"]["annotations"]["prometheus.io/port"],
            "15020"
        );
        assert_eq!(
            doc["metadata"]["annotations"]["prometheus.io/path"],
            "/stats/prometheus"
        );
        let env = doc["spec"]["initContainers"][1]["env"].as_array().unwrap();
        let merged = env
            .iter()
            .find(|e| e["name"] == "WEFT_PROMETHEUS_ANNOTATIONS")
            .unwrap();
        assert_eq!(merged["value"], r#"{"port":"9102","scrape":"true"}"#);

        // scrape=false is respected: no scraping annotations, no merge.
        pod.metadata.annotations = Some(BTreeMap::from([(
            "prometheus.io/scrape".into(),
            "false".into(),
        )]));
        let doc = patched(&pod);
        assert_eq!(
            doc["metadata"]["annotations"]["prometheus.io/scrape"],
            "false"
        );
        assert!(
            doc["metadata"]["annotations"]
                .get("prometheus.io/port")
                .is_none()
        );
    }

    #[test]
    fn canonical_names_follow_istio() {
        let mut pod = bare_pod();
        pod.metadata.generate_name = Some("reviews-v2-5d4b7c9f8-".into());
        pod.metadata.labels = Some(BTreeMap::from([(
            "pod-template-hash".into(),
            "5d4b7c9f8".into(),
        )]));
        pod.metadata.owner_references = Some(vec![OwnerReference {
            kind: "ReplicaSet".into(),
            name: "reviews-v2-5d4b7c9f8".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        assert_eq!(canonical_name(&pod), "reviews-v2");
        pod.metadata.labels = Some(BTreeMap::from([
            ("app".into(), "reviews".into()),
            ("app.kubernetes.io/name".into(), "reviews-k8s".into()),
            ("version".into(), "v2".into()),
        ]));
        assert_eq!(canonical_name(&pod), "reviews-k8s");
        assert_eq!(
            canonical_revision(pod.metadata.labels.as_ref().unwrap()),
            "v2"
        );
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert_eq!(label_value("-a.b-"), "a.b");
    }

    // --- the gateway template ---

    /// A pod as `weft gateway install`'s Deployment makes it: one `istio-proxy` container with
    /// image `auto` (and the pull policy the API server defaults for an untagged image).
    fn gateway_pod() -> Pod {
        let mut pod = annotated(&[(
            contract::ANNOTATION_INJECT_TEMPLATES,
            contract::TEMPLATE_GATEWAY,
        )]);
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers = vec![Container {
                name: contract::CONTAINER_GATEWAY_PROXY.into(),
                image: Some(contract::GATEWAY_IMAGE_AUTO.into()),
                image_pull_policy: Some("Always".into()),
                termination_message_path: Some("/dev/termination-log".into()),
                ..Default::default()
            }];
        }
        pod
    }

    fn sidecar_of(doc: &Value) -> Value {
        doc["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == contract::CONTAINER_PROXY)
            .cloned()
            .unwrap()
    }

    #[test]
    fn the_gateway_template_fills_istio_proxy_and_adds_no_sidecar_or_init() {
        let doc = patched(&gateway_pod());
        let spec = &doc["spec"];
        assert!(spec.get("initContainers").is_none(), "{spec:#}");
        let containers = spec["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        let gw = &containers[0];
        assert_eq!(gw["name"], contract::CONTAINER_GATEWAY_PROXY);
        assert_eq!(gw["image"], injection().meshconfig.image.as_str());
        assert_eq!(gw["imagePullPolicy"], "IfNotPresent");
        assert_eq!(gw["command"], json!([contract::PROXY_COMMAND]));
        assert_eq!(gw["args"], json!([contract::PROXY_SUBCOMMAND_GATEWAY]));
        assert!(gw.get("restartPolicy").is_none());
        assert_eq!(gw["terminationMessagePath"], "/dev/termination-log");

        // Exactly what a sidecar gets: env, mounts, ports, probes, resources; volumes too.
        let sidecar_doc = patched(&bare_pod());
        let sidecar = sidecar_of(&sidecar_doc);
        for field in [
            "env",
            "volumeMounts",
            "ports",
            "readinessProbe",
            "startupProbe",
            "resources",
        ] {
            assert_eq!(gw[field], sidecar[field], "{field}");
        }
        let names = |d: &Value| -> Vec<Value> {
            d["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].clone())
                .collect()
        };
        assert_eq!(names(&doc), names(&sidecar_doc));

        let sc = &gw["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["runAsUser"], i64::from(contract::PROXY_UID));
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["capabilities"]["add"], json!(["NET_BIND_SERVICE"]));
        assert_eq!(
            spec["securityContext"]["sysctls"],
            json!([{"name": SYSCTL_UNPRIVILEGED_PORT_START, "value": "0"}])
        );

        let status: InjectionStatus = serde_json::from_str(
            doc["metadata"]["annotations"][contract::ANNOTATION_STATUS]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert!(status.init_containers.is_empty());
        assert_eq!(status.containers, vec![contract::CONTAINER_GATEWAY_PROXY]);
        assert_eq!(
            doc["metadata"]["labels"][contract::LABEL_REVISION],
            "stable"
        );
        assert_eq!(
            doc["metadata"]["annotations"][contract::ANNOTATION_PROMETHEUS_PORT],
            contract::PORT_STATS.to_string()
        );
    }

    #[test]
    fn a_gateway_keeps_what_its_istio_proxy_container_declares_as_istio_does() {
        let mut pod = gateway_pod();
        if let Some(spec) = pod.spec.as_mut() {
            let c = &mut spec.containers[0];
            c.ports = Some(vec![ContainerPort {
                container_port: 8080,
                name: Some("http".into()),
                ..Default::default()
            }]);
            c.env = Some(vec![
                env_var("EXTRA", "1"),
                env_var(contract::ENV_LOG_LEVEL, "debug"),
            ]);
            c.resources = Some(ResourceRequirements {
                limits: Some(BTreeMap::from([("memory".into(), Quantity("1Gi".into()))])),
                ..Default::default()
            });
            spec.security_context = Some(k8s_openapi::api::core::v1::PodSecurityContext {
                sysctls: Some(vec![k8s_openapi::api::core::v1::Sysctl {
                    name: SYSCTL_UNPRIVILEGED_PORT_START.into(),
                    value: "80".into(),
                }]),
                ..Default::default()
            });
        }
        let doc = patched(&pod);
        let gw = &doc["spec"]["containers"][0];
        let ports: Vec<i64> = gw["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_i64().unwrap())
            .collect();
        assert_eq!(
            ports,
            vec![
                i64::from(contract::PORT_STATS),
                i64::from(contract::PORT_HEALTH),
                8080
            ]
        );
        let env: BTreeMap<&str, &Value> = gw["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), &e["value"]))
            .collect();
        assert_eq!(env["EXTRA"], "1");
        assert_eq!(env[contract::ENV_LOG_LEVEL], "debug");
        assert!(env.contains_key(contract::ENV_DISCOVERY_ADDRESS));
        // Maps merge: the revision's requests stay, the declared limit joins them.
        assert_eq!(gw["resources"]["limits"]["memory"], "1Gi");
        assert_eq!(gw["resources"]["requests"]["memory"], "16Mi");
        // The pod's own sysctl value wins.
        assert_eq!(
            doc["spec"]["securityContext"]["sysctls"],
            json!([{"name": SYSCTL_UNPRIVILEGED_PORT_START, "value": "80"}])
        );

        // An image other than `auto` is the pod's choice, as under Istio.
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers[0].image = Some("registry.example/weft:pinned".into());
        }
        let doc = patched(&pod);
        assert_eq!(
            doc["spec"]["containers"][0]["image"],
            "registry.example/weft:pinned"
        );
        assert_eq!(doc["spec"]["containers"][0]["imagePullPolicy"], "Always");
    }

    #[test]
    fn a_gateway_pod_without_istio_proxy_is_refused_with_the_fix() {
        let pod = annotated(&[(
            contract::ANNOTATION_INJECT_TEMPLATES,
            contract::TEMPLATE_GATEWAY,
        )]);
        let err = inject(&pod, &injection(), &InjectorSettings::default()).unwrap_err();
        assert_eq!(err.metric_label(), "no_gateway_container");
        let message = err.to_string();
        assert!(
            message.contains("\"istio-proxy\"")
                && message.contains("image \"auto\"")
                && message.contains("weft gateway install"),
            "{message}"
        );
    }

    #[test]
    fn gateway_with_another_template_is_refused_and_capture_annotations_are_warned() {
        for templates in ["gateway,sidecar", "grpc-agent,gateway"] {
            let mut pod = gateway_pod();
            pod.metadata.annotations = Some(BTreeMap::from([(
                contract::ANNOTATION_INJECT_TEMPLATES.to_string(),
                templates.to_string(),
            )]));
            let message = inject(&pod, &injection(), &InjectorSettings::default())
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("cannot be combined") && message.contains("\"gateway\" alone"),
                "{message}"
            );
        }
        let mut pod = gateway_pod();
        if let Some(a) = pod.metadata.annotations.as_mut() {
            a.insert(
                contract::ANNOTATION_EXCLUDE_OUTBOUND_PORTS.into(),
                "5432".into(),
            );
        }
        let injected = inject(&pod, &injection(), &InjectorSettings::default()).unwrap();
        assert_eq!(injected.warnings.len(), 1, "{:?}", injected.warnings);
        assert!(injected.warnings[0].contains(contract::ANNOTATION_EXCLUDE_OUTBOUND_PORTS));
        assert!(injected.warnings[0].contains("gateway"));
    }
}
