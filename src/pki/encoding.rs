//! PEM and DER plumbing: reading certificate bundles, one CSR block, and the private key
//! formats users actually bring (PKCS#8, and the PKCS#1 / SEC1 files older OpenSSL and Istio's
//! `tools/certs` write), normalised to PKCS#8 because that is what ring signs with.

use pem::{EncodeConfig, LineEnding, Pem};

pub(crate) const TAG_CERTIFICATE: &str = "CERTIFICATE";
pub(crate) const TAG_CSR: &str = "CERTIFICATE REQUEST";
const TAG_PKCS8: &str = "PRIVATE KEY";
const TAG_PKCS1: &str = "RSA PRIVATE KEY";
const TAG_SEC1: &str = "EC PRIVATE KEY";
const TAG_ENCRYPTED: &str = "ENCRYPTED PRIVATE KEY";
/// `openssl ecparam -genkey` writes this block before the key; it carries nothing we need.
const TAG_EC_PARAMETERS: &str = "EC PARAMETERS";

/// Why text that should hold PEM certificates does not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error(
        "it is not valid PEM ({0}): paste the file as written, with its -----BEGIN/END----- lines"
    )]
    Syntax(String),
    #[error("it holds a {found:?} block where only CERTIFICATE blocks belong: remove that block")]
    UnexpectedBlock { found: String },
    #[error("it holds no -----BEGIN CERTIFICATE----- block: put the PEM certificate(s) there")]
    Empty,
}

impl PemError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Syntax(_) => "pem_syntax",
            Self::UnexpectedBlock { .. } => "pem_unexpected_block",
            Self::Empty => "pem_empty",
        }
    }
}

/// The DER of every certificate in a PEM bundle (a root bundle, a chain), in order.
/// Text between blocks is allowed, as `openssl x509 -text` output has it.
pub fn certificates_from_pem(input: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let blocks = pem::parse_many(input).map_err(|e| PemError::Syntax(e.to_string()))?;
    let mut certificates = Vec::with_capacity(blocks.len());
    for block in blocks {
        if block.tag() != TAG_CERTIFICATE {
            return Err(PemError::UnexpectedBlock {
                found: block.tag().to_string(),
            });
        }
        certificates.push(block.into_contents());
    }
    if certificates.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(certificates)
}

/// The contents of `text` if it is exactly one PEM block with this tag and nothing else:
/// a request body is checked strictly, since anything around the block is a client bug.
pub(crate) fn single_block(text: &str, tag: &str) -> Result<Vec<u8>, String> {
    let trimmed = text.trim();
    if !trimmed.starts_with(&format!("-----BEGIN {tag}-----")) {
        return Err(format!("it must start with -----BEGIN {tag}-----"));
    }
    if !trimmed.ends_with(&format!("-----END {tag}-----")) {
        return Err(format!("it must end with -----END {tag}-----"));
    }
    let blocks = pem::parse_many(trimmed).map_err(|e| format!("it is not valid PEM ({e})"))?;
    match blocks.as_slice() {
        [block] if block.tag() == tag && !block.contents().is_empty() => {
            Ok(block.contents().to_vec())
        }
        [block] if block.tag() == tag => Err("its PEM block is empty".to_string()),
        blocks => Err(format!(
            "it must hold exactly one {tag} block, found {}",
            blocks.len()
        )),
    }
}

/// PEM text with Unix line endings, as Kubernetes Secrets and ConfigMaps usually carry it.
pub(crate) fn to_pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &Pem::new(tag, der),
        EncodeConfig::new().set_line_ending(LineEnding::LF),
    )
}

/// One certificate's DER as PEM.
pub fn pem_of_certificate(der: &[u8]) -> String {
    to_pem("CERTIFICATE", der)
}

/// Why a private key file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("it is not valid PEM ({0})")]
    Syntax(String),
    #[error("it holds no private key block (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    Missing,
    #[error("it holds {0} private keys; keep only the key of the CA certificate")]
    Several(usize),
    #[error(
        "the key is encrypted; weft needs it unencrypted: convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY`"
    )]
    Encrypted,
    #[error("the EC PRIVATE KEY is not a SEC1 structure or uses a curve other than P-256/P-384")]
    BadSec1,
}

/// The single private key in `text` as PKCS#8 DER.
pub(crate) fn private_key_pkcs8(text: &str) -> Result<Vec<u8>, KeyFormatError> {
    let blocks = pem::parse_many(text).map_err(|e| KeyFormatError::Syntax(e.to_string()))?;
    let keys: Vec<&Pem> = blocks
        .iter()
        .filter(|b| b.tag() != TAG_EC_PARAMETERS)
        .collect();
    if keys.iter().any(|b| b.tag() == TAG_ENCRYPTED) {
        return Err(KeyFormatError::Encrypted);
    }
    let keys: Vec<&Pem> = keys
        .into_iter()
        .filter(|b| [TAG_PKCS8, TAG_PKCS1, TAG_SEC1].contains(&b.tag()))
        .collect();
    let key = match keys.as_slice() {
        [] => return Err(KeyFormatError::Missing),
        [key] => key,
        several => return Err(KeyFormatError::Several(several.len())),
    };
    match key.tag() {
        TAG_PKCS1 => Ok(pkcs8_wrap(&RSA_ALGORITHM_ID, key.contents())),
        TAG_SEC1 => {
            let curve = sec1_curve(key.contents()).ok_or(KeyFormatError::BadSec1)?;
            let mut algorithm = tlv(TAG_OID, OID_EC_PUBLIC_KEY);
            algorithm.extend(tlv(TAG_OID, curve));
            Ok(pkcs8_wrap(&tlv(TAG_SEQUENCE, &algorithm), key.contents()))
        }
        _ => Ok(key.contents().to_vec()),
    }
}

// === A minimal DER reader/writer, just enough to wrap a key into PKCS#8 ===

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_CONTEXT_0: u8 = 0xa0;
/// AlgorithmIdentifier { rsaEncryption, NULL }.
const RSA_ALGORITHM_ID: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// 1.2.840.10045.2.1 id-ecPublicKey.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.2.840.10045.3.1.7 prime256v1.
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// 1.3.132.0.34 secp384r1.
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// PrivateKeyInfo { version 0, algorithm, privateKey OCTET STRING }.
fn pkcs8_wrap(algorithm_id: &[u8], private_key: &[u8]) -> Vec<u8> {
    let mut body = tlv(TAG_INTEGER, &[0]);
    body.extend_from_slice(algorithm_id);
    body.extend(tlv(TAG_OCTET_STRING, private_key));
    tlv(TAG_SEQUENCE, &body)
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Splits one TLV off `input`: (tag, content, rest). `None` on anything malformed.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(count);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// The curve OID of a SEC1 ECPrivateKey: from its `[0] parameters` when present, else from the
/// private key's length (SEC1 allows leaving the parameters out).
fn sec1_curve(der: &[u8]) -> Option<&'static [u8]> {
    let (tag, body, _) = read_tlv(der)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (tag, version, rest) = read_tlv(body)?;
    if tag != TAG_INTEGER || version != [1] {
        return None;
    }
    let (tag, private_key, rest) = read_tlv(rest)?;
    if tag != TAG_OCTET_STRING {
        return None;
    }
    if let Some((TAG_CONTEXT_0, parameters, _)) = read_tlv(rest) {
        let (tag, oid, _) = read_tlv(parameters)?;
        return match (tag, oid) {
            (TAG_OID, oid) if oid == OID_P256 => Some(OID_P256),
            (TAG_OID, oid) if oid == OID_P384 => Some(OID_P384),
            _ => None,
        };
    }
    match private_key.len() {
        32 => Some(OID_P256),
        48 => Some(OID_P384),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTIO_ROOT: &str = include_str!("testdata/istio-rsa/root-cert.pem");
    const ISTIO_CHAIN: &str = include_str!("testdata/istio-rsa/cert-chain.pem");
    const ISTIO_KEY_PKCS1: &str = include_str!("testdata/istio-rsa/ca-key.pem");
    const EC_KEY_SEC1: &str = include_str!("testdata/ec-sec1/ca-key.pem");

    #[test]
    fn a_bundle_yields_every_certificate_in_order() {
        let chain = certificates_from_pem(ISTIO_CHAIN).unwrap();
        let root = certificates_from_pem(ISTIO_ROOT).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], root[0]);
    }

    #[test]
    fn a_bundle_with_a_key_or_nothing_is_refused() {
        assert_eq!(
            certificates_from_pem(&format!("{ISTIO_ROOT}{ISTIO_KEY_PKCS1}")),
            Err(PemError::UnexpectedBlock {
                found: "RSA PRIVATE KEY".into()
            })
        );
        assert_eq!(
            certificates_from_pem("no pem here"),
            Err(PemError::Empty),
            "text without blocks is empty, not a syntax error"
        );
    }

    #[test]
    fn single_block_refuses_junk_around_or_a_second_block() {
        let csr = to_pem(TAG_CSR, b"\x30\x00");
        assert_eq!(single_block(&csr, TAG_CSR).unwrap(), b"\x30\x00");
        assert!(single_block(&format!("junk{csr}"), TAG_CSR).is_err());
        assert!(single_block(&format!("{csr}{csr}"), TAG_CSR).is_err());
        assert!(single_block(ISTIO_ROOT, TAG_CSR).is_err());
    }

    #[test]
    fn pkcs1_and_sec1_keys_become_pkcs8_that_ring_accepts() {
        let rsa = private_key_pkcs8(ISTIO_KEY_PKCS1).unwrap();
        let rsa = rcgen::KeyPair::try_from(rsa.as_slice()).unwrap();
        assert_eq!(rsa.algorithm(), &rcgen::PKCS_RSA_SHA256);

        let ec = private_key_pkcs8(EC_KEY_SEC1).unwrap();
        let ec = rcgen::KeyPair::try_from(ec.as_slice()).unwrap();
        assert_eq!(ec.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn pkcs8_passes_through_and_ec_parameters_are_ignored() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
        let pkcs8 = private_key_pkcs8(&format!("{params}{}", key.serialize_pem())).unwrap();
        assert_eq!(pkcs8, key.serialize_der());
    }

    #[test]
    fn encrypted_missing_or_doubled_keys_are_refused_with_the_reason() {
        let encrypted = to_pem(TAG_ENCRYPTED, b"\x30\x00");
        assert_eq!(
            private_key_pkcs8(&encrypted),
            Err(KeyFormatError::Encrypted)
        );
        assert_eq!(private_key_pkcs8(ISTIO_ROOT), Err(KeyFormatError::Missing));
        assert_eq!(
            private_key_pkcs8(&format!("{EC_KEY_SEC1}{EC_KEY_SEC1}")),
            Err(KeyFormatError::Several(2))
        );
    }

    #[test]
    fn der_lengths_use_the_long_form_above_127_bytes() {
        let long = tlv(TAG_OCTET_STRING, &[7u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, content, rest) = read_tlv(&long).unwrap();
        assert_eq!((tag, content.len(), rest.len()), (TAG_OCTET_STRING, 300, 0));
        assert!(
            read_tlv(&long[..10]).is_none(),
            "a truncated TLV is refused"
        );
    }
}
