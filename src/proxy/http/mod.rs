//! The proxy's HTTP layer (hyper 1): telling HTTP from other bytes, serving a downstream
//! connection as HTTP/1.1 or HTTP/2, forwarding its requests (upgrades tunnelled) over one
//! upstream connection or a pool of them, one request's metrics and log line, and the two
//! pipelines: inbound (authorize, forward to the app) and outbound (pick an endpoint per
//! request, apply the route's actions and retries). The pieces below the pipelines know neither side, so a gateway can reuse them.
//! HTTP/2 connections write through [`coalesce`], so a message's frames leave together.

pub mod actions;
pub mod authz;
pub mod coalesce;
pub mod detect;
pub mod exchange;
pub mod inbound;
pub mod outbound;
pub mod pool;
pub mod pool_retire;
pub mod replay;
pub mod server;
pub mod upstream;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream of any kind (TCP, TLS, sniffed, coalescing), boxed where it enters hyper:
/// hyper's and h2's connection machinery is then compiled once per protocol and service
/// instead of once per stream type, which keeps the binary (most of the proxy's RSS,
/// docs/proxy.md "Memory") smaller. One indirect call per read or write.
pub type BoxIo = Box<dyn Io>;

/// What [`BoxIo`] holds.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
