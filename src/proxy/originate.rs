//! TLS origination (DestinationRule `tls.mode` SIMPLE / MUTUAL): the client side of a TLS
//! connection the proxy opens to a server outside the mesh for an app that sent plaintext.
//! The server's chain is verified against the `credentialName` Secret's `ca.crt` (else the
//! system roots, as Istio does with `VERIFY_CERTIFICATE_AT_CLIENT`), its name against
//! `subjectAltNames` (else the SNI); MUTUAL presents the Secret's `tls.crt`/`tls.key`.
//! Every failure refuses the connection: never plaintext, never an unverified server.
//! Client configs are built once per content (settings, credential material, ALPN) and
//! shared ([`Originations`]); a changed CA or certificate gives another config and another
//! [`Originate::key`], so pooled connections made with the old one are not reused.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::route::model::Origination;
use crate::snapshot::TlsCredential;

/// The system's CA bundle (Debian's `ca-certificates`), read once: the roots a SIMPLE
/// origination without `credentialName` trusts.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Most client configs kept; past it the cache starts over (configs change rarely, and a
/// config in use stays alive in its connections).
const MAX_CACHED: usize = 256;

/// What the proxy speaks inside the TLS it originates, announced by ALPN as Istio's clusters
/// do: `h2` for HTTP/2 (gRPC included; Istio's `ALPNH2Only`); `http/1.1` for HTTP/1.1 (Istio
/// sends none there; a server choosing by ALPN then falls back to HTTP/1.1 anyway, and one
/// that insists on ALPN is answered); nothing for a relayed TCP stream (the app's bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    H2,
    Http11,
    Opaque,
}

impl Alpn {
    /// For an HTTP request of this version.
    pub fn of_http(h2: bool) -> Alpn {
        if h2 { Alpn::H2 } else { Alpn::Http11 }
    }

    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::Http11 => vec![b"http/1.1".to_vec()],
            Alpn::Opaque => Vec::new(),
        }
    }
}

/// One origination as a destination asks for it: everything its client config and its
/// server name are made of.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The destination's host (the DestinationRule's, the ServiceEntry's); may be a wildcard.
    pub host: &'a str,
    /// The name the app asked for on this request or connection (an HTTP Host or
    /// `:authority`, port stripped; a ClientHello's SNI): the SNI for a wildcard host
    /// without `sni`, as Istio's auto-SNI takes it.
    pub authority: Option<&'a str>,
    pub mutual: bool,
    pub settings: &'a Origination,
    /// The proxy's snapshot's `credentials`.
    pub credentials: &'a BTreeMap<String, TlsCredential>,
}

impl Asked<'_> {
    /// The name sent as SNI (and checked when there are no `subjectAltNames`): `sni`, else
    /// the host; for a wildcard host the name the app asked for, which the wildcard must
    /// cover.
    fn server_name(&self) -> Result<String, String> {
        if let Some(sni) = &self.settings.sni {
            return Ok(sni.clone());
        }
        let Some(suffix) = self.host.strip_prefix('*') else {
            return Ok(self.host.to_string());
        };
        let asked = self
            .authority
            .map(|a| strip_port(a).trim_end_matches('.').to_ascii_lowercase())
            .filter(|a| !a.is_empty());
        match asked {
            Some(name) if name.ends_with(suffix) && name.len() > suffix.len() => Ok(name),
            Some(name) => Err(format!(
                "{name:?} is not a name under the wildcard host {}; set tls.sni",
                self.host
            )),
            None => Err(format!(
                "the wildcard host {} needs the name the app asked for (an HTTP Host, a TLS server name) as SNI, and this connection gave none; set tls.sni",
                self.host
            )),
        }
    }

    /// The certificates this origination uses: the `credentialName` Secret's, or the files
    /// named (read now, so a file replaced in the container is used by the next connection);
    /// None: neither, the system roots verify the server.
    fn material(&self) -> Result<Option<Material>, String> {
        let s = self.settings;
        if let Some(name) = &s.credential_name {
            let c = self.credentials.get(name).ok_or_else(|| {
                format!("credentialName {name}: no such kubernetes.io/tls Secret reached this proxy (it is read in the proxy's namespace; the operator needs read access there, docs/egress.md)")
            })?;
            return Ok(Some(Material {
                ca: c.ca.clone(),
                chain: c.cert_chain.clone(),
                key: c.private_key.clone(),
                crl: None,
                names: [
                    format!("credentialName {name}: ca.crt"),
                    format!("credentialName {name}: tls.crt"),
                    format!("credentialName {name}: tls.key"),
                ],
                secret: true,
            }));
        }
        if !s.uses_files() {
            return Ok(None);
        }
        let [ca, chain, key] = [
            ("caCertificates", &s.ca_certificates),
            ("clientCertificate", &s.client_certificate),
            ("privateKey", &s.private_key),
        ]
        .map(|(field, path)| match path {
            Some(path) => read_file(field, path).map(Some),
            None => Ok(None),
        });
        let name = |field: &str, path: &Option<String>| {
            format!("{field} {}", path.as_deref().unwrap_or_default())
        };
        let crl = match &s.ca_crl {
            Some(path) => Some(read_file("caCrl", path)?),
            None => None,
        };
        Ok(Some(Material {
            ca: ca?,
            chain: chain?,
            key: key?,
            crl,
            names: [
                name("caCertificates", &s.ca_certificates),
                name("clientCertificate", &s.client_certificate),
                name("privateKey", &s.private_key),
            ],
            secret: false,
        }))
    }

    /// SHA-256 (hex) of what the client config is made of: mode, settings, and the material
    /// of the credential this mode uses (`ca.crt`; with MUTUAL also `tls.crt`, `tls.key`).
    fn config_digest(&self) -> String {
        self.digest_of(&self.material())
    }

    /// [`Self::config_digest`] of `material` read once by the caller ([`Self::material`]).
    fn digest_of(&self, material: &Result<Option<Material>, String>) -> String {
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            d.update(&(bytes.len() as u64).to_be_bytes());
            d.update(bytes);
        };
        field(if self.mutual { b"MUTUAL" } else { b"SIMPLE" });
        field(
            serde_json::to_string(self.settings)
                .unwrap_or_default()
                .as_bytes(),
        );
        match material {
            Ok(Some(m)) => {
                field(b"credential");
                field(m.ca.as_deref().unwrap_or_default().as_bytes());
                field(m.crl.as_deref().unwrap_or_default().as_bytes());
                if self.mutual {
                    field(m.chain.as_deref().unwrap_or_default().as_bytes());
                    field(m.key.as_deref().unwrap_or_default().as_bytes());
                }
            }
            Ok(None) => field(b"system roots"),
            Err(e) => {
                field(b"missing credential");
                field(e.as_bytes());
            }
        }
        hex(d.finish().as_ref())
    }

    /// What tells two client configs apart: `tls <digest>`.
    pub fn config_key(&self) -> String {
        format!("tls {}", self.config_digest())
    }

    /// What tells two originated connections apart: [`Self::config_key`] and the server
    /// name. Equal keys are interchangeable connections; a changed CA, certificate or name
    /// gives another.
    pub fn key(&self) -> String {
        let name = self
            .server_name()
            .unwrap_or_else(|e| format!("refused: {e}"));
        format!("{} sni={name}", self.config_key())
    }
}

/// What one origination needs: the client config, the name sent as SNI, and its pool key
/// ([`Asked::key`]).
#[derive(Clone)]
pub struct Originate {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    pub key: String,
}

impl std::fmt::Debug for Originate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Originate")
            .field("server_name", &self.server_name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The client configs of the proxy's originations, built once per content and ALPN.
#[derive(Default)]
pub struct Originations {
    built: Mutex<HashMap<(String, Alpn), Arc<ClientConfig>>>,
}

impl Originations {
    /// The client side of `asked`, speaking `alpn`. Err: why it cannot be done (the
    /// connection is then refused), naming what to change.
    pub fn prepare(&self, asked: &Asked<'_>, alpn: Alpn) -> Result<Originate, String> {
        if let Some(why) = &asked.settings.refused {
            return Err(format!(
                "the DestinationRule's tls for {}: {why}",
                asked.host
            ));
        }
        let sni = asked.server_name()?;
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|_| format!("{sni:?} is not a server name to send as SNI; set tls.sni"))?;
        // Read once: the digest and the config are made of the same bytes.
        let material = asked.material();
        let digest = asked.digest_of(&material);
        let key = format!("tls {digest} sni={sni}");
        let cached = self
            .built
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(digest.clone(), alpn))
            .cloned();
        let config = match cached {
            Some(c) => c,
            None => {
                let c = Arc::new(build(asked, material?, alpn)?);
                let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
                if built.len() >= MAX_CACHED {
                    built.clear();
                }
                built.insert((digest, alpn), c.clone());
                c
            }
        };
        Ok(Originate {
            config,
            server_name,
            key,
        })
    }

    /// How many client configs are kept (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.built.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A client config for `asked` made of `material` ([`Asked::material`]), speaking `alpn`.
fn build(
    asked: &Asked<'_>,
    material: Option<Material>,
    alpn: Alpn,
) -> Result<ClientConfig, String> {
    let settings = asked.settings;
    let [ca_name, chain_name, key_name] = material
        .as_ref()
        .map(|m| m.names.clone())
        .unwrap_or_default();
    let roots = match material.as_ref().and_then(|m| m.ca.as_deref()) {
        Some(pem) => roots_of(pem).map_err(|e| format!("{ca_name} {e}"))?,
        // A Secret must hold the CA; without caCertificates, files use the system roots
        // (Istio: "If omitted, the proxy will verify the server's certificate using the OS
        // CA certificates").
        None if material.as_ref().is_some_and(|m| m.secret) => {
            return Err(format!(
                "credentialName {}: the Secret has no ca.crt to verify the server with",
                settings.credential_name.as_deref().unwrap_or_default()
            ));
        }
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let crls = match material.as_ref().and_then(|m| m.crl.as_deref()) {
        Some(pem) => {
            let path = settings.ca_crl.as_deref().unwrap_or_default();
            let crls = CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("caCrl {path}: is not PEM ({e})"))?;
            if crls.is_empty() {
                return Err(format!("caCrl {path}: holds no X509 CRL block"));
            }
            crls
        }
        None => Vec::new(),
    };
    // With CRLs, every CA of the chain (the root excepted) needs one and an unknown status
    // fails, as Envoy's `crl` does; a CRL past its nextUpdate still counts.
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| format!("the server CA or caCrl is unusable ({e})"))?;
    let verifier = Arc::new(NamesVerifier {
        inner: webpki,
        names: settings
            .subject_alt_names
            .iter()
            .filter_map(|n| ServerName::try_from(n.clone()).ok())
            .collect(),
    });
    if verifier.names.len() != settings.subject_alt_names.len() {
        return Err(format!(
            "subjectAltNames {:?}: each must be a DNS name or an IP address",
            settings.subject_alt_names
        ));
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = if asked.mutual {
        let m = material.as_ref().ok_or_else(|| {
            "mode MUTUAL needs credentialName, or clientCertificate and privateKey (the client certificate)".to_string()
        })?;
        let (Some(chain), Some(key)) = (&m.chain, &m.key) else {
            return Err(format!(
                "MUTUAL needs a client certificate and key: {chain_name}, {key_name}"
            ));
        };
        let chain = certificates(chain).map_err(|e| format!("{chain_name} {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| format!("{key_name} ({e})"))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("{chain_name}, {key_name}: unusable together ({e})"))?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = alpn.protocols();
    Ok(config)
}

/// The certificates of one origination, as PEM text, and how to name each in an error.
struct Material {
    ca: Option<String>,
    chain: Option<String>,
    key: Option<String>,
    /// Revocation lists (`caCrl`), PEM.
    crl: Option<String>,
    /// How the CA, the chain and the key are named in messages.
    names: [String; 3],
    /// From a `credentialName` Secret (which must hold the CA), not from files.
    secret: bool,
}

/// Largest certificate file read (a bundle of many CAs is well below it).
const MAX_CERT_FILE: u64 = 1 << 20;

/// The text of a certificate file named by DestinationRule field `field`.
fn read_file(field: &str, path: &str) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| {
        format!("{field} {path}: cannot be read in the proxy's container ({e}); mount it with sidecar.istio.io/userVolume and userVolumeMount")
    })?;
    let mut text = String::new();
    file.take(MAX_CERT_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{field} {path}: cannot be read as text ({e})"))?;
    if text.len() as u64 > MAX_CERT_FILE {
        return Err(format!("{field} {path}: larger than {MAX_CERT_FILE} bytes"));
    }
    Ok(text)
}

/// `host` without a `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens TLS on `tcp` as `o` says, within `timeout`.
pub async fn handshake(
    o: &Originate,
    tcp: tokio::net::TcpStream,
    timeout: std::time::Duration,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(o.config.clone());
    tokio::time::timeout(timeout, connector.connect(o.server_name.clone(), tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// Every certificate of a PEM bundle; none is an error.
fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM ({e})"))?;
    if certs.is_empty() {
        return Err("holds no CERTIFICATE block".into());
    }
    Ok(certs)
}

fn roots_of(pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for der in certificates(pem)? {
        roots
            .add(der)
            .map_err(|e| format!("holds an unusable certificate ({e})"))?;
    }
    Ok(roots)
}

/// The system roots, read once per process (the proxy's image's bundle).
fn system_roots() -> Result<RootCertStore, String> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let pem = std::fs::read_to_string(SYSTEM_CA_BUNDLE).map_err(|e| {
                format!("no credentialName, and the system CA bundle {SYSTEM_CA_BUNDLE} cannot be read ({e}): give credentialName (a Secret with ca.crt)")
            })?;
            roots_of(&pem).map_err(|e| format!("the system CA bundle {SYSTEM_CA_BUNDLE} {e}"))
        })
        .clone()
}

/// WebPKI's chain verification, with the name checked against `names` (the DestinationRule's
/// `subjectAltNames`, any one suffices) when given, else against the SNI, as Envoy's
/// `match_typed_subject_alt_names` / auto SAN validation do.
#[derive(Debug)]
struct NamesVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for NamesVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.names.is_empty() {
            return self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp,
                now,
            );
        }
        let mut last = None;
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subjectAltNames".into())))
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

/// A test CA and an "external" TLS server on loopback, for this module's and the egress
/// path's tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use rcgen::{CertificateParams, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A test CA and what it signs.
    pub(crate) struct Ca {
        pub(crate) pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        pub(crate) fn new(name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            Ca {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A leaf for these DNS names: (chain PEM, key PEM).
        pub(crate) fn leaf(&self, names: &[&str]) -> (String, String) {
            self.leaf_numbered(names, None)
        }

        /// [`Self::leaf`] with serial number `serial` (a CRL names it).
        pub(crate) fn leaf_numbered(
            &self,
            names: &[&str],
            serial: Option<u64>,
        ) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.serial_number = serial.map(rcgen::SerialNumber::from);
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }

        /// A CRL of this CA revoking the certificates with these serial numbers, PEM.
        pub(crate) fn crl(&self, revoked: &[u64]) -> String {
            let params = rcgen::CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2026, 1, 1),
                next_update: rcgen::date_time_ymd(2036, 1, 1),
                crl_number: rcgen::SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .iter()
                    .map(|&n| rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from(n),
                        revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                        reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            };
            params.signed_by(&self.issuer).unwrap().pem().unwrap()
        }
    }

    /// An "external" TLS server on loopback with a certificate for `names`, signed by `ca`;
    /// with `client_ca` it requires a client certificate chaining to it. Each connection gets
    /// one line: `client-cert` or `no-client-cert`, then is closed; with `http`, after the
    /// first bytes (a request), an HTTP/1.1 200 answer whose body is that line.
    pub(crate) async fn server(
        ca: &Ca,
        names: &[&str],
        client_ca: Option<&Ca>,
        http: bool,
    ) -> std::net::SocketAddr {
        server_with(ca.leaf(names), client_ca, http).await
    }

    /// [`server`] with this leaf (chain PEM, key PEM).
    pub(crate) async fn server_with(
        (chain, key): (String, String),
        client_ca: Option<&Ca>,
        http: bool,
    ) -> std::net::SocketAddr {
        let chain = certificates(&chain).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let config = match client_ca {
            Some(c) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots_of(&c.pem).unwrap()),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        }
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let presented = tls.get_ref().1.peer_certificates().is_some();
                        let line = if presented {
                            "client-cert\n"
                        } else {
                            "no-client-cert\n"
                        };
                        let reply = if http {
                            let mut buf = [0u8; 4096];
                            let _ = tls.read(&mut buf).await;
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{line}",
                                line.len()
                            )
                        } else {
                            line.to_string()
                        };
                        let _ = tls.write_all(reply.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    /// A TLS server on loopback with a certificate for `names` signed by `ca`, offering
    /// `protocols` by ALPN; each connection gets one line, `alpn=<negotiated>` (or
    /// `alpn=none`), then is closed.
    pub(crate) async fn alpn_server(
        ca: &Ca,
        names: &[&str],
        protocols: &[&str],
    ) -> std::net::SocketAddr {
        let (chain, key) = ca.leaf(names);
        let chain = certificates(&chain).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let alpn = tls
                            .get_ref()
                            .1
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .unwrap_or_else(|| "none".into());
                        let _ = tls.write_all(format!("alpn={alpn}\n").as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{Ca, alpn_server, server, server_with};
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    /// A one-off origination to `host` (no name asked, HTTP/1.1).
    fn prepare(
        host: &str,
        mutual: bool,
        settings: &Origination,
        credentials: &BTreeMap<String, TlsCredential>,
    ) -> Result<Originate, String> {
        let asked = Asked {
            host,
            authority: None,
            mutual,
            settings,
            credentials,
        };
        Originations::default().prepare(&asked, Alpn::Http11)
    }

    /// Opens TLS to `addr` as `o` says; the server's line, or the failure.
    async fn line_of(addr: std::net::SocketAddr, o: &Originate) -> Result<String, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = handshake(o, tcp, std::time::Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        tls.read_to_string(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        Ok(line.trim().to_string())
    }

    /// Originates to `addr` as `settings` say; the server's line, or the failure.
    async fn call(
        addr: std::net::SocketAddr,
        mutual: bool,
        settings: &Origination,
        credentials: &BTreeMap<String, TlsCredential>,
    ) -> Result<String, String> {
        let o = prepare("partner.weft.test", mutual, settings, credentials)?;
        line_of(addr, &o).await
    }

    fn with_ca(ca: &Ca) -> BTreeMap<String, TlsCredential> {
        BTreeMap::from([(
            "partner-ca".to_string(),
            TlsCredential {
                ca: Some(ca.pem.clone()),
                cert_chain: None,
                private_key: None,
            },
        )])
    }

    fn named(credential: &str) -> Origination {
        Origination {
            credential_name: Some(credential.into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn simple_verifies_the_server_against_the_secrets_ca_and_its_name() {
        let ca = Ca::new("partner CA");
        let addr = server(&ca, &["partner.weft.test"], None, false).await;
        // The right CA, the host as SNI and name: TLS, no client certificate.
        let ok = call(addr, false, &named("partner-ca"), &with_ca(&ca)).await;
        assert_eq!(ok.as_deref(), Ok("no-client-cert"));
        // Another CA: the handshake fails (closed, never plaintext).
        let other = Ca::new("someone else");
        let wrong_ca = call(addr, false, &named("partner-ca"), &with_ca(&other)).await;
        assert!(wrong_ca.is_err(), "{wrong_ca:?}");
        // subjectAltNames the certificate does not hold: refused.
        let wrong_san = Origination {
            subject_alt_names: vec!["api.other.test".into()],
            ..named("partner-ca")
        };
        let refused = call(addr, false, &wrong_san, &with_ca(&ca)).await;
        assert!(refused.is_err(), "{refused:?}");
        // One of the names it holds suffices, whatever the SNI.
        let right_san = Origination {
            sni: Some("elsewhere.weft.test".into()),
            subject_alt_names: vec!["api.other.test".into(), "partner.weft.test".into()],
            ..named("partner-ca")
        };
        let ok = call(addr, false, &right_san, &with_ca(&ca)).await;
        assert_eq!(ok.as_deref(), Ok("no-client-cert"));
        // Without subjectAltNames the SNI is the name checked: another SNI fails.
        let other_sni = Origination {
            sni: Some("elsewhere.weft.test".into()),
            ..named("partner-ca")
        };
        assert!(call(addr, false, &other_sni, &with_ca(&ca)).await.is_err());
    }

    #[tokio::test]
    async fn mutual_presents_the_secrets_client_certificate() {
        let server_ca = Ca::new("partner CA");
        let client_ca = Ca::new("our client CA");
        let addr = server(&server_ca, &["partner.weft.test"], Some(&client_ca), false).await;
        let (chain, key) = client_ca.leaf(&["client.weft.test"]);
        let credentials = BTreeMap::from([(
            "client-cred".to_string(),
            TlsCredential {
                ca: Some(server_ca.pem.clone()),
                cert_chain: Some(chain),
                private_key: Some(key),
            },
        )]);
        let got = call(addr, true, &named("client-cred"), &credentials).await;
        assert_eq!(got.as_deref(), Ok("client-cert"));
        // SIMPLE to the same server presents nothing: the server refuses it.
        let simple = call(addr, false, &named("client-cred"), &credentials).await;
        assert!(simple.is_err(), "{simple:?}");
    }

    /// Istio's `caCertificates`, `clientCertificate` and `privateKey`: files in the proxy's
    /// container, read when a connection is made, so a replaced file is used by the next one.
    #[tokio::test]
    async fn certificate_files_verify_the_server_and_present_the_client_certificate() {
        let server_ca = Ca::new("partner CA");
        let client_ca = Ca::new("our client CA");
        let dir = std::env::temp_dir().join(format!("weft-originate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let (chain, key) = client_ca.leaf(&["client.weft.test"]);
        std::fs::write(path("ca.pem"), &server_ca.pem).unwrap();
        std::fs::write(path("client.pem"), &chain).unwrap();
        std::fs::write(path("client.key"), &key).unwrap();
        let none = BTreeMap::new();
        let files = Origination {
            ca_certificates: Some(path("ca.pem")),
            client_certificate: Some(path("client.pem")),
            private_key: Some(path("client.key")),
            ..Default::default()
        };
        let mutual_server =
            server(&server_ca, &["partner.weft.test"], Some(&client_ca), false).await;
        assert_eq!(
            call(mutual_server, true, &files, &none).await.as_deref(),
            Ok("client-cert")
        );
        // SIMPLE with the CA file alone verifies the server.
        let simple_server = server(&server_ca, &["partner.weft.test"], None, false).await;
        let ca_only = Origination {
            ca_certificates: Some(path("ca.pem")),
            ..Default::default()
        };
        assert_eq!(
            call(simple_server, false, &ca_only, &none).await.as_deref(),
            Ok("no-client-cert")
        );
        // The file now holds another CA: the next connection gets another config (another
        // pool key) and fails to verify the server.
        let before = prepare("partner.weft.test", false, &ca_only, &none)
            .unwrap()
            .key;
        std::fs::write(path("ca.pem"), &Ca::new("someone else").pem).unwrap();
        let after = prepare("partner.weft.test", false, &ca_only, &none)
            .unwrap()
            .key;
        assert_ne!(before, after);
        assert!(call(simple_server, false, &ca_only, &none).await.is_err());
        // A file that is not there: refused, naming the field and the path.
        let missing = Origination {
            ca_certificates: Some(path("nope.pem")),
            ..Default::default()
        };
        let e = prepare("partner.weft.test", false, &missing, &none).unwrap_err();
        assert!(
            e.contains("caCertificates") && e.contains("nope.pem") && e.contains("userVolumeMount"),
            "{e}"
        );
        // MUTUAL with only a CA file: no client certificate to present, refused.
        let e = prepare("partner.weft.test", true, &ca_only, &none).unwrap_err();
        assert!(e.contains("MUTUAL needs"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Istio's `caCrl`: a server whose certificate the CRL file revokes is refused; one it
    /// does not name passes; a file without a CRL is named.
    #[tokio::test]
    async fn a_crl_file_refuses_a_revoked_server_certificate() {
        let ca = Ca::new("partner CA");
        let dir = std::env::temp_dir().join(format!("weft-crl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        std::fs::write(path("ca.pem"), &ca.pem).unwrap();
        std::fs::write(path("crl.pem"), ca.crl(&[7])).unwrap();
        let names = ["partner.weft.test"];
        let revoked = server_with(ca.leaf_numbered(&names, Some(7)), None, false).await;
        let good = server_with(ca.leaf_numbered(&names, Some(8)), None, false).await;
        let none = BTreeMap::new();
        let with_crl = Origination {
            ca_certificates: Some(path("ca.pem")),
            ca_crl: Some(path("crl.pem")),
            ..Default::default()
        };
        assert_eq!(
            call(good, false, &with_crl, &none).await.as_deref(),
            Ok("no-client-cert")
        );
        let refused = call(revoked, false, &with_crl, &none).await;
        assert!(
            refused.is_err(),
            "a revoked certificate passed: {refused:?}"
        );
        // Without the CRL the same server passes: the refusal was the CRL's.
        let ca_only = Origination {
            ca_certificates: Some(path("ca.pem")),
            ..Default::default()
        };
        assert!(call(revoked, false, &ca_only, &none).await.is_ok());
        std::fs::write(path("crl.pem"), &ca.pem).unwrap();
        let e = prepare("partner.weft.test", false, &with_crl, &none).unwrap_err();
        assert!(e.contains("caCrl") && e.contains("no X509 CRL"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn what_cannot_be_done_as_asked_is_refused_naming_the_fix() {
        let ca = Ca::new("partner CA");
        let none = BTreeMap::new();
        let err = |mutual, settings: &Origination, creds: &BTreeMap<String, TlsCredential>| {
            prepare("partner.weft.test", mutual, settings, creds).unwrap_err()
        };
        // A Secret that did not reach the proxy.
        assert!(err(false, &named("partner-ca"), &none).contains("credentialName partner-ca"));
        // MUTUAL with a Secret holding only a CA.
        let e = err(true, &named("partner-ca"), &with_ca(&ca));
        assert!(
            e.contains("MUTUAL needs")
                && e.contains("partner-ca: tls.crt")
                && e.contains("tls.key"),
            "{e}"
        );
        // A Secret without ca.crt does not fall back to the system roots.
        let no_ca = BTreeMap::from([(
            "partner-ca".to_string(),
            TlsCredential {
                ca: None,
                cert_chain: None,
                private_key: None,
            },
        )]);
        assert!(err(false, &named("partner-ca"), &no_ca).contains("no ca.crt"));
        // What the control plane marked refused (a certificate file path).
        let refused = Origination {
            refused: Some("certificate files ...; give credentialName instead".into()),
            ..Default::default()
        };
        assert!(err(false, &refused, &none).contains("give credentialName"));
    }
    /// Istio's clusters announce `h2` for HTTP/2; weft also names HTTP/1.1 and nothing for
    /// relayed bytes. Before, no ALPN was sent at all: a server choosing its protocol by ALPN
    /// answered an HTTP/2 (gRPC) client in HTTP/1.1.
    #[tokio::test]
    async fn alpn_names_the_protocol_spoken_inside() {
        let ca = Ca::new("partner CA");
        let addr = alpn_server(&ca, &["partner.weft.test"], &["h2", "http/1.1"]).await;
        let origs = Originations::default();
        let settings = named("partner-ca");
        let creds = with_ca(&ca);
        let asked = Asked {
            host: "partner.weft.test",
            authority: None,
            mutual: false,
            settings: &settings,
            credentials: &creds,
        };
        for (alpn, want) in [
            (Alpn::H2, "alpn=h2"),
            (Alpn::Http11, "alpn=http/1.1"),
            (Alpn::Opaque, "alpn=none"),
        ] {
            let o = origs.prepare(&asked, alpn).unwrap();
            assert_eq!(line_of(addr, &o).await.as_deref(), Ok(want), "{alpn:?}");
        }
    }

    /// One client config per content: asked again, the same config is shared (no rebuild
    /// per connection); a changed CA (or, for MUTUAL, a changed certificate) gives another
    /// config and another pool key, and SIMPLE's key does not hang on a key it never uses.
    #[test]
    fn configs_are_built_once_per_content_and_keyed_by_the_credential() {
        let ca = Ca::new("partner CA");
        let other = Ca::new("the partner's new CA");
        let (chain, key) = ca.leaf(&["client.weft.test"]);
        let (chain2, key2) = ca.leaf(&["client.weft.test"]);
        let origs = Originations::default();
        let settings = named("partner-ca");
        let cred = |ca: &Ca, chain: &str, key: &str| {
            BTreeMap::from([(
                "partner-ca".to_string(),
                TlsCredential {
                    ca: Some(ca.pem.clone()),
                    cert_chain: Some(chain.to_string()),
                    private_key: Some(key.to_string()),
                },
            )])
        };
        let prepare = |mutual, creds: &BTreeMap<String, TlsCredential>| {
            let asked = Asked {
                host: "partner.weft.test",
                authority: None,
                mutual,
                settings: &settings,
                credentials: creds,
            };
            origs.prepare(&asked, Alpn::Http11).unwrap()
        };
        let first = prepare(false, &cred(&ca, &chain, &key));
        let again = prepare(false, &cred(&ca, &chain, &key));
        assert!(Arc::ptr_eq(&first.config, &again.config));
        assert_eq!(first.key, again.key);
        assert_eq!(origs.len(), 1);
        // SIMPLE uses only ca.crt: another client key is the same origination.
        let simple_other_key = prepare(false, &cred(&ca, &chain2, &key2));
        assert_eq!(first.key, simple_other_key.key);
        // A new CA: another config, another key.
        let rotated = prepare(false, &cred(&other, &chain, &key));
        assert_ne!(first.key, rotated.key);
        assert!(!Arc::ptr_eq(&first.config, &rotated.config));
        // MUTUAL: a new client certificate is another origination.
        let m1 = prepare(true, &cred(&ca, &chain, &key));
        let m2 = prepare(true, &cred(&ca, &chain2, &key2));
        assert_ne!(m1.key, m2.key);
        assert_ne!(m1.key, first.key);
        assert_eq!(origs.len(), 4);
    }

    /// A wildcard host cannot be an SNI: the name the app asked for is sent and verified
    /// (Istio's auto-SNI), if the wildcard covers it; with none, the connection is refused
    /// naming `tls.sni`. Before, SNI was the pattern itself and every origination failed.
    #[tokio::test]
    async fn a_wildcard_host_sends_and_verifies_the_name_asked_for() {
        let ca = Ca::new("partner CA");
        let addr = server(&ca, &["api.partner.weft.test"], None, false).await;
        let origs = Originations::default();
        let settings = named("partner-ca");
        let creds = with_ca(&ca);
        let asked = |authority| Asked {
            host: "*.partner.weft.test",
            authority,
            mutual: false,
            settings: &settings,
            credentials: &creds,
        };
        let o = origs
            .prepare(&asked(Some("API.partner.weft.test:443")), Alpn::Http11)
            .unwrap();
        assert_eq!(line_of(addr, &o).await.as_deref(), Ok("no-client-cert"));
        // Another name under the wildcard: sent, and the certificate does not hold it.
        let o = origs
            .prepare(&asked(Some("www.partner.weft.test")), Alpn::Http11)
            .unwrap();
        assert!(line_of(addr, &o).await.is_err());
        // Two names, two pool keys.
        let k1 = asked(Some("api.partner.weft.test")).key();
        let k2 = asked(Some("www.partner.weft.test")).key();
        assert_ne!(k1, k2);
        // No name, or one the wildcard does not cover: refused, naming tls.sni.
        let none = origs.prepare(&asked(None), Alpn::Http11).unwrap_err();
        assert!(none.contains("set tls.sni"), "{none}");
        let outside = origs
            .prepare(&asked(Some("evil.weft.test")), Alpn::Http11)
            .unwrap_err();
        assert!(outside.contains("set tls.sni"), "{outside}");
        // With sni set, that name is sent whatever was asked.
        let with_sni = Origination {
            sni: Some("api.partner.weft.test".into()),
            ..named("partner-ca")
        };
        let o = origs
            .prepare(
                &Asked {
                    settings: &with_sni,
                    ..asked(None)
                },
                Alpn::Http11,
            )
            .unwrap();
        assert_eq!(line_of(addr, &o).await.as_deref(), Ok("no-client-cert"));
    }
}
