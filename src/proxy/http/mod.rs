//! The proxy's HTTP layer (hyper 1): telling HTTP from other bytes, serving a downstream
//! connection as HTTP/1.1 or HTTP/2, forwarding its requests over an upstream connection
//! (upgrades tunnelled), and the inbound pipeline that authorizes each request. The server
//! and forwarding pieces know nothing of inbound, so outbound and a gateway can reuse them.

pub mod authz;
pub mod detect;
pub mod inbound;
pub mod server;
pub mod upstream;
