//! The life of an installation, in order, on the cluster the other tests used (`make e2e` runs
//! this binary last, one test at a time: the tests change the mesh root for everyone and end by
//! uninstalling weft). Names start with a step number because libtest runs them sorted.
//!
//! 1. `kubectl rollout restart` of the operator under a loop of pod creations: none fails.
//! 2. A corrupted `weft-ca` is left alone; a Degraded condition and an Event explain it.
//! 3. `weft ca reset` replaces the root; the ConfigMaps, webhooks and CSR endpoint follow.
//! 4. A plug-in CA (`cacerts`, made with openssl as Istio's docs do) signs through its
//!    intermediate; removing it brings weft's own root back.
//!    4b. Story 3's mesh-wide switches: the revision's `MeshConfig.spec.mtls.mode`, a
//!    root-namespace PeerAuthentication over it, a namespace one over that.
//! 5. The audit log proves config/rbac grants exactly what the operator uses.
//! 6. `kubectl delete -k config/default` completes, blocks no pod creation, and
//!    `weft uninstall` removes the root ConfigMaps kustomize does not know.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::bookstore::{buy, default_revision, meshed_and_outside};
use support::ca::{request_certificate, root_pem, token_of};
use support::creations::{CreationLoop, assert_all_injected};
use support::{Cluster, deployed, eventually, repo_root, wait_for, weft};

const NS: &str = "weft-system";
const MINUTE: Duration = Duration::from_secs(60);
const SELECTOR: &str = "app.kubernetes.io/name=weft-operator";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn secret_field(c: &Cluster, secret: &str, key: &str) -> String {
    let out = c.kubectl(&[
        "-n",
        NS,
        "get",
        "secret",
        secret,
        "-o",
        &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `ca.crt` (base64) of Secret `weft-ca` as a person with kubectl would.
fn set_ca_crt(c: &Cluster, b64_pem: &str) {
    c.ok(&[
        "-n",
        NS,
        "patch",
        "secret",
        "weft-ca",
        "--type=merge",
        "-p",
        &format!(r#"{{"data":{{"ca.crt":"{b64_pem}"}}}}"#),
    ]);
}

/// `name=status/reason` of condition `type_` on every MeshConfig.
fn meshconfig_conditions(c: &Cluster, type_: &str) -> String {
    let out = c.kubectl(&[
        "-n",
        NS,
        "get",
        "meshconfigs",
        "-o",
        &format!(
            "jsonpath={{range .items[*]}}{{.metadata.name}}={{.status.conditions[?(@.type==\"{type_}\")].status}}/{{.status.conditions[?(@.type==\"{type_}\")].reason}}{{\"\\n\"}}{{end}}"
        ),
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn all_lines(text: &str, want: &str) -> bool {
    !text.is_empty() && text.lines().all(|l| l.ends_with(want))
}

fn enrolled(c: &'static Cluster, name: &str) -> support::Namespace {
    let ns = c.namespace(name);
    ns.ok(&["label", "namespace", name, "istio-injection=enabled"]);
    ns
}

fn restart_operator(c: &Cluster) {
    c.ok(&["-n", NS, "rollout", "restart", "deployment/weft-operator"]);
    c.ok(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/weft-operator",
        "--timeout=180s",
    ]);
}

fn webhook_bundle(c: &Cluster) -> String {
    unb64(&c.ok(&[
        "get",
        "mutatingwebhookconfiguration",
        "weft-sidecar-injector",
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    ]))
}

const PROBE_POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"probe"},
    "spec":{"containers":[{"name":"app","image":"busybox"}]}}"#;

/// A dry-run pod in `ns` gets weft's proxy (the webhook answers under the current root).
fn injects(ns: &support::Namespace) -> bool {
    ns.cluster
        .dry_run_pod(&ns.name, PROBE_POD)
        .is_ok_and(|p| support::has_proxy(&p))
}

fn sh(dir: &std::path::Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn step1_a_rollout_restart_of_the_operator_fails_no_pod_creation() {
    let c = deployed();
    let ns = enrolled(c, "t-life-restart");
    eventually(MINUTE, || injects(&ns));
    let creations = CreationLoop::start(c, &ns.name);
    let started = Instant::now();
    restart_operator(c);
    // The old replicas' drain runs past `rollout status`: keep creating until they are gone.
    wait_for(
        Duration::from_secs(120),
        || {
            c.ok(&[
                "-n",
                NS,
                "get",
                "pods",
                "-l",
                SELECTOR,
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ])
        },
        |pods| pods.split_whitespace().count() == 2,
    );
    println!("rollout restart took {:?}", started.elapsed());
    assert_all_injected(&creations.stop(), "the operator's rollout restart", 20);
}

#[test]
fn step2_a_corrupted_ca_secret_is_left_alone_and_explained() {
    let c = deployed();
    let good = secret_field(c, "weft-ca", "ca.crt");
    assert!(unb64(&good).contains("BEGIN CERTIFICATE"));
    let garbage = b64("not a certificate");
    set_ca_crt(c, &garbage);

    // Every revision says so, with the way out...
    let degraded = wait_for(
        MINUTE,
        || meshconfig_conditions(c, "Degraded"),
        |s| all_lines(s, "=True/CaSecretCorrupted"),
    );
    println!("Degraded: {degraded}");
    let message = c.ok(&[
        "-n",
        NS,
        "get",
        "meshconfigs",
        "-o",
        "jsonpath={.items[0].status.conditions[?(@.type==\"Degraded\")].message}",
    ]);
    assert!(
        message.contains("weft-ca") && message.contains("weft ca reset"),
        "{message}"
    );
    // ...one Warning Event on the Secret does too...
    let events = wait_for(
        MINUTE,
        || {
            c.ok(&[
                "-n",
                NS,
                "get",
                "events",
                "--field-selector",
                "reason=CaSecretCorrupted,involvedObject.kind=Secret,involvedObject.name=weft-ca",
                "-o",
                "jsonpath={range .items[*]}{.type}: {.message}{\"\\n\"}{end}",
            ])
        },
        |e| !e.trim().is_empty(),
    );
    assert!(events.starts_with("Warning: "), "{events}");
    // ...and `weft check` fails on it.
    let check = weft(&["check"]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "weft check passed:\n{report}");
    assert!(report.contains("weft ca reset"), "{report}");

    // The Secret was not overwritten, and the mesh still works on the root in memory.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(secret_field(c, "weft-ca", "ca.crt"), garbage);
    let ns = enrolled(c, "t-life-corrupt");
    eventually(MINUTE, || injects(&ns));

    // Fixed by hand: Degraded clears.
    set_ca_crt(c, &good);
    wait_for(
        MINUTE,
        || meshconfig_conditions(c, "Degraded"),
        |s| all_lines(s, "=False/CaHealthy"),
    );
}

#[test]
fn step3_weft_ca_reset_replaces_the_root_and_the_mesh_follows() {
    let c = deployed();
    let old_root = root_pem(c);
    let old_secret = secret_field(c, "weft-ca", "ca.crt");

    let unconfirmed = weft(&["ca", "reset"]);
    assert!(!unconfirmed.status.success());
    assert!(
        String::from_utf8_lossy(&unconfirmed.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&unconfirmed.stderr)
    );
    assert_eq!(secret_field(c, "weft-ca", "ca.crt"), old_secret);

    let started = Instant::now();
    let reset = weft(&["ca", "reset", "--yes"]);
    let said = String::from_utf8_lossy(&reset.stdout);
    assert!(
        reset.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert!(said.contains("wrote a new root"), "{said}");
    let new_root = unb64(&secret_field(c, "weft-ca", "ca.crt"));
    assert!(new_root.contains("BEGIN CERTIFICATE") && new_root != old_root);

    // The operator adopts it: the published root, the webhooks' caBundle and the webhook's
    // serving certificate (a dry-run pod is injected again) all move to the new root.
    wait_for(MINUTE, || root_pem(c), |r| r == new_root);
    wait_for(MINUTE, || webhook_bundle(c), |b| b == new_root);
    let ns = enrolled(c, "t-life-reset");
    let published = wait_for(
        MINUTE,
        || {
            // Not there yet right after the namespace is made: an empty answer, not a failure.
            let out = ns.kubectl(&[
                "get",
                "configmap",
                "weft-ca-root-cert",
                "-o",
                "jsonpath={.data.root-cert\\.pem}",
            ]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        },
        |r| r == new_root,
    );
    assert_eq!(published, new_root);
    eventually(MINUTE, || injects(&ns));
    println!(
        "weft ca reset: root published, caBundle set and injection working {:?} after the reset",
        started.elapsed()
    );
    // A workload certificate now chains to the new root (curl checks the server with it too).
    let token = token_of(&ns, "web", "weft-ca");
    let me = format!("spiffe://cluster.local/ns/{}/sa/web", ns.name);
    let issued = request_certificate(c, &token, &me, Some(600));
    assert_eq!(issued.status, 200, "{}", issued.body);
    assert_eq!(
        meshconfig_conditions(c, "Degraded")
            .lines()
            .filter(|l| !l.ends_with("=False/CaHealthy"))
            .count(),
        0
    );
}

#[test]
fn step4_a_plugin_ca_signs_through_its_intermediate() {
    let c = deployed();
    let weft_root = root_pem(c);
    let dir = std::env::temp_dir().join(format!("weft-plugin-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // As Istio's "plug in CA certificates" task does, with openssl.
    sh(
        &dir,
        "set -e
         genkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1; }
         genkey root-key.pem
         openssl req -x509 -new -key root-key.pem -subj '/O=plugin-test/CN=Plugin Root CA' -days 3650 \
           -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' \
           -out root-cert.pem
         genkey ca-key.pem
         openssl req -new -key ca-key.pem -subj '/O=plugin-test/CN=Plugin Intermediate CA' -out ca.csr
         printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' > ext.cnf
         openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -days 1825 \
           -extfile ext.cnf -out ca-cert.pem
         cat ca-cert.pem root-cert.pem > cert-chain.pem",
    );
    let plugin_root = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    let file = |name: &str| format!("--from-file={}", dir.join(name).display());
    c.ok(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "cacerts",
        &file("ca-cert.pem"),
        &file("ca-key.pem"),
        &file("root-cert.pem"),
        &file("cert-chain.pem"),
    ]);
    // As with istiod, the operator takes a new plug-in CA at start.
    restart_operator(c);
    wait_for(MINUTE, || root_pem(c), |r| r.trim() == plugin_root.trim());

    let ns = enrolled(c, "t-life-plugin");
    eventually(MINUTE, || injects(&ns));
    let token = token_of(&ns, "web", "weft-ca");
    let me = format!("spiffe://cluster.local/ns/{}/sa/web", ns.name);
    let issued = request_certificate(c, &token, &me, Some(600));
    assert_eq!(issued.status, 200, "{}", issued.body);
    let response: serde_json::Value = serde_json::from_str(&issued.body).unwrap();
    let chain: Vec<&str> = response["certChain"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(chain.len() >= 2, "no intermediate served: {chain:?}");
    let intermediate = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap();
    assert_eq!(chain[1].trim(), intermediate.trim());
    std::fs::write(dir.join("leaf.pem"), chain[0]).unwrap();
    // Chains to the plug-in root through the intermediate, and not without it.
    sh(
        &dir,
        "openssl verify -CAfile root-cert.pem -untrusted ca-cert.pem leaf.pem",
    );
    let direct = Command::new("openssl")
        .args(["verify", "-CAfile", "root-cert.pem", "leaf.pem"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!direct.status.success(), "the leaf skips the intermediate");
    // `weft ca reset` does not apply to a plug-in CA, and says what does.
    let refused = weft(&["ca", "reset", "--yes"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cacerts"));

    // Taken out again: weft's own root (Secret weft-ca, kept all along) comes back.
    c.ok(&["-n", NS, "delete", "secret", "cacerts"]);
    restart_operator(c);
    wait_for(MINUTE, || root_pem(c), |r| r == weft_root);
    eventually(MINUTE, || injects(&ns));
    let _ = std::fs::remove_dir_all(&dir);
}

// === RBAC from the audit log ===

/// (verb, resource, where it is used): grants this run cannot exercise, proven by another
/// suite. Root rotation promotes Secret weft-ca-next into weft-ca (patch, by name only; see
/// tests/rbac.rs), which e2e/node-agent/tests/rotation.rs runs in `make e2e-issuers`.
const PROVEN_ELSEWHERE: &[(&str, &str, &str)] = &[
    (
        "patch",
        "secrets",
        "e2e/node-agent/tests/rotation.rs (make e2e-issuers)",
    ),
    // The cert-manager issuer: its CRDs exist only where cert-manager runs.
    (
        "create",
        "certificaterequests",
        "e2e/node-agent/tests/cert_manager_issuer.rs (make e2e-issuers)",
    ),
    (
        "get",
        "certificaterequests",
        "e2e/node-agent/tests/cert_manager_issuer.rs (make e2e-issuers)",
    ),
    (
        "delete",
        "certificaterequests",
        "e2e/node-agent/tests/cert_manager_issuer.rs (make e2e-issuers)",
    ),
    // GRPCRoutes' status.parents: the gRPC suites run on the conformance images.
    (
        "get",
        "grpcroutes",
        "e2e/node-agent/tests/gamma.rs (make conformance)",
    ),
    (
        "patch",
        "grpcroutes/status",
        "e2e/node-agent/tests/gamma.rs (make conformance)",
    ),
    // TLSRoutes' and TCPRoutes' status.parents: the suite's GATEWAY-TLS and GATEWAY-TCP
    // profiles (docs/conformance/report.yaml).
    (
        "get",
        "tlsroutes",
        "e2e/components/run-gateway-conformance.sh (make conformance)",
    ),
    (
        "patch",
        "tlsroutes/status",
        "e2e/components/run-gateway-conformance.sh (make conformance)",
    ),
    (
        "get",
        "tcproutes",
        "e2e/components/run-gateway-conformance.sh (make conformance)",
    ),
    (
        "patch",
        "tcproutes/status",
        "e2e/components/run-gateway-conformance.sh (make conformance)",
    ),
];

struct Grant {
    role: String,
    namespace: Option<String>,
    group: String,
    resource: String,
    verb: String,
    names: Vec<String>,
}

fn grants(c: &Cluster) -> Vec<Grant> {
    let mut out = Vec::new();
    for (kind, namespace) in [("clusterrole", None), ("role", Some(NS))] {
        let mut args = vec!["get", kind, "weft-operator", "-o", "json"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let role: serde_json::Value = serde_json::from_str(&c.ok(&args)).unwrap();
        for rule in role["rules"].as_array().unwrap() {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        out.push(Grant {
                            role: kind.to_string(),
                            namespace: namespace.map(String::from),
                            group: group.clone(),
                            resource: resource.clone(),
                            verb,
                            names: list("resourceNames"),
                        });
                    }
                }
            }
        }
    }
    out
}

#[test]
fn step4b_mesh_wide_mtls_switches_follow_istio_precedence() {
    let c = deployed();
    let (ns, outside) = meshed_and_outside(c, "t-life-mesh-wide");
    let url = format!("http://bookstore.{}/mesh-wide", ns.name);
    let strict = |expect_refused: bool| {
        eventually(Duration::from_secs(30), || {
            buy(&outside, &url).is_err() == expect_refused
        });
        buy(&ns, &url).expect("the meshed client is always answered");
    };
    strict(false);

    // The revision's mode (every namespace on the `default` tag's revision); restored, and
    // the mesh-wide policy deleted, whatever happens below.
    let revision = default_revision(c);
    let before = c.ok(&[
        "-n",
        NS,
        "get",
        "meshconfig",
        &revision,
        "-o",
        "jsonpath={.spec.mtls}",
    ]);
    struct Restore<'a>(&'a Cluster, String, String);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let patch = if self.2.is_empty() {
                r#"[{"op": "remove", "path": "/spec/mtls"}]"#.to_string()
            } else {
                format!(
                    r#"[{{"op": "replace", "path": "/spec/mtls", "value": {}}}]"#,
                    self.2
                )
            };
            let _ = self.0.kubectl(&[
                "-n",
                NS,
                "patch",
                "meshconfig",
                &self.1,
                "--type",
                "json",
                "-p",
                &patch,
            ]);
            let _ = self.0.kubectl(&[
                "-n",
                NS,
                "delete",
                "peerauthentication",
                "t-life-mesh-wide",
                "--ignore-not-found",
            ]);
        }
    }
    let _restore = Restore(c, revision.clone(), before);
    c.ok(&[
        "-n",
        NS,
        "patch",
        "meshconfig",
        &revision,
        "--type",
        "merge",
        "-p",
        r#"{"spec": {"mtls": {"mode": "STRICT"}}}"#,
    ]);
    strict(true);

    // A root-namespace PeerAuthentication (the mesh) beats the revision.
    c.apply(&format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: t-life-mesh-wide, namespace: {NS}}}\nspec: {{mtls: {{mode: PERMISSIVE}}}}\n"
    ));
    strict(false);
    let pod = ns.jsonpath("pods -l app=bookstore", "{.items[0].metadata.name}");
    let describe = weft(&["describe", "pod", &pod, "-n", &ns.name]);
    let text = String::from_utf8_lossy(&describe.stdout);
    assert!(text.contains(&format!("{NS}/t-life-mesh-wide")), "{text}");

    // A namespace PeerAuthentication beats the mesh.
    ns.apply(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n",
    );
    strict(true);

    // Both policies gone: the revision's STRICT decides again.
    ns.ok(&["delete", "peerauthentication", "default"]);
    c.ok(&["-n", NS, "delete", "peerauthentication", "t-life-mesh-wide"]);
    strict(true);
}

#[test]
fn step5_every_rbac_grant_is_used_and_nothing_the_operator_asks_is_forbidden() {
    let c = deployed();
    let log = repo_root().join("e2e/.cluster/audit.log");
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| {
        panic!("{log:?}: {e}; the API server logs audit events from `make cluster-up` on (restart an older cluster with make cluster-down)")
    });
    let user = format!("system:serviceaccount:{NS}:weft-operator");
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e["user"]["username"] == user.as_str())
        .collect();
    assert!(events.len() > 100, "only {} audit events", events.len());

    let forbidden: BTreeSet<String> = events
        .iter()
        // A namespace that began terminating after the operator listed it refuses new
        // content with 403 too; that is not RBAC (other tests delete namespaces meanwhile).
        .filter(|e| e["responseStatus"]["code"] == 403 && !namespace_terminating(e))
        .map(|e| {
            let r = &e["objectRef"];
            format!(
                "{} {}/{}{} in {}",
                e["verb"].as_str().unwrap_or_default(),
                r["apiGroup"].as_str().unwrap_or_default(),
                r["resource"].as_str().unwrap_or_default(),
                r["subresource"]
                    .as_str()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default(),
                r["namespace"].as_str().unwrap_or("(cluster)"),
            )
        })
        .collect();
    let grants = grants(c);
    let unused: Vec<String> = grants
        .iter()
        // Grants whose only use is in a suite outside `make test`, each named with the test
        // that uses it.
        .filter(|g| {
            !PROVEN_ELSEWHERE
                .iter()
                .any(|(verb, resource, _)| g.verb == *verb && g.resource == *resource)
        })
        .filter(|g| {
            !events.iter().any(|e| {
                let r = &e["objectRef"];
                let resource = match r["subresource"].as_str() {
                    Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or_default()),
                    None => r["resource"].as_str().unwrap_or_default().to_string(),
                };
                // A server-side apply that creates the object is authorised as create too;
                // the audit log records it as a patch answered 201.
                let verb_matches = e["verb"] == g.verb.as_str()
                    || (g.verb == "create"
                        && e["verb"] == "patch"
                        && e["responseStatus"]["code"] == 201);
                verb_matches
                    && r["apiGroup"].as_str().unwrap_or_default() == g.group
                    && resource == g.resource
                    && (g.names.is_empty() || g.names.iter().any(|n| r["name"] == n.as_str()))
                    && g.namespace
                        .as_ref()
                        .is_none_or(|ns| r["namespace"] == ns.as_str())
                    && e["responseStatus"]["code"]
                        .as_u64()
                        .is_some_and(|c| c < 400)
            })
        })
        .map(|g| {
            format!(
                "{}: {} {}/{}{}",
                g.role,
                g.verb,
                g.group,
                g.resource,
                if g.names.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", g.names)
                }
            )
        })
        .collect();
    println!(
        "{} audit events of {user}; {} grants, {} unused, {} forbidden requests",
        events.len(),
        grants.len(),
        unused.len(),
        forbidden.len()
    );
    assert!(
        forbidden.is_empty(),
        "config/rbac misses grants the operator uses: {forbidden:#?}"
    );
    assert!(
        unused.is_empty(),
        "config/rbac grants what the operator never used in this run (remove them): {unused:#?}"
    );
}

/// A 403 the API server gives for content in a terminating namespace (audit events keep the
/// response's message and causes at the Metadata level).
fn namespace_terminating(event: &serde_json::Value) -> bool {
    let status = &event["responseStatus"];
    status["message"]
        .as_str()
        .is_some_and(|m| m.contains("because it is being terminated"))
        || status["details"]["causes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["reason"] == "NamespaceTerminating"))
}

#[test]
fn step6_delete_k_completes_and_weft_uninstall_removes_the_rest() {
    let c = deployed();
    let ns = enrolled(c, "t-life-uninstall");
    eventually(MINUTE, || {
        ns.kubectl(&["get", "configmap", "weft-ca-root-cert"])
            .status
            .success()
    });
    let started = Instant::now();
    let config = repo_root().join("config/default");
    c.ok(&[
        "delete",
        "-k",
        config.to_str().unwrap(),
        "--ignore-not-found",
        "--timeout=180s",
    ]);
    eventually(Duration::from_secs(180), || {
        !c.kubectl(&["get", "namespace", NS]).status.success()
    });
    println!(
        "kubectl delete -k config/default: namespace {NS} gone {:?} after the delete began",
        started.elapsed()
    );
    for config in [
        "mutatingwebhookconfiguration/weft-sidecar-injector",
        "validatingwebhookconfiguration/weft-validator",
    ] {
        assert!(
            !c.kubectl(&["get", config]).status.success(),
            "{config} left"
        );
    }
    // The enrolled namespace still creates pods: nothing blocks them, nothing injects them.
    let pod = c.dry_run_pod(&ns.name, PROBE_POD);
    assert!(
        pod.as_ref().is_ok_and(|p| !support::has_proxy(p)),
        "{pod:?}"
    );

    // What kustomize does not know: the root ConfigMaps, named one by one.
    let removed = weft(&["uninstall"]);
    let said = String::from_utf8_lossy(&removed.stdout);
    assert!(
        removed.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(
        said.contains(&format!(
            "deleted configmap/weft-ca-root-cert in namespace {}",
            ns.name
        )),
        "{said}"
    );
    let left = c.ok(&[
        "get",
        "configmaps",
        "-A",
        "--field-selector",
        "metadata.name=weft-ca-root-cert",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "left behind: {left}");
}
