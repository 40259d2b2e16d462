//! Request paths and headers come from any client; normalizing and evaluating them must never
//! panic, normalizing must be idempotent, and a DENY on the normalized path must deny it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft::authz::istio::{AuthorizationPolicySpec, compile};
use weft::authz::{Http, Policy, Request, Verdict, evaluate, path::normalize};

fn allow_all() -> &'static Vec<Policy> {
    static P: OnceLock<Vec<Policy>> = OnceLock::new();
    P.get_or_init(|| {
        let spec: AuthorizationPolicySpec =
            serde_json::from_str(r#"{"rules": [{}]}"#).expect("literal spec");
        vec![compile("fuzz", "allow-all", &spec, &Default::default()).expect("valid")]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (raw, header) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(path) = normalize(raw) else {
        return;
    };
    assert_eq!(normalize(&path).as_deref(), Ok(&*path), "normalization is idempotent");
    // A DENY naming exactly this normalized path denies the request.
    let deny = format!(
        r#"{{"action": "DENY", "rules": [{{"to": [{{"operation": {{"paths": [{}]}}}}]}}]}}"#,
        serde_json::to_string(&*path).expect("a string")
    );
    let Ok(spec) = serde_json::from_str::<AuthorizationPolicySpec>(&deny) else {
        return;
    };
    let Ok(deny) = compile("fuzz", "deny", &spec, &Default::default()) else {
        return; // a path with '{' reads as a template; those are refused or differ
    };
    let mut policies = allow_all().clone();
    policies.push(deny);
    let headers = vec![("x-fuzz".to_string(), header.to_string())];
    let request = Request {
        principal: Some("cluster.local/ns/fuzz/sa/default"),
        source_ip: [127, 0, 0, 1].into(),
        remote_ip: [127, 0, 0, 1].into(),
        destination_ip: [127, 0, 0, 1].into(),
        destination_port: 80,
        sni: None,
        http: Some(Http {
            method: "GET",
            host: header,
            path: &path,
            headers: &headers,
        }),
    };
    let decision = evaluate(&policies, &request);
    if !path.contains('*') {
        assert_eq!(decision.verdict, Verdict::Deny, "{path:?}");
    }
});
