//! The operator process (`weft operator`): controllers and the endpoints every replica serves.

pub mod ca_bundle;
pub mod csr;
pub mod injector;
pub mod issuer;
pub mod leader;
pub mod readiness;
pub mod rotation;
pub mod rotation_controller;
pub mod run;
pub mod serving;
