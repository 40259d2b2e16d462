//! Policies come from users (AuthorizationPolicy, TrafficTarget, HTTPRouteGroup specs): any
//! JSON must compile or be refused with errors, never panic, and a compiled policy must survive
//! the snapshot round trip the proxy reads it through.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::authz::Policy;
use weft::authz::istio::{AuthorizationPolicySpec, compile};
use weft::authz::smi::{HttpRouteGroupSpec, Routes, TrafficTargetSpec, compile_traffic_target};

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<AuthorizationPolicySpec>(data) {
        match compile("fuzz", "p", &spec, &Default::default()) {
            Ok(policy) => round_trip(&policy),
            Err(errors) => assert!(!errors.is_empty()),
        }
    }
    if let Ok(group) = serde_json::from_slice::<HttpRouteGroupSpec>(data) {
        let target: TrafficTargetSpec = serde_json::from_str(
            r#"{"destination": {"kind": "ServiceAccount", "name": "a"},
                "sources": [{"kind": "ServiceAccount", "name": "b"}],
                "rules": [{"kind": "HTTPRouteGroup", "name": "g"}]}"#,
        )
        .expect("literal spec");
        let routes = Routes {
            http: [("g", &group)].into(),
            tcp: Default::default(),
        };
        if let Ok(compiled) = compile_traffic_target("fuzz", "t", &target, &routes) {
            round_trip(&compiled.policy);
        }
    }
});

fn round_trip(policy: &Policy) {
    let json = serde_json::to_vec(policy).expect("a compiled policy serializes");
    let back: Policy = serde_json::from_slice(&json).expect("and reads back");
    assert_eq!(&back, policy);
}
