//! The operator's own TLS serving certificate (webhook and discovery names), issued by the mesh
//! CA and swapped in place through a rustls resolver: renewed at half its lifetime or when the
//! CA changes, with no restart and no dropped connection.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::pki::MeshCa;

pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default)]
pub struct ServingCertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok()?.clone()
    }
}

impl ServingCertResolver {
    pub fn is_loaded(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }

    fn install(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)?;
        if let Ok(mut current) = self.current.write() {
            *current = Some(Arc::new(certified));
        }
        Ok(())
    }
}

/// DNS names of the operator's Services in `namespace`.
pub fn dns_names(namespace: &str) -> Vec<String> {
    ["weft-webhook", "weft-operator"]
        .iter()
        .flat_map(|svc| {
            [
                format!("{svc}.{namespace}.svc"),
                format!("{svc}.{namespace}.svc.cluster.local"),
            ]
        })
        .collect()
}

/// Keeps `resolver` holding a certificate from the current CA.
pub async fn keep_serving_cert(
    resolver: Arc<ServingCertResolver>,
    mut ca: watch::Receiver<Option<Arc<MeshCa>>>,
    namespace: String,
) {
    let names = dns_names(&namespace);
    loop {
        let current = ca.borrow_and_update().clone();
        let mut renew_in = Duration::from_secs(5);
        if let Some(ca) = current {
            match ca.sign_serving(&names, SERVING_TTL) {
                Ok(cert) => match resolver.install(&cert.cert_chain_pem, &cert.key_pem) {
                    Ok(()) => {
                        let lifetime = cert
                            .not_after
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        renew_in = (lifetime / 2).max(Duration::from_secs(60));
                        tracing::info!(
                            renew_in_s = renew_in.as_secs(),
                            "serving certificate issued for {names:?}"
                        );
                    }
                    Err(e) => tracing::error!("serving certificate: {e:#}"),
                },
                Err(e) => tracing::error!("serving certificate: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(renew_in) => {}
            changed = ca.changed() => if changed.is_err() { return },
        }
    }
}
