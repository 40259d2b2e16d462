//! What the control plane's parts share below the operator process: watch-backed stores of API
//! objects ([`reflect`]), the one metrics registry ([`metrics`]), Events ([`events`]) and the
//! name of a pod's workload ([`workload`]). Controllers, discovery and
//! the operator's endpoints use them; `operator/` only wires them together.

pub mod events;
pub mod metrics;
pub mod reflect;
pub mod workload;

/// An API answer that the object already exists or changed under us (HTTP 409).
pub(crate) fn is_conflict(e: &::kube::Error) -> bool {
    matches!(e, ::kube::Error::Api(status) if status.code == 409)
}
