//! Where the proxy's certificate and config come from. The sinks are the seam: today a file
//! watcher offers them (`--cert-dir`, `--snapshot-file`); the CSR client and the config
//! stream client will offer to the same sinks, and nothing downstream changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;

use super::metrics::{Metrics, ResultLabels};
use super::tls::{TlsContext, TlsError, WorkloadCert};
use crate::snapshot::{
    ProxySnapshot, SNAPSHOT_SCHEMA_VERSION, SnapshotError, SnapshotIndex, decode_snapshot,
};

/// The sinks of one proxy context.
pub struct Inputs {
    pub certs: CertSink,
    pub snapshot: SnapshotSink,
}

fn count(family: &Family<ResultLabels, Counter>, result: &str) {
    family
        .get_or_create(&ResultLabels {
            result: result.to_string(),
        })
        .inc();
}

// === impl CertSink ===

/// Accepts workload certificates; each good one replaces the TLS context for new connections.
pub struct CertSink {
    tx: watch::Sender<Option<Arc<TlsContext>>>,
    metrics: Arc<Metrics>,
}

impl CertSink {
    pub(super) fn new(tx: watch::Sender<Option<Arc<TlsContext>>>, metrics: Arc<Metrics>) -> Self {
        CertSink { tx, metrics }
    }

    /// Builds the TLS context for `cert` and makes it current. On error the previous
    /// certificate stays in use.
    pub fn offer(&self, cert: WorkloadCert) -> Result<(), TlsError> {
        match TlsContext::new(Arc::new(cert)) {
            Ok(ctx) => {
                tracing::info!(
                    identity = %ctx.cert.identity,
                    serial = %ctx.cert.serial,
                    "workload certificate applied"
                );
                self.tx.send_replace(Some(Arc::new(ctx)));
                count(&self.metrics.certificates, "applied");
                Ok(())
            }
            Err(e) => {
                count(&self.metrics.certificates, "rejected");
                Err(e)
            }
        }
    }

    /// Watches the current certificate (for the CSR client's renewal timer, `/certs`).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<TlsContext>>> {
        self.tx.subscribe()
    }
}

// === impl SnapshotSink ===

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Applied; the version to acknowledge.
    Applied(String),
    /// Same version as the current one: nothing to do (still acknowledge it).
    Unchanged(String),
}

/// Accepts config snapshots as bytes from the wire; a bad one is rejected and the last good
/// one stays.
pub struct SnapshotSink {
    tx: watch::Sender<Option<Arc<SnapshotIndex>>>,
    metrics: Arc<Metrics>,
}

impl SnapshotSink {
    pub(super) fn new(
        tx: watch::Sender<Option<Arc<SnapshotIndex>>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        SnapshotSink { tx, metrics }
    }

    pub fn offer(&self, bytes: &[u8]) -> Result<Offered, SnapshotError> {
        let snapshot = match decode_snapshot(bytes) {
            Ok(s) => s,
            Err(e) => {
                count(&self.metrics.snapshots, "rejected");
                return Err(e);
            }
        };
        self.apply(snapshot)
    }

    /// A snapshot rebuilt from a delta ([`crate::snapshot::delta`]): checked exactly as a
    /// decoded one (size limit, schema version, [`ProxySnapshot::validate`]), then applied the
    /// same way.
    pub fn offer_snapshot(&self, snapshot: ProxySnapshot) -> Result<Offered, SnapshotError> {
        let checked = if let Err(e) = crate::snapshot::check_encoded_size(&snapshot) {
            Err(e)
        } else if snapshot.schema_version != SNAPSHOT_SCHEMA_VERSION {
            Err(SnapshotError::UnsupportedSchema {
                got: snapshot.schema_version,
                supported: SNAPSHOT_SCHEMA_VERSION,
            })
        } else {
            snapshot.validate()
        };
        if let Err(e) = checked {
            count(&self.metrics.snapshots, "rejected");
            return Err(e);
        }
        self.apply(snapshot)
    }

    /// The config in force now, if any.
    pub fn current(&self) -> Option<Arc<SnapshotIndex>> {
        self.tx.borrow().clone()
    }

    fn apply(&self, snapshot: ProxySnapshot) -> Result<Offered, SnapshotError> {
        if let Some(current) = self.tx.borrow().as_ref()
            && current.version() == snapshot.version
        {
            count(&self.metrics.snapshots, "unchanged");
            return Ok(Offered::Unchanged(snapshot.version));
        }
        let version = snapshot.version.clone();
        tracing::info!(%version, services = snapshot.outbound.services.len(), "config snapshot applied");
        self.tx
            .send_replace(Some(Arc::new(SnapshotIndex::new(snapshot))));
        count(&self.metrics.snapshots, "applied");
        Ok(Offered::Applied(version))
    }

    /// A handle that puts the current config back with the endpoints an egress gateway
    /// resolved (`super::external_dns`), unless a newer config came meanwhile.
    pub fn republisher(&self) -> super::external_dns::Republisher {
        super::external_dns::Republisher::new(self.tx.clone())
    }

    /// The version currently applied (what the config stream acknowledges).
    pub fn current_version(&self) -> Option<String> {
        self.tx.borrow().as_ref().map(|s| s.version().to_string())
    }
}

// === file sources ===

/// Files the proxy reads its inputs from until the CSR and config-stream clients land.
#[derive(Debug, Clone)]
pub struct FileSources {
    pub cert_dir: Option<PathBuf>,
    pub snapshot_file: Option<PathBuf>,
    /// How often the files are re-read; a changed file is offered again (rotation).
    pub interval: Duration,
}

impl FileSources {
    /// Offers whatever the files hold now, then keeps watching them. Runs until dropped.
    /// `certs` is `None` when another source (the CSR client) owns the certificate.
    pub async fn run(self, certs: Option<CertSink>, snapshot: Option<SnapshotSink>) {
        let mut last_cert: Option<Vec<u8>> = None;
        let mut last_snapshot: Option<Vec<u8>> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let (Some(dir), Some(certs)) = (&self.cert_dir, &certs) {
                let files = [
                    crate::contract::CERT_CHAIN_FILE,
                    crate::contract::KEY_FILE,
                    crate::contract::ROOT_CERT_KEY,
                ];
                let mut all = Vec::new();
                for f in files {
                    if let Ok(b) = tokio::fs::read(dir.join(f)).await {
                        all.extend_from_slice(&b);
                    }
                }
                if last_cert.as_ref() != Some(&all) {
                    match WorkloadCert::load_dir(dir) {
                        Ok(cert) => {
                            if let Err(e) = certs.offer(cert) {
                                tracing::warn!(error = %e, dir = %dir.display(), "certificate rejected; keeping the previous one");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, dir = %dir.display(), "cannot load the workload certificate")
                        }
                    }
                    last_cert = Some(all);
                }
            }
            if let (Some(file), Some(snapshot)) = (&self.snapshot_file, &snapshot) {
                match tokio::fs::read(file).await {
                    Ok(bytes) if last_snapshot.as_ref() != Some(&bytes) => {
                        if let Err(e) = snapshot.offer(&bytes) {
                            tracing::warn!(error = %e, file = %file.display(), "config snapshot rejected; keeping the last good one");
                        }
                        last_snapshot = Some(bytes);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, file = %file.display(), "cannot read the config snapshot")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ProxyContext, Settings};
    use super::*;

    fn snapshot(version: &str, identity: &str) -> Vec<u8> {
        serde_json::json!({
            "schemaVersion": 1, "version": version, "identity": identity,
            "trustDomain": "cluster.local", "inbound": {"defaultMode": "STRICT"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_bad_snapshot_keeps_the_last_good_one() {
        let (ctx, inputs) = ProxyContext::new(Settings::default());
        let id = "spiffe://cluster.local/ns/a/sa/b";
        assert_eq!(
            inputs.snapshot.offer(&snapshot("v1", id)).unwrap(),
            Offered::Applied("v1".into())
        );
        assert_eq!(
            inputs.snapshot.offer(&snapshot("v1", id)).unwrap(),
            Offered::Unchanged("v1".into())
        );
        assert!(
            inputs
                .snapshot
                .offer(&snapshot("v2", "not-spiffe"))
                .is_err()
        );
        assert!(inputs.snapshot.offer(b"{garbage").is_err());
        assert_eq!(ctx.snapshot().unwrap().version(), "v1");
        assert_eq!(inputs.snapshot.current_version().as_deref(), Some("v1"));
    }

    #[test]
    fn readiness_needs_a_certificate_and_a_config() {
        let (ctx, inputs) = ProxyContext::new(Settings::default());
        assert_eq!(ctx.readiness(), Err("no workload certificate yet"));
        let ca = super::super::tls::test_certs::TestCa::new("root");
        let issued = ca.issue("spiffe://cluster.local/ns/a/sa/b");
        let cert = WorkloadCert::from_pem(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            ca.cert_pem.as_bytes(),
        )
        .unwrap();
        inputs.certs.offer(cert).unwrap();
        assert_eq!(ctx.readiness(), Err("no config snapshot yet"));
        inputs
            .snapshot
            .offer(&snapshot("v1", "spiffe://cluster.local/ns/a/sa/b"))
            .unwrap();
        assert_eq!(ctx.readiness(), Ok(()));
        ctx.start_draining();
        assert_eq!(ctx.readiness(), Err("draining"));
    }
}
