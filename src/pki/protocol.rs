//! Wire format of the CSR endpoint, `POST :15012/v1/certificates` (SPEC §7), shared by the
//! operator (server) and the proxy (client) so the two cannot drift. The decoder reads bytes
//! from any pod in the cluster: it caps the size, refuses unknown fields and never panics.

use serde::{Deserialize, Serialize};

use super::encoding::{self, TAG_CSR};

/// Largest request body the endpoint reads. A P-256 CSR is under 1 KiB; the cap leaves room
/// for any sane client while keeping a flood of large bodies cheap to refuse.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// `{"csr": "<PEM>", "validitySeconds": N}`; `validitySeconds` is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    pub csr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_seconds: Option<u64>,
}

/// `{"certChain": ["<leaf PEM>", ...], "roots": ["<PEM>", ...]}`. Unknown fields are
/// tolerated when the proxy reads it, so a newer operator can add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    pub cert_chain: Vec<String>,
    pub roots: Vec<String>,
}

/// `{"error": "..."}`, the body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}

impl ErrorResponse {
    pub fn new(error: impl std::fmt::Display) -> Self {
        ErrorResponse {
            error: error.to_string(),
        }
    }
}

/// Why a request body was refused before any cryptography ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request body is empty: send JSON {{\"csr\": \"<PEM>\", \"validitySeconds\": N}}")]
    Empty,
    #[error(
        "the request body is {size} bytes, over the limit of {MAX_REQUEST_BYTES}: send one CSR"
    )]
    TooLarge { size: usize },
    #[error(
        "the request body is not the expected JSON ({0}): send {{\"csr\": \"<PEM>\", \"validitySeconds\": N}} with no other fields"
    )]
    Json(String),
    #[error("the csr field is not a PEM certificate request: {0}")]
    NotACsr(String),
}

impl RequestError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Empty => "empty_body",
            Self::TooLarge { .. } => "body_too_large",
            Self::Json(_) => "bad_json",
            Self::NotACsr(_) => "not_a_csr",
        }
    }

    /// 413 for an oversized body, 400 for everything else.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 413,
            Self::Empty | Self::Json(_) | Self::NotACsr(_) => 400,
        }
    }
}

/// Decodes and shape-checks a request body. The CSR's content (signature, names, key) is
/// judged later by [`super::MeshCa::sign_workload_csr`].
pub fn decode_certificate_request(body: &[u8]) -> Result<CertificateRequest, RequestError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge { size: body.len() });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::Empty);
    }
    let request: CertificateRequest =
        serde_json::from_slice(body).map_err(|e| RequestError::Json(e.to_string()))?;
    encoding::single_block(&request.csr, TAG_CSR).map_err(RequestError::NotACsr)?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::WorkloadKey;

    fn csr() -> String {
        WorkloadKey::generate()
            .unwrap()
            .csr_pem("spiffe://cluster.local/ns/a/sa/b")
            .unwrap()
    }

    #[test]
    fn a_request_decodes_with_and_without_validity() {
        let csr = csr();
        let body = serde_json::json!({"csr": csr, "validitySeconds": 120}).to_string();
        assert_eq!(
            decode_certificate_request(body.as_bytes()),
            Ok(CertificateRequest {
                csr: csr.clone(),
                validity_seconds: Some(120)
            })
        );
        let body = serde_json::json!({"csr": csr}).to_string();
        assert_eq!(
            decode_certificate_request(body.as_bytes())
                .unwrap()
                .validity_seconds,
            None
        );
    }

    #[test]
    fn the_wire_names_are_camel_case_as_the_spec_says() {
        let request = CertificateRequest {
            csr: "x".into(),
            validity_seconds: Some(60),
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            serde_json::json!({"csr": "x", "validitySeconds": 60})
        );
        let response = CertificateResponse {
            cert_chain: vec!["leaf".into(), "intermediate".into()],
            roots: vec!["root".into()],
        };
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            serde_json::json!({"certChain": ["leaf", "intermediate"], "roots": ["root"]})
        );
        assert_eq!(
            serde_json::to_value(ErrorResponse::new("no")).unwrap(),
            serde_json::json!({"error": "no"})
        );
    }

    #[test]
    fn an_oversized_body_is_413_before_parsing() {
        let body = vec![b' '; MAX_REQUEST_BYTES + 1];
        let err = decode_certificate_request(&body).unwrap_err();
        assert_eq!(
            err,
            RequestError::TooLarge {
                size: MAX_REQUEST_BYTES + 1
            }
        );
        assert_eq!(err.status_code(), 413);
    }

    #[test]
    fn unknown_fields_are_refused_naming_them() {
        let body =
            serde_json::json!({"csr": csr(), "spiffeId": "spiffe://x/ns/kube-system/sa/admin"})
                .to_string();
        let err = decode_certificate_request(body.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, RequestError::Json(m) if m.contains("spiffeId")),
            "{err}"
        );
        assert_eq!(err.status_code(), 400);
    }

    #[test]
    fn garbage_bodies_are_400_and_never_panic() {
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"  \n".to_vec(),
            b"not json".to_vec(),
            b"{}".to_vec(),
            b"[]".to_vec(),
            b"null".to_vec(),
            br#"{"csr": 5}"#.to_vec(),
            br#"{"csr": "x", "validitySeconds": -1}"#.to_vec(),
            br#"{"csr": "x", "validitySeconds": 1e99}"#.to_vec(),
            br#"{"csr": "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----"}"#.to_vec(),
            vec![0xff, 0xfe, 0x00, 0x7b],
            b"{\"csr\": \"".repeat(1000),
        ];
        for body in cases {
            let err = decode_certificate_request(&body).unwrap_err();
            assert_eq!(err.status_code(), 400, "{body:?}: {err}");
        }
    }

    #[test]
    fn a_csr_field_with_two_requests_or_junk_is_refused() {
        let one = csr();
        for csr in [
            format!("{one}{one}"),
            format!("junk\n{one}"),
            "".to_string(),
        ] {
            let body = serde_json::json!({ "csr": csr }).to_string();
            assert!(matches!(
                decode_certificate_request(body.as_bytes()),
                Err(RequestError::NotACsr(_))
            ));
        }
    }
}
