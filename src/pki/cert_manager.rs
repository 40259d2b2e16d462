//! The cert-manager issuer: one `cert-manager.io/v1` CertificateRequest per workload CSR in the
//! operator's namespace, signed by the Issuer or ClusterIssuer it names, waited for (Ready,
//! Denied, Failed, InvalidRequest) within a deadline, then deleted. Its roots are the `ca.crt`
//! of a Secret (OSM's `osm-ca-bundle`). Kube-free: the operator hands it a [`CertificateRequests`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};

use super::encoding;
use super::issuer::{
    CA_BUNDLE_KEY, CERT_MANAGER_API_VERSION, CertManagerConfig, IssuerError, IssuerKind,
    SignFuture, SignedChain, WorkloadCsr,
};

/// How long one CSR waits for cert-manager: inside the CSR endpoint's 10 s.
pub const SIGN_DEADLINE: Duration = Duration::from_secs(8);
/// Label on every CertificateRequest weft creates (and the value), so they can be found.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "weft";
/// Annotation naming the identity a request is for (the CSR carries it too; this is for people
/// and approver policies reading the object).
pub const IDENTITY_ANNOTATION: &str = "weft.dev/identity";
/// Key usages asked for: what an ECDSA mTLS certificate needs on both ends (no key
/// encipherment: an ECDSA key cannot encipher).
pub const USAGES: [&str; 3] = ["digital signature", "client auth", "server auth"];

// === The CertificateRequest, as pure data ===

/// The CertificateRequest for `csr` in `namespace`, as cert-manager's API takes it. The name is
/// the API server's (`generateName`): concurrent requests of one workload never collide.
pub fn certificate_request(
    csr: &WorkloadCsr<'_>,
    config: &CertManagerConfig,
    namespace: &str,
) -> Value {
    let request = base64::engine::general_purpose::STANDARD.encode(csr.csr_pem.as_bytes());
    json!({
        "apiVersion": CERT_MANAGER_API_VERSION,
        "kind": "CertificateRequest",
        "metadata": {
            "generateName": generate_name(csr.namespace, csr.service_account),
            "namespace": namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY,
                "weft.dev/workload-namespace": label_value(csr.namespace),
                "weft.dev/workload-service-account": label_value(csr.service_account),
            },
            "annotations": { IDENTITY_ANNOTATION: csr.spiffe_id },
        },
        "spec": {
            "issuerRef": {
                "name": config.issuer_name,
                "kind": config.issuer_kind.as_str(),
                "group": config.issuer_group,
            },
            "duration": format!("{}s", csr.ttl.as_secs()),
            "usages": USAGES,
            "isCA": false,
            "request": request,
        },
    })
}

/// `weft-<ns>-<sa>-`, cut so the API server's 5 random characters still fit in 253.
fn generate_name(namespace: &str, service_account: &str) -> String {
    let mut name = format!("weft-{namespace}-{service_account}");
    name.truncate(200);
    format!("{}-", name.trim_end_matches(['-', '.']))
}

/// Label values are at most 63 characters; namespaces and service accounts may be longer.
fn label_value(s: &str) -> String {
    let mut v = s.to_string();
    v.truncate(63);
    v.trim_end_matches(['-', '.', '_']).to_string()
}

/// What a CertificateRequest's status says, as cert-manager's controllers write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestState {
    /// Ready=True (reason Issued): `status.certificate` (leaf, then intermediates) and
    /// `status.ca`, both PEM.
    Issued {
        certificate: String,
        ca: Option<String>,
    },
    /// Denied=True, or Ready=False reason Denied: an approver refused it (terminal).
    Denied { message: String },
    /// Ready=False reason Failed: the issuer refused or could not sign (terminal).
    Failed { message: String },
    /// InvalidRequest=True: cert-manager will not process it (terminal).
    Invalid { reason: String, message: String },
    /// Not signed yet. `approved`: an approver said yes; `ready` is the Ready condition's
    /// (reason, message) so far (Pending with "Referenced ... not found", ...).
    Waiting {
        approved: bool,
        ready: Option<(String, String)>,
    },
}

/// Reads `status` of a CertificateRequest (the whole object or its `status`).
pub fn request_state(object: &Value) -> RequestState {
    let status = object.get("status").unwrap_or(object);
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let find = |kind: &str| {
        conditions
            .iter()
            .find(|c| c["type"].as_str() == Some(kind))
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                    c["message"].as_str().unwrap_or("").to_string(),
                )
            })
    };
    if let Some((status_, _, message)) = find("Denied")
        && status_ == "True"
    {
        return RequestState::Denied { message };
    }
    if let Some((status_, reason, message)) = find("InvalidRequest")
        && status_ == "True"
    {
        return RequestState::Invalid { reason, message };
    }
    let ready = find("Ready");
    if let Some((status_, reason, message)) = &ready {
        match (status_.as_str(), reason.as_str()) {
            ("True", _) => {
                let certificate = decode_pem_field(&status["certificate"]);
                if let Some(certificate) = certificate {
                    return RequestState::Issued {
                        certificate,
                        ca: decode_pem_field(&status["ca"]),
                    };
                }
            }
            ("False", "Denied") => {
                return RequestState::Denied {
                    message: message.clone(),
                };
            }
            ("False", "Failed") => {
                return RequestState::Failed {
                    message: message.clone(),
                };
            }
            _ => {}
        }
    }
    RequestState::Waiting {
        approved: matches!(find("Approved"), Some((s, _, _)) if s == "True"),
        ready: ready.map(|(_, reason, message)| (reason, message)),
    }
}

/// `status.certificate` and `status.ca` are `[]byte` in Go: base64 of PEM in JSON.
fn decode_pem_field(value: &Value) -> Option<String> {
    let text = value.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    let pem = String::from_utf8(bytes).ok()?;
    (!pem.trim().is_empty()).then_some(pem)
}

/// The roots in a `ca.crt`: every certificate in it, each as its own PEM.
pub fn roots_from_ca_bundle(pem: &str) -> Result<Vec<String>, String> {
    let ders = encoding::certificates_from_pem(pem).map_err(|e| e.to_string())?;
    if ders.is_empty() {
        return Err("it holds no PEM certificate".into());
    }
    Ok(ders
        .iter()
        .map(|der| encoding::to_pem(encoding::TAG_CERTIFICATE, der))
        .collect())
}

// === The API it needs ===

/// A failed call to the Kubernetes API: its HTTP code when it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Option<u16>,
    pub message: String,
}

pub type ApiFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// CertificateRequests in one namespace: create (answering the object the API server made,
/// with its name), get, delete. The operator implements it with the Kubernetes API.
pub trait CertificateRequests: Send + Sync + 'static {
    fn create<'a>(&'a self, request: Value) -> ApiFuture<'a, Value>;
    fn get<'a>(&'a self, name: &'a str) -> ApiFuture<'a, Option<Value>>;
    fn delete<'a>(&'a self, name: &'a str) -> ApiFuture<'a, ()>;
}

// === The issuer ===

/// Signs through cert-manager. Its roots are the `ca.crt` the operator read; the operator builds
/// a new one when that Secret changes.
pub struct CertManagerIssuer {
    config: CertManagerConfig,
    roots: Vec<String>,
    requests: Arc<dyn CertificateRequests>,
    namespace: String,
    deadline: Duration,
    /// Set when a signing failed for the issuer's sake (denied, failed, no answer): the operator
    /// then probes at once, so `weft check` names a denying approver within seconds instead of
    /// at the next scheduled dry signing.
    refused: AtomicBool,
}

impl CertManagerIssuer {
    pub fn new(
        config: CertManagerConfig,
        roots: Vec<String>,
        requests: Arc<dyn CertificateRequests>,
        namespace: &str,
    ) -> Self {
        CertManagerIssuer {
            config,
            roots,
            requests,
            namespace: namespace.to_string(),
            deadline: SIGN_DEADLINE,
            refused: AtomicBool::new(false),
        }
    }

    /// A shorter wait, for tests.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn config(&self) -> &CertManagerConfig {
        &self.config
    }

    /// True once after a signing failed for the issuer's sake.
    pub fn take_refusal(&self) -> bool {
        self.refused.swap(false, Ordering::AcqRel)
    }

    fn describe_(&self) -> String {
        format!("cert-manager {}", self.config.issuer_ref())
    }

    fn refused(&self, label: &'static str, message: String) -> IssuerError {
        IssuerError::Refused {
            issuer: self.describe_(),
            message,
            label,
        }
    }

    fn api_error(&self, doing: &str, e: ApiError) -> IssuerError {
        let ns = &self.namespace;
        match e.code {
            Some(404) if doing == "create" => self.refused(
                "cert_manager_not_installed",
                format!(
                    "the API server has no CertificateRequests ({}): install cert-manager (its CRDs) first",
                    e.message
                ),
            ),
            Some(403) => self.refused(
                "cert_manager_forbidden",
                format!(
                    "the operator may not {doing} CertificateRequests in {ns} ({}): apply weft's RBAC (Role weft-operator in {ns})",
                    e.message
                ),
            ),
            // An admission webhook (cert-manager's, approver-policy's) said no.
            Some(400 | 422) => self.refused(
                "cert_manager_rejected",
                format!("the API server rejected the CertificateRequest: {}", e.message),
            ),
            _ => IssuerError::Unavailable {
                issuer: self.describe_(),
                message: format!(
                    "cannot {doing} a CertificateRequest in {ns}: {}; renewals retry, issued certificates keep working",
                    e.message
                ),
            },
        }
    }

    /// What to say when the deadline passes with the request still waiting.
    fn timed_out(
        &self,
        name: &str,
        approved: bool,
        ready: Option<(String, String)>,
    ) -> IssuerError {
        let ns = &self.namespace;
        let secs = self.deadline.as_secs();
        match ready {
            Some((_, message)) if message.contains("not found") => self.refused(
                "cert_manager_issuer_not_found",
                format!(
                    "CertificateRequest {ns}/{name}: {message}: create {} {} (in {ns} for an Issuer) or set the right one with `weft ca issuer set cert-manager --issuer NAME [--kind ClusterIssuer]`",
                    self.config.issuer_kind.as_str(),
                    self.config.issuer_name
                ),
            ),
            Some((reason, message)) => IssuerError::Unavailable {
                issuer: self.describe_(),
                message: format!(
                    "CertificateRequest {ns}/{name} still {reason} after {secs} s: {message}"
                ),
            },
            None if !approved => self.refused(
                "cert_manager_not_approved",
                format!(
                    "CertificateRequest {ns}/{name} was neither approved nor denied within {secs} s: is cert-manager running with its default approver, or does an approver-policy CertificateRequestPolicy cover issuerRef {}?",
                    self.config.issuer_ref()
                ),
            ),
            None => IssuerError::Unavailable {
                issuer: self.describe_(),
                message: format!(
                    "CertificateRequest {ns}/{name} was approved but not signed within {secs} s: is a controller serving {} running?",
                    self.config.issuer_ref()
                ),
            },
        }
    }

    /// Waits for `name` to reach a terminal state, polling with a growing pause.
    async fn wait(&self, name: &str) -> Result<SignedChain, IssuerError> {
        let until = Instant::now() + self.deadline;
        let mut pause = Duration::from_millis(20);
        let mut last = RequestState::Waiting {
            approved: false,
            ready: None,
        };
        loop {
            match self.requests.get(name).await {
                Ok(Some(object)) => last = request_state(&object),
                Ok(None) => {
                    return Err(IssuerError::Unavailable {
                        issuer: self.describe_(),
                        message: format!(
                            "CertificateRequest {}/{name} was deleted before it was signed",
                            self.namespace
                        ),
                    });
                }
                // A passing API error: try again until the deadline.
                Err(e) => tracing::debug!("cert-manager: reading {name}: {}", e.message),
            }
            let ns = &self.namespace;
            match last {
                RequestState::Issued { certificate, ca } => {
                    return Ok(signed_chain(&certificate, ca.as_deref()));
                }
                RequestState::Denied { message } => {
                    return Err(self.refused(
                        "cert_manager_denied",
                        format!(
                            "CertificateRequest {ns}/{name} was denied ({message}): cert-manager's default approver approves every request; with approver-policy, a CertificateRequestPolicy must allow issuerRef {} for ServiceAccount {ns}/weft-operator, which also needs RBAC `use` on it",
                            self.config.issuer_ref()
                        ),
                    ));
                }
                RequestState::Failed { message } => {
                    return Err(self.refused(
                        "cert_manager_failed",
                        format!("CertificateRequest {ns}/{name} failed: {message}"),
                    ));
                }
                RequestState::Invalid { reason, message } => {
                    return Err(self.refused(
                        "cert_manager_invalid_request",
                        format!("CertificateRequest {ns}/{name} is invalid ({reason}): {message}"),
                    ));
                }
                RequestState::Waiting { approved, ready } => {
                    let now = Instant::now();
                    if now >= until {
                        return Err(self.timed_out(name, approved, ready));
                    }
                    tokio::time::sleep(pause.min(until - now)).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                    last = RequestState::Waiting { approved, ready };
                }
            }
        }
    }
}

/// The chain to check: `status.certificate` (the leaf, then any intermediates). `status.ca` is
/// not appended: the leaf must chain to the roots of the ca-bundle Secret, not to whatever CA the
/// answer names.
fn signed_chain(certificate: &str, _ca: Option<&str>) -> SignedChain {
    SignedChain {
        chain_pem: vec![certificate.to_string()],
    }
}

impl super::issuer::Issuer for CertManagerIssuer {
    fn kind(&self) -> IssuerKind {
        IssuerKind::CertManager
    }

    fn describe(&self) -> String {
        self.describe_()
    }

    fn roots_pem(&self) -> Vec<String> {
        self.roots.clone()
    }

    fn roots_source(&self) -> Option<String> {
        Some(format!(
            "weft trusts for {} the roots in key {CA_BUNDLE_KEY} of Secret {}/{} (--ca-bundle-secret): put the root this issuer signs with there",
            self.describe_(),
            self.namespace,
            self.config.ca_bundle_secret
        ))
    }

    fn sign<'a>(&'a self, csr: &'a WorkloadCsr<'a>, _now: SystemTime) -> SignFuture<'a> {
        Box::pin(async move {
            let request = certificate_request(csr, &self.config, &self.namespace);
            let created = self
                .requests
                .create(request)
                .await
                .map_err(|e| self.api_error("create", e))?;
            let Some(name) = created["metadata"]["name"].as_str().map(str::to_string) else {
                return Err(IssuerError::Unavailable {
                    issuer: self.describe_(),
                    message: "the API server answered a CertificateRequest without a name".into(),
                });
            };
            let result = self.wait(&name).await;
            // Whatever happened, the request goes: it holds nothing weft needs afterwards, and
            // a denied or failed one would only pile up.
            if let Err(e) = self.requests.delete(&name).await {
                tracing::debug!("cert-manager: deleting {name}: {}", e.message);
            }
            if result.is_err() {
                self.refused.store(true, Ordering::Release);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CERT_MANAGER_GROUP, IssuerRefKind};
    use crate::pki::{Issuer, MeshCa, WorkloadKey, issue};
    use std::sync::Mutex;

    const ID: &str = "spiffe://cluster.local/ns/pets/sa/web";

    fn config() -> CertManagerConfig {
        CertManagerConfig {
            issuer_name: "osm-ca".into(),
            issuer_kind: IssuerRefKind::Issuer,
            issuer_group: CERT_MANAGER_GROUP.into(),
            ca_bundle_secret: "osm-ca-bundle".into(),
        }
    }

    fn csr(pem: &str) -> WorkloadCsr<'_> {
        WorkloadCsr {
            csr_pem: pem,
            spiffe_id: ID,
            namespace: "pets",
            service_account: "web",
            ttl: Duration::from_secs(86_400),
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn the_request_names_the_issuer_duration_usages_and_carries_the_csr() {
        let key = WorkloadKey::generate().unwrap();
        let pem = key.csr_pem(ID).unwrap();
        let cr = certificate_request(&csr(&pem), &config(), "weft-system");
        assert_eq!(cr["apiVersion"], "cert-manager.io/v1");
        assert_eq!(cr["kind"], "CertificateRequest");
        assert_eq!(cr["metadata"]["namespace"], "weft-system");
        assert_eq!(cr["metadata"]["generateName"], "weft-pets-web-");
        assert_eq!(cr["metadata"]["annotations"][IDENTITY_ANNOTATION], ID);
        assert_eq!(
            cr["spec"]["issuerRef"],
            json!({"name": "osm-ca", "kind": "Issuer", "group": "cert-manager.io"})
        );
        assert_eq!(cr["spec"]["duration"], "86400s");
        assert_eq!(cr["spec"]["isCA"], false);
        assert_eq!(
            cr["spec"]["usages"],
            json!(["digital signature", "client auth", "server auth"])
        );
        let request = base64::engine::general_purpose::STANDARD
            .decode(cr["spec"]["request"].as_str().unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(request).unwrap(), pem);
        let long = "n".repeat(300);
        let cr = certificate_request(
            &WorkloadCsr {
                namespace: &long,
                service_account: &long,
                ..csr(&pem)
            },
            &config(),
            "weft-system",
        );
        assert!(cr["metadata"]["generateName"].as_str().unwrap().len() <= 201);
        assert_eq!(
            cr["metadata"]["labels"]["weft.dev/workload-namespace"]
                .as_str()
                .unwrap()
                .len(),
            63
        );
    }

    #[test]
    fn status_reads_as_cert_manager_writes_it() {
        let cond = |t: &str, s: &str, r: &str, m: &str| json!({"type": t, "status": s, "reason": r, "message": m});
        let cases = [
            (json!({}), RequestState::Waiting { approved: false, ready: None }),
            (
                json!({"status": {"conditions": [cond("Approved", "True", "cert-manager.io", "ok")]}}),
                RequestState::Waiting { approved: true, ready: None },
            ),
            (
                json!({"status": {"conditions": [
                    cond("Approved", "True", "cert-manager.io", "ok"),
                    cond("Ready", "False", "Pending", "Referenced \"Issuer\" not found: issuer.cert-manager.io \"osm-ca\" not found"),
                ]}}),
                RequestState::Waiting {
                    approved: true,
                    ready: Some(("Pending".into(), "Referenced \"Issuer\" not found: issuer.cert-manager.io \"osm-ca\" not found".into())),
                },
            ),
            (
                json!({"status": {"conditions": [cond("Denied", "True", "policy", "no policy matched")]}}),
                RequestState::Denied { message: "no policy matched".into() },
            ),
            (
                json!({"status": {"conditions": [cond("Ready", "False", "Denied", "The CertificateRequest was denied by an approval controller")]}}),
                RequestState::Denied { message: "The CertificateRequest was denied by an approval controller".into() },
            ),
            (
                json!({"status": {"conditions": [cond("Ready", "False", "Failed", "Error signing certificate: x")]}}),
                RequestState::Failed { message: "Error signing certificate: x".into() },
            ),
            (
                json!({"status": {"conditions": [cond("InvalidRequest", "True", "BadConfig", "isCA")]}}),
                RequestState::Invalid { reason: "BadConfig".into(), message: "isCA".into() },
            ),
            (
                json!({"status": {"conditions": [cond("Ready", "True", "Issued", "ok")],
                                  "certificate": b64("LEAF"), "ca": b64("ROOT")}}),
                RequestState::Issued { certificate: "LEAF".into(), ca: Some("ROOT".into()) },
            ),
            // Ready without a certificate is not issued yet (never hand out nothing).
            (
                json!({"status": {"conditions": [cond("Ready", "True", "Issued", "ok")], "certificate": "!!"}}),
                RequestState::Waiting { approved: false, ready: Some(("Issued".into(), "ok".into())) },
            ),
        ];
        for (object, want) in cases {
            assert_eq!(request_state(&object), want, "{object}");
        }
    }

    #[test]
    fn a_ca_bundle_yields_each_root_and_refuses_nothing_useful() {
        let a = MeshCa::generate_root("cluster.local", crate::pki::DEFAULT_ROOT_VALIDITY).unwrap();
        let b = MeshCa::generate_root("cluster.local", crate::pki::DEFAULT_ROOT_VALIDITY).unwrap();
        let bundle = format!("{}{}", a.roots_pem(), b.roots_pem());
        assert_eq!(roots_from_ca_bundle(&bundle).unwrap().len(), 2);
        assert!(roots_from_ca_bundle("not a certificate").is_err());
        assert!(roots_from_ca_bundle("").is_err());
    }

    /// A stand-in API: records what weft created and answers each `get` from a script the
    /// test writes (a signer: `sign` turns the CSR into a status).
    struct FakeApi {
        sign: Box<dyn Fn(&Value) -> Value + Send + Sync>,
        created: Mutex<Vec<Value>>,
        deleted: Mutex<Vec<String>>,
    }

    impl CertificateRequests for FakeApi {
        fn create<'a>(&'a self, mut request: Value) -> ApiFuture<'a, Value> {
            Box::pin(async move {
                request["metadata"]["name"] = json!("weft-pets-web-abcde");
                self.created.lock().unwrap().push(request.clone());
                Ok(request)
            })
        }
        fn get<'a>(&'a self, _name: &'a str) -> ApiFuture<'a, Option<Value>> {
            Box::pin(async move {
                let created = self.created.lock().unwrap().last().cloned();
                Ok(created.map(|r| json!({"status": (self.sign)(&r)})))
            })
        }
        fn delete<'a>(&'a self, name: &'a str) -> ApiFuture<'a, ()> {
            Box::pin(async move {
                self.deleted.lock().unwrap().push(name.to_string());
                Ok(())
            })
        }
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A CA issuer as cert-manager's: signs the request's CSR with `ca` (here weft's own CA
    /// code stands for it) and answers status.certificate and status.ca.
    fn issuing(ca: Arc<MeshCa>, spiffe_id: &'static str) -> FakeApi {
        FakeApi {
            sign: Box::new(move |request| {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(request["spec"]["request"].as_str().unwrap())
                    .unwrap();
                let mut pem = String::from_utf8(der).unwrap();
                if spiffe_id != ID {
                    // A rogue signer: a certificate for another identity (and key).
                    pem = WorkloadKey::generate().unwrap().csr_pem(spiffe_id).unwrap();
                }
                let issued = ca.sign_workload_csr(
                    &pem,
                    spiffe_id,
                    Duration::from_secs(3600),
                    SystemTime::now(),
                );
                match issued {
                    Ok(issued) => json!({
                        "conditions": [{"type": "Approved", "status": "True"},
                                       {"type": "Ready", "status": "True", "reason": "Issued"}],
                        "certificate": b64(&issued.leaf_pem),
                        "ca": b64(&ca.roots_pem()),
                    }),
                    Err(e) => json!({"conditions": [{"type": "Ready", "status": "False",
                        "reason": "Failed", "message": e.to_string()}]}),
                }
            }),
            created: Mutex::new(Vec::new()),
            deleted: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn a_signed_request_is_checked_through_the_seam_and_deleted() {
        let ca = Arc::new(
            MeshCa::generate_root("cluster.local", crate::pki::DEFAULT_ROOT_VALIDITY).unwrap(),
        );
        let api = Arc::new(issuing(ca.clone(), ID));
        let issuer =
            CertManagerIssuer::new(config(), vec![ca.roots_pem()], api.clone(), "weft-system");
        let key = WorkloadKey::generate().unwrap();
        let pem = key.csr_pem(ID).unwrap();
        let issued = run(issue(&issuer, &csr(&pem), &[], SystemTime::now())).unwrap();
        assert!(key.matches_certificate(&issued.leaf_der));
        assert_eq!(issued.roots_pem, vec![ca.roots_pem()]);
        assert_eq!(
            *api.deleted.lock().unwrap(),
            vec!["weft-pets-web-abcde".to_string()]
        );
        assert_eq!(issuer.kind().as_str(), "cert-manager");
    }

    #[test]
    fn a_leaf_for_another_identity_or_from_another_ca_is_refused() {
        // The issuer signs for db although web asked: the seam refuses it.
        let ca = Arc::new(
            MeshCa::generate_root("cluster.local", crate::pki::DEFAULT_ROOT_VALIDITY).unwrap(),
        );
        let rogue = Arc::new(issuing(ca.clone(), "spiffe://cluster.local/ns/pets/sa/db"));
        let issuer = CertManagerIssuer::new(config(), vec![ca.roots_pem()], rogue, "weft-system");
        let key = WorkloadKey::generate().unwrap();
        let pem = key.csr_pem(ID).unwrap();
        let err = run(issue(&issuer, &csr(&pem), &[], SystemTime::now())).unwrap_err();
        assert_eq!(err.metric_label(), "issuer_bad_leaf", "{err}");
        assert!(err.to_string().contains("ns/pets/sa/db"), "{err}");
        // A leaf from a CA other than the ca-bundle Secret's root does not chain: refused.
        let other =
            MeshCa::generate_root("cluster.local", crate::pki::DEFAULT_ROOT_VALIDITY).unwrap();
        let api = Arc::new(issuing(ca, ID));
        let issuer = CertManagerIssuer::new(config(), vec![other.roots_pem()], api, "weft-system");
        let err = run(issue(&issuer, &csr(&pem), &[], SystemTime::now())).unwrap_err();
        assert_eq!(err.metric_label(), "issuer_bad_leaf", "{err}");
        assert!(err.to_string().contains("does not chain"), "{err}");
        assert!(
            err.to_string()
                .contains("key ca.crt of Secret weft-system/osm-ca-bundle (--ca-bundle-secret)"),
            "the refusal names the Secret to fix: {err}"
        );
    }

    #[test]
    fn denied_failed_and_unanswered_requests_are_named_and_deleted() {
        let cases: [(Value, &str, &str); 4] = [
            (
                json!({"conditions": [{"type": "Denied", "status": "True", "reason": "policy.cert-manager.io", "message": "No policy approved this request"}]}),
                "cert_manager_denied",
                "approver-policy",
            ),
            (
                json!({"conditions": [{"type": "Approved", "status": "True"},
                    {"type": "Ready", "status": "False", "reason": "Pending", "message": "Referenced \"Issuer\" not found: issuer.cert-manager.io \"osm-ca\" not found"}]}),
                "cert_manager_issuer_not_found",
                "create Issuer osm-ca",
            ),
            (json!({}), "cert_manager_not_approved", "default approver"),
            (
                json!({"conditions": [{"type": "Approved", "status": "True"}]}),
                "issuer_unavailable",
                "approved but not signed",
            ),
        ];
        let key = WorkloadKey::generate().unwrap();
        let pem = key.csr_pem(ID).unwrap();
        for (status, label, named) in cases {
            let api = Arc::new(FakeApi {
                sign: Box::new(move |_| status.clone()),
                created: Mutex::new(Vec::new()),
                deleted: Mutex::new(Vec::new()),
            });
            let issuer = CertManagerIssuer::new(config(), Vec::new(), api.clone(), "weft-system")
                .with_deadline(Duration::from_millis(100));
            let err = run(issue(&issuer, &csr(&pem), &[], SystemTime::now())).unwrap_err();
            assert_eq!(err.metric_label(), label, "{err}");
            assert!(err.to_string().contains(named), "{err}");
            assert!(
                err.to_string().contains("weft-system/weft-pets-web-abcde"),
                "{err}"
            );
            assert_eq!(err.status_code(), 503);
            assert_eq!(api.deleted.lock().unwrap().len(), 1, "{label}: deleted");
            assert!(
                issuer.take_refusal(),
                "{label}: the operator re-probes at once"
            );
            assert!(!issuer.take_refusal(), "once");
        }
    }

    #[test]
    fn api_errors_name_what_to_install_or_grant() {
        let issuer = CertManagerIssuer::new(
            config(),
            Vec::new(),
            Arc::new(FakeApi {
                sign: Box::new(|_| json!({})),
                created: Mutex::new(Vec::new()),
                deleted: Mutex::new(Vec::new()),
            }),
            "weft-system",
        );
        let e = |code| ApiError {
            code,
            message: "x".into(),
        };
        assert_eq!(
            issuer.api_error("create", e(Some(404))).metric_label(),
            "cert_manager_not_installed"
        );
        assert_eq!(
            issuer.api_error("create", e(Some(403))).metric_label(),
            "cert_manager_forbidden"
        );
        assert_eq!(
            issuer.api_error("create", e(Some(422))).metric_label(),
            "cert_manager_rejected"
        );
        assert_eq!(
            issuer.api_error("create", e(None)).metric_label(),
            "issuer_unavailable"
        );
    }
}
