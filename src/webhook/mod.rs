//! The admission webhooks' pure core: decide whether a pod gets a proxy (`decision`), build the
//! JSON Patch that adds it (`inject`), and answer an AdmissionReview (`review`); keep revisions
//! and tags consistent (`validate`) and fill a new revision from the default one
//! (`defaulting`). No I/O and no kube client here; the HTTPS server and the watches that fill
//! `MeshState` wrap around it.
//! `webhook/README.md` holds the decision table and what injection adds.

mod annotations;
pub mod decision;
pub mod defaulting;
pub mod inject;
mod probes;
pub mod review;
pub mod selector;
pub mod state;
pub mod validate;

pub use decision::{Decision, Injection, SkipReason, decide};
pub use defaulting::default_meshconfig;
pub use inject::{InjectError, Injected, InjectionStatus, inject};
pub use review::{MAX_REVIEW_BODY_BYTES, ReviewError, Reviewed, review, review_detailed};
pub use state::{EffectiveMeshConfig, ForeignInjector, InjectorSettings, MeshState};
pub use validate::validate;
