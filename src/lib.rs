//! weft: a service mesh for Kubernetes. The library holds both planes; the binaries in
//! `src/bin/` are thin. Everything under the `control-plane` feature may talk to Kubernetes;
//! `contract`, `duration` and the `proxy` side never do.

pub mod contract;
pub mod duration;

#[cfg(feature = "control-plane")]
pub mod api;
#[cfg(feature = "control-plane")]
pub mod cli;
