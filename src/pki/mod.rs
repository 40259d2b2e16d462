//! The mesh PKI (SPEC §7): the CA that signs workload and webhook certificates (operator
//! side), the workload key, CSR and renewal schedule (proxy side), the CSR endpoint's wire
//! format, chain verification, and the issuer seam (builtin CA, Vault or cert-manager sign the CSRs). Kube-free
//! so that both binaries link it and every rule is a unit test; the Kubernetes glue (Secrets,
//! ConfigMaps, TokenReview) lives elsewhere.

mod ca;
// cert-manager's CertificateRequests are base64 JSON, read with the control plane's base64.
#[cfg(feature = "control-plane")]
mod cert_manager;
mod encoding;
mod issue;
mod issuer;
mod lifetime;
mod protocol;
pub mod rotation;
// The Vault client speaks HTTP through the control plane's hyper and axum.
#[cfg(feature = "control-plane")]
mod vault;
mod verify;
mod workload;

pub use ca::{
    CaError, CaSource, DEFAULT_ROOT_VALIDITY, MeshCa, PLUGIN_CA_CERT_KEY, PLUGIN_CA_KEY_KEY,
    PLUGIN_CA_SECRET, PLUGIN_CERT_CHAIN_KEY, PLUGIN_ROOT_CERT_KEY, ROOT_COMMON_NAME,
    ROOT_ORGANIZATION, ServingCert, WEFT_CA_CERT_KEY, WEFT_CA_KEY_KEY, WEFT_CA_SECRET,
};
#[cfg(feature = "control-plane")]
pub use cert_manager::{
    ApiError, ApiFuture, CertManagerIssuer, CertificateRequests, RequestState, certificate_request,
    request_state, roots_from_ca_bundle,
};
pub use encoding::{PemError, certificates_from_pem, pem_of_certificate};
pub use issue::{CheckedCsr, CsrError, IssuedCert, check_workload_csr};
pub use issuer::{
    CA_BUNDLE_KEY, CERT_MANAGER_API_VERSION, CERT_MANAGER_GROUP, CertManagerConfig, IssuerRefKind,
    KEY_CERT_MANAGER_CA_BUNDLE_SECRET, KEY_CERT_MANAGER_ISSUER_GROUP, KEY_CERT_MANAGER_ISSUER_KIND,
    KEY_CERT_MANAGER_ISSUER_NAME,
};
pub use issuer::{
    CheckedLeaf, DEFAULT_VAULT_AUTH_MOUNT, DEFAULT_VAULT_MOUNT, ISSUER_CONFIGMAP, Issuer,
    IssuerConfig, IssuerConfigError, IssuerError, IssuerKind, KEY_ISSUER, KEY_VAULT_ADDRESS,
    KEY_VAULT_AUTH_MOUNT, KEY_VAULT_AUTH_ROLE, KEY_VAULT_CA_CERT_SECRET, KEY_VAULT_MOUNT,
    KEY_VAULT_ROLE, KEY_VAULT_TOKEN_SECRET, SignFuture, SignedChain, VAULT_CA_CERT_KEY,
    VAULT_TOKEN_KEY, VaultAuth, VaultConfig, WorkloadCsr, check_leaf, issue,
};
pub use lifetime::{
    BACKDATE, DEFAULT_RENEW_AT, MIN_WORKLOAD_VALIDITY, RENEW_JITTER, ValidityError,
    effective_validity, random_jitter, renew_at,
};
pub use protocol::{
    CertificateRequest, CertificateResponse, ErrorResponse, MAX_REQUEST_BYTES, RequestError,
    decode_certificate_request,
};
#[cfg(feature = "control-plane")]
pub use vault::{
    CALL_TIMEOUT as VAULT_CALL_TIMEOUT, RefusalContext, VaultCredentials, VaultIssuer,
    signed_chain, vault_errors, vault_refusal,
};
pub use verify::{VerifyError, spiffe_id_of, verify_chain};
pub use workload::{WorkloadKey, WorkloadKeyError};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, negative before it; the unit X.509 validity is compared in.
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// The inverse of [`unix_seconds`]; saturates instead of panicking on absurd values, which can
/// only come from a certificate someone else wrote.
pub(crate) fn system_time(seconds: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(seconds.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(seconds.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// rcgen takes `time::OffsetDateTime`; the conversion that std offers panics out of range, this
/// one says `None`.
pub(crate) fn offset_date_time(t: SystemTime) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(t)).ok()
}

/// A fresh, positive 128-bit serial number. Random rather than rcgen's default (a hash of the
/// public key), so two certificates for one key never share a serial.
pub(crate) fn random_serial() -> Option<rcgen::SerialNumber> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    // DER INTEGERs are signed: a clear top bit keeps the serial positive; a set bit below it
    // keeps the encoding at its full 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Some(rcgen::SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_round_trips_on_both_sides_of_the_epoch() {
        for seconds in [-86_400, -1, 0, 1, 1_700_000_000] {
            assert_eq!(unix_seconds(system_time(seconds)), seconds);
        }
    }

    #[test]
    fn serials_are_positive_full_length_and_distinct() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_eq!(a.len(), 16);
        assert_eq!(a[0] & 0xc0, 0x40);
        assert_ne!(a, b);
    }
}
