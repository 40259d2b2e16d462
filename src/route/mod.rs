//! Outbound HTTP routing, kube-free and shared by both planes: the route table of one Service
//! as the control plane computes it (from Istio VirtualServices and DestinationRule subsets,
//! SMI TrafficSplits) and the snapshot carries it ([`model`]), and the pure selection the
//! proxy runs per request ([`select`]); a DestinationRule's balancing and outlier detection
//! ([`policy`], [`balance`], [`outlier`]); a gateway proxy's listeners ([`gateway`]). The CLI
//! prints the same tables.

pub mod action;
pub mod balance;
pub mod compile;
pub mod cors;
pub mod egress;
#[cfg(feature = "control-plane")]
pub mod gamma;
pub mod gateway;
#[cfg(feature = "control-plane")]
pub mod gateway_api;
pub mod istio;
pub mod istio_actions;
pub mod istio_policy;
pub mod l4;
pub mod model;
pub mod outlier;
pub mod policy;
pub mod reference_grant;
pub mod se_merge;
pub mod select;
pub mod smi;
pub mod source;

pub use action::{Actions, HeaderEdits, Retries, RetryOn, TryOutcome};
pub use model::{Destination, HttpRoute, RequestMatch, StringMatch};
pub use policy::TrafficPolicy;
pub use select::{Choice, RequestView, Selected, choose_route, pick_weighted};
