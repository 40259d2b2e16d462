//! The proxy's side of identity: an ECDSA P-256 key made in the pod (it never leaves it) and
//! the CSR that asks the mesh CA to certify it for the pod's SPIFFE ID.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

/// Why a key or CSR could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadKeyError {
    #[error("could not generate a P-256 key: {0}")]
    Generate(String),
    #[error(
        "SPIFFE ID {0:?} is invalid: it must be an ASCII URI of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
    )]
    InvalidSpiffeId(String),
    #[error("could not write the CSR: {0}")]
    Csr(String),
}

impl WorkloadKeyError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Generate(_) => "key_generation_failed",
            Self::InvalidSpiffeId(_) => "invalid_spiffe_id",
            Self::Csr(_) => "csr_failed",
        }
    }
}

/// A workload's private key. `Debug` never prints it.
pub struct WorkloadKey {
    key: KeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadKey").finish_non_exhaustive()
    }
}

impl WorkloadKey {
    pub fn generate() -> Result<Self, WorkloadKeyError> {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|key| WorkloadKey { key })
            .map_err(|e| WorkloadKeyError::Generate(e.to_string()))
    }

    /// A PEM CSR asking for `spiffe_id` as its only name (URI SAN, empty subject): exactly
    /// what the CA accepts, so nothing in it can be refused but the identity itself.
    pub fn csr_pem(&self, spiffe_id: &str) -> Result<String, WorkloadKeyError> {
        let invalid = || WorkloadKeyError::InvalidSpiffeId(spiffe_id.to_string());
        if !spiffe_id.starts_with("spiffe://") || spiffe_id.len() <= "spiffe://".len() {
            return Err(invalid());
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().map_err(|_| invalid())?)];
        params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(|e| WorkloadKeyError::Csr(e.to_string()))
    }

    /// The private key as PKCS#8 DER, the form rustls loads.
    pub fn private_key_der(&self) -> &[u8] {
        self.key.serialized_der()
    }

    /// The private key as PKCS#8 PEM (for `/certs`-style dumps the admin port must redact).
    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Whether the certificate certifies this key: a proxy checks it before it serves a
    /// certificate the CA returned.
    pub fn matches_certificate(&self, cert_der: &[u8]) -> bool {
        x509_parser::parse_x509_certificate(cert_der).is_ok_and(|(_, cert)| {
            cert.public_key().subject_public_key.data.as_ref() == self.key.public_key_raw()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    const ID: &str = "spiffe://cluster.local/ns/pets/sa/web";

    #[test]
    fn csr_asks_for_the_spiffe_id_alone_with_a_p256_key() {
        let key = WorkloadKey::generate().unwrap();
        let pem = key.csr_pem(ID).unwrap();
        let der = crate::pki::encoding::single_block(&pem, "CERTIFICATE REQUEST").unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        assert_eq!(csr.certification_request_info.subject.to_string(), "");
        let sans: Vec<_> = csr
            .requested_extensions()
            .unwrap()
            .filter_map(|ext| match ext {
                ParsedExtension::SubjectAlternativeName(san) => Some(san.general_names.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(sans, vec![GeneralName::URI(ID)]);
        assert_eq!(
            csr.certification_request_info
                .subject_pki
                .subject_public_key
                .data
                .as_ref(),
            key.key.public_key_raw()
        );
    }

    #[test]
    fn two_keys_are_different_and_debug_hides_them() {
        let a = WorkloadKey::generate().unwrap();
        let b = WorkloadKey::generate().unwrap();
        assert_ne!(a.private_key_der(), b.private_key_der());
        assert_eq!(format!("{a:?}"), "WorkloadKey { .. }");
        assert!(
            a.private_key_pem()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
    }

    #[test]
    fn a_non_spiffe_identity_is_refused() {
        let key = WorkloadKey::generate().unwrap();
        for bad in [
            "",
            "spiffe://",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://clüster/ns/a/sa/b",
        ] {
            assert_eq!(
                key.csr_pem(bad),
                Err(WorkloadKeyError::InvalidSpiffeId(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn matches_certificate_tells_own_key_from_another() {
        let key = WorkloadKey::generate().unwrap();
        let own = CertificateParams::default().self_signed(&key.key).unwrap();
        let other_key = KeyPair::generate().unwrap();
        let other = CertificateParams::default()
            .self_signed(&other_key)
            .unwrap();
        assert!(key.matches_certificate(own.der()));
        assert!(!key.matches_certificate(other.der()));
        assert!(!key.matches_certificate(b"garbage"));
    }
}
