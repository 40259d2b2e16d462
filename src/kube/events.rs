//! Events the control plane records (events.k8s.io/v1). One mechanism for all of them:
//! the Event's name is derived from what it is about and its message, so a second replica, a
//! restarted operator or the next loop gets AlreadyExists instead of repeating it.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};

use super::is_conflict;

/// The object an Event is about.
pub struct Regarding<'a> {
    /// `v1` for core kinds, `group/version` for others.
    pub api_version: &'a str,
    /// Namespace, Secret, Pod, AuthorizationPolicy, ...
    pub kind: &'a str,
    /// None for cluster-scoped objects.
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub uid: Option<String>,
}

/// Events about cluster-scoped objects live here (API server validation).
const CLUSTER_SCOPED_EVENT_NAMESPACE: &str = "default";
/// The API server caps `note` at 1 kB.
const NOTE_LIMIT: usize = 1000;

/// A Warning Event: something a person should look at.
pub fn warning(
    regarding: Regarding<'_>,
    reason: &str,
    action: &str,
    message: &str,
    instance: &str,
) -> Event {
    event("Warning", regarding, reason, action, message, instance)
}

/// A Normal Event: something worth knowing that needs no action.
pub fn normal(
    regarding: Regarding<'_>,
    reason: &str,
    action: &str,
    message: &str,
    instance: &str,
) -> Event {
    event("Normal", regarding, reason, action, message, instance)
}

/// An Event whose name is the same for the same object, reason and message.
fn event(
    type_: &str,
    regarding: Regarding<'_>,
    reason: &str,
    action: &str,
    message: &str,
    instance: &str,
) -> Event {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!(
            "{}\n{}\n{}\n{reason}\n{message}",
            regarding.kind,
            regarding.namespace.unwrap_or_default(),
            regarding.name
        )
        .as_bytes(),
    );
    let fingerprint: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let namespace = regarding
        .namespace
        .unwrap_or(CLUSTER_SCOPED_EVENT_NAMESPACE);
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{}.{fingerprint}",
                regarding.name,
                reason.to_ascii_lowercase()
            )),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        type_: Some(type_.into()),
        reason: Some(reason.into()),
        action: Some(action.into()),
        note: Some(message.chars().take(NOTE_LIMIT).collect()),
        regarding: Some(ObjectReference {
            api_version: Some(regarding.api_version.into()),
            kind: Some(regarding.kind.into()),
            namespace: regarding.namespace.map(str::to_string),
            name: Some(regarding.name.into()),
            uid: regarding.uid,
            ..Default::default()
        }),
        reporting_controller: Some("weft.dev/operator".into()),
        reporting_instance: Some(instance.chars().take(128).collect()),
        ..Default::default()
    }
}

/// Creates `event`; one that already exists (the same report) is not an error.
pub async fn publish(client: &Client, event: Event) -> Result<(), kube::Error> {
    let namespace = event
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| CLUSTER_SCOPED_EVENT_NAMESPACE.into());
    let api = Api::<Event>::namespaced(client.clone(), &namespace);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn about(name: &str, namespace: Option<&'static str>) -> Regarding<'static> {
        Regarding {
            api_version: "v1",
            kind: if namespace.is_some() {
                "Secret"
            } else {
                "Namespace"
            },
            namespace,
            name: Box::leak(name.to_string().into_boxed_str()),
            uid: None,
        }
    }

    #[test]
    fn the_same_report_gets_the_same_name() {
        let a = warning(about("pets", None), "Why", "Act", "x wins over y", "op-1");
        let b = warning(about("pets", None), "Why", "Act", "x wins over y", "op-2");
        let c = warning(about("pets", None), "Why", "Act", "x wins over z", "op-1");
        let d = warning(about("pets", None), "Other", "Act", "x wins over y", "op-1");
        assert_eq!(a.metadata.name, b.metadata.name);
        assert_ne!(a.metadata.name, c.metadata.name);
        assert_ne!(a.metadata.name, d.metadata.name);
        assert_eq!(a.type_.as_deref(), Some("Warning"));
        let n = normal(about("pets", None), "Why", "Act", "x wins over y", "op-1");
        assert_eq!(n.type_.as_deref(), Some("Normal"));
    }

    #[test]
    fn cluster_scoped_objects_report_in_default_and_namespaced_ones_in_theirs() {
        let ns = warning(about("pets", None), "Why", "Act", "m", "op");
        assert_eq!(ns.metadata.namespace.as_deref(), Some("default"));
        let secret = warning(
            about("weft-ca", Some("weft-system")),
            "Why",
            "Act",
            "m",
            "op",
        );
        assert_eq!(secret.metadata.namespace.as_deref(), Some("weft-system"));
        let regarding = secret.regarding.unwrap_or_default();
        assert_eq!(regarding.kind.as_deref(), Some("Secret"));
        assert_eq!(regarding.namespace.as_deref(), Some("weft-system"));
    }

    #[test]
    fn a_long_message_is_cut_to_the_api_limit() {
        let long = "é".repeat(3000);
        let e = warning(about("pets", None), "Why", "Act", &long, "op");
        assert_eq!(e.note.unwrap_or_default().chars().count(), NOTE_LIMIT);
    }
}
