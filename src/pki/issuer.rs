//! The issuer seam (issue 24): one [`Issuer`] signs every workload certificate, whoever it is
//! (weft's own [`MeshCa`], HashiCorp Vault, cert-manager). [`issue`] checks the CSR before and the leaf after,
//! so the CSR endpoint never cares who signs and no unchecked leaf ever reaches a proxy.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;

use super::ca::MeshCa;
use super::encoding;
use super::issue::{CheckedCsr, CsrError, IssuedCert, check_workload_csr};
use super::verify::verify_chain;

/// ConfigMap in the operator's namespace that names the mesh's issuer; every replica and
/// `weft check` read it.
pub const ISSUER_CONFIGMAP: &str = "weft-ca-issuer";
/// Keys of [`ISSUER_CONFIGMAP`]'s data.
pub const KEY_ISSUER: &str = "issuer";
pub const KEY_VAULT_ADDRESS: &str = "vault.address";
pub const KEY_VAULT_MOUNT: &str = "vault.mount";
pub const KEY_VAULT_ROLE: &str = "vault.role";
pub const KEY_VAULT_TOKEN_SECRET: &str = "vault.tokenSecret";
pub const KEY_VAULT_AUTH_ROLE: &str = "vault.authRole";
pub const KEY_VAULT_AUTH_MOUNT: &str = "vault.authMount";
pub const KEY_VAULT_CA_CERT_SECRET: &str = "vault.caCertSecret";
pub const KEY_CERT_MANAGER_ISSUER_NAME: &str = "certManager.issuerName";
pub const KEY_CERT_MANAGER_ISSUER_KIND: &str = "certManager.issuerKind";
pub const KEY_CERT_MANAGER_ISSUER_GROUP: &str = "certManager.issuerGroup";
pub const KEY_CERT_MANAGER_CA_BUNDLE_SECRET: &str = "certManager.caBundleSecret";
/// Key of the token Secret that holds the Vault token.
pub const VAULT_TOKEN_KEY: &str = "token";
/// Key of the `--ca-cert-secret` Secret that holds the CA of Vault's HTTPS certificate.
pub const VAULT_CA_CERT_KEY: &str = "ca.crt";
pub const DEFAULT_VAULT_MOUNT: &str = "pki";
pub const DEFAULT_VAULT_AUTH_MOUNT: &str = "kubernetes";
/// cert-manager's API group, the default of `--group`.
pub const CERT_MANAGER_GROUP: &str = "cert-manager.io";
pub const CERT_MANAGER_API_VERSION: &str = "cert-manager.io/v1";
/// Key of the `--ca-bundle-secret` Secret that holds the mesh root (OSM's `osm-ca-bundle`).
pub const CA_BUNDLE_KEY: &str = "ca.crt";

// === The seam ===

/// Who signs workload certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssuerKind {
    /// weft's own CA (Secret `weft-ca`, or Istio's `cacerts`).
    Builtin,
    /// HashiCorp Vault's PKI secrets engine.
    Vault,
    /// cert-manager: a CertificateRequest signed by an Issuer or ClusterIssuer.
    CertManager,
}

impl IssuerKind {
    /// The name users type and metrics carry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::Vault => "vault",
            Self::CertManager => "cert-manager",
        }
    }
}

impl std::fmt::Display for IssuerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated workload CSR: the CSR endpoint has proved who asks (TokenReview).
#[derive(Debug, Clone, Copy)]
pub struct WorkloadCsr<'a> {
    pub csr_pem: &'a str,
    /// The SPIFFE ID the token proved; the only name the leaf may carry.
    pub spiffe_id: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub ttl: Duration,
}

impl WorkloadCsr<'_> {
    /// `<sa>.<ns>.svc`: the common name for issuers that require one (Vault). It is kept out
    /// of the SANs (`exclude_cn_from_sans`), so the identity is still the URI SAN alone.
    pub fn common_name(&self) -> String {
        format!("{}.{}.svc", self.service_account, self.namespace)
    }
}

/// What an issuer hands back: the leaf first, then the certificates between it and a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedChain {
    pub chain_pem: Vec<String>,
}

/// Why no certificate came from the issuer. Every message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// The request itself is refused, before any issuer sees it.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The issuer could not be reached or answered with a server error: retry.
    #[error("{issuer} is unavailable: {message}")]
    Unavailable { issuer: String, message: String },
    /// The issuer answered but refused: its configuration needs a person.
    #[error("{issuer} refused to sign: {message}")]
    Refused {
        issuer: String,
        message: String,
        label: &'static str,
    },
    /// The issuer signed something weft will not hand to a proxy.
    #[error("{issuer} returned a certificate weft refuses to hand to a proxy: {reason}")]
    BadLeaf { issuer: String, reason: String },
}

impl IssuerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Csr(e) => e.metric_label(),
            Self::Unavailable { .. } => "issuer_unavailable",
            Self::Refused { label, .. } => label,
            Self::BadLeaf { .. } => "issuer_bad_leaf",
        }
    }

    /// The request's own faults keep their 4xx; anything about the issuer is a 503 the proxy
    /// retries with backoff (its current certificate keeps working meanwhile).
    pub fn status_code(&self) -> u16 {
        match self {
            Self::Csr(e) => e.status_code(),
            Self::Unavailable { .. } | Self::Refused { .. } | Self::BadLeaf { .. } => 503,
        }
    }

    /// True when the issuer (not the request) is at fault: what health and conditions track.
    pub fn is_issuer_fault(&self) -> bool {
        !matches!(self, Self::Csr(_))
    }
}

/// A signing future; boxed so the operator can hold any issuer as `Arc<dyn Issuer>`.
pub type SignFuture<'a> =
    Pin<Box<dyn Future<Output = Result<SignedChain, IssuerError>> + Send + 'a>>;

/// Signs workload CSRs. Implementations only sign; [`issue`] does every check around them.
pub trait Issuer: Send + Sync + 'static {
    fn kind(&self) -> IssuerKind;
    /// Who signs, for messages: e.g. `Vault at https://vault:8200 (pki/sign/weft)`.
    fn describe(&self) -> String;
    /// The roots this issuer's leaves chain to; a leaf chaining elsewhere is refused.
    fn roots_pem(&self) -> Vec<String>;
    /// Signs an already checked CSR for `csr.spiffe_id`, valid for `csr.ttl`.
    fn sign<'a>(&'a self, csr: &'a WorkloadCsr<'a>, now: SystemTime) -> SignFuture<'a>;
    /// Where [`Self::roots_pem`] come from and how to change them, when a person sets them (a
    /// cert-manager ca-bundle Secret): added to the refusal of a leaf that does not chain to them.
    fn roots_source(&self) -> Option<String> {
        None
    }
}

/// How [`check_leaf`]'s refusal of a leaf that chains to none of the issuer's roots begins.
const NOT_CHAINED: &str = "it does not chain to a root the mesh trusts";

/// Signs `csr` through `issuer`: the CSR must pass [`check_workload_csr`] first (whoever signs),
/// and the leaf must pass [`check_leaf`] after. `trust_bundle` is what the mesh trusts now;
/// the answer's roots are it plus the issuer's roots.
pub async fn issue(
    issuer: &dyn Issuer,
    csr: &WorkloadCsr<'_>,
    trust_bundle: &[String],
    now: SystemTime,
) -> Result<IssuedCert, IssuerError> {
    let started = std::time::Instant::now();
    let checked = check_workload_csr(csr.csr_pem, csr.spiffe_id)?;
    let signed = issuer.sign(csr, now).await?;
    let issuer_roots = issuer.roots_pem();
    // The leaf is judged at the moment it came back: an issuer that does not backdate (cert-
    // manager's CA issuer starts validity at its own "now", after a second or so of round trips)
    // would otherwise look "not yet valid".
    let leaf = check_leaf(
        &signed.chain_pem,
        &checked,
        csr.spiffe_id,
        &issuer_roots,
        now + started.elapsed(),
    )
    .map_err(|reason| IssuerError::BadLeaf {
        issuer: issuer.describe(),
        reason: match issuer.roots_source() {
            Some(source) if reason.starts_with(NOT_CHAINED) => format!("{reason}; {source}"),
            _ => reason,
        },
    })?;
    let mut roots: Vec<String> = trust_bundle.to_vec();
    for root in issuer_roots {
        if !roots.iter().any(|r| r.trim() == root.trim()) {
            roots.push(root);
        }
    }
    Ok(IssuedCert {
        leaf_pem: encoding::to_pem(encoding::TAG_CERTIFICATE, &leaf.der),
        leaf_der: leaf.der,
        cert_chain_pem: signed.chain_pem,
        roots_pem: roots,
        not_before: leaf.not_before,
        not_after: leaf.not_after,
    })
}

/// A leaf that passed [`check_leaf`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedLeaf {
    pub der: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The checks on what an issuer returned, whoever it is: the leaf carries exactly one SAN, the
/// URI `spiffe_id`; it certifies the CSR's key; it is no CA; and it chains (through the rest
/// of `chain_pem`) to one of `roots_pem`, valid at `now`. The error is the reason, in words.
pub fn check_leaf(
    chain_pem: &[String],
    csr: &CheckedCsr,
    spiffe_id: &str,
    roots_pem: &[String],
    now: SystemTime,
) -> Result<CheckedLeaf, String> {
    let mut ders: Vec<Vec<u8>> = Vec::new();
    for pem in chain_pem {
        ders.extend(
            encoding::certificates_from_pem(pem)
                .map_err(|e| format!("its chain is not PEM certificates ({e})"))?,
        );
    }
    let (leaf_der, intermediates) = ders
        .split_first()
        .ok_or_else(|| "it returned no certificate".to_string())?;
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| format!("the leaf cannot be parsed ({e})"))?;

    let names: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::URI(uri) => format!("URI:{uri}"),
                GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                GeneralName::RFC822Name(email) => format!("email:{email}"),
                GeneralName::IPAddress(_) => "an IP address".to_string(),
                other => format!("{other:?}"),
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("its subjectAltName cannot be parsed ({e})")),
    };
    let expected = format!("URI:{spiffe_id}");
    if names != [expected.clone()] {
        let carried = if names.is_empty() {
            "no SAN".to_string()
        } else {
            names.join(", ")
        };
        return Err(format!(
            "the leaf carries {carried} instead of exactly {expected} (the identity the pod proved)"
        ));
    }
    if leaf.public_key().subject_public_key.data.as_ref() != csr.public_key.as_slice() {
        return Err("the leaf certifies another public key than the CSR's".to_string());
    }
    if leaf.is_ca() {
        return Err("the leaf is a CA certificate (basicConstraints CA:TRUE)".to_string());
    }
    let roots: Vec<Vec<u8>> = roots_pem
        .iter()
        .flat_map(|pem| encoding::certificates_from_pem(pem).unwrap_or_default())
        .collect();
    if roots.is_empty() {
        return Err("the issuer has no root the mesh trusts yet".to_string());
    }
    verify_chain(leaf_der, intermediates, &roots, now)
        .map_err(|e| format!("{NOT_CHAINED}: {e}"))?;
    let validity = leaf.validity();
    Ok(CheckedLeaf {
        der: leaf_der.clone(),
        not_before: super::system_time(validity.not_before.timestamp()),
        not_after: super::system_time(validity.not_after.timestamp()),
    })
}

// === impl Issuer for MeshCa ===

impl Issuer for MeshCa {
    fn kind(&self) -> IssuerKind {
        IssuerKind::Builtin
    }

    fn describe(&self) -> String {
        format!("the builtin CA (Secret {})", self.source().secret_name())
    }

    fn roots_pem(&self) -> Vec<String> {
        self.roots_pem.clone()
    }

    fn sign<'a>(&'a self, csr: &'a WorkloadCsr<'a>, now: SystemTime) -> SignFuture<'a> {
        Box::pin(async move {
            let issued = self.sign_workload_csr(csr.csr_pem, csr.spiffe_id, csr.ttl, now)?;
            Ok(SignedChain {
                chain_pem: issued.cert_chain_pem,
            })
        })
    }
}

// === Configuration ===

/// The mesh's issuer as [`ISSUER_CONFIGMAP`] states it. No ConfigMap means [`Self::Builtin`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IssuerConfig {
    #[default]
    Builtin,
    Vault(VaultConfig),
    CertManager(CertManagerConfig),
}

/// `Issuer` or `ClusterIssuer` (cert-manager's `issuerRef.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IssuerRefKind {
    #[default]
    Issuer,
    ClusterIssuer,
}

impl IssuerRefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issuer => "Issuer",
            Self::ClusterIssuer => "ClusterIssuer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Issuer" => Some(Self::Issuer),
            "ClusterIssuer" => Some(Self::ClusterIssuer),
            _ => None,
        }
    }
}

/// Which cert-manager issuer signs, and where the mesh root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertManagerConfig {
    /// `issuerRef.name`.
    pub issuer_name: String,
    pub issuer_kind: IssuerRefKind,
    /// `issuerRef.group`: `cert-manager.io` for cert-manager's own issuers (CA, Vault, ...), an
    /// external issuer's group otherwise.
    pub issuer_group: String,
    /// Secret in the operator's namespace whose `ca.crt` is the root the issuer's leaves chain to.
    pub ca_bundle_secret: String,
}

impl CertManagerConfig {
    /// `Issuer/osm-ca (cert-manager.io)`.
    pub fn issuer_ref(&self) -> String {
        format!(
            "{}/{} ({})",
            self.issuer_kind.as_str(),
            self.issuer_name,
            self.issuer_group
        )
    }
}

/// Where Vault is and how weft authenticates to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// `http(s)://host[:port]`, no path.
    pub address: String,
    /// The PKI secrets engine's mount path (`pki`).
    pub mount: String,
    /// The PKI role weft signs with (`<mount>/sign/<role>`).
    pub role: String,
    pub auth: VaultAuth,
    /// Secret in the operator's namespace whose `ca.crt` verifies Vault's HTTPS certificate.
    pub ca_cert_secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// A token in Secret `<name>` (key `token`) of the operator's namespace.
    TokenSecret(String),
    /// Vault's Kubernetes auth method, logging in with the operator's ServiceAccount token.
    Kubernetes { role: String, mount: String },
}

/// Why [`ISSUER_CONFIGMAP`] does not name a usable issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "ConfigMap {ISSUER_CONFIGMAP}: {0}; fix it with `weft ca issuer set vault ...` or `weft ca issuer set builtin`"
)]
pub struct IssuerConfigError(pub String);

impl IssuerConfig {
    /// Whether `self` and `other` anchor their certificates to the same roots, read from the
    /// same place (builtin: the mesh CA; Vault: one address and mount; cert-manager: one
    /// ca-bundle Secret). Changing only what does not touch the roots (a Vault role or token,
    /// a cert-manager issuerRef) needs no root rotation.
    pub fn same_roots_as(&self, other: &IssuerConfig) -> bool {
        match (self, other) {
            (Self::Builtin, Self::Builtin) => true,
            (Self::Vault(a), Self::Vault(b)) => {
                a.address.trim_end_matches('/') == b.address.trim_end_matches('/')
                    && a.mount == b.mount
            }
            (Self::CertManager(a), Self::CertManager(b)) => {
                a.ca_bundle_secret == b.ca_bundle_secret
            }
            _ => false,
        }
    }

    /// Reads a ConfigMap's data. Unknown keys are refused (a typo must not silently mean the
    /// default).
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, IssuerConfigError> {
        let known = [
            KEY_ISSUER,
            KEY_VAULT_ADDRESS,
            KEY_VAULT_MOUNT,
            KEY_VAULT_ROLE,
            KEY_VAULT_TOKEN_SECRET,
            KEY_VAULT_AUTH_ROLE,
            KEY_VAULT_AUTH_MOUNT,
            KEY_VAULT_CA_CERT_SECRET,
            KEY_CERT_MANAGER_ISSUER_NAME,
            KEY_CERT_MANAGER_ISSUER_KIND,
            KEY_CERT_MANAGER_ISSUER_GROUP,
            KEY_CERT_MANAGER_CA_BUNDLE_SECRET,
        ];
        if let Some(unknown) = data.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(IssuerConfigError(format!(
                "unknown key {unknown:?} (known: {})",
                known.join(", ")
            )));
        }
        let get = |key: &str| {
            data.get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let issuer = get(KEY_ISSUER);
        let own_prefix = match issuer.as_deref() {
            Some("vault") => "vault.",
            Some("cert-manager") => "certManager.",
            _ => KEY_ISSUER,
        };
        // A key of another issuer is a leftover or a typo: say so rather than ignore it.
        if let Some(key) = data
            .keys()
            .find(|k| *k != KEY_ISSUER && !k.starts_with(own_prefix))
        {
            return Err(IssuerConfigError(format!(
                "{key} is set but issuer is {}",
                issuer.as_deref().unwrap_or("builtin")
            )));
        }
        match issuer.as_deref() {
            None | Some("builtin") => Ok(Self::Builtin),
            Some("cert-manager") => {
                let require = |key: &str| {
                    get(key).ok_or_else(|| {
                        IssuerConfigError(format!("issuer cert-manager needs {key}"))
                    })
                };
                let kind = get(KEY_CERT_MANAGER_ISSUER_KIND).unwrap_or_else(|| "Issuer".into());
                let config = CertManagerConfig {
                    issuer_name: require(KEY_CERT_MANAGER_ISSUER_NAME)?,
                    issuer_kind: IssuerRefKind::parse(&kind).ok_or_else(|| {
                        IssuerConfigError(format!(
                            "{KEY_CERT_MANAGER_ISSUER_KIND} {kind:?} is not Issuer or ClusterIssuer"
                        ))
                    })?,
                    issuer_group: get(KEY_CERT_MANAGER_ISSUER_GROUP)
                        .unwrap_or_else(|| CERT_MANAGER_GROUP.into()),
                    ca_bundle_secret: require(KEY_CERT_MANAGER_CA_BUNDLE_SECRET)?,
                };
                for (key, value) in [
                    (KEY_CERT_MANAGER_ISSUER_NAME, &config.issuer_name),
                    (KEY_CERT_MANAGER_CA_BUNDLE_SECRET, &config.ca_bundle_secret),
                    (KEY_CERT_MANAGER_ISSUER_GROUP, &config.issuer_group),
                ] {
                    if !is_dns_subdomain(value) {
                        return Err(IssuerConfigError(format!(
                            "{key} {value:?} is not a Kubernetes name (lowercase letters, digits, - and .)"
                        )));
                    }
                }
                Ok(Self::CertManager(config))
            }
            Some("vault") => {
                let require = |key: &str| {
                    get(key).ok_or_else(|| IssuerConfigError(format!("issuer vault needs {key}")))
                };
                let auth = match (get(KEY_VAULT_TOKEN_SECRET), get(KEY_VAULT_AUTH_ROLE)) {
                    (Some(secret), None) => {
                        if get(KEY_VAULT_AUTH_MOUNT).is_some() {
                            return Err(IssuerConfigError(format!(
                                "{KEY_VAULT_AUTH_MOUNT} goes with {KEY_VAULT_AUTH_ROLE}, not {KEY_VAULT_TOKEN_SECRET}"
                            )));
                        }
                        VaultAuth::TokenSecret(secret)
                    }
                    (None, Some(role)) => VaultAuth::Kubernetes {
                        role,
                        mount: get(KEY_VAULT_AUTH_MOUNT)
                            .unwrap_or_else(|| DEFAULT_VAULT_AUTH_MOUNT.into()),
                    },
                    _ => {
                        return Err(IssuerConfigError(format!(
                            "issuer vault needs exactly one of {KEY_VAULT_TOKEN_SECRET} and {KEY_VAULT_AUTH_ROLE}"
                        )));
                    }
                };
                let config = VaultConfig {
                    address: require(KEY_VAULT_ADDRESS)?,
                    mount: get(KEY_VAULT_MOUNT).unwrap_or_else(|| DEFAULT_VAULT_MOUNT.into()),
                    role: require(KEY_VAULT_ROLE)?,
                    auth,
                    ca_cert_secret: get(KEY_VAULT_CA_CERT_SECRET),
                };
                config.validate()?;
                Ok(Self::Vault(config))
            }
            Some(other) => Err(IssuerConfigError(format!(
                "issuer {other:?} is not one of builtin, vault, cert-manager"
            ))),
        }
    }

    /// The ConfigMap data that [`Self::from_data`] reads back as `self`.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let mut data = BTreeMap::new();
        match self {
            Self::Builtin => {
                data.insert(KEY_ISSUER.into(), "builtin".into());
            }
            Self::Vault(v) => {
                data.insert(KEY_ISSUER.into(), "vault".into());
                data.insert(KEY_VAULT_ADDRESS.into(), v.address.clone());
                data.insert(KEY_VAULT_MOUNT.into(), v.mount.clone());
                data.insert(KEY_VAULT_ROLE.into(), v.role.clone());
                match &v.auth {
                    VaultAuth::TokenSecret(secret) => {
                        data.insert(KEY_VAULT_TOKEN_SECRET.into(), secret.clone());
                    }
                    VaultAuth::Kubernetes { role, mount } => {
                        data.insert(KEY_VAULT_AUTH_ROLE.into(), role.clone());
                        data.insert(KEY_VAULT_AUTH_MOUNT.into(), mount.clone());
                    }
                }
                if let Some(secret) = &v.ca_cert_secret {
                    data.insert(KEY_VAULT_CA_CERT_SECRET.into(), secret.clone());
                }
            }
            Self::CertManager(c) => {
                data.insert(KEY_ISSUER.into(), "cert-manager".into());
                data.insert(KEY_CERT_MANAGER_ISSUER_NAME.into(), c.issuer_name.clone());
                data.insert(
                    KEY_CERT_MANAGER_ISSUER_KIND.into(),
                    c.issuer_kind.as_str().into(),
                );
                data.insert(KEY_CERT_MANAGER_ISSUER_GROUP.into(), c.issuer_group.clone());
                data.insert(
                    KEY_CERT_MANAGER_CA_BUNDLE_SECRET.into(),
                    c.ca_bundle_secret.clone(),
                );
            }
        }
        data
    }

    pub fn kind(&self) -> IssuerKind {
        match self {
            Self::Builtin => IssuerKind::Builtin,
            Self::Vault(_) => IssuerKind::Vault,
            Self::CertManager(_) => IssuerKind::CertManager,
        }
    }

    /// One line for people: what signs, and how weft reaches it.
    pub fn describe(&self) -> String {
        match self {
            Self::Builtin => "builtin (weft's own CA, Secret weft-ca or cacerts)".into(),
            Self::Vault(v) => {
                let auth = match &v.auth {
                    VaultAuth::TokenSecret(secret) => format!("token from Secret {secret}"),
                    VaultAuth::Kubernetes { role, mount } => {
                        format!("Kubernetes auth, role {role} at auth/{mount}")
                    }
                };
                let tls = match &v.ca_cert_secret {
                    Some(secret) => format!(", Vault's CA from Secret {secret}"),
                    None => String::new(),
                };
                format!(
                    "vault at {} ({}/sign/{}; {auth}{tls})",
                    v.address, v.mount, v.role
                )
            }
            Self::CertManager(c) => format!(
                "cert-manager {} (CertificateRequests in the weft namespace; root from Secret {} key {CA_BUNDLE_KEY})",
                c.issuer_ref(),
                c.ca_bundle_secret
            ),
        }
    }
}

/// A DNS subdomain name (RFC 1123), what Kubernetes object names and API groups are.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl VaultConfig {
    fn validate(&self) -> Result<(), IssuerConfigError> {
        let rest = self
            .address
            .strip_prefix("https://")
            .or_else(|| self.address.strip_prefix("http://"))
            .ok_or_else(|| {
                IssuerConfigError(format!(
                    "{KEY_VAULT_ADDRESS} {:?} must start with https:// or http://",
                    self.address
                ))
            })?;
        if rest.is_empty() || rest.trim_end_matches('/').contains('/') {
            return Err(IssuerConfigError(format!(
                "{KEY_VAULT_ADDRESS} {:?} must be scheme://host[:port], without a path",
                self.address
            )));
        }
        let path_segment = |key: &str, value: &str, slashes: bool| {
            let ok = !value.is_empty()
                && value.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, '-' | '_' | '.')
                        || (slashes && c == '/')
                })
                && !value.starts_with('/')
                && !value.ends_with('/')
                && !value
                    .split('/')
                    .any(|s| s == ".." || s == "." || s.is_empty());
            if ok {
                Ok(())
            } else {
                Err(IssuerConfigError(format!(
                    "{key} {value:?} must be a Vault path segment (letters, digits, - _ .{})",
                    if slashes { " and inner /" } else { "" }
                )))
            }
        };
        path_segment(KEY_VAULT_MOUNT, &self.mount, true)?;
        path_segment(KEY_VAULT_ROLE, &self.role, false)?;
        if let VaultAuth::Kubernetes { role, mount } = &self.auth {
            path_segment(KEY_VAULT_AUTH_ROLE, role, false)?;
            path_segment(KEY_VAULT_AUTH_MOUNT, mount, true)?;
        }
        Ok(())
    }

    /// The address without a trailing slash, so paths join cleanly.
    pub fn base_url(&self) -> &str {
        self.address.trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{DEFAULT_ROOT_VALIDITY, WorkloadKey};
    use rcgen::{CertificateParams, Issuer as RcIssuer, KeyPair, SanType};

    const ID: &str = "spiffe://cluster.local/ns/pets/sa/web";
    const HOUR: Duration = Duration::from_secs(3600);

    fn request<'a>(csr_pem: &'a str) -> WorkloadCsr<'a> {
        WorkloadCsr {
            csr_pem,
            spiffe_id: ID,
            namespace: "pets",
            service_account: "web",
            ttl: HOUR,
        }
    }

    /// Reshapes the leaf a [`RogueIssuer`] signs.
    type Shape = fn(&mut CertificateParams);

    /// A stand-in for a misbehaving external issuer: a CA of its own that signs whatever
    /// leaf `make` describes, for the CSR's key or another.
    struct RogueIssuer {
        root: rcgen::Certificate,
        key: KeyPair,
        make: Shape,
        own_key: bool,
    }

    impl RogueIssuer {
        fn new(make: Shape, own_key: bool) -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "rogue root");
            let root = params.self_signed(&key).unwrap();
            RogueIssuer {
                root,
                key,
                make,
                own_key,
            }
        }
    }

    impl Issuer for RogueIssuer {
        fn kind(&self) -> IssuerKind {
            IssuerKind::Vault
        }
        fn describe(&self) -> String {
            "a rogue issuer".into()
        }
        fn roots_pem(&self) -> Vec<String> {
            vec![self.root.pem()]
        }
        fn sign<'a>(&'a self, csr: &'a WorkloadCsr<'a>, _now: SystemTime) -> SignFuture<'a> {
            Box::pin(async move {
                let mut params = CertificateParams::default();
                params.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
                (self.make)(&mut params);
                let issuer = RcIssuer::from_ca_cert_der(self.root.der(), &self.key).unwrap();
                let leaf = if self.own_key {
                    params.signed_by(&KeyPair::generate().unwrap(), &issuer)
                } else {
                    let csr =
                        rcgen::CertificateSigningRequestParams::from_pem(csr.csr_pem).unwrap();
                    params.signed_by(&csr.public_key, &issuer)
                }
                .unwrap();
                Ok(SignedChain {
                    chain_pem: vec![leaf.pem()],
                })
            })
        }
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn the_builtin_ca_signs_through_the_seam_and_the_answer_carries_the_trust_bundle() {
        let ca = MeshCa::generate_root("cluster.local", DEFAULT_ROOT_VALIDITY).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_pem(ID).unwrap();
        let other_root = MeshCa::generate_root("cluster.local", DEFAULT_ROOT_VALIDITY)
            .unwrap()
            .roots_pem();
        let bundle = vec![ca.roots_pem(), other_root.clone()];
        let issued = run(issue(&ca, &request(&csr), &bundle, SystemTime::now())).unwrap();
        assert_eq!(
            crate::pki::spiffe_id_of(&issued.leaf_der).as_deref(),
            Some(ID)
        );
        assert!(key.matches_certificate(&issued.leaf_der));
        assert_eq!(issued.roots_pem, bundle, "no root repeated");
        assert_eq!(issued.cert_chain_pem.len(), 1);
    }

    #[test]
    fn a_rogue_issuers_well_formed_leaf_passes_and_shows_the_check_is_not_trivial() {
        let rogue = RogueIssuer::new(|_| {}, false);
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_pem(ID).unwrap();
        let issued = run(issue(&rogue, &request(&csr), &[], SystemTime::now())).unwrap();
        assert_eq!(issued.roots_pem, rogue.roots_pem());
    }

    #[test]
    fn a_leaf_for_another_identity_is_refused_and_never_returned() {
        let rogue = RogueIssuer::new(
            |p| {
                p.subject_alt_names = vec![SanType::URI(
                    "spiffe://cluster.local/ns/kube-system/sa/admin"
                        .try_into()
                        .unwrap(),
                )]
            },
            false,
        );
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_pem(ID).unwrap();
        let err = run(issue(&rogue, &request(&csr), &[], SystemTime::now())).unwrap_err();
        let IssuerError::BadLeaf { reason, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(reason.contains("ns/kube-system/sa/admin"), "{reason}");
        assert!(reason.contains(ID), "{reason}");
        assert_eq!(err.status_code(), 503);
        assert_eq!(err.metric_label(), "issuer_bad_leaf");
    }

    #[test]
    fn a_leaf_with_extra_names_or_none_is_refused() {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_pem(ID).unwrap();
        let cases: [(Shape, &str); 2] = [
            (
                |p| {
                    p.subject_alt_names
                        .push(SanType::DnsName("web.pets.svc".try_into().unwrap()))
                },
                "DNS:web.pets.svc",
            ),
            (|p| p.subject_alt_names.clear(), "no SAN"),
        ];
        for (make, named) in cases {
            let rogue = RogueIssuer::new(make, false);
            match run(issue(&rogue, &request(&csr), &[], SystemTime::now())) {
                Err(IssuerError::BadLeaf { reason, .. }) => {
                    assert!(reason.contains(named), "{reason}")
                }
                other => panic!("expected BadLeaf naming {named}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_leaf_for_another_key_or_a_ca_leaf_is_refused() {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_pem(ID).unwrap();
        let other_key = RogueIssuer::new(|_| {}, true);
        let err = run(issue(&other_key, &request(&csr), &[], SystemTime::now())).unwrap_err();
        assert!(err.to_string().contains("another public key"), "{err}");
        let ca_leaf = RogueIssuer::new(
            |p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
            false,
        );
        let err = run(issue(&ca_leaf, &request(&csr), &[], SystemTime::now())).unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");
    }

    /// The issuer claims roots its leaf does not chain to (a Vault whose CA changed after weft
    /// read it): refused.
    #[test]
    fn a_leaf_that_does_not_chain_to_the_issuers_roots_is_refused() {
        struct Liar(RogueIssuer, String);
        impl Issuer for Liar {
            fn kind(&self) -> IssuerKind {
                IssuerKind::Vault
            }
            fn describe(&self) -> String {
                "a liar".into()
            }
            fn roots_pem(&self) -> Vec<String> {
                vec![self.1.clone()]
            }
            fn sign<'a>(&'a self, csr: &'a WorkloadCsr<'a>, now: SystemTime) -> SignFuture<'a> {
                self.0.sign(csr, now)
            }
        }
        let other = MeshCa::generate_root("cluster.local", DEFAULT_ROOT_VALIDITY)
            .unwrap()
            .roots_pem();
        let liar = Liar(RogueIssuer::new(|_| {}, false), other);
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_pem(ID).unwrap();
        let err = run(issue(&liar, &request(&csr), &[], SystemTime::now())).unwrap_err();
        assert!(err.to_string().contains("does not chain"), "{err}");
    }

    #[test]
    fn the_csr_is_checked_before_any_issuer_sees_it() {
        // The rogue would sign anything; the seam refuses first.
        let rogue = RogueIssuer::new(|_| {}, false);
        let key = WorkloadKey::generate().unwrap();
        let csr = key
            .csr_pem("spiffe://cluster.local/ns/kube-system/sa/admin")
            .unwrap();
        let err = run(issue(&rogue, &request(&csr), &[], SystemTime::now())).unwrap_err();
        assert!(matches!(
            err,
            IssuerError::Csr(CsrError::IdentityMismatch { .. })
        ));
        assert_eq!(err.status_code(), 403);
        assert!(!err.is_issuer_fault());
    }

    #[test]
    fn issuer_config_round_trips_through_configmap_data() {
        let configs = [
            IssuerConfig::Builtin,
            IssuerConfig::Vault(VaultConfig {
                address: "https://vault.example:8200".into(),
                mount: "pki".into(),
                role: "weft".into(),
                auth: VaultAuth::TokenSecret("weft-vault-token".into()),
                ca_cert_secret: Some("vault-ca".into()),
            }),
            IssuerConfig::Vault(VaultConfig {
                address: "http://198.18.0.1:8200".into(),
                mount: "pki/mesh".into(),
                role: "weft".into(),
                auth: VaultAuth::Kubernetes {
                    role: "weft-operator".into(),
                    mount: "kubernetes".into(),
                },
                ca_cert_secret: None,
            }),
            IssuerConfig::CertManager(CertManagerConfig {
                issuer_name: "osm-ca".into(),
                issuer_kind: IssuerRefKind::ClusterIssuer,
                issuer_group: "awspca.cert-manager.io".into(),
                ca_bundle_secret: "osm-ca-bundle".into(),
            }),
        ];
        for config in configs {
            assert_eq!(IssuerConfig::from_data(&config.to_data()), Ok(config));
        }
        assert_eq!(
            IssuerConfig::from_data(&BTreeMap::new()),
            Ok(IssuerConfig::Builtin)
        );
    }

    #[test]
    fn bad_issuer_configs_are_refused_naming_the_key() {
        let data = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let vault = [
            (KEY_ISSUER, "vault"),
            (KEY_VAULT_ADDRESS, "http://198.18.0.1:8200"),
            (KEY_VAULT_ROLE, "weft"),
            (KEY_VAULT_TOKEN_SECRET, "t"),
        ];
        assert!(IssuerConfig::from_data(&data(&vault)).is_ok());
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![(KEY_ISSUER, "tresor")], "not one of"),
            (vec![(KEY_ISSUER, "vault")], KEY_VAULT_TOKEN_SECRET),
            (vault[..3].to_vec(), "exactly one of"),
            (
                [&vault[..], &[(KEY_VAULT_AUTH_ROLE, "r")]].concat(),
                "exactly one of",
            ),
            ([&vault[..1], &vault[2..]].concat(), KEY_VAULT_ADDRESS),
            (
                [&vault[..], &[("vault.adress", "x")]].concat(),
                "unknown key",
            ),
            (
                [&vault[..], &[(KEY_VAULT_ROLE, "../sys")]].concat(),
                KEY_VAULT_ROLE,
            ),
            (
                [&vault[..], &[(KEY_VAULT_ADDRESS, "vault:8200")]].concat(),
                "https://",
            ),
            (
                [&vault[..], &[(KEY_VAULT_ADDRESS, "https://v/x")]].concat(),
                "without a path",
            ),
            (vec![(KEY_VAULT_ROLE, "weft")], "issuer is builtin"),
            (
                vec![
                    (KEY_ISSUER, "cert-manager"),
                    (KEY_CERT_MANAGER_ISSUER_NAME, "osm-ca"),
                ],
                KEY_CERT_MANAGER_CA_BUNDLE_SECRET,
            ),
            (
                vec![
                    (KEY_ISSUER, "cert-manager"),
                    (KEY_CERT_MANAGER_ISSUER_NAME, "osm-ca"),
                    (KEY_CERT_MANAGER_CA_BUNDLE_SECRET, "b"),
                    (KEY_CERT_MANAGER_ISSUER_KIND, "Certificate"),
                ],
                "not Issuer or ClusterIssuer",
            ),
            (
                [&vault[..], &[(KEY_CERT_MANAGER_ISSUER_NAME, "osm-ca")]].concat(),
                "certManager.issuerName is set but issuer is vault",
            ),
            (
                vec![(KEY_ISSUER, "cert-manager"), (KEY_VAULT_ROLE, "weft")],
                "vault.role is set but issuer is cert-manager",
            ),
        ];
        for (pairs, named) in cases {
            let err = IssuerConfig::from_data(&data(&pairs)).unwrap_err();
            assert!(err.to_string().contains(named), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn cert_manager_defaults_to_an_issuer_of_cert_manager_io_as_osm_does() {
        let data = BTreeMap::from([
            (KEY_ISSUER.to_string(), "cert-manager".to_string()),
            (
                KEY_CERT_MANAGER_ISSUER_NAME.to_string(),
                "osm-ca".to_string(),
            ),
            (
                KEY_CERT_MANAGER_CA_BUNDLE_SECRET.to_string(),
                "osm-ca-bundle".to_string(),
            ),
        ]);
        let config = IssuerConfig::from_data(&data).unwrap();
        assert_eq!(
            config,
            IssuerConfig::CertManager(CertManagerConfig {
                issuer_name: "osm-ca".into(),
                issuer_kind: IssuerRefKind::Issuer,
                issuer_group: CERT_MANAGER_GROUP.into(),
                ca_bundle_secret: "osm-ca-bundle".into(),
            })
        );
        assert_eq!(config.kind(), IssuerKind::CertManager);
        assert!(
            config
                .describe()
                .contains("Issuer/osm-ca (cert-manager.io)")
        );
    }

    #[test]
    fn only_a_change_of_where_the_roots_come_from_needs_a_rotation() {
        let vault = |address: &str, mount: &str, role: &str| {
            IssuerConfig::Vault(VaultConfig {
                address: address.into(),
                mount: mount.into(),
                role: role.into(),
                auth: VaultAuth::TokenSecret("t".into()),
                ca_cert_secret: None,
            })
        };
        let cm = |issuer: &str, bundle: &str| {
            IssuerConfig::CertManager(CertManagerConfig {
                issuer_name: issuer.into(),
                issuer_kind: IssuerRefKind::Issuer,
                issuer_group: CERT_MANAGER_GROUP.into(),
                ca_bundle_secret: bundle.into(),
            })
        };
        let a = vault("http://v:8200", "pki", "weft");
        assert!(a.same_roots_as(&vault("http://v:8200/", "pki", "other-role")));
        assert!(!a.same_roots_as(&vault("http://v:8200", "pki2", "weft")));
        assert!(!a.same_roots_as(&vault("http://w:8200", "pki", "weft")));
        assert!(cm("a", "bundle").same_roots_as(&cm("b", "bundle")));
        assert!(!cm("a", "bundle").same_roots_as(&cm("a", "other")));
        assert!(IssuerConfig::Builtin.same_roots_as(&IssuerConfig::Builtin));
        assert!(!IssuerConfig::Builtin.same_roots_as(&a));
        assert!(!a.same_roots_as(&cm("a", "bundle")));
    }

    #[test]
    fn the_common_name_is_sa_dot_namespace_dot_svc() {
        assert_eq!(request("").common_name(), "web.pets.svc");
    }
}
