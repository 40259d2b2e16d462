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
