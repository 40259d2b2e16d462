//! `weft check`'s issuer line (issue 24): what ConfigMap `weft-ca-issuer` asks for against the
//! health the operator's leader records on it after its dry signing, so a Vault that is down,
//! refuses weft's token, or has a role that would refuse proxies, and a cert-manager that denies
//! weft's CertificateRequests, misses its Issuer or its ca-bundle Secret, fail the check by name.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

use super::check::Verdict;
use crate::operator::issuer::{HEALTH_ANNOTATION, IssuerHealth};
use crate::pki::{ISSUER_CONFIGMAP, IssuerConfig};

pub const ISSUER: &str = "issuer";

/// Reads the ConfigMap and judges it.
pub async fn check(client: &Client, ns: &str) -> Verdict {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    match configmaps.get_opt(ISSUER_CONFIGMAP).await {
        Ok(None) => verdict(Ok(None), None, ns),
        Ok(Some(cm)) => {
            let config = IssuerConfig::from_data(&cm.data.clone().unwrap_or_default())
                .map(Some)
                .map_err(|e| e.to_string());
            let health = cm
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(HEALTH_ANNOTATION))
                .and_then(|json| serde_json::from_str::<IssuerHealth>(json).ok());
            verdict(config, health.as_ref(), ns)
        }
        Err(e) => Verdict::fail(
            ISSUER,
            format!("cannot read ConfigMap {ns}/{ISSUER_CONFIGMAP}: {e}"),
            "weft check needs get on ConfigMaps in the weft namespace",
        ),
    }
}

/// The verdict on a configuration (`None`: no ConfigMap) and the recorded health. Pure.
pub fn verdict(
    config: Result<Option<IssuerConfig>, String>,
    health: Option<&IssuerHealth>,
    ns: &str,
) -> Verdict {
    let config = match config {
        Err(e) => {
            return Verdict::fail(
                ISSUER,
                e,
                "set the issuer again with `weft ca issuer set vault|cert-manager ...` or `weft ca issuer set builtin`",
            );
        }
        Ok(None) | Ok(Some(IssuerConfig::Builtin)) => {
            return Verdict::pass(ISSUER, "the builtin CA signs workload certificates");
        }
        Ok(Some(config)) => config,
    };
    let Some(health) = health else {
        return Verdict::warn(
            ISSUER,
            format!(
                "{} is configured but the operator has recorded no health on ConfigMap {ns}/{ISSUER_CONFIGMAP} yet",
                config.describe()
            ),
            "wait a few seconds; if it stays so, check that the operator runs (and is this version)",
        );
    };
    if !health.healthy {
        return Verdict::fail(
            ISSUER,
            format!("{} (since {})", health.message, health.since),
            "fix what the message names; issued certificates keep working and renewals retry meanwhile; `weft ca issuer` shows who signs now",
        );
    }
    if health.active != config.kind().as_str() {
        return Verdict::fail(
            ISSUER,
            format!(
                "{} is configured but {} still signs",
                config.describe(),
                health.active
            ),
            "the operator switches once the issuer answers; see its log",
        );
    }
    Verdict::pass(
        ISSUER,
        format!(
            "{} signs workload certificates; its dry signing passed",
            config.describe()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::Status;
    use crate::pki::{VaultAuth, VaultConfig};

    fn vault() -> IssuerConfig {
        IssuerConfig::Vault(VaultConfig {
            address: "http://198.18.0.1:8200".into(),
            mount: "pki".into(),
            role: "weft".into(),
            auth: VaultAuth::TokenSecret("weft-vault-token".into()),
            ca_cert_secret: None,
        })
    }

    fn health(active: &str, problem: Option<&str>) -> IssuerHealth {
        IssuerHealth {
            configured: "vault".into(),
            active: active.into(),
            healthy: problem.is_none(),
            message: problem.unwrap_or("ok").into(),
            since: "2026-12-06T06:00:00Z".into(),
        }
    }

    #[test]
    fn builtin_or_nothing_passes_and_a_broken_configmap_fails() {
        assert_eq!(verdict(Ok(None), None, "weft-system").status, Status::Pass);
        assert_eq!(
            verdict(Ok(Some(IssuerConfig::Builtin)), None, "weft-system").status,
            Status::Pass
        );
        let broken = verdict(Err("unknown key".into()), None, "weft-system");
        assert_eq!(broken.status, Status::Fail);
        assert!(broken.hint.unwrap().contains("weft ca issuer set"));
    }

    #[test]
    fn an_unhealthy_vault_fails_naming_vault_and_the_fix() {
        let message = "a dry signing failed: Vault at http://198.18.0.1:8200 (pki/sign/weft) refused to sign: Vault says HTTP 400: role requires keys of type rsa: ... `vault write pki/roles/weft key_type=any`";
        let v = verdict(
            Ok(Some(vault())),
            Some(&health("vault", Some(message))),
            "weft-system",
        );
        assert_eq!(v.status, Status::Fail);
        assert!(
            v.detail.contains("Vault at http://198.18.0.1:8200"),
            "{}",
            v.detail
        );
        assert!(v.detail.contains("vault write pki/roles/weft key_type=any"));
    }

    #[test]
    fn cert_manager_problems_fail_by_name_and_a_signing_one_passes() {
        let cm = IssuerConfig::CertManager(crate::pki::CertManagerConfig {
            issuer_name: "osm-ca".into(),
            issuer_kind: crate::pki::IssuerRefKind::Issuer,
            issuer_group: "cert-manager.io".into(),
            ca_bundle_secret: "osm-ca-bundle".into(),
        });
        let health = |active: &str, problem: Option<&str>| IssuerHealth {
            configured: "cert-manager".into(),
            ..health(active, problem)
        };
        for problem in [
            "Secret weft-system/osm-ca-bundle (--ca-bundle-secret) is missing: create it with key ca.crt",
            "a dry signing failed: cert-manager Issuer/osm-ca (cert-manager.io) refused to sign: CertificateRequest weft-system/weft-x was denied (no policy)",
        ] {
            let v = verdict(
                Ok(Some(cm.clone())),
                Some(&health("builtin", Some(problem))),
                "weft-system",
            );
            assert_eq!(v.status, Status::Fail);
            assert!(v.detail.contains(problem), "{}", v.detail);
        }
        let ok = verdict(
            Ok(Some(cm)),
            Some(&health("cert-manager", None)),
            "weft-system",
        );
        assert_eq!(ok.status, Status::Pass, "{}", ok.detail);
        assert!(
            ok.detail.contains("cert-manager Issuer/osm-ca"),
            "{}",
            ok.detail
        );
    }

    #[test]
    fn a_healthy_vault_passes_only_once_it_signs() {
        let signing = verdict(
            Ok(Some(vault())),
            Some(&health("vault", None)),
            "weft-system",
        );
        assert_eq!(signing.status, Status::Pass, "{}", signing.detail);
        let not_yet = verdict(
            Ok(Some(vault())),
            Some(&health("builtin", None)),
            "weft-system",
        );
        assert_eq!(not_yet.status, Status::Fail);
        let unrecorded = verdict(Ok(Some(vault())), None, "weft-system");
        assert_eq!(unrecorded.status, Status::Warn);
    }
}
