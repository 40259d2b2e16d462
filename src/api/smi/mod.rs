//! SMI's kinds, read-only, as OSM users have them: `TrafficTarget`
//! (`access.smi-spec.io/v1alpha3`), `HTTPRouteGroup` and `TCPRoute` (`specs.smi-spec.io/v1alpha4`),
//! `TrafficSplit` (`split.smi-spec.io/v1alpha2`, read by [`crate::route::smi`]).
//! Specs are watched as raw JSON and read strictly per object by [`crate::authz::smi`], so one
//! object weft cannot read is refused by name without breaking the watch of the others. For
//! clusters without OSM, `config/smi-api` ships the CRDs.

pub mod http_route_group;
pub mod tcp_route;
pub mod traffic_split;
pub mod traffic_target;

pub use http_route_group::HTTPRouteGroup;
pub use tcp_route::TCPRoute;
pub use traffic_split::TrafficSplit;
pub use traffic_target::TrafficTarget;
