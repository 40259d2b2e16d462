//! TLS origination (DestinationRule `tls.mode` SIMPLE / MUTUAL): the client side of a TLS
//! connection the proxy opens to a server outside the mesh for an app that sent plaintext.
//! The server's chain is verified against the `credentialName` Secret's `ca.crt` (else the
//! system roots, as Istio does with `VERIFY_CERTIFICATE_AT_CLIENT`), its name against
//! `subjectAltNames` (else the SNI); MUTUAL presents the Secret's `tls.crt`/`tls.key`.
//! Every failure refuses the connection: never plaintext, never an unverified server.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::route::model::Origination;
use crate::snapshot::TlsCredential;

/// The system's CA bundle (Debian's `ca-certificates`), read once: the roots a SIMPLE
/// origination without `credentialName` trusts.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What one origination needs: the client config and the name sent as SNI.
#[derive(Clone)]
pub struct Originate {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for Originate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Originate")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The client side of an origination to `host` as `settings` say, with the certificates of
/// `credentials` (the proxy's snapshot's). Err: why it cannot be done (the connection is then
/// refused), naming what to change.
pub fn prepare(
    host: &str,
    mutual: bool,
    settings: &Origination,
    credentials: &BTreeMap<String, TlsCredential>,
) -> Result<Originate, String> {
    if let Some(why) = &settings.refused {
        return Err(format!("the DestinationRule's tls for {host}: {why}"));
    }
    let credential = match &settings.credential_name {
        Some(name) => Some(credentials.get(name).ok_or_else(|| {
            format!("credentialName {name}: no such kubernetes.io/tls Secret reached this proxy (it is read in the proxy's namespace; the operator needs read access there, docs/egress.md)")
        })?),
        None => None,
    };
    let roots = match credential.and_then(|c| c.ca.as_deref()) {
        Some(pem) => roots_of(pem).map_err(|e| {
            format!(
                "credentialName {}: ca.crt {e}",
                settings.credential_name.as_deref().unwrap_or_default()
            )
        })?,
        None if credential.is_some() => {
            return Err(format!(
                "credentialName {}: the Secret has no ca.crt to verify the server with",
                settings.credential_name.as_deref().unwrap_or_default()
            ));
        }
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("the server CA is unusable ({e})"))?;
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
    let config = if mutual {
        let name = settings.credential_name.as_deref().unwrap_or_default();
        let c = credential.ok_or_else(|| {
            "mode MUTUAL needs credentialName (the client certificate)".to_string()
        })?;
        let (Some(chain), Some(key)) = (&c.cert_chain, &c.private_key) else {
            return Err(format!(
                "credentialName {name}: MUTUAL needs tls.crt and tls.key in the Secret"
            ));
        };
        let chain =
            certificates(chain).map_err(|e| format!("credentialName {name}: tls.crt {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| format!("credentialName {name}: tls.key ({e})"))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("credentialName {name}: tls.crt/tls.key unusable ({e})"))?
    } else {
        builder.with_no_client_auth()
    };
    let sni = settings.sni.as_deref().unwrap_or(host);
    let server_name = ServerName::try_from(sni.to_string())
        .map_err(|_| format!("{sni:?} is not a server name to send as SNI; set tls.sni"))?;
    Ok(Originate {
        config: Arc::new(config),
        server_name,
    })
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
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
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
        let (chain, key) = ca.leaf(names);
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
}

#[cfg(test)]
mod tests {
    use super::test_support::{Ca, server};
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    /// Originates to `addr` as `settings` say; the server's line, or the failure.
    async fn call(
        addr: std::net::SocketAddr,
        mutual: bool,
        settings: &Origination,
        credentials: &BTreeMap<String, TlsCredential>,
    ) -> Result<String, String> {
        let o = prepare("partner.weft.test", mutual, settings, credentials)?;
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = handshake(&o, tcp, std::time::Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        tls.read_to_string(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        Ok(line.trim().to_string())
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
        assert!(err(true, &named("partner-ca"), &with_ca(&ca)).contains("tls.crt and tls.key"));
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
}
