//! A real Vault v1.21.0 for the cluster tests (`e2e/scripts/install-vault.sh` builds and caches
//! it): `vault server -dev` on the node address only, so pods reach it and nothing else does,
//! configured as seed 002's script plus the two role settings weft needs.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::repo_root;

/// The node's address (e2e/cluster/env.sh NODE_IP): pods reach the host there.
pub const NODE_IP: &str = "198.18.0.1";
pub const ROOT_TOKEN: &str = "weft-e2e-issuer-root";

pub struct DevVault {
    child: Child,
    bin: PathBuf,
    pub address: String,
    /// With `-dev-tls`: the CA Vault generated for its HTTPS certificate (`vault-ca.pem`).
    pub ca_pem: Option<PathBuf>,
}

impl DevVault {
    /// Starts `vault server -dev` on NODE_IP:`port`; stopped (and continued first) on drop.
    pub fn start(port: u16) -> DevVault {
        Self::start_with(port, None)
    }

    /// Starts `vault server -dev -dev-tls` on NODE_IP:`port`: Vault generates a CA and an HTTPS
    /// certificate for NODE_IP (its listen address is added to the SANs) into `cert_dir`.
    pub fn start_tls(port: u16, cert_dir: &std::path::Path) -> DevVault {
        Self::start_with(port, Some(cert_dir))
    }

    fn start_with(port: u16, tls: Option<&std::path::Path>) -> DevVault {
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/scripts/install-vault.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("install-vault.sh");
        assert!(out.status.success(), "install-vault.sh failed");
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let listen = format!("{NODE_IP}:{port}");
        let mut args = vec![
            "server".to_string(),
            "-dev".to_string(),
            format!("-dev-listen-address={listen}"),
            format!("-dev-root-token-id={ROOT_TOKEN}"),
        ];
        if let Some(dir) = tls {
            std::fs::create_dir_all(dir).expect("the -dev-tls-cert-dir");
            args.push("-dev-tls".into());
            args.push(format!("-dev-tls-cert-dir={}", dir.display()));
        }
        let child = Command::new(&bin)
            .args(&args)
            .env("HOME", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vault server -dev");
        let vault = DevVault {
            child,
            bin,
            address: format!(
                "{}://{listen}",
                if tls.is_some() { "https" } else { "http" }
            ),
            ca_pem: tls.map(|dir| dir.join("vault-ca.pem")),
        };
        super::eventually(Duration::from_secs(30), || vault.cli(&["status"]).is_ok());
        vault
    }

    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .env("VAULT_ADDR", &self.address)
            .env("VAULT_TOKEN", ROOT_TOKEN);
        if let Some(ca) = &self.ca_pem {
            command.env("VAULT_CACERT", ca);
        }
        let out = command.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn must(&self, args: &[&str]) -> String {
        self.cli(args)
            .unwrap_or_else(|e| panic!("vault {}: {e}", args.join(" ")))
    }

    /// Seed 002's PKI setup (role `weft` plus `key_type=any` and the SPIFFE URI SANs weft
    /// needs); returns the root's PEM (CN osm.root).
    pub fn pki_as_seed_002(&self) -> String {
        self.must(&["secrets", "enable", "pki"]);
        self.must(&["secrets", "tune", "-max-lease-ttl=87600h", "pki"]);
        self.must(&[
            "write",
            "pki/roles/weft",
            "allow_any_name=true",
            "allow_subdomains=true",
            "key_type=any",
            "allowed_uri_sans=spiffe://cluster.local/*",
        ]);
        self.must(&[
            "write",
            "-field=certificate",
            "pki/root/generate/internal",
            "common_name=osm.root",
            "ttl=87600h",
        ])
    }

    /// Vault's Kubernetes auth method at `auth/kubernetes`, reviewing tokens with the local
    /// API server (NODE_IP:6443, the cluster's CA). No `token_reviewer_jwt`, and
    /// `disable_local_ca_jwt` (Vault runs outside the cluster): Vault sends each login's own
    /// JWT as the TokenReview's bearer, so the operator's ServiceAccount needs `create` on
    /// `tokenreviews`, a grant it already holds for the CSR endpoint.
    pub fn kubernetes_auth(&self) {
        let ca = super::repo_root().join("e2e/.cluster/pki/ca.crt");
        self.must(&["auth", "enable", "kubernetes"]);
        self.must(&[
            "write",
            "auth/kubernetes/config",
            &format!("kubernetes_host=https://{NODE_IP}:6443"),
            &format!("kubernetes_ca_cert=@{}", ca.display()),
            "disable_local_ca_jwt=true",
        ]);
        // Only what the operator does: sign with role `weft`, read the CA chain.
        let policy =
            std::env::temp_dir().join(format!("weft-e2e-vault-policy-{}.hcl", std::process::id()));
        std::fs::write(
            &policy,
            "path \"pki/sign/weft\" { capabilities = [\"update\"] }\npath \"pki/ca_chain\" { capabilities = [\"read\"] }\n",
        )
        .expect("policy file");
        self.must(&[
            "policy",
            "write",
            "weft-sign",
            &policy.display().to_string(),
        ]);
        let _ = std::fs::remove_file(policy);
    }

    /// Binds Vault role `role` of the Kubernetes auth method to ServiceAccount
    /// `weft-system/weft-operator` with the signing policy.
    pub fn bind_operator(&self, role: &str) {
        self.must(&[
            "write",
            &format!("auth/kubernetes/role/{role}"),
            "bound_service_account_names=weft-operator",
            "bound_service_account_namespaces=weft-system",
            "token_policies=weft-sign",
            "token_ttl=1h",
        ]);
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for DevVault {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
