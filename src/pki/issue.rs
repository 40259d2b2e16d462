//! Workload certificate issuance: the CA end of `POST /v1/certificates` (SPEC §7). The CSR
//! only proves possession of a key; everything else in the certificate is decided here, from
//! the identity the caller's token proved. Nothing of the CSR but its public key is copied.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PublicKeyData, SanType, SignatureAlgorithm,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;

use super::ca::{CaError, MeshCa};
use super::encoding::{self, TAG_CSR};
use super::protocol::CertificateResponse;
use super::{offset_date_time, random_serial};

/// Why a workload CSR was not signed. [`CsrError::status_code`] is the CSR endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the csr is not a usable PKCS#10 request: {0}; send one PEM CERTIFICATE REQUEST")]
    Malformed(String),
    #[error(
        "the csr's signature does not verify: sign the request with the private key whose public key it carries"
    )]
    BadSignature,
    #[error(
        "the csr carries a {0} key; weft issues workload certificates for ECDSA P-256 keys only (uncompressed point): generate a P-256 key"
    )]
    UnsupportedKey(String),
    #[error(
        "the csr asks for no URI SAN identity: put exactly one URI SAN, {expected}, and no other names in its subjectAltName"
    )]
    NoIdentity { expected: String },
    #[error(
        "the csr asks for {requested} but the token proves {expected}: request the SPIFFE ID of the pod's own namespace and service account"
    )]
    IdentityMismatch { requested: String, expected: String },
    #[error(
        "the csr also asks for {names}: workload certificates carry exactly one URI SAN, {expected}; remove the other names"
    )]
    ExtraNames { names: String, expected: String },
    #[error("identity {0:?} cannot go into a certificate: it must be an ASCII spiffe:// URI")]
    InvalidIdentity(String),
    #[error(transparent)]
    Ca(#[from] CaError),
}

impl CsrError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_csr",
            Self::BadSignature => "bad_csr_signature",
            Self::UnsupportedKey(_) => "unsupported_csr_key",
            Self::NoIdentity { .. } => "no_identity",
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::ExtraNames { .. } => "extra_names",
            Self::InvalidIdentity(_) => "invalid_identity",
            Self::Ca(e) => e.metric_label(),
        }
    }

    /// 403 for asking for someone else's identity, 400 for a bad request, 500 when the CA
    /// itself cannot sign.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::IdentityMismatch { .. } => 403,
            Self::Malformed(_)
            | Self::BadSignature
            | Self::UnsupportedKey(_)
            | Self::NoIdentity { .. }
            | Self::ExtraNames { .. } => 400,
            Self::InvalidIdentity(_) | Self::Ca(_) => 500,
        }
    }
}

/// A signed workload certificate, with what a proxy needs to serve and verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub leaf_pem: String,
    pub leaf_der: Vec<u8>,
    /// Leaf first, then the intermediates: what the proxy presents in a handshake.
    pub cert_chain_pem: Vec<String>,
    pub roots_pem: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl From<IssuedCert> for CertificateResponse {
    fn from(issued: IssuedCert) -> Self {
        CertificateResponse {
            cert_chain: issued.cert_chain_pem,
            roots: issued.roots_pem,
        }
    }
}

/// The CSR's public key, borrowed: signing needs nothing else from it.
struct RequestedKey<'a>(&'a [u8]);

impl PublicKeyData for RequestedKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// An uncompressed P-256 point: 0x04 || X (32 bytes) || Y (32 bytes).
const P256_POINT_LEN: usize = 65;

/// A workload CSR that passed [`check_workload_csr`]: its public key, the only thing of it any
/// issuer may copy into a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The uncompressed P-256 point (65 bytes) the CSR proved possession of.
    pub public_key: Vec<u8>,
}

/// The rules every workload CSR meets, whoever signs it: a PKCS#10 request self-signed
/// correctly, with a P-256 key, asking for exactly one URI SAN, `expected_spiffe_id` (the
/// identity the caller's token proved), and no other name.
pub fn check_workload_csr(csr_pem: &str, expected_spiffe_id: &str) -> Result<CheckedCsr, CsrError> {
    let der = encoding::single_block(csr_pem, TAG_CSR).map_err(CsrError::Malformed)?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| CsrError::Malformed(format!("it is not DER PKCS#10 ({e})")))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "bytes follow the request inside the PEM block".into(),
        ));
    }

    // Key type first: ring cannot verify other curves' signatures, and "bad signature"
    // would send the user looking in the wrong place.
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let point = spki.subject_public_key.data.as_ref();
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CsrError::UnsupportedKey(format!(
            "non-EC ({})",
            spki.algorithm.algorithm
        )));
    }
    if curve.as_ref() != Some(&OID_EC_P256) {
        return Err(CsrError::UnsupportedKey(match curve {
            Some(oid) => format!("EC key on curve {oid}"),
            None => "EC key without a named curve".into(),
        }));
    }
    if point.len() != P256_POINT_LEN || point[0] != 0x04 {
        return Err(CsrError::UnsupportedKey(
            "compressed or truncated P-256".into(),
        ));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    check_requested_names(&csr, expected_spiffe_id)?;
    Ok(CheckedCsr {
        public_key: point.to_vec(),
    })
}

impl MeshCa {
    /// Signs a workload CSR for `expected_spiffe_id`, the identity the caller proved (its
    /// service account token), once it passes [`check_workload_csr`]. The certificate
    /// is valid from `now` - [`super::BACKDATE`] for `ttl` (see [`super::effective_validity`]),
    /// never past the CA's own expiry.
    pub fn sign_workload_csr(
        &self,
        csr_pem: &str,
        expected_spiffe_id: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, CsrError> {
        let checked = check_workload_csr(csr_pem, expected_spiffe_id)?;
        let point = checked.public_key.as_slice();

        let (not_before, not_after) = self.leaf_validity(ttl, now)?;
        let mut params = CertificateParams::default();
        // SPIFFE X.509-SVIDs identify by SAN alone; an empty subject makes rcgen mark the SAN
        // critical, as RFC 5280 then requires.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(expected_spiffe_id.try_into().map_err(
                |_| CsrError::InvalidIdentity(expected_spiffe_id.to_string()),
            )?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let out_of_range = || {
            CsrError::Ca(CaError::InvalidLifetime {
                what: "certificate lifetime",
                requested: ttl,
            })
        };
        params.not_before = offset_date_time(not_before).ok_or_else(out_of_range)?;
        params.not_after = offset_date_time(not_after).ok_or_else(out_of_range)?;
        params.serial_number = Some(
            random_serial().ok_or_else(|| CsrError::Ca(CaError::Sign("no randomness".into())))?,
        );
        let leaf = params
            .signed_by(&RequestedKey(point), &self.issuer)
            .map_err(|e| CsrError::Ca(CaError::Sign(e.to_string())))?;

        let leaf_pem = leaf.pem();
        let mut cert_chain_pem = Vec::with_capacity(1 + self.chain_pem.len());
        cert_chain_pem.push(leaf_pem.clone());
        cert_chain_pem.extend(self.chain_pem.iter().cloned());
        Ok(IssuedCert {
            leaf_pem,
            leaf_der: leaf.der().to_vec(),
            cert_chain_pem,
            roots_pem: self.root_certs_pem(),
            not_before,
            not_after,
        })
    }
}

/// Exactly one URI SAN equal to `expected`, nothing else, across every extension request the
/// CSR carries (a request may repeat the attribute; a second one must not smuggle names in).
fn check_requested_names(
    csr: &X509CertificationRequest<'_>,
    expected: &str,
) -> Result<(), CsrError> {
    let mut uris: Vec<&str> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    for attribute in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() else {
            continue;
        };
        for extension in &request.extensions {
            if extension.oid != OID_X509_EXT_SUBJECT_ALT_NAME {
                continue;
            }
            let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() else {
                return Err(CsrError::Malformed(
                    "its subjectAltName extension cannot be parsed".into(),
                ));
            };
            for name in &san.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push(uri),
                    other => others.push(describe(other)),
                }
            }
        }
    }
    if uris.is_empty() {
        return Err(CsrError::NoIdentity {
            expected: expected.to_string(),
        });
    }
    if !uris.contains(&expected) {
        return Err(CsrError::IdentityMismatch {
            requested: uris.join(", "),
            expected: expected.to_string(),
        });
    }
    others.extend(
        uris.iter()
            .filter(|uri| **uri != expected)
            .map(|uri| format!("URI:{uri}")),
    );
    // The expected URI asked twice is still one identity, but say so rather than guess.
    if uris.iter().filter(|uri| **uri == expected).count() > 1 {
        others.push(format!("URI:{expected} a second time"));
    }
    if others.is_empty() {
        Ok(())
    } else {
        Err(CsrError::ExtraNames {
            names: others.join(", "),
            expected: expected.to_string(),
        })
    }
}

fn describe(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(dns) => format!("DNS:{dns}"),
        GeneralName::RFC822Name(email) => format!("email:{email}"),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => {
                let octets: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
                format!("IP:{}", std::net::Ipv4Addr::from(octets))
            }
            16 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(bytes);
                format!("IP:{}", std::net::Ipv6Addr::from(octets))
            }
            _ => "an IP address".to_string(),
        },
        GeneralName::URI(uri) => format!("URI:{uri}"),
        GeneralName::DirectoryName(dn) => format!("DirName:{dn}"),
        GeneralName::OtherName(oid, _) => format!("otherName:{oid}"),
        GeneralName::RegisteredID(oid) => format!("RID:{oid}"),
        GeneralName::X400Address(_) => "an X.400 address".to_string(),
        GeneralName::EDIPartyName(_) => "an EDI party name".to_string(),
        GeneralName::Invalid(..) => "an unparseable name".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::lifetime::BACKDATE;
    use crate::pki::verify::{spiffe_id_of, verify_chain};
    use crate::pki::{DEFAULT_ROOT_VALIDITY, WorkloadKey, certificates_from_pem};
    use rcgen::KeyPair;

    const ID: &str = "spiffe://cluster.local/ns/pets/sa/web";
    const HOUR: Duration = Duration::from_secs(3600);

    fn ca() -> MeshCa {
        MeshCa::generate_root("cluster.local", DEFAULT_ROOT_VALIDITY).unwrap()
    }

    /// A CSR with exactly these SANs, signed by a fresh key of `alg`.
    fn csr_with(alg: &'static rcgen::SignatureAlgorithm, sans: Vec<SanType>) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(u: &str) -> SanType {
        SanType::URI(u.try_into().unwrap())
    }

    fn ders(pem: &[String]) -> Vec<Vec<u8>> {
        pem.iter()
            .flat_map(|p| certificates_from_pem(p).unwrap())
            .collect()
    }

    #[test]
    fn issued_certificate_verifies_and_names_exactly_the_identity() {
        let ca = ca();
        let key = WorkloadKey::generate().unwrap();
        let now = SystemTime::now();
        let issued = ca
            .sign_workload_csr(&key.csr_pem(ID).unwrap(), ID, HOUR, now)
            .unwrap();
        assert_eq!(issued.cert_chain_pem, vec![issued.leaf_pem.clone()]);
        verify_chain(
            &issued.leaf_der,
            &[] as &[Vec<u8>],
            &ders(&issued.roots_pem),
            now,
        )
        .unwrap();
        assert_eq!(spiffe_id_of(&issued.leaf_der).as_deref(), Some(ID));
        assert!(key.matches_certificate(&issued.leaf_der));

        let (_, leaf) = x509_parser::parse_x509_certificate(&issued.leaf_der).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names, vec![GeneralName::URI(ID)]);
        assert!(san.critical, "empty subject: the SAN must be critical");
        assert_eq!(leaf.subject().to_string(), "");
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let usage = leaf.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature() && usage.key_encipherment() && !usage.key_cert_sign());
        assert!(!leaf.is_ca());
    }

    #[test]
    fn not_before_is_backdated_five_minutes_and_ttl_is_honoured() {
        let ca = ca();
        let key = WorkloadKey::generate().unwrap();
        let now = SystemTime::now();
        let issued = ca
            .sign_workload_csr(&key.csr_pem(ID).unwrap(), ID, Duration::from_secs(90), now)
            .unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&issued.leaf_der).unwrap();
        let now_s = crate::pki::unix_seconds(now);
        assert_eq!(
            leaf.validity().not_before.timestamp(),
            now_s - BACKDATE.as_secs() as i64
        );
        assert_eq!(leaf.validity().not_after.timestamp(), now_s + 90);
        assert_eq!(issued.not_after, crate::pki::system_time(now_s + 90));
    }

    #[test]
    fn serials_differ_between_certificates_for_one_key() {
        let ca = ca();
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_pem(ID).unwrap();
        let serial = |issued: IssuedCert| {
            let (_, leaf) = x509_parser::parse_x509_certificate(&issued.leaf_der).unwrap();
            leaf.raw_serial().to_vec()
        };
        let now = SystemTime::now();
        let a = serial(ca.sign_workload_csr(&csr, ID, HOUR, now).unwrap());
        let b = serial(ca.sign_workload_csr(&csr, ID, HOUR, now).unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn a_csr_for_another_identity_is_refused_with_403() {
        let ca = ca();
        let key = WorkloadKey::generate().unwrap();
        let other = "spiffe://cluster.local/ns/kube-system/sa/admin";
        let err = ca
            .sign_workload_csr(&key.csr_pem(other).unwrap(), ID, HOUR, SystemTime::now())
            .unwrap_err();
        assert_eq!(
            err,
            CsrError::IdentityMismatch {
                requested: other.into(),
                expected: ID.into()
            }
        );
        assert_eq!(err.status_code(), 403);
        let message = err.to_string();
        assert!(message.contains(other) && message.contains(ID), "{message}");
    }

    #[test]
    fn an_extra_dns_san_is_refused_naming_it() {
        let ca = ca();
        let csr = csr_with(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            vec![
                uri(ID),
                SanType::DnsName("evil.example.com".try_into().unwrap()),
            ],
        );
        let err = ca
            .sign_workload_csr(&csr, ID, HOUR, SystemTime::now())
            .unwrap_err();
        assert_eq!(
            err,
            CsrError::ExtraNames {
                names: "DNS:evil.example.com".into(),
                expected: ID.into()
            }
        );
        assert_eq!(err.status_code(), 400);
        assert!(err.to_string().contains("remove the other names"));
    }

    #[test]
    fn extra_ip_email_or_uri_sans_are_refused_too() {
        let ca = ca();
        let now = SystemTime::now();
        let cases = [
            (
                vec![uri(ID), SanType::IpAddress([198, 18, 1, 77].into())],
                "IP:198.18.1.77",
            ),
            (
                vec![uri(ID), SanType::Rfc822Name("a@b.c".try_into().unwrap())],
                "email:a@b.c",
            ),
            (vec![uri(ID), uri("spiffe://x/y")], "URI:spiffe://x/y"),
            (vec![uri(ID), uri(ID)], "a second time"),
        ];
        for (sans, named) in cases {
            let csr = csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, sans);
            match ca.sign_workload_csr(&csr, ID, HOUR, now) {
                Err(CsrError::ExtraNames { names, .. }) => {
                    assert!(names.contains(named), "{names}")
                }
                other => panic!("expected ExtraNames naming {named}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_csr_without_identity_is_refused() {
        let ca = ca();
        let csr = csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, vec![]);
        assert_eq!(
            ca.sign_workload_csr(&csr, ID, HOUR, SystemTime::now()),
            Err(CsrError::NoIdentity {
                expected: ID.into()
            })
        );
        let dns_only = csr_with(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            vec![SanType::DnsName("web.pets.svc".try_into().unwrap())],
        );
        assert_eq!(
            ca.sign_workload_csr(&dns_only, ID, HOUR, SystemTime::now()),
            Err(CsrError::NoIdentity {
                expected: ID.into()
            })
        );
    }

    #[test]
    fn a_tampered_csr_signature_is_refused() {
        let ca = ca();
        let key = WorkloadKey::generate().unwrap();
        let pem = key.csr_pem(ID).unwrap();
        let mut der = certificates_pem_block(&pem);
        let last = der.len() - 1;
        der[last] ^= 0x01; // the last byte belongs to the signature
        let tampered = encoding::to_pem(TAG_CSR, &der);
        assert_eq!(
            ca.sign_workload_csr(&tampered, ID, HOUR, SystemTime::now()),
            Err(CsrError::BadSignature)
        );
    }

    #[test]
    fn a_csr_whose_identity_was_swapped_after_signing_is_refused() {
        // Same length identity, so only the signature can tell.
        let ca = ca();
        let key = WorkloadKey::generate().unwrap();
        let evil = "spiffe://cluster.local/ns/pets/sa/wbb";
        let pem = key.csr_pem(evil).unwrap();
        let der = certificates_pem_block(&pem);
        let position = der
            .windows(evil.len())
            .position(|w| w == evil.as_bytes())
            .unwrap();
        let mut swapped = der.clone();
        swapped[position..position + ID.len()].copy_from_slice(ID.as_bytes());
        let swapped = encoding::to_pem(TAG_CSR, &swapped);
        assert_eq!(
            ca.sign_workload_csr(&swapped, ID, HOUR, SystemTime::now()),
            Err(CsrError::BadSignature)
        );
    }

    #[test]
    fn only_p256_keys_are_accepted() {
        let ca = ca();
        let now = SystemTime::now();
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let csr = csr_with(alg, vec![uri(ID)]);
            let err = ca.sign_workload_csr(&csr, ID, HOUR, now).unwrap_err();
            assert!(matches!(err, CsrError::UnsupportedKey(_)), "{err:?}");
            assert!(err.to_string().contains("P-256"));
        }
    }

    #[test]
    fn garbage_never_panics_and_is_malformed() {
        let ca = ca();
        let now = SystemTime::now();
        for input in [
            "".to_string(),
            "hello".to_string(),
            encoding::to_pem(TAG_CSR, b""),
            encoding::to_pem(TAG_CSR, b"\x30\x03\x02\x01\x00"),
            encoding::to_pem("CERTIFICATE", b"\x30\x00"),
            encoding::to_pem(TAG_CSR, &[0xff; 300]),
        ] {
            assert!(
                matches!(
                    ca.sign_workload_csr(&input, ID, HOUR, now),
                    Err(CsrError::Malformed(_))
                ),
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_zero_ttl_is_a_ca_error_not_a_certificate() {
        let ca = ca();
        let key = WorkloadKey::generate().unwrap();
        let err = ca
            .sign_workload_csr(
                &key.csr_pem(ID).unwrap(),
                ID,
                Duration::ZERO,
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(matches!(err, CsrError::Ca(CaError::InvalidLifetime { .. })));
        assert_eq!(err.status_code(), 500);
    }

    #[test]
    fn issued_cert_becomes_the_wire_response() {
        let ca = ca();
        let key = WorkloadKey::generate().unwrap();
        let issued = ca
            .sign_workload_csr(&key.csr_pem(ID).unwrap(), ID, HOUR, SystemTime::now())
            .unwrap();
        let response = CertificateResponse::from(issued.clone());
        assert_eq!(response.cert_chain, issued.cert_chain_pem);
        assert_eq!(response.roots, vec![ca.roots_pem()]);
    }

    fn certificates_pem_block(pem: &str) -> Vec<u8> {
        encoding::single_block(pem, TAG_CSR).unwrap()
    }
}
