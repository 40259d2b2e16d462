//! Authorization, kube-free: Istio's `AuthorizationPolicy` and SMI's `TrafficTarget` compiled
//! into one model of matchers ([`istio`], [`smi`] → [`model`]), request paths normalized before anything matches them ([`path`]),
//! and the one evaluator ([`evaluate`]) that the proxy runs per request and `weft authz
//! explain` runs for a user, so what the CLI explains is what the proxy does.

mod eval;
pub mod istio;
pub mod model;
pub mod path;
pub mod smi;

pub use eval::{
    Decision, DryRun, Headers, Http, Prefilter, Reason, Request, RuleRef, Verdict, evaluate,
    evaluate_prefiltered,
};
pub use model::{Action, Policy, PolicyKind};
