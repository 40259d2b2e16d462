//! The mesh CA: the signer behind every workload and webhook certificate. Either weft's own
//! self-signed root (Secret `weft-ca`) or an intermediate the user plugs in (Istio's Secret
//! `cacerts`). Everything that can be wrong with the material is checked once, at load, and the
//! issuer is prepared then, so that issuing a certificate costs one signature.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::certificate::X509Certificate;

use super::encoding::{self, KeyFormatError, PemError, TAG_CERTIFICATE};
use super::lifetime::BACKDATE;
use super::verify::{self, VerifyError};
use super::{offset_date_time, random_serial, system_time, unix_seconds};

/// Lifetime of a root weft generates: long, because replacing a root means re-trusting it in
/// every pod, and weft does not rotate roots yet (a later phase).
pub const DEFAULT_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const ROOT_ORGANIZATION: &str = "weft";
pub const ROOT_COMMON_NAME: &str = "weft root CA";

/// weft's own CA Secret (self-signed mode) and its keys.
pub const WEFT_CA_SECRET: &str = "weft-ca";
pub const WEFT_CA_CERT_KEY: &str = "ca.crt";
pub const WEFT_CA_KEY_KEY: &str = "ca.key";
/// Istio's plug-in CA Secret and its keys, read as Istio reads them.
pub const PLUGIN_CA_SECRET: &str = "cacerts";
pub const PLUGIN_CA_CERT_KEY: &str = "ca-cert.pem";
pub const PLUGIN_CA_KEY_KEY: &str = "ca-key.pem";
pub const PLUGIN_CERT_CHAIN_KEY: &str = "cert-chain.pem";
pub const PLUGIN_ROOT_CERT_KEY: &str = "root-cert.pem";

/// Where the signing material came from; decides which Secret holds it and which file names
/// errors talk about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaSource {
    /// weft's own root signs directly (Secret `weft-ca`).
    SelfSigned,
    /// A user-supplied intermediate signs; its root is distributed (Secret `cacerts`).
    PlugIn,
}

impl CaSource {
    pub fn secret_name(self) -> &'static str {
        match self {
            Self::SelfSigned => WEFT_CA_SECRET,
            Self::PlugIn => PLUGIN_CA_SECRET,
        }
    }

    fn files(self) -> Files {
        match self {
            Self::SelfSigned => Files {
                cert: WEFT_CA_CERT_KEY,
                key: WEFT_CA_KEY_KEY,
                chain: WEFT_CA_CERT_KEY,
                root: WEFT_CA_CERT_KEY,
            },
            Self::PlugIn => Files {
                cert: PLUGIN_CA_CERT_KEY,
                key: PLUGIN_CA_KEY_KEY,
                chain: PLUGIN_CERT_CHAIN_KEY,
                root: PLUGIN_ROOT_CERT_KEY,
            },
        }
    }
}

/// The Secret keys of one source, so every error names the file to fix.
#[derive(Clone, Copy)]
struct Files {
    cert: &'static str,
    key: &'static str,
    chain: &'static str,
    root: &'static str,
}

/// Why CA material cannot be loaded, generated or used. Every message names the Secret key
/// at fault and what to put there instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("Secret {secret} has no key {key}: add it (the Secret needs {needs})")]
    MissingSecretKey {
        secret: &'static str,
        key: &'static str,
        needs: &'static str,
    },
    #[error("{file} is not UTF-8 text: it must hold PEM, as `openssl` writes it")]
    NotText { file: &'static str },
    #[error("{file}: {source}")]
    Pem {
        file: &'static str,
        source: PemError,
    },
    #[error(
        "{file} holds {count} certificates: put only the signing CA's certificate there, and any intermediates above it in {PLUGIN_CERT_CHAIN_KEY}"
    )]
    SeveralSigners { file: &'static str, count: usize },
    #[error("{file}: {source}")]
    KeyFormat {
        file: &'static str,
        source: KeyFormatError,
    },
    #[error(
        "{file} holds a key weft cannot sign with ({reason}): use an unencrypted ECDSA P-256/P-384, RSA 2048-4096 or Ed25519 key"
    )]
    UnsupportedKey { file: &'static str, reason: String },
    #[error(
        "{key_file} is not the private key of the certificate in {cert_file}: put that certificate's own key there (compare `openssl x509 -pubkey -noout` with `openssl pkey -pubout`)"
    )]
    KeyMismatch {
        key_file: &'static str,
        cert_file: &'static str,
    },
    #[error("{file}: {source}")]
    Certificate {
        file: &'static str,
        source: VerifyError,
    },
    #[error(
        "{file} holds '{subject}', which is not a CA certificate: use a certificate with basicConstraints CA:TRUE and keyUsage keyCertSign"
    )]
    NotACa { file: &'static str, subject: String },
    #[error(
        "{file} holds '{subject}', which is not a self-signed root: put only root certificates there (an intermediate signer belongs in Secret cacerts, its issuers in {PLUGIN_CERT_CHAIN_KEY})"
    )]
    RootNotSelfSigned { file: &'static str, subject: String },
    #[error(
        "the signing certificate does not chain to {root_file}: {source}; put every intermediate between the signer and the root in {chain_file}, and the root itself in {root_file}"
    )]
    Chain {
        root_file: &'static str,
        chain_file: &'static str,
        source: VerifyError,
    },
    #[error(
        "weft cannot issue verifiable certificates with this CA ({0}); if its subject has multi-valued RDNs or repeated attributes, reissue it with a plain subject such as O=..., CN=..."
    )]
    SelfCheck(String),
    #[error(
        "trust domain {0:?} is invalid: use lowercase letters, digits, '.', '-' and '_' only, such as \"cluster.local\""
    )]
    InvalidTrustDomain(String),
    #[error(
        "{what} of {requested:?} is out of range: use a lifetime between one minute and a few decades"
    )]
    InvalidLifetime {
        what: &'static str,
        requested: Duration,
    },
    #[error(
        "DNS name {0:?} cannot go into a certificate: use an ASCII host name such as weft-webhook.weft-system.svc"
    )]
    InvalidDnsName(String),
    #[error("a serving certificate needs at least one DNS name")]
    NoDnsNames,
    #[error(
        "the mesh CA expired or is about to ({0}): renew the CA (plug-in mode: renew `cacerts`; self-signed: `weft ca reset`)"
    )]
    Expired(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

impl CaError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingSecretKey { .. } => "missing_secret_key",
            Self::NotText { .. } => "not_text",
            Self::Pem { .. } => "bad_pem",
            Self::SeveralSigners { .. } => "several_signers",
            Self::KeyFormat { .. } => "bad_key_format",
            Self::UnsupportedKey { .. } => "unsupported_key",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::Certificate { .. } => "bad_certificate",
            Self::NotACa { .. } => "not_a_ca",
            Self::RootNotSelfSigned { .. } => "root_not_self_signed",
            Self::Chain { .. } => "broken_chain",
            Self::SelfCheck(_) => "self_check_failed",
            Self::InvalidTrustDomain(_) => "invalid_trust_domain",
            Self::InvalidLifetime { .. } => "invalid_lifetime",
            Self::InvalidDnsName(_) => "invalid_dns_name",
            Self::NoDnsNames => "no_dns_names",
            Self::Expired(_) => "ca_expired",
            Self::Sign(_) => "sign_failed",
        }
    }
}

/// A server certificate (the webhook's) with its fresh key.
#[derive(Clone)]
pub struct ServingCert {
    /// Leaf then intermediates, PEM, as a TLS server sends them.
    pub cert_chain_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The loaded, validated mesh CA. Cheap to share (`Arc<MeshCa>`); swap in a new one to rotate.
pub struct MeshCa {
    source: CaSource,
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// The Secret's files as loaded, so a deleted Secret is recreated byte for byte.
    secret_data: BTreeMap<String, String>,
    /// Sent after every leaf: the signer and any intermediates up to, not including, the root.
    /// Empty when the root signs.
    pub(crate) chain_pem: Vec<String>,
    pub(crate) roots_pem: Vec<String>,
    /// Roots trusted beside this CA's own: an external issuer's (Vault's CA chain) while it
    /// signs workload certificates. This CA still signs the operator's serving certificates,
    /// so its own root stays in every trust bundle.
    also_trusted: Vec<String>,
    root_not_after: SystemTime,
    /// The earliest NotAfter from the signer to the root: no leaf may outlive it.
    pub(crate) chain_not_after: SystemTime,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("source", &self.source)
            .field("chain_len", &self.chain_pem.len())
            .field("roots", &self.roots_pem.len())
            .field("root_not_after", &self.root_not_after)
            .finish_non_exhaustive()
    }
}

/// `roots` as PEM blocks ending in a newline, without duplicates or any of `own`.
fn extra_roots(own: &[String], roots: &[String]) -> Vec<String> {
    let own: Vec<&str> = own.iter().map(|r| r.trim()).collect();
    let mut extra: Vec<String> = Vec::new();
    for root in roots {
        let root = root.trim();
        if !root.is_empty() && !own.contains(&root) && !extra.iter().any(|e| e.trim() == root) {
            extra.push(format!("{root}\n"));
        }
    }
    extra
}

impl MeshCa {
    /// A new self-signed ECDSA P-256 root for `trust_domain`, valid from now (backdated by
    /// [`BACKDATE`]) for `validity` ([`DEFAULT_ROOT_VALIDITY`] unless tests say otherwise).
    pub fn generate_root(trust_domain: &str, validity: Duration) -> Result<Self, CaError> {
        if !is_valid_trust_domain(trust_domain) {
            return Err(CaError::InvalidTrustDomain(trust_domain.to_string()));
        }
        let invalid_validity = || CaError::InvalidLifetime {
            what: "root validity",
            requested: validity,
        };
        if validity < Duration::from_secs(60) {
            return Err(invalid_validity());
        }
        let now = SystemTime::now();
        let not_after = now
            .checked_add(validity)
            .and_then(offset_date_time)
            .ok_or_else(invalid_validity)?;
        let not_before = offset_date_time(now - BACKDATE).ok_or_else(invalid_validity)?;

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, ROOT_ORGANIZATION);
        params
            .distinguished_name
            .push(DnType::CommonName, ROOT_COMMON_NAME);
        // The SPIFFE ID of the trust domain, so `weft check` can tell which domain a root serves.
        let td_uri = format!("spiffe://{trust_domain}");
        params.subject_alt_names =
            vec![SanType::URI(td_uri.try_into().map_err(|_| {
                CaError::InvalidTrustDomain(trust_domain.to_string())
            })?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number =
            Some(random_serial().ok_or_else(|| CaError::Sign("no randomness".into()))?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        // Through the same door as loaded material: one set of invariants for both.
        let cert_pem = cert.pem();
        Self::load(
            CaSource::SelfSigned,
            &cert_pem,
            &key.serialize_pem(),
            None,
            &cert_pem,
        )
    }

    /// Loads CA material from PEM text: `signer_cert_pem` signs, `signer_key_pem` is its key,
    /// `cert_chain_pem` holds the intermediates between signer and root (Istio's
    /// `cert-chain.pem`, which may repeat the signer and the root: both are fine), and
    /// `root_cert_pem` the root(s) to distribute. With no chain and the signer as the root, the
    /// material is weft's own (`weft-ca`); anything else is plug-in (`cacerts`).
    pub fn from_pem(
        signer_cert_pem: &str,
        signer_key_pem: &str,
        cert_chain_pem: Option<&str>,
        root_cert_pem: &str,
    ) -> Result<Self, CaError> {
        let source = if cert_chain_pem.is_none() && signer_cert_pem.trim() == root_cert_pem.trim() {
            CaSource::SelfSigned
        } else {
            CaSource::PlugIn
        };
        Self::load(
            source,
            signer_cert_pem,
            signer_key_pem,
            cert_chain_pem,
            root_cert_pem,
        )
    }

    /// Loads the data of Secret `weft-ca` (`ca.crt`, `ca.key`).
    pub fn from_weft_ca_secret(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, CaError> {
        let needs = "ca.crt and ca.key";
        let cert = secret_text(data, WEFT_CA_SECRET, WEFT_CA_CERT_KEY, needs)?;
        let key = secret_text(data, WEFT_CA_SECRET, WEFT_CA_KEY_KEY, needs)?;
        Self::load(CaSource::SelfSigned, cert, key, None, cert)
    }

    /// Loads the data of Istio's plug-in Secret `cacerts`; `cert-chain.pem` may be left out
    /// when the root signed the intermediate directly.
    pub fn from_cacerts_secret(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, CaError> {
        let needs =
            "ca-cert.pem, ca-key.pem and root-cert.pem, and cert-chain.pem for a deeper chain";
        let cert = secret_text(data, PLUGIN_CA_SECRET, PLUGIN_CA_CERT_KEY, needs)?;
        let key = secret_text(data, PLUGIN_CA_SECRET, PLUGIN_CA_KEY_KEY, needs)?;
        let root = secret_text(data, PLUGIN_CA_SECRET, PLUGIN_ROOT_CERT_KEY, needs)?;
        let chain = match data.get(PLUGIN_CERT_CHAIN_KEY) {
            None => None,
            Some(_) => Some(secret_text(
                data,
                PLUGIN_CA_SECRET,
                PLUGIN_CERT_CHAIN_KEY,
                needs,
            )?),
        };
        Self::load(CaSource::PlugIn, cert, key, chain, root)
    }

    fn load(
        source: CaSource,
        signer_cert_pem: &str,
        signer_key_pem: &str,
        cert_chain_pem: Option<&str>,
        root_cert_pem: &str,
    ) -> Result<Self, CaError> {
        let files = source.files();
        let now = SystemTime::now();
        let now_s = unix_seconds(now);

        // --- read everything, naming the file when it is unreadable ---
        let signer_ders =
            encoding::certificates_from_pem(signer_cert_pem).map_err(|source| CaError::Pem {
                file: files.cert,
                source,
            })?;
        let [signer_der] = signer_ders.as_slice() else {
            return Err(CaError::SeveralSigners {
                file: files.cert,
                count: signer_ders.len(),
            });
        };
        let chain_ders = match cert_chain_pem {
            Some(text) if !text.trim().is_empty() => encoding::certificates_from_pem(text)
                .map_err(|source| CaError::Pem {
                    file: files.chain,
                    source,
                })?,
            _ => Vec::new(),
        };
        let root_ders =
            encoding::certificates_from_pem(root_cert_pem).map_err(|source| CaError::Pem {
                file: files.root,
                source,
            })?;
        let pkcs8 =
            encoding::private_key_pkcs8(signer_key_pem).map_err(|source| CaError::KeyFormat {
                file: files.key,
                source,
            })?;
        let key = KeyPair::try_from(pkcs8.as_slice()).map_err(|e| CaError::UnsupportedKey {
            file: files.key,
            reason: e.to_string(),
        })?;

        let parse = |der, file| {
            verify::parse(der, "CA").map_err(|source| CaError::Certificate { file, source })
        };
        let signer = parse(signer_der, files.cert)?;
        let roots = root_ders
            .iter()
            .map(|der| parse(der, files.root))
            .collect::<Result<Vec<_>, _>>()?;
        // Istio's cert-chain.pem repeats the signer and ends with the root; only what lies
        // strictly between them can be an intermediate.
        let intermediate_ders: Vec<&Vec<u8>> = chain_ders
            .iter()
            .filter(|der| *der != signer_der && !root_ders.contains(der))
            .collect();
        let intermediates = intermediate_ders
            .iter()
            .map(|der| parse(der, files.chain))
            .collect::<Result<Vec<_>, _>>()?;

        // --- the key signs for this certificate, and the certificate may sign ---
        if key.public_key_raw() != signer.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch {
                key_file: files.key,
                cert_file: files.cert,
            });
        }
        require_ca(&signer, files.cert)?;
        for root in &roots {
            require_ca(root, files.root)?;
            let self_signed = root.issuer().as_raw() == root.subject().as_raw()
                && root.verify_signature(None).is_ok();
            if !self_signed {
                return Err(CaError::RootNotSelfSigned {
                    file: files.root,
                    subject: root.subject().to_string(),
                });
            }
        }
        verify::check_validity(&signer, now_s).map_err(|source| CaError::Certificate {
            file: files.cert,
            source,
        })?;

        // --- the signer chains to a root ---
        let chain_error = |source| CaError::Chain {
            root_file: files.root,
            chain_file: files.chain,
            source,
        };
        let (served, anchor) = match root_ders.iter().position(|der| der == signer_der) {
            Some(root) => (Vec::new(), root),
            None => {
                let path = verify::build_path(&signer, &intermediates, &roots, now_s)
                    .map_err(chain_error)?;
                let mut served = vec![signer_der.as_slice()];
                served.extend(
                    path.intermediates
                        .iter()
                        .map(|&i| intermediate_ders[i].as_slice()),
                );
                (served, path.root)
            }
        };
        let anchor_cert = &roots[anchor];
        let root_not_after = system_time(anchor_cert.validity().not_after.timestamp());
        let chain_not_after = std::iter::once(anchor_cert)
            .chain(std::iter::once(&signer))
            .chain(
                intermediates
                    .iter()
                    .filter(|c| served.contains(&c.as_raw())),
            )
            .map(|c| c.validity().not_after.timestamp())
            .min()
            .map_or(root_not_after, system_time);

        // rcgen's issuer panics on an empty RDN; such a subject is refused here instead.
        if signer
            .subject()
            .iter()
            .any(|rdn| rdn.iter().next().is_none())
        {
            return Err(CaError::SelfCheck(
                "the signer's subject has an empty RDN".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&signer_der.as_slice().into(), key)
            .map_err(|e| CaError::SelfCheck(e.to_string()))?;

        let mut secret_data = BTreeMap::new();
        match source {
            CaSource::SelfSigned => {
                secret_data.insert(WEFT_CA_CERT_KEY.into(), signer_cert_pem.to_string());
                secret_data.insert(WEFT_CA_KEY_KEY.into(), signer_key_pem.to_string());
            }
            CaSource::PlugIn => {
                secret_data.insert(PLUGIN_CA_CERT_KEY.into(), signer_cert_pem.to_string());
                secret_data.insert(PLUGIN_CA_KEY_KEY.into(), signer_key_pem.to_string());
                secret_data.insert(PLUGIN_ROOT_CERT_KEY.into(), root_cert_pem.to_string());
                if let Some(chain) = cert_chain_pem {
                    secret_data.insert(PLUGIN_CERT_CHAIN_KEY.into(), chain.to_string());
                }
            }
        }
        let ca = MeshCa {
            source,
            issuer,
            secret_data,
            chain_pem: served
                .iter()
                .map(|der| encoding::to_pem(TAG_CERTIFICATE, der))
                .collect(),
            roots_pem: root_ders
                .iter()
                .map(|der| encoding::to_pem(TAG_CERTIFICATE, der))
                .collect(),
            also_trusted: Vec::new(),
            root_not_after,
            chain_not_after,
        };
        ca.self_check(now)?;
        Ok(ca)
    }

    /// Issues a throwaway leaf and verifies it as a peer would. This catches, at load, what no
    /// field check can: a subject rcgen cannot reproduce byte for byte (peers would then find
    /// no issuer), or a key ring cannot actually sign with.
    fn self_check(&self, now: SystemTime) -> Result<(), CaError> {
        let probe = self
            .sign_serving_at(&["weft-ca-self-check.invalid".to_string()], BACKDATE, now)
            .map_err(|e| match e {
                CaError::Expired(_) => e,
                e => CaError::SelfCheck(e.to_string()),
            })?;
        let ders = encoding::certificates_from_pem(&probe.cert_chain_pem)
            .map_err(|e| CaError::SelfCheck(e.to_string()))?;
        let roots = self
            .roots_pem
            .iter()
            .flat_map(|pem| encoding::certificates_from_pem(pem).unwrap_or_default())
            .collect::<Vec<_>>();
        let (leaf, chain) = ders
            .split_first()
            .ok_or_else(|| CaError::SelfCheck("empty probe chain".into()))?;
        verify::verify_chain(leaf, chain, &roots, now).map_err(|e| match e {
            VerifyError::Expired { .. } | VerifyError::NotYetValid { .. } => {
                CaError::Expired(e.to_string())
            }
            e => CaError::SelfCheck(e.to_string()),
        })
    }

    pub fn source(&self) -> CaSource {
        self.source
    }

    /// The trust bundle to distribute (ConfigMap `weft-ca-root-cert`, key `root-cert.pem`,
    /// webhook `caBundle`s, client verification on :15012), as one PEM bundle: this CA's roots,
    /// then any [`MeshCa::also_trusting`] added.
    pub fn roots_pem(&self) -> String {
        self.root_certs_pem().concat()
    }

    /// The trust bundle one by one, as the CSR endpoint answers it.
    pub fn root_certs_pem(&self) -> Vec<String> {
        let mut roots = self.roots_pem.clone();
        roots.extend(self.also_trusted.iter().cloned());
        roots
    }

    /// This CA's own roots only (what its Secret holds), as one PEM bundle.
    pub fn own_roots_pem(&self) -> String {
        self.roots_pem.concat()
    }

    /// The roots trusted beside this CA's own.
    pub fn also_trusted(&self) -> &[String] {
        &self.also_trusted
    }

    /// Whether [`MeshCa::also_trusting`] `roots` would trust anything else than now.
    pub fn trusts_other_than(&self, roots: &[String]) -> bool {
        extra_roots(&self.roots_pem, roots) != self.also_trusted
    }

    /// The same CA, trusting `roots` too (an external issuer's; duplicates of its own roots
    /// are left out). Reloaded from its Secret's data because a key pair cannot be copied.
    pub fn also_trusting(&self, roots: &[String]) -> Result<MeshCa, CaError> {
        let data: BTreeMap<String, Vec<u8>> = self
            .secret_data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        let mut ca = match self.source {
            CaSource::SelfSigned => MeshCa::from_weft_ca_secret(&data)?,
            CaSource::PlugIn => MeshCa::from_cacerts_secret(&data)?,
        };
        let extra = extra_roots(&ca.roots_pem, roots);
        ca.also_trusted = extra;
        Ok(ca)
    }

    /// Intermediates served after every leaf (signer first); empty in self-signed mode.
    pub fn chain_pem(&self) -> &[String] {
        &self.chain_pem
    }

    /// The data of the Secret this CA lives in ([`CaSource::secret_name`]), keyed as that
    /// Secret is: `ca.crt`/`ca.key` for `weft-ca`; Istio's keys for `cacerts`. Used to
    /// recreate a deleted Secret from memory.
    pub fn to_secret_data(&self) -> BTreeMap<String, String> {
        self.secret_data.clone()
    }

    /// When the root that anchors the signer expires.
    pub fn root_expiry(&self) -> SystemTime {
        self.root_not_after
    }

    /// When the first certificate between signer and root expires: no leaf outlives it.
    pub fn chain_expiry(&self) -> SystemTime {
        self.chain_not_after
    }

    /// A server certificate for `dns_names` (the webhook's), with a new P-256 key.
    pub fn sign_serving(
        &self,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<ServingCert, CaError> {
        self.sign_serving_at(dns_names, ttl, SystemTime::now())
    }

    fn sign_serving_at(
        &self,
        dns_names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<ServingCert, CaError> {
        let first = dns_names.first().ok_or(CaError::NoDnsNames)?;
        if let Some(bad) = dns_names
            .iter()
            .find(|name| name.is_empty() || !name.is_ascii())
        {
            return Err(CaError::InvalidDnsName(bad.clone()));
        }
        let (not_before, not_after) = self.leaf_validity(ttl, now)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
        params.subject_alt_names = dns_names
            .iter()
            .map(|name| {
                name.as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| CaError::InvalidDnsName(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset_date_time(not_before).ok_or_else(|| invalid_ttl(ttl))?;
        params.not_after = offset_date_time(not_after).ok_or_else(|| invalid_ttl(ttl))?;
        params.serial_number =
            Some(random_serial().ok_or_else(|| CaError::Sign("no randomness".into()))?);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut cert_chain_pem = leaf.pem();
        for intermediate in &self.chain_pem {
            cert_chain_pem.push_str(intermediate);
        }
        Ok(ServingCert {
            cert_chain_pem,
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// NotBefore backdated by [`BACKDATE`]; NotAfter `ttl` from now but never past the CA.
    /// Whole seconds, as X.509 stores them, so the times returned are the certificate's.
    pub(crate) fn leaf_validity(
        &self,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(SystemTime, SystemTime), CaError> {
        let ttl_s = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        if ttl_s == 0 {
            return Err(invalid_ttl(ttl));
        }
        let now_s = unix_seconds(now);
        let not_after_s = now_s
            .saturating_add(ttl_s)
            .min(unix_seconds(self.chain_not_after));
        if not_after_s <= now_s {
            return Err(CaError::Expired(format!(
                "a certificate of its chain expires at {} (Unix time)",
                unix_seconds(self.chain_not_after)
            )));
        }
        let not_before_s = now_s.saturating_sub(BACKDATE.as_secs() as i64);
        Ok((system_time(not_before_s), system_time(not_after_s)))
    }
}

fn invalid_ttl(ttl: Duration) -> CaError {
    CaError::InvalidLifetime {
        what: "certificate lifetime",
        requested: ttl,
    }
}

fn require_ca(cert: &X509Certificate<'_>, file: &'static str) -> Result<(), CaError> {
    verify::check_can_issue(cert).map_err(|_| CaError::NotACa {
        file,
        subject: cert.subject().to_string(),
    })
}

fn secret_text<'a>(
    data: &'a BTreeMap<String, Vec<u8>>,
    secret: &'static str,
    key: &'static str,
    needs: &'static str,
) -> Result<&'a str, CaError> {
    let bytes = data
        .get(key)
        .ok_or(CaError::MissingSecretKey { secret, key, needs })?;
    std::str::from_utf8(bytes).map_err(|_| CaError::NotText { file: key })
}

/// SPIFFE trust domain names: lowercase letters, digits, dots, dashes and underscores.
fn is_valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::WorkloadKey;
    use crate::pki::verify::{spiffe_id_of, verify_chain};
    use x509_parser::extensions::GeneralName;

    const DAY: Duration = Duration::from_secs(86_400);

    pub(crate) fn ders(pem: &str) -> Vec<Vec<u8>> {
        encoding::certificates_from_pem(pem).unwrap()
    }

    fn root() -> MeshCa {
        MeshCa::generate_root("cluster.local", DEFAULT_ROOT_VALIDITY).unwrap()
    }

    #[test]
    fn generated_root_is_a_p256_ca_named_weft() {
        let ca = root();
        let root_der = &ders(&ca.roots_pem())[0];
        let (_, cert) = x509_parser::parse_x509_certificate(root_der).unwrap();
        assert_eq!(cert.subject().to_string(), "O=weft, CN=weft root CA");
        assert!(cert.is_ca());
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            san.general_names,
            vec![GeneralName::URI("spiffe://cluster.local")]
        );
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        let expected = (DEFAULT_ROOT_VALIDITY + BACKDATE).as_secs() as i64;
        assert!((lifetime - expected).abs() <= 2, "{lifetime} vs {expected}");
        assert_eq!(ca.source(), CaSource::SelfSigned);
        assert!(ca.chain_pem().is_empty(), "a root signs: no intermediates");
    }

    #[test]
    fn a_ca_trusting_an_issuers_root_distributes_both_and_keeps_its_own_apart() {
        let ca = MeshCa::generate_root("cluster.local", DEFAULT_ROOT_VALIDITY).unwrap();
        let vault = MeshCa::generate_root("cluster.local", DEFAULT_ROOT_VALIDITY)
            .unwrap()
            .roots_pem();
        let trusting = ca
            .also_trusting(&[vault.clone(), vault.clone(), ca.roots_pem()])
            .unwrap();
        assert_eq!(trusting.own_roots_pem(), ca.roots_pem());
        assert_eq!(
            trusting.root_certs_pem(),
            vec![ca.roots_pem(), vault.clone()]
        );
        assert_eq!(trusting.roots_pem(), format!("{}{vault}", ca.roots_pem()));
        assert_eq!(
            trusting.to_secret_data(),
            ca.to_secret_data(),
            "no key of another CA"
        );
        // Trusting nothing more is the CA as loaded.
        assert_eq!(
            trusting.also_trusting(&[]).unwrap().roots_pem(),
            ca.roots_pem()
        );
    }

    #[test]
    fn generated_root_round_trips_through_its_secret() {
        let ca = root();
        let data = ca.to_secret_data();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            [WEFT_CA_CERT_KEY, WEFT_CA_KEY_KEY]
        );
        assert!(data[WEFT_CA_KEY_KEY].starts_with("-----BEGIN PRIVATE KEY-----"));
        let bytes = data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        let again = MeshCa::from_weft_ca_secret(&bytes).unwrap();
        assert_eq!(again.roots_pem(), ca.roots_pem());
        assert_eq!(again.root_expiry(), ca.root_expiry());
        let via_pem = MeshCa::from_pem(
            &data[WEFT_CA_CERT_KEY],
            &data[WEFT_CA_KEY_KEY],
            None,
            &data[WEFT_CA_CERT_KEY],
        )
        .unwrap();
        assert_eq!(via_pem.source(), CaSource::SelfSigned);
    }

    #[test]
    fn invalid_trust_domain_or_validity_is_refused() {
        assert!(matches!(
            MeshCa::generate_root("Cluster Local", DAY),
            Err(CaError::InvalidTrustDomain(_))
        ));
        assert!(matches!(
            MeshCa::generate_root("cluster.local", Duration::from_secs(1)),
            Err(CaError::InvalidLifetime { .. })
        ));
        assert!(matches!(
            MeshCa::generate_root("cluster.local", Duration::MAX),
            Err(CaError::InvalidLifetime { .. })
        ));
    }

    #[test]
    fn serving_certificate_verifies_against_the_root_for_its_dns_names() {
        let ca = root();
        let names = vec![
            "weft-webhook.weft-system.svc".to_string(),
            "weft-webhook.weft-system.svc.cluster.local".to_string(),
        ];
        let serving = ca.sign_serving(&names, DAY).unwrap();
        let chain = ders(&serving.cert_chain_pem);
        assert_eq!(chain.len(), 1, "self-signed mode sends the leaf alone");
        verify_chain(
            &chain[0],
            &chain[1..],
            &ders(&ca.roots_pem()),
            SystemTime::now(),
        )
        .unwrap();

        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            san.general_names,
            names
                .iter()
                .map(|n| GeneralName::DNSName(n))
                .collect::<Vec<_>>()
        );
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!leaf.is_ca());
        assert!(serving.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let key = KeyPair::from_pem(&serving.key_pem).unwrap();
        assert_eq!(
            key.public_key_raw(),
            leaf.public_key().subject_public_key.data.as_ref(),
            "the key returned is the certificate's"
        );
    }

    #[test]
    fn serving_certificate_refuses_no_names_and_non_ascii_names() {
        let ca = root();
        assert_eq!(ca.sign_serving(&[], DAY).unwrap_err(), CaError::NoDnsNames);
        assert!(matches!(
            ca.sign_serving(&["wébhook.svc".to_string()], DAY),
            Err(CaError::InvalidDnsName(name)) if name == "wébhook.svc"
        ));
    }

    #[test]
    fn leaves_never_outlive_the_ca() {
        let ca = MeshCa::generate_root("cluster.local", Duration::from_secs(3600)).unwrap();
        let serving = ca.sign_serving(&["a.svc".to_string()], 10 * DAY).unwrap();
        assert_eq!(serving.not_after, ca.chain_expiry());
        assert!(serving.not_after <= ca.root_expiry());
    }

    #[test]
    fn mismatched_key_and_certificate_are_refused() {
        let a = root().to_secret_data();
        let b = root().to_secret_data();
        let err = MeshCa::from_pem(
            &a[WEFT_CA_CERT_KEY],
            &b[WEFT_CA_KEY_KEY],
            None,
            &a[WEFT_CA_CERT_KEY],
        )
        .unwrap_err();
        assert_eq!(
            err,
            CaError::KeyMismatch {
                key_file: WEFT_CA_KEY_KEY,
                cert_file: WEFT_CA_CERT_KEY
            }
        );
        assert!(
            err.to_string()
                .contains("ca.key is not the private key of the certificate in ca.crt")
        );
    }

    #[test]
    fn a_leaf_certificate_cannot_be_the_signer() {
        let ca = root();
        let serving = ca.sign_serving(&["a.svc".to_string()], DAY).unwrap();
        let err = MeshCa::from_pem(
            &serving.cert_chain_pem,
            &serving.key_pem,
            None,
            &ca.roots_pem(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                CaError::NotACa {
                    file: PLUGIN_CA_CERT_KEY,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_secret_keys_and_garbage_are_named() {
        let mut data = BTreeMap::new();
        data.insert(WEFT_CA_CERT_KEY.to_string(), b"garbage".to_vec());
        assert!(matches!(
            MeshCa::from_weft_ca_secret(&data),
            Err(CaError::MissingSecretKey {
                key: WEFT_CA_KEY_KEY,
                ..
            })
        ));
        data.insert(WEFT_CA_KEY_KEY.to_string(), b"also garbage".to_vec());
        let err = MeshCa::from_weft_ca_secret(&data).unwrap_err();
        assert_eq!(
            err,
            CaError::Pem {
                file: WEFT_CA_CERT_KEY,
                source: PemError::Empty
            }
        );
        assert!(err.to_string().starts_with("ca.crt: "), "{err}");
        data.insert(WEFT_CA_CERT_KEY.to_string(), vec![0xff, 0xfe]);
        assert_eq!(
            MeshCa::from_weft_ca_secret(&data)
                .unwrap_err()
                .metric_label(),
            "not_text"
        );
    }

    #[test]
    fn an_expired_ca_is_refused_at_load() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(10);
        params.not_after = now - time::Duration::days(1);
        let cert = params.self_signed(&key).unwrap().pem();
        let err = MeshCa::from_pem(&cert, &key.serialize_pem(), None, &cert).unwrap_err();
        assert!(
            matches!(
                &err,
                CaError::Certificate {
                    file: WEFT_CA_CERT_KEY,
                    source: VerifyError::Expired { .. }
                }
            ),
            "{err}"
        );
    }

    // === plug-in mode ===

    /// A CA certificate made in the test: its PEM, its key's PEM, and an issuer for children.
    struct TestCa {
        pem: String,
        key_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn test_ca(common_name: &str, parent: Option<&TestCa>) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example Corp");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let cert = match parent {
            Some(parent) => params.signed_by(&key, &parent.issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        TestCa {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    const ID: &str = "spiffe://cluster.local/ns/pets/sa/web";

    /// Issues a workload certificate and returns (leaf, served intermediates, roots) as DER.
    fn issue(ca: &MeshCa) -> (Vec<u8>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let key = WorkloadKey::generate().unwrap();
        let issued = ca
            .sign_workload_csr(&key.csr_pem(ID).unwrap(), ID, DAY, SystemTime::now())
            .unwrap();
        let chain: Vec<Vec<u8>> = issued.cert_chain_pem.iter().flat_map(|p| ders(p)).collect();
        assert_eq!(chain[0], issued.leaf_der, "the chain starts with the leaf");
        let roots = issued.roots_pem.iter().flat_map(|p| ders(p)).collect();
        (issued.leaf_der, chain[1..].to_vec(), roots)
    }

    #[test]
    fn plug_in_intermediate_signs_and_its_chain_is_served() {
        let root = test_ca("Example Root CA", None);
        let intermediate = test_ca("Example Mesh CA", Some(&root));
        let chain = format!("{}{}", intermediate.pem, root.pem);
        let ca = MeshCa::from_pem(
            &intermediate.pem,
            &intermediate.key_pem,
            Some(&chain),
            &root.pem,
        )
        .unwrap();
        assert_eq!(ca.source(), CaSource::PlugIn);
        assert_eq!(
            ders(&ca.roots_pem()),
            ders(&root.pem),
            "the root is distributed"
        );
        assert_eq!(ca.chain_pem().len(), 1);

        let (leaf, intermediates, roots) = issue(&ca);
        assert_eq!(
            intermediates,
            ders(&intermediate.pem),
            "root <- intermediate <- leaf"
        );
        verify_chain(&leaf, &intermediates, &roots, SystemTime::now()).unwrap();
        assert!(
            verify_chain(&leaf, &[] as &[Vec<u8>], &roots, SystemTime::now()).is_err(),
            "without the served intermediate the leaf does not verify"
        );
        assert_eq!(spiffe_id_of(&leaf).as_deref(), Some(ID));
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(
            parsed.issuer().to_string(),
            "O=Example Corp, CN=Example Mesh CA"
        );

        let serving = ca.sign_serving(&["a.svc".to_string()], DAY).unwrap();
        let served = ders(&serving.cert_chain_pem);
        assert_eq!(
            served[1..],
            ders(&intermediate.pem)[..],
            "serving chains too"
        );
        verify_chain(&served[0], &served[1..], &roots, SystemTime::now()).unwrap();
    }

    #[test]
    fn a_two_level_chain_is_served_signer_first_whatever_the_file_order() {
        let root = test_ca("Root", None);
        let middle = test_ca("Middle", Some(&root));
        let signer = test_ca("Signer", Some(&middle));
        // Deliberately out of order, with the root inside: Istio files vary.
        let chain = format!("{}{}{}", root.pem, middle.pem, signer.pem);
        let ca = MeshCa::from_pem(&signer.pem, &signer.key_pem, Some(&chain), &root.pem).unwrap();
        let expected: Vec<Vec<u8>> = [&signer.pem, &middle.pem]
            .iter()
            .flat_map(|p| ders(p))
            .collect();
        let served: Vec<Vec<u8>> = ca.chain_pem().iter().flat_map(|p| ders(p)).collect();
        assert_eq!(served, expected);
        let (leaf, intermediates, roots) = issue(&ca);
        assert_eq!(intermediates, expected);
        verify_chain(&leaf, &intermediates, &roots, SystemTime::now()).unwrap();
    }

    #[test]
    fn a_missing_intermediate_is_refused_naming_cert_chain_pem() {
        let root = test_ca("Root", None);
        let middle = test_ca("Middle", Some(&root));
        let signer = test_ca("Signer", Some(&middle));
        let err = MeshCa::from_pem(&signer.pem, &signer.key_pem, Some(&signer.pem), &root.pem)
            .unwrap_err();
        assert!(
            matches!(&err, CaError::Chain { source: VerifyError::UnknownIssuer { issuer, .. }, .. } if issuer.contains("Middle")),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("cert-chain.pem") && message.contains("root-cert.pem"),
            "{message}"
        );
    }

    #[test]
    fn a_signer_from_another_root_is_refused() {
        let root = test_ca("Root", None);
        let other_root = test_ca("Other Root", None);
        let signer = test_ca("Signer", Some(&root));
        let err =
            MeshCa::from_pem(&signer.pem, &signer.key_pem, None, &other_root.pem).unwrap_err();
        assert!(matches!(err, CaError::Chain { .. }), "{err:?}");
    }

    #[test]
    fn an_intermediate_in_root_cert_pem_is_refused() {
        let root = test_ca("Root", None);
        let middle = test_ca("Middle", Some(&root));
        let signer = test_ca("Signer", Some(&middle));
        let err = MeshCa::from_pem(&signer.pem, &signer.key_pem, None, &middle.pem).unwrap_err();
        assert_eq!(
            err,
            CaError::RootNotSelfSigned {
                file: PLUGIN_ROOT_CERT_KEY,
                subject: "O=Example Corp, CN=Middle".into()
            }
        );
    }

    fn secret(dir: &str) -> BTreeMap<String, Vec<u8>> {
        let files: &[(&str, &str)] = match dir {
            "istio-rsa" => &[
                (
                    PLUGIN_CA_CERT_KEY,
                    include_str!("testdata/istio-rsa/ca-cert.pem"),
                ),
                (
                    PLUGIN_CA_KEY_KEY,
                    include_str!("testdata/istio-rsa/ca-key.pem"),
                ),
                (
                    PLUGIN_CERT_CHAIN_KEY,
                    include_str!("testdata/istio-rsa/cert-chain.pem"),
                ),
                (
                    PLUGIN_ROOT_CERT_KEY,
                    include_str!("testdata/istio-rsa/root-cert.pem"),
                ),
            ],
            _ => &[
                (
                    PLUGIN_CA_CERT_KEY,
                    include_str!("testdata/ec-sec1/ca-cert.pem"),
                ),
                (
                    PLUGIN_CA_KEY_KEY,
                    include_str!("testdata/ec-sec1/ca-key.pem"),
                ),
                (
                    PLUGIN_CERT_CHAIN_KEY,
                    include_str!("testdata/ec-sec1/cert-chain.pem"),
                ),
                (
                    PLUGIN_ROOT_CERT_KEY,
                    include_str!("testdata/ec-sec1/root-cert.pem"),
                ),
            ],
        };
        files
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn istio_tools_certs_rsa_cacerts_load_and_issue() {
        let data = secret("istio-rsa");
        let ca = MeshCa::from_cacerts_secret(&data).unwrap();
        assert_eq!(ca.source(), CaSource::PlugIn);
        assert_eq!(ca.source().secret_name(), "cacerts");
        let (leaf, intermediates, roots) = issue(&ca);
        assert_eq!(
            intermediates.len(),
            1,
            "the intermediate, not the root again"
        );
        verify_chain(&leaf, &intermediates, &roots, SystemTime::now()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(
            parsed.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA,
            "an RSA intermediate signs with RSA"
        );
        // Recreating the Secret from memory gives back the user's files unchanged.
        let again: BTreeMap<String, Vec<u8>> = ca
            .to_secret_data()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        assert_eq!(again, data);
    }

    #[test]
    fn ec_cacerts_with_sec1_keys_load_and_issue() {
        let ca = MeshCa::from_cacerts_secret(&secret("ec-sec1")).unwrap();
        let (leaf, intermediates, roots) = issue(&ca);
        verify_chain(&leaf, &intermediates, &roots, SystemTime::now()).unwrap();
    }

    #[test]
    fn cacerts_without_cert_chain_still_loads_when_the_root_signed_directly() {
        let mut data = secret("istio-rsa");
        data.remove(PLUGIN_CERT_CHAIN_KEY);
        let ca = MeshCa::from_cacerts_secret(&data).unwrap();
        assert_eq!(ca.chain_pem().len(), 1);
        data.remove(PLUGIN_ROOT_CERT_KEY);
        let err = MeshCa::from_cacerts_secret(&data).unwrap_err();
        assert!(matches!(
            err,
            CaError::MissingSecretKey {
                secret: "cacerts",
                key: PLUGIN_ROOT_CERT_KEY,
                ..
            }
        ));
        assert!(
            err.to_string()
                .contains("Secret cacerts has no key root-cert.pem"),
            "{err}"
        );
    }

    #[test]
    fn the_wrong_key_in_cacerts_is_refused() {
        let mut data = secret("istio-rsa");
        data.insert(
            PLUGIN_CA_KEY_KEY.to_string(),
            secret("ec-sec1")[PLUGIN_CA_KEY_KEY].clone(),
        );
        assert_eq!(
            MeshCa::from_cacerts_secret(&data).unwrap_err(),
            CaError::KeyMismatch {
                key_file: PLUGIN_CA_KEY_KEY,
                cert_file: PLUGIN_CA_CERT_KEY
            }
        );
    }

    #[test]
    fn mesh_ca_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<MeshCa>();
    }
}
