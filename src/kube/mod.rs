//! What the control plane's parts share below the operator process: watch-backed stores of API
//! objects ([`reflect`]) and the one metrics registry ([`metrics`]). Controllers, discovery and
//! the operator's endpoints use them; `operator/` only wires them together.

pub mod metrics;
pub mod reflect;
