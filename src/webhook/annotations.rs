//! Istio's pod annotations that change what injection adds, beyond enrolment and the capture
//! flags: one table of rules (`RULES`), each honouring its value, answering it with a warning
//! that says what weft does instead, or refusing it with the fix. Never accepted and ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Pod, Volume, VolumeMount};
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::inject::InjectError;
use crate::contract;

/// Istio's template that adds the sidecar proxy: what weft's injection is.
const TEMPLATE_SIDECAR: &str = "sidecar";
/// Istio's proxyless gRPC templates: no proxy in the traffic path (grpc-agent adds only
/// Istio's agent); the app's gRPC library speaks xDS itself.
const PROXYLESS_TEMPLATES: [&str; 2] = ["grpc-simple", "grpc-agent"];

/// The `traffic.sidecar.istio.io/*` annotations weft turns into `weft-init` flags (read by
/// `inject::init_args`); moot when the pod asks for no capture.
pub(super) const CAPTURE_ANNOTATIONS: [&str; 8] = [
    contract::ANNOTATION_INCLUDE_INBOUND_PORTS,
    contract::ANNOTATION_EXCLUDE_INBOUND_PORTS,
    contract::ANNOTATION_EXCLUDE_OUTBOUND_PORTS,
    contract::ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES,
    contract::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES,
    contract::ANNOTATION_INCLUDE_OUTBOUND_PORTS,
    contract::ANNOTATION_EXCLUDE_INTERFACES,
    contract::ANNOTATION_KUBEVIRT_INTERFACES,
];

/// Istio's annotation namespaces: an annotation under one of these that no rule here, no
/// capture flag and no decision rule reads is answered with a warning, never ignored silently.
const ISTIO_PREFIXES: [&str; 5] = [
    "sidecar.istio.io/",
    "traffic.sidecar.istio.io/",
    "proxy.istio.io/",
    "status.sidecar.istio.io/",
    "inject.istio.io/",
];

/// Istio annotations read elsewhere: by `decide` (opt-out, already injected by Istio) and by
/// the probe rewrite.
const READ_ELSEWHERE: [&str; 3] = [
    contract::LABEL_SIDECAR_INJECT,
    contract::ANNOTATION_ISTIO_STATUS,
    contract::ANNOTATION_REWRITE_PROBES,
];

/// The proxy's readiness probe settings Istio reads from
/// `readiness.status.sidecar.istio.io/<field>`: the key, the probe's field, its least value.
const READINESS_FIELDS: [(&str, &str, i32); 3] = [
    (
        "readiness.status.sidecar.istio.io/initialDelaySeconds",
        "initialDelaySeconds",
        0,
    ),
    (
        "readiness.status.sidecar.istio.io/periodSeconds",
        "periodSeconds",
        1,
    ),
    (
        "readiness.status.sidecar.istio.io/failureThreshold",
        "failureThreshold",
        1,
    ),
];

/// Ports of the proxy's other listeners: the status port cannot be one of them.
const TAKEN_PORTS: [u16; 4] = [
    contract::PORT_OUTBOUND,
    contract::PORT_INBOUND,
    contract::PORT_HEALTH,
    contract::PORT_ADMIN,
];

/// What a pod's annotations ask of injection, once every rule has read its key.
#[derive(Debug, Default)]
pub(super) struct PodRequests {
    /// `sidecar.istio.io/proxyImage`: the image of both injected containers.
    pub proxy_image: Option<String>,
    /// `sidecar.istio.io/interceptionMode: NONE`: no `weft-init`, nothing captured.
    pub no_capture: bool,
    /// `inject.istio.io/templates: gateway`: fill the pod's `istio-proxy` container as a
    /// gateway proxy; no `weft-init`, no sidecar, nothing captured.
    pub gateway: bool,
    /// `sidecar.istio.io/userVolume`: volumes added to the pod, after weft's own.
    pub user_volumes: Vec<Volume>,
    /// `sidecar.istio.io/userVolumeMount`: mounts added to the proxy container.
    pub user_mounts: Vec<VolumeMount>,
    /// `sidecar.istio.io/proxyCPU`, `proxyMemory` and their `...Limit` forms, in rule order:
    /// the injected containers' resources over the revision's.
    pub resources: Vec<ResourceOverride>,
    /// `status.sidecar.istio.io/port` (or ProxyConfig `statusPort`): the proxy's stats and
    /// app-health port instead of 15020.
    pub status_port: Option<u16>,
    /// `readiness.status.sidecar.istio.io/*`: the proxy's readiness probe, field → value.
    pub readiness: BTreeMap<&'static str, i32>,
    /// ProxyConfig `concurrency`: the proxy's worker threads.
    pub concurrency: Option<u32>,
    /// ProxyConfig `terminationDrainDuration`: the drain on SIGTERM (a Go duration).
    pub drain_duration: Option<String>,
    /// ProxyConfig `proxyMetadata.ISTIO_META_DNS_CAPTURE`: `"true"`, `weft-init` captures the
    /// app's DNS to the proxy's DNS server (docs/egress.md); `"false"`, it does not, whatever
    /// the revision's `traffic.dnsCapture`; None: the revision decides.
    pub dns_capture: Option<bool>,
    /// What weft does instead of what an annotation asks: the response's `warnings`.
    pub warnings: Vec<String>,
}

/// One resource annotation: which annotation, which resource, request or limit, the value.
#[derive(Debug, Clone)]
pub(super) struct ResourceOverride {
    pub key: &'static str,
    pub resource: &'static str,
    pub limit: bool,
    pub value: String,
}

/// Why a value is refused, and the form weft accepts.
struct Refusal {
    problem: String,
    expected: &'static str,
}

struct Rule {
    key: &'static str,
    /// Reads the value into the requests (or a warning), or refuses it.
    read: fn(&str, &mut PodRequests) -> Result<(), Refusal>,
}

/// Every annotation of this module, in the order its rule runs (and its warning appears).
const RULES: &[Rule] = &[
    Rule {
        key: contract::ANNOTATION_INJECT_TEMPLATES,
        read: templates,
    },
    Rule {
        key: contract::ANNOTATION_INTERCEPTION_MODE,
        read: interception_mode,
    },
    Rule {
        key: contract::ANNOTATION_NATIVE_SIDECAR,
        read: native_sidecar,
    },
    Rule {
        key: contract::ANNOTATION_PROXY_IMAGE,
        read: proxy_image,
    },
    Rule {
        key: contract::ANNOTATION_USER_VOLUME,
        read: user_volume,
    },
    Rule {
        key: contract::ANNOTATION_USER_VOLUME_MOUNT,
        read: user_volume_mount,
    },
    Rule {
        key: contract::ANNOTATION_PROXY_CPU,
        read: proxy_cpu,
    },
    Rule {
        key: contract::ANNOTATION_PROXY_MEMORY,
        read: proxy_memory,
    },
    Rule {
        key: contract::ANNOTATION_PROXY_CPU_LIMIT,
        read: proxy_cpu_limit,
    },
    Rule {
        key: contract::ANNOTATION_PROXY_MEMORY_LIMIT,
        read: proxy_memory_limit,
    },
    // Before the status port annotation, which wins over ProxyConfig's statusPort.
    Rule {
        key: contract::ANNOTATION_PROXY_CONFIG,
        read: proxy_config,
    },
    Rule {
        key: contract::ANNOTATION_STATUS_PORT,
        read: status_port,
    },
];

/// Runs every rule whose annotation the pod carries, then the checks that need the pod (user
/// volumes against its own volumes). The first refusal wins: it names the annotation and the
/// form to write.
pub(super) fn read(pod: &Pod) -> Result<PodRequests, InjectError> {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let mut requests = PodRequests::default();
    for rule in RULES {
        if let Some(value) = annotations.get(rule.key) {
            (rule.read)(value, &mut requests).map_err(|r| refused(rule.key, value, r))?;
        }
    }
    check_user_volumes(pod, annotations, &requests)?;
    for (key, value) in annotations {
        if key.starts_with(contract::ANNOTATION_READINESS_PREFIX) {
            readiness(key, value, &mut requests)?;
        }
    }
    for key in annotations.keys() {
        let istio = ISTIO_PREFIXES.iter().any(|p| key.starts_with(p));
        let read_here = RULES.iter().any(|r| r.key == key)
            || CAPTURE_ANNOTATIONS.contains(&key.as_str())
            || READ_ELSEWHERE.contains(&key.as_str());
        if istio && !read_here {
            requests.warnings.push(format!(
                "{key} is an Istio annotation weft does not read: it has no effect on this pod \
                 (webhook/README.md lists the ones weft honours)"
            ));
        }
    }
    if requests.gateway {
        // Nothing is captured in a gateway pod: it receives on the ports it binds itself.
        let moot = CAPTURE_ANNOTATIONS
            .iter()
            .chain([&contract::ANNOTATION_INTERCEPTION_MODE]);
        for key in moot {
            if annotations.contains_key(*key) {
                requests.warnings.push(format!(
                    "{key} has no effect: {templates}={gateway} makes the pod a gateway, which \
                     weft never captures traffic in",
                    templates = contract::ANNOTATION_INJECT_TEMPLATES,
                    gateway = contract::TEMPLATE_GATEWAY,
                ));
            }
        }
    } else if requests.no_capture {
        for key in CAPTURE_ANNOTATIONS {
            if annotations.contains_key(key) {
                requests.warnings.push(format!(
                    "{key} has no effect: with {}=NONE weft captures no traffic in this pod",
                    contract::ANNOTATION_INTERCEPTION_MODE
                ));
            }
        }
    }
    Ok(requests)
}

/// Whether `inject.istio.io/templates` names only Istio's proxyless gRPC templates: such a
/// pod's traffic passes no proxy under Istio, and weft adds none (`decide` skips it).
pub(super) fn proxyless_only(templates: &str) -> bool {
    let names = template_names(templates);
    !names.is_empty() && names.iter().all(|n| PROXYLESS_TEMPLATES.contains(n))
}

fn refused(key: &'static str, value: &str, refusal: Refusal) -> InjectError {
    InjectError::InvalidAnnotation {
        key,
        value: value.to_string(),
        problem: refusal.problem,
        expected: refusal.expected,
    }
}

// === The rules ===

const TEMPLATES_FORM: &str = "\"sidecar\" (weft's proxy), \"gateway\" alone (the pod's istio-proxy \
                              container, image auto, becomes a gateway proxy), or only \
                              \"grpc-simple\" or \"grpc-agent\" for proxyless gRPC, which weft \
                              leaves without a proxy";

fn template_names(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// `sidecar` is what weft injects; only-proxyless lists never get here (`decide` skipped the
/// pod); a name weft has no template for is refused, as Istio refuses a template it lacks.
fn templates(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    let names = template_names(value);
    if names.is_empty() {
        return Err(Refusal {
            problem: "it names no template".into(),
            expected: TEMPLATES_FORM,
        });
    }
    if let Some(unknown) = names.iter().find(|n| {
        **n != TEMPLATE_SIDECAR
            && **n != contract::TEMPLATE_GATEWAY
            && !PROXYLESS_TEMPLATES.contains(n)
    }) {
        return Err(Refusal {
            problem: format!(
                "weft has no injection template {unknown:?} (Istio too refuses a pod that names a \
                 template it lacks)"
            ),
            expected: TEMPLATES_FORM,
        });
    }
    // A gateway pod has no app to sit beside: the template fills its one proxy container, and
    // mixing it with another template would ask for a sidecar next to that proxy.
    if names.contains(&contract::TEMPLATE_GATEWAY) {
        if let Some(other) = names.iter().find(|n| **n != contract::TEMPLATE_GATEWAY) {
            return Err(Refusal {
                problem: format!(
                    "{gateway:?} makes the pod a gateway and cannot be combined with {other:?}",
                    gateway = contract::TEMPLATE_GATEWAY
                ),
                expected: TEMPLATES_FORM,
            });
        }
        requests.gateway = true;
        return Ok(());
    }
    let proxyless: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| PROXYLESS_TEMPLATES.contains(n))
        .collect();
    if !proxyless.is_empty() && names.contains(&TEMPLATE_SIDECAR) {
        requests.warnings.push(format!(
            "{key}={value}: weft injects its proxy (the {TEMPLATE_SIDECAR} template) and adds \
             nothing for {proxyless}: weft serves no xDS to proxyless gRPC",
            key = contract::ANNOTATION_INJECT_TEMPLATES,
            proxyless = proxyless.join(", "),
        ));
    }
    Ok(())
}

/// REDIRECT is what weft does; NONE drops `weft-init`; TPROXY is answered with REDIRECT.
/// Other values are refused, as Istio's own validation refuses them.
fn interception_mode(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    let key = contract::ANNOTATION_INTERCEPTION_MODE;
    match value {
        "REDIRECT" => {}
        "NONE" => {
            requests.no_capture = true;
            requests.warnings.push(format!(
                "{key}=NONE: weft adds no {init}, so no traffic passes through the proxy (it \
                 still holds the pod's identity and serves the rewritten probes and metrics); \
                 meshed clients still send mTLS to this pod's ports unless a PeerAuthentication \
                 with mode DISABLE selects it",
                init = contract::CONTAINER_INIT,
            ));
        }
        "TPROXY" => requests.warnings.push(format!(
            "{key}=TPROXY is not supported: weft captures with REDIRECT, so the app sees inbound \
             connections come from {source}, not from the client's address",
            source = contract::INBOUND_PASSTHROUGH_SOURCE,
        )),
        _ => {
            return Err(Refusal {
                problem: "the modes are REDIRECT, TPROXY and NONE, in capitals as Istio spells \
                          them"
                    .into(),
                expected: "\"REDIRECT\" (the default) or \"NONE\" (capture nothing)",
            });
        }
    }
    Ok(())
}

/// weft's proxy is always a native sidecar; Istio reads every value but `false` as yes.
fn native_sidecar(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    if value.eq_ignore_ascii_case("false") {
        requests.warnings.push(format!(
            "{key}={value} is not supported: weft always injects its proxy as a native sidecar \
             (the init container {proxy} with restartPolicy: Always), which starts before the \
             app's containers and lets a Job's pod complete",
            key = contract::ANNOTATION_NATIVE_SIDECAR,
            proxy = contract::CONTAINER_PROXY,
        ));
    }
    Ok(())
}

/// The image of both injected containers, as Istio sets it on `istio-init` and `istio-proxy`.
/// Istio uses the value only when it contains a `/` and ignores it otherwise; weft takes any
/// image reference, so the annotation is never ignored.
fn proxy_image(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    let problem = if value.is_empty() {
        "it is empty"
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "an image reference has no spaces or control characters"
    } else {
        requests.proxy_image = Some(value.to_string());
        return Ok(());
    };
    Err(Refusal {
        problem: problem.into(),
        expected: "an image reference whose image holds weft-proxy, such as \
                   \"ghcr.io/weft-mesh/weft:0.1.0\"",
    })
}

const USER_VOLUME_FORM: &str = "a JSON object mapping each new volume's name to a Kubernetes \
                                volume without its name, such as \
                                {\"certs\":{\"secret\":{\"secretName\":\"certs\"}}}";
const USER_VOLUME_MOUNT_FORM: &str = "a JSON object mapping a volume's name to a volumeMount \
                                      without its name, such as \
                                      {\"certs\":{\"mountPath\":\"/etc/certs\",\"readOnly\":true}}";

fn user_volume(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    let refusal = |problem| Refusal {
        problem,
        expected: USER_VOLUME_FORM,
    };
    for (name, volume) in typed_entries::<Volume>(value, "volume").map_err(refusal)? {
        if !is_dns_label(&name) {
            return Err(refusal(format!(
                "{name:?} is not a volume name: lower-case letters, digits and '-', at most 63, \
                 starting and ending with a letter or digit"
            )));
        }
        let volume_json = serde_json::to_value(&volume).unwrap_or_default();
        let sources: Vec<&String> = volume_json
            .as_object()
            .map(|o| o.keys().filter(|k| *k != "name").collect())
            .unwrap_or_default();
        if sources.len() != 1 {
            return Err(refusal(format!(
                "volume {name:?} names {n} sources{list}; a volume has exactly one, such as \
                 emptyDir, configMap, secret or persistentVolumeClaim",
                n = sources.len(),
                list = if sources.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        sources
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            )));
        }
        requests.user_volumes.push(volume);
    }
    Ok(())
}

fn user_volume_mount(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    let refusal = |problem| Refusal {
        problem,
        expected: USER_VOLUME_MOUNT_FORM,
    };
    // The proxy's own mounts: a second mount at one of these paths is refused by the API
    // server with a message about the pod, not about this annotation.
    let mut paths: BTreeSet<String> = [
        contract::TOKEN_DIR,
        contract::ROOT_CERT_DIR,
        contract::WORK_DIR,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for (name, mount) in typed_entries::<VolumeMount>(value, "volumeMount").map_err(refusal)? {
        if mount.mount_path.is_empty() {
            return Err(refusal(format!("{name:?} has no mountPath")));
        }
        if !mount.mount_path.starts_with('/') {
            return Err(refusal(format!(
                "the mountPath {:?} of {name:?} is not an absolute path",
                mount.mount_path
            )));
        }
        let path = mount.mount_path.trim_end_matches('/').to_string();
        if !paths.insert(path) {
            return Err(refusal(format!(
                "the mountPath {:?} of {name:?} is already taken in the proxy container",
                mount.mount_path
            )));
        }
        requests.user_mounts.push(mount);
    }
    Ok(())
}

/// User volumes must not collide with the pod's or weft's, and each mount must name a volume
/// the patched pod will have (a user volume or one of the pod's own).
fn check_user_volumes(
    pod: &Pod,
    annotations: &BTreeMap<String, String>,
    requests: &PodRequests,
) -> Result<(), InjectError> {
    let pod_volumes: BTreeSet<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|v| v.name.as_str())
        .collect();
    let ours = [
        contract::VOLUME_TOKEN,
        contract::VOLUME_ROOT_CERT,
        contract::VOLUME_WORK,
    ];
    for volume in &requests.user_volumes {
        let name = volume.name.as_str();
        let clash = if ours.contains(&name) {
            "a volume weft's injection adds"
        } else if pod_volumes.contains(name) {
            "already a volume of the pod (to mount it into the proxy, name it in \
             sidecar.istio.io/userVolumeMount only)"
        } else {
            continue;
        };
        return Err(InjectError::InvalidAnnotation {
            key: contract::ANNOTATION_USER_VOLUME,
            value: annotations
                .get(contract::ANNOTATION_USER_VOLUME)
                .cloned()
                .unwrap_or_default(),
            problem: format!("{name:?} is {clash}"),
            expected: USER_VOLUME_FORM,
        });
    }
    let user: BTreeSet<&str> = requests
        .user_volumes
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    for mount in &requests.user_mounts {
        let name = mount.name.as_str();
        if !user.contains(name) && !pod_volumes.contains(name) {
            return Err(InjectError::InvalidAnnotation {
                key: contract::ANNOTATION_USER_VOLUME_MOUNT,
                value: annotations
                    .get(contract::ANNOTATION_USER_VOLUME_MOUNT)
                    .cloned()
                    .unwrap_or_default(),
                problem: format!(
                    "the pod will have no volume named {name:?}: declare it in {} or in the \
                     pod's spec.volumes",
                    contract::ANNOTATION_USER_VOLUME
                ),
                expected: USER_VOLUME_MOUNT_FORM,
            });
        }
    }
    Ok(())
}

const QUANTITY_FORM: &str = "a Kubernetes quantity such as \"100m\" or \"0.5\" (CPU), \
                             \"64Mi\" or \"1G\" (memory)";

fn proxy_cpu(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    resource(
        contract::ANNOTATION_PROXY_CPU,
        "cpu",
        false,
        value,
        requests,
    )
}

fn proxy_memory(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    resource(
        contract::ANNOTATION_PROXY_MEMORY,
        "memory",
        false,
        value,
        requests,
    )
}

fn proxy_cpu_limit(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    resource(
        contract::ANNOTATION_PROXY_CPU_LIMIT,
        "cpu",
        true,
        value,
        requests,
    )
}

fn proxy_memory_limit(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    resource(
        contract::ANNOTATION_PROXY_MEMORY_LIMIT,
        "memory",
        true,
        value,
        requests,
    )
}

/// The value must be a quantity: the API server would refuse the patched pod otherwise, with
/// a message about a container rather than this annotation. Request against limit is checked
/// by `inject`, which knows the revision's resources.
fn resource(
    key: &'static str,
    resource: &'static str,
    limit: bool,
    value: &str,
    requests: &mut PodRequests,
) -> Result<(), Refusal> {
    if quantity_value(value).is_none() {
        return Err(Refusal {
            problem: "it is not a Kubernetes quantity".into(),
            expected: QUANTITY_FORM,
        });
    }
    requests.resources.push(ResourceOverride {
        key,
        resource,
        limit,
        value: value.to_string(),
    });
    Ok(())
}

/// A Kubernetes quantity's value (`100m` is 0.1, `64Mi` is 67108864), to compare a request
/// with its limit; `None` when the text is not a quantity.
pub(super) fn quantity_value(text: &str) -> Option<f64> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let digits = number.trim_start_matches(['+', '-']);
    if digits.is_empty()
        || digits == "."
        || digits.matches('.').count() > 1
        || digits.contains(['+', '-'])
        || number.len() - digits.len() > 1
    {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let e = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            10f64.powi(e.parse::<i32>().ok()?)
        }
    };
    (number >= 0.0).then_some(number * scale)
}

const STATUS_PORT_FORM: &str = "a port number from 1 to 65535 that is not 15000, 15001, 15006 \
                                or 15021 (weft's own listeners)";

/// The proxy's stats and app-health port (Istio's status port). 0 asks Istio for no status
/// server; weft always serves one, and says so.
fn status_port(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    let port = value.trim().parse::<u16>().map_err(|_| Refusal {
        problem: "it is not a port number".into(),
        expected: STATUS_PORT_FORM,
    })?;
    set_status_port(contract::ANNOTATION_STATUS_PORT, port, requests)
}

fn set_status_port(source: &str, port: u16, requests: &mut PodRequests) -> Result<(), Refusal> {
    if port == 0 {
        requests.warnings.push(format!(
            "{source}=0 is not supported: weft's proxy always serves its metrics and the \
             rewritten app probes on {default}",
            default = contract::PORT_STATS,
        ));
        requests.status_port = None;
        return Ok(());
    }
    if TAKEN_PORTS.contains(&port) {
        return Err(Refusal {
            problem: format!("{port} is a port weft's proxy already listens on"),
            expected: STATUS_PORT_FORM,
        });
    }
    requests.status_port = (port != contract::PORT_STATS).then_some(port);
    Ok(())
}

/// `readiness.status.sidecar.istio.io/<field>`: the proxy's readiness probe. Istio's
/// `applicationPorts` (which its agent no longer uses) and unknown fields are warned.
fn readiness(key: &str, value: &str, requests: &mut PodRequests) -> Result<(), InjectError> {
    let Some((key, field, least)) = READINESS_FIELDS.iter().find(|(k, _, _)| *k == key) else {
        requests.warnings.push(format!(
            "{key} is not supported: weft reads {fields} under {prefix}; the proxy's readiness \
             says whether it holds a certificate and its config, not whether the app's ports \
             answer",
            fields = READINESS_FIELDS.map(|(_, f, _)| f).join(", "),
            prefix = contract::ANNOTATION_READINESS_PREFIX,
        ));
        return Ok(());
    };
    match value.trim().parse::<i32>() {
        Ok(n) if n >= *least => {
            requests.readiness.insert(field, n);
            Ok(())
        }
        _ => Err(InjectError::InvalidAnnotation {
            key,
            value: value.to_string(),
            problem: format!("{field} is a whole number of at least {least}"),
            expected: "a whole number of seconds or probes, such as \"5\"",
        }),
    }
}

const PROXY_CONFIG_FORM: &str = "a ProxyConfig as YAML or JSON, such as \
                                 \"concurrency: 2\\nterminationDrainDuration: 10s\"";
/// The ProxyConfig fields weft applies; any other is named in a warning.
const PROXY_CONFIG_FIELDS: [&str; 5] = [
    "concurrency",
    "terminationDrainDuration",
    "statusPort",
    "holdApplicationUntilProxyStarts",
    "proxyMetadata.ISTIO_META_DNS_CAPTURE",
];

/// Istio's per-pod ProxyConfig. weft applies the fields its proxy has an equivalent for and
/// names every other one in a warning, so no field is taken and dropped without a word.
fn proxy_config(value: &str, requests: &mut PodRequests) -> Result<(), Refusal> {
    let refusal = |problem: String| Refusal {
        problem,
        expected: PROXY_CONFIG_FORM,
    };
    let parsed: serde_yaml::Value =
        serde_yaml::from_str(value).map_err(|e| refusal(format!("it is not YAML: {e}")))?;
    let fields = match parsed {
        serde_yaml::Value::Mapping(m) => m,
        serde_yaml::Value::Null => serde_yaml::Mapping::new(),
        other => {
            return Err(refusal(format!(
                "it is a YAML {}, not a mapping of ProxyConfig fields",
                yaml_kind(&other)
            )));
        }
    };
    let key = contract::ANNOTATION_PROXY_CONFIG;
    let mut unsupported = Vec::new();
    for (name, field) in &fields {
        let Some(name) = name.as_str() else {
            return Err(refusal(format!("the field name {name:?} is not a string")));
        };
        match name {
            "concurrency" => match field.as_u64().map(u32::try_from) {
                Some(Ok(0)) => requests.warnings.push(format!(
                    "{key}: concurrency 0 (one worker per CPU under Istio) is not supported: \
                     weft's proxy needs a number of workers and keeps the revision's"
                )),
                Some(Ok(n)) => requests.concurrency = Some(n),
                _ => {
                    return Err(refusal(format!(
                        "concurrency is {}, not a whole number of worker threads",
                        yaml_text(field)
                    )));
                }
            },
            "terminationDrainDuration" => {
                let text = field.as_str().map(str::to_string).unwrap_or_default();
                crate::duration::parse(&text).map_err(|e| {
                    refusal(format!(
                        "terminationDrainDuration {} is not a duration such as \"5s\": {e}",
                        yaml_text(field)
                    ))
                })?;
                requests.drain_duration = Some(text);
            }
            "statusPort" => {
                let port = field
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| {
                        refusal(format!("statusPort {} is not a port", yaml_text(field)))
                    })?;
                set_status_port(&format!("{key} statusPort"), port, requests)?;
            }
            "holdApplicationUntilProxyStarts" => match field.as_bool() {
                Some(true) => {}
                Some(false) => requests.warnings.push(format!(
                    "{key}: holdApplicationUntilProxyStarts false is not supported: weft's \
                     proxy is a native sidecar, so the app's containers always start after it \
                     is ready"
                )),
                None => {
                    return Err(refusal(format!(
                        "holdApplicationUntilProxyStarts is {}, not true or false",
                        yaml_text(field)
                    )));
                }
            },
            "proxyMetadata" => {
                let serde_yaml::Value::Mapping(metadata) = field else {
                    return Err(refusal(format!(
                        "proxyMetadata is {}, not a mapping of names to values",
                        yaml_text(field)
                    )));
                };
                for (name, value) in metadata {
                    let name = name.as_str().unwrap_or_default();
                    if name != contract::PROXY_METADATA_DNS_CAPTURE {
                        unsupported.push(format!("proxyMetadata.{name}"));
                        continue;
                    }
                    // Istio's values are strings; a YAML boolean is taken too.
                    requests.dns_capture = match (value.as_str(), value.as_bool()) {
                        (Some("true"), _) | (_, Some(true)) => Some(true),
                        (Some("false"), _) | (_, Some(false)) => Some(false),
                        _ => {
                            return Err(refusal(format!(
                                "proxyMetadata.{name} is {}, not \"true\" or \"false\"",
                                yaml_text(value)
                            )));
                        }
                    };
                }
            }
            other => unsupported.push(other.to_string()),
        }
    }
    if !unsupported.is_empty() {
        requests.warnings.push(format!(
            "{key}: weft does not apply {fields}, so it has no effect here (weft applies \
             {supported})",
            fields = unsupported.join(", "),
            supported = PROXY_CONFIG_FIELDS.join(", "),
        ));
    }
    Ok(())
}

fn yaml_kind(value: &serde_yaml::Value) -> &'static str {
    match value {
        serde_yaml::Value::Null => "null",
        serde_yaml::Value::Bool(_) => "boolean",
        serde_yaml::Value::Number(_) => "number",
        serde_yaml::Value::String(_) => "string",
        serde_yaml::Value::Sequence(_) => "list",
        serde_yaml::Value::Mapping(_) => "mapping",
        serde_yaml::Value::Tagged(_) => "tagged value",
    }
}

fn yaml_text(value: &serde_yaml::Value) -> String {
    serde_yaml::to_string(value)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

// === Strict JSON ===

/// The entries of a JSON object in order, refusing a key given twice (serde_json would keep
/// the last one without a word).
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut seen = BTreeSet::new();
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("{key:?} is given twice")));
                    }
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// `{"<name>": {<object without name>}, ...}` read as Kubernetes objects named by their key.
/// Strict: every field given must survive the typed reading (k8s-openapi drops unknown
/// fields silently, so a misspelt `persistentVolumeClam` would vanish), and null is refused.
fn typed_entries<T: DeserializeOwned + Serialize>(
    value: &str,
    kind: &str,
) -> Result<Vec<(String, T)>, String> {
    let Entries(entries) = serde_json::from_str(value).map_err(|e| format!("{e}"))?;
    let mut out = Vec::with_capacity(entries.len());
    for (name, spec) in entries {
        let Value::Object(mut fields) = spec else {
            return Err(format!("{name:?} maps to {spec}, not an object"));
        };
        if fields.contains_key("name") {
            return Err(format!(
                "{name:?} has a name field; the key is the {kind}'s name, leave name out"
            ));
        }
        fields.insert("name".into(), Value::String(name.clone()));
        let given = Value::Object(fields);
        let typed: T = serde_json::from_value(given.clone())
            .map_err(|e| format!("{name:?} is not a Kubernetes {kind}: {e}"))?;
        let read = serde_json::to_value(&typed).unwrap_or(Value::Null);
        if let Some(problem) = lost_field(&given, &read, "") {
            return Err(format!("in {name:?}, {problem} of a Kubernetes {kind}"));
        }
        out.push((name, typed));
    }
    Ok(out)
}

/// The first field of `given` that the typed reading `read` lost or changed, described.
fn lost_field(given: &Value, read: &Value, path: &str) -> Option<String> {
    match (given, read) {
        (Value::Object(given), Value::Object(read)) => given.iter().find_map(|(key, value)| {
            let at = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match read.get(key) {
                None if value.is_null() => Some(format!("{at} is null: leave it out instead")),
                None => Some(format!("{at} is not a field")),
                Some(read) => lost_field(value, read, &at),
            }
        }),
        (Value::Array(given), Value::Array(read)) if given.len() == read.len() => given
            .iter()
            .zip(read)
            .enumerate()
            .find_map(|(i, (g, r))| lost_field(g, r, &format!("{path}[{i}]"))),
        (given, read) if given == read => None,
        (given, _) => Some(format!("{path} = {given} is not a valid value")),
    }
}

/// An RFC 1123 label, as Kubernetes requires of volume names.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(vec![Volume {
                    name: "data".into(),
                    empty_dir: Some(Default::default()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn refusal(annotations: &[(&str, &str)]) -> String {
        match read(&pod(annotations)) {
            Ok(requests) => panic!("accepted: {requests:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_rule_key_is_distinct_and_an_istio_annotation() {
        let keys: BTreeSet<_> = RULES.iter().map(|r| r.key).collect();
        assert_eq!(keys.len(), RULES.len());
        assert!(keys.iter().all(|k| k.contains("istio.io/")));
    }

    #[test]
    fn interception_modes_are_honoured_warned_or_refused() {
        let requests = read(&pod(&[(
            contract::ANNOTATION_INTERCEPTION_MODE,
            "REDIRECT",
        )]))
        .expect("REDIRECT");
        assert!(!requests.no_capture && requests.warnings.is_empty());

        let requests =
            read(&pod(&[(contract::ANNOTATION_INTERCEPTION_MODE, "NONE")])).expect("NONE");
        assert!(requests.no_capture);
        assert!(requests.warnings[0].contains("PeerAuthentication"));

        let requests =
            read(&pod(&[(contract::ANNOTATION_INTERCEPTION_MODE, "TPROXY")])).expect("TPROXY");
        assert!(!requests.no_capture);
        assert!(
            requests.warnings[0].contains("TPROXY") && requests.warnings[0].contains("REDIRECT")
        );

        for bad in ["redirect", "", "IPTABLES"] {
            let message = refusal(&[(contract::ANNOTATION_INTERCEPTION_MODE, bad)]);
            assert!(
                message.contains(contract::ANNOTATION_INTERCEPTION_MODE)
                    && message.contains("Write \"REDIRECT\""),
                "{message}"
            );
        }
    }

    #[test]
    fn capture_annotations_are_reported_moot_without_capture() {
        let requests = read(&pod(&[
            (contract::ANNOTATION_INTERCEPTION_MODE, "NONE"),
            (contract::ANNOTATION_EXCLUDE_INBOUND_PORTS, "9090"),
        ]))
        .expect("accepted");
        assert_eq!(requests.warnings.len(), 2);
        assert!(
            requests.warnings[1].starts_with(contract::ANNOTATION_EXCLUDE_INBOUND_PORTS),
            "{:?}",
            requests.warnings
        );
    }

    #[test]
    fn templates_sidecar_is_honoured_mixed_is_warned_unknown_is_refused() {
        for ok in ["sidecar", "sidecar,sidecar,sidecar", " sidecar "] {
            let requests =
                read(&pod(&[(contract::ANNOTATION_INJECT_TEMPLATES, ok)])).expect("sidecar");
            assert!(requests.warnings.is_empty(), "{ok}");
        }
        let requests = read(&pod(&[(
            contract::ANNOTATION_INJECT_TEMPLATES,
            "sidecar,grpc-agent",
        )]))
        .expect("mixed");
        assert!(requests.warnings[0].contains("grpc-agent"));
        for bad in ["custom", "", " , ", "sidecar,gateway"] {
            let message = refusal(&[(contract::ANNOTATION_INJECT_TEMPLATES, bad)]);
            assert!(
                message.contains(contract::ANNOTATION_INJECT_TEMPLATES),
                "{message}"
            );
        }
        assert!(proxyless_only("grpc-simple"));
        assert!(proxyless_only("grpc-agent, grpc-simple"));
        assert!(!proxyless_only("sidecar,grpc-agent"));
        assert!(!proxyless_only(""));
        assert!(!proxyless_only("custom"));
    }

    #[test]
    fn native_sidecar_false_is_warned_true_is_what_weft_does() {
        let requests = read(&pod(&[(contract::ANNOTATION_NATIVE_SIDECAR, "true")])).expect("true");
        assert!(requests.warnings.is_empty());
        let requests =
            read(&pod(&[(contract::ANNOTATION_NATIVE_SIDECAR, "false")])).expect("false");
        assert!(requests.warnings[0].contains("native sidecar"));
    }

    #[test]
    fn proxy_image_is_taken_unless_it_cannot_be_an_image() {
        let requests = read(&pod(&[(contract::ANNOTATION_PROXY_IMAGE, "weft:dev")])).expect("ok");
        assert_eq!(requests.proxy_image.as_deref(), Some("weft:dev"));
        for bad in ["", "a b", "x\n"] {
            let message = refusal(&[(contract::ANNOTATION_PROXY_IMAGE, bad)]);
            assert!(message.contains("image reference"), "{message}");
        }
    }

    #[test]
    fn user_volumes_and_mounts_are_read_from_istios_json() {
        let requests = read(&pod(&[
            (
                contract::ANNOTATION_USER_VOLUME,
                r#"{"v1":{"persistentVolumeClaim":{"claimName":"pvc"}},"v2":{"configMap":{"name":"cm","items":[{"key":"k","path":"p"}]}}}"#,
            ),
            (
                contract::ANNOTATION_USER_VOLUME_MOUNT,
                r#"{"v1":{"mountPath":"/mnt/1","readOnly":true},"data":{"mountPath":"/mnt/data"}}"#,
            ),
        ]))
        .expect("valid");
        let names: Vec<_> = requests.user_volumes.iter().map(|v| &v.name).collect();
        assert_eq!(names, ["v1", "v2"]);
        assert_eq!(requests.user_mounts[0].mount_path, "/mnt/1");
        assert_eq!(requests.user_mounts[0].read_only, Some(true));
        assert_eq!(requests.user_mounts[1].name, "data");
        assert!(requests.warnings.is_empty());
    }

    #[test]
    fn bad_user_volumes_are_refused_naming_the_problem() {
        let volume = contract::ANNOTATION_USER_VOLUME;
        let mount = contract::ANNOTATION_USER_VOLUME_MOUNT;
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(volume, "not json")], "expected ident"),
            (&[(volume, "[]")], "a JSON object"),
            (
                &[(volume, r#"{"a":{"emptyDir":{}},"a":{"emptyDir":{}}}"#)],
                "given twice",
            ),
            (&[(volume, r#"{"a":"emptyDir"}"#)], "not an object"),
            (
                &[(volume, r#"{"a":{"name":"a","emptyDir":{}}}"#)],
                "leave name out",
            ),
            (
                &[(volume, r#"{"A_b":{"emptyDir":{}}}"#)],
                "not a volume name",
            ),
            (
                &[(
                    volume,
                    r#"{"a":{"persistentVolumeClam":{"claimName":"x"}}}"#,
                )],
                "persistentVolumeClam is not a field",
            ),
            (
                &[(volume, r#"{"a":{"configMap":{"name":"c","itemz":[]}}}"#)],
                "configMap.itemz is not a field",
            ),
            (
                &[(volume, r#"{"a":{"emptyDir":null}}"#)],
                "emptyDir is null",
            ),
            (&[(volume, r#"{"a":{}}"#)], "names 0 sources"),
            (
                &[(
                    volume,
                    r#"{"a":{"emptyDir":{},"secret":{"secretName":"s"}}}"#,
                )],
                "names 2 sources (emptyDir, secret)",
            ),
            (
                &[(volume, r#"{"a":{"secret":{"defaultMode":"420"}}}"#)],
                "is not a Kubernetes volume",
            ),
            (
                &[(volume, r#"{"data":{"emptyDir":{}}}"#)],
                "already a volume of the pod",
            ),
            (
                &[(volume, r#"{"weft-work":{"emptyDir":{}}}"#)],
                "weft's injection adds",
            ),
            (
                &[(mount, r#"{"data":{"readOnly":true}}"#)],
                "has no mountPath",
            ),
            (
                &[(mount, r#"{"data":{"mountPath":"rel"}}"#)],
                "not an absolute path",
            ),
            (
                &[(mount, r#"{"data":{"mountPath":"/var/run/weft/"}}"#)],
                "already taken",
            ),
            (
                &[(mount, r#"{"nope":{"mountPath":"/x"}}"#)],
                "no volume named \"nope\"",
            ),
            (
                &[(mount, r#"{"data":{"mountPath":"/x","readonly":true}}"#)],
                "readonly is not a field",
            ),
        ];
        for (annotations, wanted) in cases {
            let message = refusal(annotations);
            let key = annotations[0].0;
            assert!(
                message.contains(key) && message.contains(wanted) && message.contains("Write"),
                "{annotations:?}: {message}"
            );
        }
    }

    #[test]
    fn proxy_resources_are_quantities() {
        let requests = read(&pod(&[
            (contract::ANNOTATION_PROXY_CPU, "100m"),
            (contract::ANNOTATION_PROXY_MEMORY, "64Mi"),
            (contract::ANNOTATION_PROXY_CPU_LIMIT, "2"),
            (contract::ANNOTATION_PROXY_MEMORY_LIMIT, "1G"),
        ]))
        .expect("valid");
        let read: Vec<_> = requests
            .resources
            .iter()
            .map(|r| (r.resource, r.limit, r.value.as_str()))
            .collect();
        assert_eq!(
            read,
            [
                ("cpu", false, "100m"),
                ("memory", false, "64Mi"),
                ("cpu", true, "2"),
                ("memory", true, "1G"),
            ]
        );
        assert!(requests.warnings.is_empty());
        for bad in ["", "100 m", "lots", "1.2.3", "-1", "10MB", "--1", "1e", "."] {
            let message = refusal(&[(contract::ANNOTATION_PROXY_MEMORY, bad)]);
            assert!(
                message.contains(contract::ANNOTATION_PROXY_MEMORY) && message.contains("quantity"),
                "{bad}: {message}"
            );
        }
        assert_eq!(quantity_value("100m"), Some(0.1));
        assert_eq!(quantity_value("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity_value("1e3"), Some(1000.0));
        assert_eq!(quantity_value(".5"), Some(0.5));
    }

    #[test]
    fn the_status_port_is_taken_refused_when_taken_and_warned_when_zero() {
        let requests = read(&pod(&[(contract::ANNOTATION_STATUS_PORT, "15030")])).expect("ok");
        assert_eq!(requests.status_port, Some(15030));
        let requests = read(&pod(&[(contract::ANNOTATION_STATUS_PORT, "15020")])).expect("ok");
        assert_eq!(requests.status_port, None);
        assert!(requests.warnings.is_empty());
        let requests = read(&pod(&[(contract::ANNOTATION_STATUS_PORT, "0")])).expect("ok");
        assert_eq!(requests.status_port, None);
        assert!(requests.warnings[0].contains("always serves"));
        for bad in ["15021", "15006", "http", "70000"] {
            let message = refusal(&[(contract::ANNOTATION_STATUS_PORT, bad)]);
            assert!(
                message.contains(contract::ANNOTATION_STATUS_PORT),
                "{message}"
            );
        }
    }

    #[test]
    fn readiness_annotations_set_the_probe_and_the_rest_are_warned() {
        let requests = read(&pod(&[
            ("readiness.status.sidecar.istio.io/initialDelaySeconds", "0"),
            ("readiness.status.sidecar.istio.io/periodSeconds", "2"),
            ("readiness.status.sidecar.istio.io/failureThreshold", "30"),
            ("readiness.status.sidecar.istio.io/applicationPorts", "8080"),
        ]))
        .expect("ok");
        assert_eq!(
            requests.readiness,
            BTreeMap::from([
                ("initialDelaySeconds", 0),
                ("periodSeconds", 2),
                ("failureThreshold", 30),
            ])
        );
        assert_eq!(requests.warnings.len(), 1);
        assert!(
            requests.warnings[0].starts_with("readiness.status.sidecar.istio.io/applicationPorts")
        );
        for (key, bad) in [
            ("readiness.status.sidecar.istio.io/periodSeconds", "0"),
            ("readiness.status.sidecar.istio.io/failureThreshold", "x"),
            (
                "readiness.status.sidecar.istio.io/initialDelaySeconds",
                "-1",
            ),
        ] {
            let message = refusal(&[(key, bad)]);
            assert!(
                message.contains(key) && message.contains("at least"),
                "{message}"
            );
        }
    }

    #[test]
    fn proxy_config_fields_are_applied_or_named_in_a_warning() {
        let requests = read(&pod(&[(
            contract::ANNOTATION_PROXY_CONFIG,
            "concurrency: 3\nterminationDrainDuration: 20s\nholdApplicationUntilProxyStarts: true\n\
             statusPort: 15030\nproxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n  ISTIO_META_X: \"1\"\ntracing: {}\n",
        )]))
        .expect("ok");
        assert_eq!(requests.concurrency, Some(3));
        assert_eq!(requests.drain_duration.as_deref(), Some("20s"));
        assert_eq!(requests.status_port, Some(15030));
        assert_eq!(requests.dns_capture, Some(true));
        assert_eq!(requests.warnings.len(), 1, "{:?}", requests.warnings);
        assert!(
            requests.warnings[0].contains("does not apply proxyMetadata.ISTIO_META_X, tracing, so"),
            "{:?}",
            requests.warnings
        );
        // JSON is YAML; the status annotation wins over statusPort.
        let requests = read(&pod(&[
            (
                contract::ANNOTATION_PROXY_CONFIG,
                r#"{"statusPort": 15030, "holdApplicationUntilProxyStarts": false, "concurrency": 0}"#,
            ),
            (contract::ANNOTATION_STATUS_PORT, "15040"),
        ]))
        .expect("ok");
        assert_eq!(requests.status_port, Some(15040));
        assert_eq!(requests.concurrency, None);
        assert_eq!(requests.warnings.len(), 2, "{:?}", requests.warnings);
        for (bad, wanted) in [
            ("- a\n- b", "not a mapping"),
            ("concurrency: two", "concurrency"),
            ("terminationDrainDuration: soon", "terminationDrainDuration"),
            ("statusPort: 15006", "already listens"),
            ("holdApplicationUntilProxyStarts: maybe", "true or false"),
            ("proxyMetadata: [a]", "not a mapping of names"),
            (
                "proxyMetadata: {ISTIO_META_DNS_CAPTURE: yes please}",
                "not \"true\"",
            ),
            ("{", "not YAML"),
        ] {
            let message = refusal(&[(contract::ANNOTATION_PROXY_CONFIG, bad)]);
            assert!(
                message.contains(contract::ANNOTATION_PROXY_CONFIG) && message.contains(wanted),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn an_istio_annotation_weft_does_not_read_is_warned_by_name() {
        let requests = read(&pod(&[
            ("sidecar.istio.io/logLevel", "debug"),
            ("proxy.istio.io/overrides", "{}"),
            ("status.sidecar.istio.io/other", "1"),
            // Read by weft elsewhere, or not Istio's: no warning.
            (contract::ANNOTATION_INCLUDE_OUTBOUND_PORTS, "8080"),
            (contract::ANNOTATION_REWRITE_PROBES, "false"),
            (contract::LABEL_SIDECAR_INJECT, "true"),
            ("example.com/istio.io", "x"),
        ]))
        .expect("ok");
        let named: Vec<&str> = requests
            .warnings
            .iter()
            .map(|w| w.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(
            named,
            [
                "proxy.istio.io/overrides",
                "sidecar.istio.io/logLevel",
                "status.sidecar.istio.io/other"
            ]
        );
        assert!(requests.warnings[0].contains("weft does not read"));
    }

    #[test]
    fn the_new_capture_annotations_are_moot_without_capture() {
        let requests = read(&pod(&[
            (contract::ANNOTATION_INTERCEPTION_MODE, "NONE"),
            (
                contract::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES,
                "198.18.0.0/15",
            ),
            (contract::ANNOTATION_KUBEVIRT_INTERFACES, "vif0"),
        ]))
        .expect("accepted");
        assert_eq!(requests.warnings.len(), 3, "{:?}", requests.warnings);
        assert!(requests.warnings[1].starts_with(contract::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES));
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("user-volume-1"));
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
