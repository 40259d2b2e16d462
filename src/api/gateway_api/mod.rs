//! The Kubernetes Gateway API (`gateway.networking.k8s.io/v1`, standard channel, v1.6.3 as
//! vendored in `config/gateway-api`): the kinds weft watches and the strict reading of their
//! specs. Routes are watched with their spec as raw JSON and read strictly per object
//! ([`httproute::Spec::parse`], [`grpcroute::Spec::parse`]), so one route weft cannot apply is
//! refused by name in its own status and never breaks the watch of the others (as
//! [`crate::api::virtualservice`] does). Field names follow the spec exactly.

pub mod common;
pub mod gateway;
pub mod grpcroute;
pub mod httproute;
pub mod l4route;
mod route;

pub use gateway::{Gateway, GatewayClass, ReferenceGrant};
pub use grpcroute::GRPCRoute;
pub use httproute::HTTPRoute;
pub use l4route::{TCPRoute, TLSRoute};
pub use route::RouteSpec;

/// The API group of every kind here.
pub const GROUP: &str = "gateway.networking.k8s.io";
pub const VERSION: &str = "v1";

/// The `controllerName` weft writes in a route's `status.parents[]` (GAMMA) and that a
/// GatewayClass names to be implemented by weft.
pub const CONTROLLER_NAME: &str = "weft.dev/gateway-controller";

/// Reads one part of a raw spec strictly: an unknown field (one of the experimental channel,
/// or anything a CRD that keeps unknown fields let through) is an error naming the field,
/// prefixed with `at` (`spec.rules[2]`).
pub(crate) fn strict<T: serde::de::DeserializeOwned>(
    at: &str,
    raw: &serde_json::Value,
) -> Result<T, String> {
    T::deserialize(raw).map_err(|e| format!("{at}: {e}"))
}
