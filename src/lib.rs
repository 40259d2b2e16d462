//! weft: a service mesh for Kubernetes. The library holds both planes; the binaries in
//! `src/bin/` are thin. Everything under the `control-plane` feature may talk to Kubernetes;
//! `authz`, `contract`, `duration`, `pki`, `route`, `snapshot` and the `proxy` side never do.

pub mod authz;
pub mod contract;
pub mod duration;
pub mod pki;
pub mod route;
pub mod snapshot;

#[cfg(feature = "control-plane")]
pub mod api;
#[cfg(feature = "control-plane")]
pub mod cli;
#[cfg(feature = "control-plane")]
pub mod controllers;
#[cfg(feature = "control-plane")]
pub mod discovery;
#[cfg(feature = "control-plane")]
pub mod kube;
#[cfg(feature = "control-plane")]
pub mod operator;
#[cfg(feature = "proxy")]
pub mod proxy;
#[cfg(feature = "control-plane")]
pub mod webhook;
