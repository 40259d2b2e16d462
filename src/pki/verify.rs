//! Certificate chain verification and SPIFFE identity extraction. The CA runs it on itself
//! at load (so a broken plug-in chain is caught before any proxy sees it), tests run it on
//! every certificate they issue, and `weft check` / the proxy use it for diagnostics.
//! Names are matched byte for byte, as rustls-webpki matches them, so a chain that passes here
//! also builds there.

use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::unix_seconds;

/// Longest issuer path we follow (leaf excluded); real meshes use one or two intermediates.
pub(crate) const MAX_CHAIN_DEPTH: usize = 8;

/// Why a certificate does not chain to the given roots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "the {role} certificate cannot be parsed ({reason}): it must be a DER X.509 certificate"
    )]
    Malformed { role: &'static str, reason: String },
    #[error(
        "certificate '{subject}' is not valid before {not_before}: check the clocks of the machines involved, or wait"
    )]
    NotYetValid { subject: String, not_before: String },
    #[error("certificate '{subject}' expired at {not_after}: replace it with a renewed one")]
    Expired { subject: String, not_after: String },
    #[error(
        "nothing given issued certificate '{subject}' (its issuer is '{issuer}'): add that issuer to the chain, or trust its root"
    )]
    UnknownIssuer { subject: String, issuer: String },
    #[error(
        "certificate '{subject}' names '{issuer}' as issuer but its signature does not verify with that certificate's key: the chain mixes certificates of different CAs (was a CA regenerated?)"
    )]
    BadSignature { subject: String, issuer: String },
    #[error(
        "certificate '{subject}' issued another certificate but is not a CA: an issuer needs basicConstraints CA:TRUE and, if it has keyUsage, keyCertSign"
    )]
    NotACa { subject: String },
    #[error("the chain is longer than {MAX_CHAIN_DEPTH} certificates: serve a shorter chain")]
    TooLong,
}

impl VerifyError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed_certificate",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::Expired { .. } => "expired",
            Self::UnknownIssuer { .. } => "unknown_issuer",
            Self::BadSignature { .. } => "bad_signature",
            Self::NotACa { .. } => "issuer_not_ca",
            Self::TooLong { .. } => "chain_too_long",
        }
    }
}

/// Checks that `leaf_der` chains through some of `intermediates_der` to one of `roots_der`,
/// every signature verifies, every issuer is a CA, and every certificate on the path
/// (the root included) is valid at `at`. Extensions such as EKU are left to the TLS layer.
pub fn verify_chain<I: AsRef<[u8]>, R: AsRef<[u8]>>(
    leaf_der: &[u8],
    intermediates_der: &[I],
    roots_der: &[R],
    at: SystemTime,
) -> Result<(), VerifyError> {
    let leaf = parse(leaf_der, "leaf")?;
    let intermediates = intermediates_der
        .iter()
        .map(|der| parse(der.as_ref(), "intermediate"))
        .collect::<Result<Vec<_>, _>>()?;
    let roots = roots_der
        .iter()
        .map(|der| parse(der.as_ref(), "root"))
        .collect::<Result<Vec<_>, _>>()?;
    build_path(&leaf, &intermediates, &roots, unix_seconds(at)).map(|_| ())
}

/// The SPIFFE ID of a certificate: its URI SAN, when there is exactly one and it is a
/// `spiffe://` URI (the SPIFFE X.509-SVID rule); `None` otherwise.
pub fn spiffe_id_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(uri), None) if uri.starts_with("spiffe://") => Some(uri.to_string()),
        _ => None,
    }
}

pub(crate) fn parse<'a>(
    der: &'a [u8],
    role: &'static str,
) -> Result<X509Certificate<'a>, VerifyError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| VerifyError::Malformed {
            role,
            reason: e.to_string(),
        })
}

/// The issuer path found by [`build_path`]: indexes into the intermediates, leaf side first,
/// and the index of the root that anchors it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Path {
    pub intermediates: Vec<usize>,
    pub root: usize,
}

pub(crate) fn build_path(
    leaf: &X509Certificate<'_>,
    intermediates: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
    at: i64,
) -> Result<Path, VerifyError> {
    check_validity(leaf, at)?;
    let mut path: Vec<usize> = Vec::new();
    let mut current = leaf;
    loop {
        let mut name_matched = false;
        for (index, root) in roots.iter().enumerate() {
            match issued_by(current, root) {
                Issued::Yes => {
                    check_can_issue(root)?;
                    check_validity(root, at)?;
                    return Ok(Path {
                        intermediates: path,
                        root: index,
                    });
                }
                Issued::NameOnly => name_matched = true,
                Issued::No => {}
            }
        }
        if path.len() >= MAX_CHAIN_DEPTH {
            return Err(VerifyError::TooLong);
        }
        let mut next = None;
        for (index, candidate) in intermediates.iter().enumerate() {
            if path.contains(&index) {
                continue;
            }
            match issued_by(current, candidate) {
                Issued::Yes => {
                    next = Some(index);
                    break;
                }
                Issued::NameOnly => name_matched = true,
                Issued::No => {}
            }
        }
        let Some(index) = next else {
            let subject = current.subject().to_string();
            let issuer = current.issuer().to_string();
            return Err(if name_matched {
                VerifyError::BadSignature { subject, issuer }
            } else {
                VerifyError::UnknownIssuer { subject, issuer }
            });
        };
        let issuer = &intermediates[index];
        check_can_issue(issuer)?;
        check_validity(issuer, at)?;
        path.push(index);
        current = issuer;
    }
}

enum Issued {
    Yes,
    /// The names match but the signature does not: worth a sharper error than "unknown".
    NameOnly,
    No,
}

fn issued_by(child: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Issued {
    if child.issuer().as_raw() != issuer.subject().as_raw() {
        return Issued::No;
    }
    match child.verify_signature(Some(issuer.public_key())) {
        Ok(()) => Issued::Yes,
        Err(_) => Issued::NameOnly,
    }
}

pub(crate) fn check_can_issue(cert: &X509Certificate<'_>) -> Result<(), VerifyError> {
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let may_sign = match cert.key_usage() {
        Ok(Some(usage)) => usage.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    if is_ca && may_sign {
        Ok(())
    } else {
        Err(VerifyError::NotACa {
            subject: cert.subject().to_string(),
        })
    }
}

pub(crate) fn check_validity(cert: &X509Certificate<'_>, at: i64) -> Result<(), VerifyError> {
    let validity = cert.validity();
    if at < validity.not_before.timestamp() {
        return Err(VerifyError::NotYetValid {
            subject: cert.subject().to_string(),
            not_before: validity.not_before.to_string(),
        });
    }
    if at > validity.not_after.timestamp() {
        return Err(VerifyError::Expired {
            subject: cert.subject().to_string(),
            not_after: validity.not_after.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };

    use super::*;

    struct TestCa {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str, parent: Option<&TestCa>, valid_days: i64) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(valid_days);
        let cert = match parent {
            Some(parent) => params.signed_by(&key, &parent.issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        TestCa {
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(parent: &TestCa, uris: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::hours(1);
        params
            .signed_by(&key, &parent.issuer)
            .unwrap()
            .der()
            .to_vec()
    }

    const NO_INTERMEDIATES: &[Vec<u8>] = &[];

    #[test]
    fn a_leaf_chains_through_an_intermediate_to_its_root() {
        let root = ca("root", None, 30);
        let intermediate = ca("intermediate", Some(&root), 30);
        let leaf = leaf(&intermediate, &["spiffe://cluster.local/ns/a/sa/b"]);
        let now = SystemTime::now();
        verify_chain(&leaf, &[&intermediate.der], &[&root.der], now).unwrap();
        assert!(matches!(
            verify_chain(&leaf, NO_INTERMEDIATES, &[&root.der], now),
            Err(VerifyError::UnknownIssuer { issuer, .. }) if issuer == "CN=intermediate"
        ));
    }

    #[test]
    fn another_root_with_the_same_name_is_a_bad_signature() {
        let root = ca("root", None, 30);
        let impostor = ca("root", None, 30);
        let leaf = leaf(&root, &[]);
        assert!(matches!(
            verify_chain(&leaf, NO_INTERMEDIATES, &[&impostor.der], SystemTime::now()),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn validity_is_checked_on_every_link_including_the_root() {
        let root = ca("root", None, 30);
        let leaf = leaf(&root, &[]);
        let later = SystemTime::now() + Duration::from_secs(2 * 3600);
        assert!(matches!(
            verify_chain(&leaf, NO_INTERMEDIATES, &[&root.der], later),
            Err(VerifyError::Expired { subject, .. }) if subject.is_empty()
        ));
        let young = ca("young root", None, 30);
        let leaf = self::leaf(&young, &[]);
        let much_later = SystemTime::now() + Duration::from_secs(31 * 86_400);
        let err = build_path(
            &parse(&leaf, "leaf").unwrap(),
            &[],
            &[parse(&young.der, "root").unwrap()],
            unix_seconds(much_later),
        );
        assert!(matches!(err, Err(VerifyError::Expired { .. })));
        let earlier = SystemTime::now() - Duration::from_secs(3 * 86_400);
        assert!(matches!(
            verify_chain(&leaf, NO_INTERMEDIATES, &[&young.der], earlier),
            Err(VerifyError::NotYetValid { .. })
        ));
    }

    #[test]
    fn a_leaf_cannot_act_as_an_intermediate() {
        let root = ca("root", None, 30);
        let not_a_ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "leafy");
        let not_a_ca = params.signed_by(&not_a_ca_key, &root.issuer).unwrap();
        let fake = TestCa {
            der: not_a_ca.der().to_vec(),
            issuer: Issuer::new(params, not_a_ca_key),
        };
        let leaf = leaf(&fake, &[]);
        assert!(matches!(
            verify_chain(&leaf, &[&fake.der], &[&root.der], SystemTime::now()),
            Err(VerifyError::NotACa { subject }) if subject == "CN=leafy"
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let root = ca("root", None, 30);
        assert!(matches!(
            verify_chain(
                b"garbage",
                NO_INTERMEDIATES,
                &[&root.der],
                SystemTime::now()
            ),
            Err(VerifyError::Malformed { role: "leaf", .. })
        ));
        assert_eq!(spiffe_id_of(b"\x30\x03\x02\x01\x00"), None);
    }

    #[test]
    fn spiffe_id_is_the_single_spiffe_uri_san() {
        let root = ca("root", None, 30);
        let id = "spiffe://cluster.local/ns/pets/sa/web";
        assert_eq!(spiffe_id_of(&leaf(&root, &[id])).as_deref(), Some(id));
        assert_eq!(spiffe_id_of(&leaf(&root, &[id, id])), None, "two URIs");
        assert_eq!(spiffe_id_of(&leaf(&root, &["https://x"])), None);
        assert_eq!(spiffe_id_of(&leaf(&root, &[])), None);
    }
}
