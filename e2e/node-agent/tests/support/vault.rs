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
}

impl DevVault {
    /// Starts `vault server -dev` on NODE_IP:`port`; stopped (and continued first) on drop.
    pub fn start(port: u16) -> DevVault {
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/scripts/install-vault.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("install-vault.sh");
        assert!(out.status.success(), "install-vault.sh failed");
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let listen = format!("{NODE_IP}:{port}");
        let child = Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address={listen}"),
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
            ])
            .env("HOME", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vault server -dev");
        let vault = DevVault {
            child,
            bin,
            address: format!("http://{listen}"),
        };
        super::eventually(Duration::from_secs(30), || vault.cli(&["status"]).is_ok());
        vault
    }

    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("VAULT_ADDR", &self.address)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .output()
            .map_err(|e| e.to_string())?;
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
