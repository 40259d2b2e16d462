//! Config distribution (SPEC §8): what each proxy needs, computed from the cluster and
//! streamed to it.
//!
//! - [`policy`]: effective mTLS modes (PeerAuthentication precedence), pure.
//! - [`authz`]: which AuthorizationPolicies select which workload, compiled once, pure.
//! - [`routes`]: DestinationRules, VirtualServices and TrafficSplits onto the service tables.
//! - [`gamma`]: Gateway API HTTPRoutes/GRPCRoutes with a Service parent onto the same tables;
//!   [`gamma_status`] writes their `status.parents`.
//! - [`egress`]: ServiceEntries into each proxy's table of declared external services.
//! - [`model`]: objects → shared index → one proxy's snapshot and its content-hash version, pure.
//! - [`status`]: the `WeftAccepted` condition on each Istio policy and route, leader-written.
//! - [`server`]: reflectors, debounce, the stream and ack routes, the per-replica registry.
//!
//! The snapshot schema and the wire framing live in [`crate::snapshot`], shared with the proxy.

pub mod authz;
pub mod egress;
pub mod gamma;
pub mod gamma_status;
pub mod gateway_api;
pub mod gateway_api_deploy;
pub mod model;
pub mod policy;
pub mod routes;
pub mod server;
pub mod status;

pub use model::{MeshIndex, MeshView};
pub use server::{DiscoverySettings, DiscoveryState, PeerCert, ProxyList, ProxyRecord};
