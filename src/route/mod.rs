//! Outbound HTTP routing, kube-free and shared by both planes: the route table of one Service
//! as the control plane computes it (from Istio VirtualServices and DestinationRule subsets,
//! SMI TrafficSplits) and the snapshot carries it ([`model`]), and the pure selection the
//! proxy runs per request ([`select`]). The CLI prints the same tables.

pub mod compile;
pub mod istio;
pub mod model;
pub mod select;
pub mod smi;

pub use model::{Destination, HttpRoute, RequestMatch, StringMatch};
pub use select::{Choice, RequestView, Selected, choose_route, pick_weighted};
