//! The committed Gateway API conformance report (docs/conformance/report.yaml, written by
//! `make conformance`) is current: it was run at the version of the vendored CRDs, for every
//! profile the run script claims, and each claimed profile's Core tests all passed. Cheap and
//! cluster-free: re-run `make conformance` when the CRDs are updated or this fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn report() -> serde_json::Value {
    let path = root().join("docs/conformance/report.yaml");
    serde_yaml::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `gateway.networking.k8s.io/bundle-version` of every vendored CRD (they must agree).
fn vendored_version() -> String {
    let dir = root().join("config/gateway-api");
    let mut versions = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "kustomization.yaml")
            || path.extension().is_none_or(|e| e != "yaml")
        {
            continue;
        }
        for line in read(&path).lines() {
            if let Some(v) = line
                .trim()
                .strip_prefix("gateway.networking.k8s.io/bundle-version:")
            {
                versions.insert(v.trim().to_string());
            }
        }
    }
    assert_eq!(
        versions.len(),
        1,
        "config/gateway-api's CRDs disagree on their bundle-version: {versions:?}"
    );
    versions.into_iter().next().unwrap()
}

/// The profiles `make conformance` claims (the run script's `--conformance-profiles`).
fn claimed_profiles() -> Vec<String> {
    let script = read(&root().join("e2e/components/run-gateway-conformance.sh"));
    let line = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("--conformance-profiles="))
        .expect("run-gateway-conformance.sh passes --conformance-profiles=");
    line.trim_end_matches('\\')
        .trim()
        .split(',')
        .map(str::to_string)
        .collect()
}

#[test]
fn the_report_is_for_the_vendored_gateway_api_version() {
    let vendored = vendored_version();
    let report = report();
    assert_eq!(report["kind"], "ConformanceReport");
    assert_eq!(
        report["gatewayAPIVersion"].as_str(),
        Some(vendored.as_str()),
        "docs/conformance/report.yaml was run at another Gateway API version than config/gateway-api vendors: run make conformance"
    );
    assert_eq!(report["gatewayAPIChannel"], "standard");
    // The suite that ran is the one pinned at that version.
    let bare = vendored.trim_start_matches('v');
    let env = read(&root().join("e2e/components/versions.env"));
    assert!(
        env.lines()
            .any(|l| l.trim() == format!("GATEWAY_API_VERSION={bare}")),
        "e2e/components/versions.env does not pin GATEWAY_API_VERSION={bare}"
    );
    let gomod = read(&root().join("e2e/components/gateway-conformance/go.mod"));
    assert!(
        gomod.contains(&format!("sigs.k8s.io/gateway-api/conformance {vendored}")),
        "the conformance wrapper module does not pin the suite at {vendored}"
    );
}

#[test]
fn every_claimed_profile_passed_its_core_tests() {
    let report = report();
    let profiles = report["profiles"].as_array().expect("profiles");
    let claimed = claimed_profiles();
    assert!(!claimed.is_empty());
    for name in &claimed {
        let p = profiles
            .iter()
            .find(|p| p["name"] == name.as_str())
            .unwrap_or_else(|| panic!("profile {name} is claimed but not in the report"));
        let core = &p["core"];
        let stats = &core["statistics"];
        assert_eq!(
            core["result"], "success",
            "{name}: core result {} ({} failed: {})",
            core["result"], stats["Failed"], core["failedTests"]
        );
        assert_eq!(stats["Failed"], 0, "{name}: {}", core["failedTests"]);
        assert!(
            stats["Passed"].as_u64().is_some_and(|n| n > 0),
            "{name}: no core test passed"
        );
    }
}

#[test]
fn the_readme_names_every_test_the_report_skipped() {
    let report = report();
    let readme = read(&root().join("docs/conformance/README.md"));
    assert!(
        readme.contains(report["gatewayAPIVersion"].as_str().unwrap_or("?")),
        "docs/conformance/README.md does not name the report's version"
    );
    for p in report["profiles"].as_array().expect("profiles") {
        for part in ["core", "extended"] {
            for t in p[part]["skippedTests"].as_array().into_iter().flatten() {
                let t = t.as_str().unwrap_or_default();
                assert!(
                    readme.contains(t),
                    "{}: {part} test {t} was skipped and the README does not say why",
                    p["name"]
                );
            }
        }
    }
}
