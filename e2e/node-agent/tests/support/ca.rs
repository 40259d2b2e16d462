//! The mesh CA seen from outside, as a user would check it with kubectl, openssl and curl: the
//! published root, projected tokens, and certificate requests to the CSR endpoint.

use std::process::Command;
use std::time::Duration;

use super::{Cluster, Namespace, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

pub fn root_pem(c: &Cluster) -> String {
    wait_for(
        MINUTE,
        || {
            c.ok(&[
                "-n",
                "weft-system",
                "get",
                "configmap",
                "weft-ca-root-cert",
                "-o",
                "jsonpath={.data.root-cert\\.pem}",
            ])
            .to_string()
        },
        |pem| pem.contains("BEGIN CERTIFICATE"),
    )
}

pub fn operator_ip(c: &Cluster) -> String {
    c.ok(&[
        "-n",
        "weft-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=weft-operator",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ])
}

/// A pod holding a projected token of `audience` for service account `sa`.
pub fn token_of(ns: &Namespace, sa: &str, audience: &str) -> String {
    let pod = format!("holder-{sa}-{}", audience.replace('.', "-"));
    if !ns.kubectl(&["get", "serviceaccount", sa]).status.success() {
        ns.ok(&["create", "serviceaccount", sa]);
    }
    ns.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {pod}}}
spec:
  serviceAccountName: {sa}
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "sleep 3600"]
    volumeMounts: [{{name: token, mountPath: /var/run/secrets/tokens}}]
  volumes:
  - name: token
    projected:
      sources:
      - serviceAccountToken: {{audience: {audience}, expirationSeconds: 3600, path: weft-token}}
"#
    ));
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{pod}"),
        "--timeout=60s",
    ]);
    ns.ok(&[
        "exec",
        &pod,
        "--",
        "cat",
        "/var/run/secrets/tokens/weft-token",
    ])
    .trim()
    .to_string()
}

pub struct CsrResult {
    pub status: u16,
    pub body: String,
    /// Holds root.pem, key.pem, csr.pem and the response.
    pub dir: std::path::PathBuf,
}

/// Makes a P-256 key and a CSR for `spiffe_id` with openssl, and POSTs it with curl over TLS,
/// verifying the operator against the published root under its Service name.
pub fn request_certificate(
    c: &Cluster,
    token: &str,
    spiffe_id: &str,
    validity: Option<u64>,
) -> CsrResult {
    let dir =
        std::env::temp_dir().join(format!("weft-csr-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("root.pem"), root_pem(c)).unwrap();
    let sh = |script: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    sh(
        "openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out key.pem",
    );
    sh(&format!(
        "openssl req -new -key key.pem -subj / -addext 'subjectAltName=critical,URI:{spiffe_id}' -out csr.pem"
    ));
    let csr = std::fs::read_to_string(dir.join("csr.pem")).unwrap();
    let mut body = serde_json::json!({"csr": csr});
    if let Some(v) = validity {
        body["validitySeconds"] = v.into();
    }
    std::fs::write(dir.join("req.json"), body.to_string()).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    let ip = operator_ip(c);
    let out = sh(&format!(
        "curl -sS -o resp.json -w '%{{http_code}}' --cacert root.pem --resolve weft-operator.weft-system.svc:15012:{ip} \
         -H \"Authorization: Bearer $(cat token)\" -H 'content-type: application/json' --data-binary @req.json \
         https://weft-operator.weft-system.svc:15012/v1/certificates"
    ));
    let status = out.trim().parse().unwrap_or(0);
    let body = std::fs::read_to_string(dir.join("resp.json")).unwrap_or_default();
    CsrResult { status, body, dir }
}

pub fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

/// A copy of `token` whose `exp` (and `iat`, `nbf`) lie in the past, signed again with the
/// cluster's service-account key: a genuine token that has expired (TokenRequest will not
/// mint one shorter than ten minutes).
pub fn expired_copy(token: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (header, payload) = (parts.next().unwrap(), parts.next().unwrap());
    let mut claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(payload).expect("JWT payload")).expect("claims");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["iat"] = (now - 7200).into();
    claims["nbf"] = (now - 7200).into();
    claims["exp"] = (now - 3600).into();
    let signing_input = format!("{header}.{}", b64.encode(claims.to_string()));
    let key = super::repo_root().join("e2e/.cluster/pki/sa.key");
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let signature = child.wait_with_output().unwrap().stdout;
    assert!(!signature.is_empty(), "openssl could not sign with {key:?}");
    format!("{signing_input}.{}", b64.encode(signature))
}

/// Accepts whatever certificate the proxy presents: [`proxy_accepts_client_cert`] asks only
/// whether the proxy trusts the client's.
#[derive(Debug)]
struct AnyServer(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether the proxy at `ip` (its mesh port: ALPN `weft/1` on the app port 8080) accepts a
/// client certificate `chain_pem` with `key_pem` — that is, whether its trust bundle holds the
/// root that certificate chains to. Ok(true): the handshake completed and no alert followed
/// (the proxy then waits for a request, or closes when its pod serves nothing on the port);
/// Ok(false): the proxy refused the certificate with an alert (`DecryptError` when the
/// certificate names a trusted root's subject but another key signed it, as a new builtin root
/// does, `UnknownCA` and the like otherwise); Err: anything else.
pub fn proxy_accepts_client_cert(ip: &str, chain_pem: &str, key_pem: &str) -> Result<bool, String> {
    use rustls::AlertDescription as A;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::Read as _;
    use std::sync::Arc;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("client key: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"weft/1".to_vec()];
    let addr: std::net::SocketAddr = format!("{ip}:8080").parse().map_err(|e| format!("{e}"))?;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("weft-mesh-peer").map_err(|e| e.to_string())?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let verdict = |e: std::io::Error| -> Result<bool, String> {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(
                A::UnknownCA
                | A::BadCertificate
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::CertificateExpired
                | A::DecryptError
                | A::AccessDenied,
            )) => Ok(false),
            _ => Err(format!("{addr}: {e}")),
        }
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return verdict(e);
        }
    }
    // In TLS 1.3 the server judges the client's certificate after the client's Finished: its
    // verdict (an alert, or nothing) comes with the next read.
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(_) => Ok(true),
        // No alert: accepted (a refusal always comes as an alert before the close).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(true)
        }
        Err(e) => verdict(e),
    }
}

/// A client certificate (chain PEM, key PEM) for `spiffe_id`, signed with openssl by the CA
/// `ca_pem` / `ca_key_pem` (a root the test holds the key of): what a proxy accepts only while
/// its trust bundle holds that root.
pub fn client_cert_from(ca_pem: &str, ca_key_pem: &str, spiffe_id: &str) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("weft-client-cert-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("ca.crt"), ca_pem).expect("ca.crt");
    std::fs::write(dir.join("ca.key"), ca_key_pem).expect("ca.key");
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=critical,URI:{spiffe_id}\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth,serverAuth\n"
        ),
    )
    .expect("ext.cnf");
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "set -e
             openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out key.pem
             openssl req -new -key key.pem -subj / -out csr.pem
             openssl x509 -req -in csr.pem -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
               -extfile ext.cnf -out cert.pem 2>/dev/null",
        )
        .current_dir(&dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "a client certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect(f);
    let pair = (read("cert.pem"), read("key.pem"));
    let _ = std::fs::remove_dir_all(&dir);
    pair
}
