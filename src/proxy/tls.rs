//! Mesh TLS: the workload certificate, the rustls configs built from it, and SPIFFE identity
//! checks. A [`TlsContext`] is immutable; rotation builds a new one and swaps it through a
//! `watch` channel, so connections keep the context they started with.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use serde::Serialize;

use crate::contract::{ALPN_WEFT, CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_KEY};
use crate::snapshot::spiffe_trust_domain;

/// More distinct upstream identities than this and the client-config cache starts over; it is
/// only a cache, and a proxy talks to far fewer identities.
const CLIENT_CONFIG_CACHE_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} is not valid PEM: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("{0} holds no certificate")]
    Empty(&'static str),
    #[error("certificate is not valid X.509: {0}")]
    X509(String),
    #[error(
        "certificate must carry exactly one spiffe:// URI SAN (spiffe://<trust domain>/ns/<ns>/sa/<sa>), found {0}"
    )]
    Identity(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl TlsError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            TlsError::Read { .. } => "read",
            TlsError::Pem { .. } => "pem",
            TlsError::Empty(_) => "empty",
            TlsError::X509(_) => "x509",
            TlsError::Identity(_) => "identity",
            TlsError::Rustls(_) => "rustls",
            TlsError::Verifier(_) => "verifier",
        }
    }
}

/// The proxy's certificate, key and trust roots, as the CA (or files) handed them over.
pub struct WorkloadCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    pub identity: String,
    pub not_after: SystemTime,
    pub serial: String,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What `/certs` on the admin port shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSummary {
    pub identity: String,
    pub serial: String,
    pub not_after_unix: u64,
    pub seconds_to_expiry: i64,
    pub chain_len: usize,
    pub roots: usize,
}

impl WorkloadCert {
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], roots_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = parse_certs("certificate chain", chain_pem)?;
        let roots = parse_certs("trust roots", roots_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            what: "private key",
            detail: e.to_string(),
        })?;
        let leaf = chain.first().ok_or(TlsError::Empty("certificate chain"))?;
        let identity = spiffe_id_of(leaf)?;
        let (not_after, serial) = validity_of(leaf)?;
        Ok(WorkloadCert {
            chain,
            key,
            roots,
            identity,
            not_after,
            serial,
        })
    }

    /// Reads `cert-chain.pem`, `key.pem` and `root-cert.pem` from one directory.
    pub fn load_dir(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Self::from_pem(
            &read(CERT_CHAIN_FILE)?,
            &read(KEY_FILE)?,
            &read(ROOT_CERT_KEY)?,
        )
    }

    pub fn summary(&self) -> CertSummary {
        let not_after_unix = self
            .not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        CertSummary {
            identity: self.identity.clone(),
            serial: self.serial.clone(),
            not_after_unix,
            seconds_to_expiry: not_after_unix as i64 - now as i64,
            chain_len: self.chain.len(),
            roots: self.roots.len(),
        }
    }
}

fn parse_certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty(what));
    }
    Ok(certs)
}

fn validity_of(der: &CertificateDer<'_>) -> Result<(SystemTime, String), TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::X509(e.to_string()))?;
    let ts = cert.validity().not_after.timestamp();
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0));
    Ok((not_after, cert.raw_serial_as_string()))
}

/// The SPIFFE ID in a certificate's URI SAN; exactly one is required.
pub fn spiffe_id_of(der: &CertificateDer<'_>) -> Result<String, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::X509(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::X509(e.to_string()))?;
    let ids: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some(*uri)
            }
            _ => None,
        })
        .collect();
    match ids.as_slice() {
        [one] if spiffe_trust_domain(one).is_some() => Ok((*one).to_string()),
        [one] => Err(TlsError::Identity(format!("malformed {one:?}"))),
        [] => Err(TlsError::Identity("none".into())),
        many => Err(TlsError::Identity(format!("{}", many.len()))),
    }
}

// === impl TlsContext ===

/// Everything the data path needs for mTLS with one certificate generation.
pub struct TlsContext {
    pub cert: Arc<WorkloadCert>,
    pub trust_domain: String,
    server: Arc<ServerConfig>,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    clients: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    pub fn new(cert: Arc<WorkloadCert>) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for root in &cert.roots {
            roots.add(root.clone())?;
        }
        let roots = Arc::new(roots);
        let trust_domain = spiffe_trust_domain(&cert.identity)
            .ok_or_else(|| TlsError::Identity(cert.identity.clone()))?
            .to_string();
        let webpki =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let verifier = Arc::new(SpiffeClientVerifier {
            inner: webpki,
            trust_domain: trust_domain.clone(),
        });
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
        server.alpn_protocols = vec![ALPN_WEFT.to_vec()];
        Ok(TlsContext {
            cert,
            trust_domain,
            server: Arc::new(server),
            provider,
            roots,
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client config that presents our certificate and accepts only a server that proves
    /// `expected_identity`. Cached per identity for the life of this certificate.
    pub fn client_config(&self, expected_identity: &str) -> Result<Arc<ClientConfig>, TlsError> {
        if let Ok(cache) = self.clients.lock()
            && let Some(cfg) = cache.get(expected_identity)
        {
            return Ok(cfg.clone());
        }
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: self.roots.clone(),
            algorithms: self.provider.signature_verification_algorithms,
            expected: expected_identity.to_string(),
        });
        let mut cfg = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.cert.chain.clone(), self.cert.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN_WEFT.to_vec()];
        let cfg = Arc::new(cfg);
        if let Ok(mut cache) = self.clients.lock() {
            if cache.len() >= CLIENT_CONFIG_CACHE_MAX {
                cache.clear();
            }
            cache.insert(expected_identity.to_string(), cfg.clone());
        }
        Ok(cfg)
    }
}

/// The server name given to rustls for an upstream: an IP, so no SNI is sent; identity is
/// checked by [`SpiffeServerVerifier`], never by name.
pub fn upstream_server_name(ip: std::net::IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(ip.into())
}

/// The peer's SPIFFE ID after a handshake (the chain was verified by then).
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| spiffe_id_of(leaf).ok())
}

fn bad_identity(detail: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(TlsError::Identity(detail)),
    )))
}

// === verifiers ===

/// Client side: the chain must reach our roots and the leaf must name the expected SPIFFE
/// identity (a DNS name means nothing in the mesh).
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let got = spiffe_id_of(end_entity).map_err(|e| bad_identity(e.to_string()))?;
        if got != self.expected {
            return Err(bad_identity(format!(
                "server is {got}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server side: webpki checks the chain; on top, the client must carry a SPIFFE ID of our
/// trust domain, so a cert the roots happen to sign for something else is no mesh identity.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = spiffe_id_of(end_entity).map_err(|e| bad_identity(e.to_string()))?;
        match spiffe_trust_domain(&id) {
            Some(td) if td == self.trust_domain => Ok(ClientCertVerified::assertion()),
            _ => Err(bad_identity(format!(
                "client {id} is not in trust domain {}",
                self.trust_domain
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
pub(crate) mod test_certs {
    //! A tiny CA for tests, made with rcgen (the real CA lives in `pki`).
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };

    pub struct TestCa {
        pub cert_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    pub struct Issued {
        pub chain_pem: String,
        pub key_pem: String,
    }

    impl TestCa {
        pub fn new(name: &str) -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            TestCa {
                cert_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        pub fn issue(&self, spiffe_id: &str) -> Issued {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Issued {
                chain_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_certs::TestCa;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn context(ca: &TestCa, id: &str) -> TlsContext {
        let issued = ca.issue(id);
        let cert = WorkloadCert::from_pem(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            ca.cert_pem.as_bytes(),
        )
        .unwrap();
        TlsContext::new(Arc::new(cert)).unwrap()
    }

    /// Handshakes a client context against a server context in memory; returns what each
    /// side saw.
    async fn handshake(
        client: &TlsContext,
        expect: &str,
        server: &TlsContext,
    ) -> (Result<(), String>, Result<Option<String>, String>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client.client_config(expect).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
        let name = upstream_server_name("198.18.0.1".parse().unwrap());
        let client_side = async move {
            let mut s = connector
                .connect(name, a)
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(b"x").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 1];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok(())
        };
        let server_side = async move {
            let mut s = acceptor.accept(b).await.map_err(|e| e.to_string())?;
            let id = peer_identity(s.get_ref().1.peer_certificates());
            let mut buf = [0u8; 1];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            s.write_all(&buf).await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            Ok(id)
        };
        tokio::join!(client_side, server_side)
    }

    const WEB: &str = "spiffe://cluster.local/ns/pets/sa/web";
    const DB: &str = "spiffe://cluster.local/ns/pets/sa/db";

    #[tokio::test]
    async fn mutual_tls_succeeds_and_the_server_learns_the_client_identity() {
        let ca = TestCa::new("root");
        let (c, s) = handshake(&context(&ca, WEB), DB, &context(&ca, DB)).await;
        assert_eq!(c, Ok(()));
        assert_eq!(s, Ok(Some(WEB.to_string())));
    }

    #[tokio::test]
    async fn a_server_with_the_wrong_identity_is_refused_by_the_client() {
        let ca = TestCa::new("root");
        let impostor = context(&ca, "spiffe://cluster.local/ns/pets/sa/evil");
        let (c, _) = handshake(&context(&ca, WEB), DB, &impostor).await;
        let err = c.unwrap_err();
        assert!(err.contains("expected"), "{err}");
    }

    #[tokio::test]
    async fn a_client_from_another_root_is_refused_by_the_server() {
        let ours = TestCa::new("root");
        let theirs = TestCa::new("other root");
        let stranger = context(&theirs, "spiffe://other.local/ns/pets/sa/web");
        // The stranger trusts our server (so only the server can refuse).
        let (_, s) = handshake_trusting(&stranger, &ours, DB, &context(&ours, DB)).await;
        assert!(s.is_err(), "server accepted a foreign client: {s:?}");
    }

    async fn handshake_trusting(
        client: &TlsContext,
        extra_root: &TestCa,
        expect: &str,
        server: &TlsContext,
    ) -> (Result<(), String>, Result<Option<String>, String>) {
        let mut roots = client.cert.roots.clone();
        roots.extend(parse_certs("roots", extra_root.cert_pem.as_bytes()).unwrap());
        let cert = WorkloadCert {
            chain: client.cert.chain.clone(),
            key: client.cert.key.clone_key(),
            roots,
            identity: client.cert.identity.clone(),
            not_after: client.cert.not_after,
            serial: client.cert.serial.clone(),
        };
        let client = TlsContext::new(Arc::new(cert)).unwrap();
        handshake(&client, expect, server).await
    }

    /// A certificate as the mesh CA issues it (weft::pki), loaded the way the CSR client will.
    fn from_mesh_ca(ca: &crate::pki::MeshCa, id: &str) -> TlsContext {
        let key = crate::pki::WorkloadKey::generate().unwrap();
        let csr = key.csr_pem(id).unwrap();
        let issued = ca
            .sign_workload_csr(&csr, id, Duration::from_secs(3600), SystemTime::now())
            .unwrap();
        let cert = WorkloadCert::from_pem(
            issued.cert_chain_pem.concat().as_bytes(),
            key.private_key_pem().as_bytes(),
            issued.roots_pem.concat().as_bytes(),
        )
        .unwrap();
        TlsContext::new(Arc::new(cert)).unwrap()
    }

    #[tokio::test]
    async fn certificates_from_the_mesh_ca_work_for_mutual_tls() {
        let ca =
            crate::pki::MeshCa::generate_root("cluster.local", Duration::from_secs(86400)).unwrap();
        let (c, s) = handshake(&from_mesh_ca(&ca, WEB), DB, &from_mesh_ca(&ca, DB)).await;
        assert_eq!(c, Ok(()));
        assert_eq!(s, Ok(Some(WEB.to_string())));
    }

    #[test]
    fn certificates_without_exactly_one_spiffe_id_are_rejected() {
        let ca = TestCa::new("root");
        let issued = ca.issue("https://example.com/not-spiffe");
        let err = WorkloadCert::from_pem(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            ca.cert_pem.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(err.metric_label(), "identity");
        assert_eq!(
            WorkloadCert::from_pem(b"junk", b"junk", b"junk")
                .unwrap_err()
                .metric_label(),
            "empty"
        );
    }
}
