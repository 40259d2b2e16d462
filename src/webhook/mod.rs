//! The sidecar injector's pure core: decide whether a pod gets a proxy (`decision`), build the
//! JSON Patch that adds it (`inject`), and answer an AdmissionReview (`review`). No I/O and no
//! kube client here; the HTTPS server and the watches that fill `MeshState` wrap around it.
//! `webhook/README.md` holds the decision table and what injection adds.

pub mod decision;
pub mod inject;
mod probes;
pub mod review;
pub mod selector;
pub mod state;

pub use decision::{Decision, Injection, SkipReason, decide};
pub use inject::{InjectError, InjectionStatus, inject};
pub use review::{MAX_REVIEW_BODY_BYTES, ReviewError, Reviewed, review, review_detailed};
pub use state::{EffectiveMeshConfig, ForeignInjector, InjectorSettings, MeshState};
