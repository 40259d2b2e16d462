//! App probe rewriting (SPEC §5). The kubelet probes from the node to the pod IP, which under
//! STRICT mTLS the proxy would refuse; so each httpGet/tcpSocket/grpc probe of an app container
//! becomes an httpGet on the proxy's `:15020/app-health/<container>/<kind>`, and the proxy
//! runs the original probe from inside the pod (the originals travel in `WEFT_APP_PROBERS`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value};

use crate::contract;

/// One probe to replace: `spec.containers[container].<field>` becomes `probe`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ProbeReplacement {
    pub container: usize,
    pub field: &'static str,
    pub probe: Probe,
}

/// The rewritten probes and the originals, keyed container → kind (`livez`, ...).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct ProbeRewrite {
    pub replacements: Vec<ProbeReplacement>,
    pub probers: BTreeMap<String, BTreeMap<&'static str, Value>>,
}

/// Rewrites every probe it can. A probe on a named port the container does not declare is
/// left as it is: the kubelet would fail it either way, and it reports that more clearly.
pub(super) fn rewrite_app_probes(containers: &[Container]) -> ProbeRewrite {
    let mut rewrite = ProbeRewrite::default();
    for (index, container) in containers.iter().enumerate() {
        let probes = [
            (
                "livenessProbe",
                contract::APP_HEALTH_LIVEZ,
                &container.liveness_probe,
            ),
            (
                "readinessProbe",
                contract::APP_HEALTH_READYZ,
                &container.readiness_probe,
            ),
            (
                "startupProbe",
                contract::APP_HEALTH_STARTUPZ,
                &container.startup_probe,
            ),
        ];
        for (field, kind, probe) in probes {
            let Some(probe) = probe else { continue };
            let Some(original) = original_handler(probe, container) else {
                continue;
            };
            rewrite
                .probers
                .entry(container.name.clone())
                .or_default()
                .insert(kind, original);
            rewrite.replacements.push(ProbeReplacement {
                container: index,
                field,
                probe: rewritten(probe, &container.name, kind),
            });
        }
    }
    rewrite
}

/// The probe's handler as the proxy needs it: `{"httpGet"|"tcpSocket"|"grpc": {...},
/// "timeoutSeconds": n}` with a named port replaced by its number. `None` for exec probes
/// (they run inside the container and need no help) and unresolvable ports.
fn original_handler(probe: &Probe, container: &Container) -> Option<Value> {
    let (key, mut handler) = if let Some(http) = &probe.http_get {
        ("httpGet", serde_json::to_value(http).ok()?)
    } else if let Some(tcp) = &probe.tcp_socket {
        ("tcpSocket", serde_json::to_value(tcp).ok()?)
    } else if let Some(grpc) = &probe.grpc {
        ("grpc", serde_json::to_value(grpc).ok()?)
    } else {
        return None;
    };
    let port = match (&probe.http_get, &probe.tcp_socket) {
        (Some(http), _) => resolve_port(&http.port, container)?,
        (None, Some(tcp)) => resolve_port(&tcp.port, container)?,
        _ => probe.grpc.as_ref()?.port,
    };
    if let Value::Object(fields) = &mut handler {
        fields.insert("port".into(), Value::from(port));
    }
    let mut original = Map::new();
    original.insert(key.into(), handler);
    // The kubelet's default, made explicit so the proxy needs no knowledge of it.
    original.insert(
        "timeoutSeconds".into(),
        Value::from(probe.timeout_seconds.unwrap_or(1)),
    );
    Some(Value::Object(original))
}

fn resolve_port(port: &IntOrString, container: &Container) -> Option<i32> {
    match port {
        IntOrString::Int(number) => Some(*number),
        IntOrString::String(name) => name.parse().ok().or_else(|| {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
        }),
    }
}

/// The same probe (timings kept) asking the proxy instead of the app.
fn rewritten(probe: &Probe, container: &str, kind: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(app_health_path(container, kind)),
            port: IntOrString::Int(i32::from(contract::PORT_STATS)),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        tcp_socket: None,
        grpc: None,
        exec: None,
        ..probe.clone()
    }
}

pub fn app_health_path(container: &str, kind: &str) -> String {
    format!("{}{container}/{kind}", contract::PATH_APP_HEALTH_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, GRPCAction, TCPSocketAction};
    use serde_json::json;

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn http_probe_on_named_port_is_rewritten_and_resolved() {
        let mut c = container("web");
        c.liveness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            period_seconds: Some(7),
            ..Default::default()
        });
        let rewrite = rewrite_app_probes(&[c]);
        assert_eq!(
            rewrite.probers["web"]["livez"],
            json!({"httpGet": {"path": "/healthz", "port": 8080}, "timeoutSeconds": 1})
        );
        let [replacement] = rewrite.replacements.as_slice() else {
            panic!("one replacement expected: {rewrite:?}")
        };
        assert_eq!(replacement.field, "livenessProbe");
        assert_eq!(replacement.probe.period_seconds, Some(7));
        let http = replacement.probe.http_get.clone().unwrap_or_default();
        assert_eq!(http.path.as_deref(), Some("/app-health/web/livez"));
        assert_eq!(http.port, IntOrString::Int(15020));
    }

    #[test]
    fn tcp_and_grpc_probes_become_http_probes() {
        let mut c = container("api");
        c.readiness_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(9000),
                ..Default::default()
            }),
            timeout_seconds: Some(3),
            ..Default::default()
        });
        c.startup_probe = Some(Probe {
            grpc: Some(GRPCAction {
                port: 9090,
                service: Some("ready".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let rewrite = rewrite_app_probes(&[c]);
        assert_eq!(
            rewrite.probers["api"]["readyz"],
            json!({"tcpSocket": {"port": 9000}, "timeoutSeconds": 3})
        );
        assert_eq!(
            rewrite.probers["api"]["startupz"],
            json!({"grpc": {"port": 9090, "service": "ready"}, "timeoutSeconds": 1})
        );
        for r in &rewrite.replacements {
            assert!(r.probe.tcp_socket.is_none() && r.probe.grpc.is_none());
            assert!(r.probe.http_get.is_some());
        }
    }

    #[test]
    fn exec_probes_and_unknown_named_ports_stay() {
        let mut c = container("worker");
        c.liveness_probe = Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        });
        c.readiness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("metrics".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(rewrite_app_probes(&[c]), ProbeRewrite::default());
    }
}
