//! How long a workload certificate lives and when its proxy renews it (SPEC §7): the CA may
//! shorten the lifetime on request (tests ask for a minute) but never lengthens it, and proxies
//! renew at a jittered fraction of the lifetime so a mesh restarted at once does not renew at once.

use std::time::{Duration, SystemTime};

/// NotBefore is set this far in the past, so a peer whose clock lags the CA's still accepts
/// a certificate issued a moment ago.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// The shortest lifetime a CSR may ask for; below it a proxy would spend its time renewing.
pub const MIN_WORKLOAD_VALIDITY: Duration = Duration::from_secs(60);
/// `MeshConfig.spec.certificate.renewAt` when unset: renew halfway through the lifetime.
pub const DEFAULT_RENEW_AT: f64 = 0.5;
/// Renewal moves by up to this fraction of the renewal point, either way.
pub const RENEW_JITTER: f64 = 0.1;
/// Bounds of the jittered renewal fraction: never at issuance, never at expiry.
const RENEW_FRACTION_MIN: f64 = 0.01;
const RENEW_FRACTION_MAX: f64 = 0.99;

/// A requested lifetime the CA refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidityError {
    #[error(
        "validitySeconds {requested} is below the minimum of {} s: ask for at least {} seconds, or leave validitySeconds out to get the mesh's workloadCertTTL",
        MIN_WORKLOAD_VALIDITY.as_secs(),
        MIN_WORKLOAD_VALIDITY.as_secs()
    )]
    TooShort { requested: u64 },
}

impl ValidityError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "validity_too_short",
        }
    }

    /// HTTP status of the CSR endpoint's answer: the request is at fault.
    pub fn status_code(&self) -> u16 {
        400
    }
}

/// The lifetime to sign for: `max` (the revision's `workloadCertTTL`) unless the request asks
/// for less. Asking for more is not an error (a proxy cannot know the mesh's TTL); it gets `max`.
pub fn effective_validity(
    requested_seconds: Option<u64>,
    max: Duration,
) -> Result<Duration, ValidityError> {
    match requested_seconds {
        None => Ok(max),
        Some(requested) if requested < MIN_WORKLOAD_VALIDITY.as_secs() => {
            Err(ValidityError::TooShort { requested })
        }
        Some(requested) => Ok(Duration::from_secs(requested).min(max)),
    }
}

/// When to renew a certificate valid from `valid_from` to `not_after`: at `fraction` of the
/// lifetime, moved by `jitter_source` (in [-1, 1]) times [`RENEW_JITTER`] of that point, kept
/// strictly inside the lifetime. Pass the moment the certificate was received as `valid_from`,
/// not its NotBefore: NotBefore is backdated by [`BACKDATE`], which would make a one-minute
/// certificate due at once. Out-of-range or non-finite inputs are clamped, never a panic.
pub fn renew_at(
    valid_from: SystemTime,
    not_after: SystemTime,
    fraction: f64,
    jitter_source: f64,
) -> SystemTime {
    let Ok(lifetime) = not_after.duration_since(valid_from) else {
        return valid_from;
    };
    let fraction = if fraction.is_finite() {
        fraction
    } else {
        DEFAULT_RENEW_AT
    };
    let jitter = if jitter_source.is_finite() {
        jitter_source.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let point =
        (fraction * (1.0 + RENEW_JITTER * jitter)).clamp(RENEW_FRACTION_MIN, RENEW_FRACTION_MAX);
    valid_from + lifetime.mul_f64(point)
}

/// A uniform jitter source in [-1, 1] from the system's CSPRNG (so replicas of one Deployment,
/// started together, spread out). Zero, meaning no jitter, if the OS has no randomness to give.
pub fn random_jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.0;
    }
    f64::from(u32::from_be_bytes(bytes)) / f64::from(u32::MAX) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// Float arithmetic leaves nanoseconds of noise; a millisecond is far below what matters.
    fn assert_near(actual: SystemTime, expected: SystemTime) {
        let gap = actual
            .duration_since(expected)
            .unwrap_or_else(|e| e.duration());
        assert!(gap < Duration::from_millis(1), "{actual:?} vs {expected:?}");
    }

    #[test]
    fn no_request_gets_the_mesh_ttl() {
        assert_eq!(effective_validity(None, DAY), Ok(DAY));
    }

    #[test]
    fn a_request_may_shorten_down_to_sixty_seconds() {
        assert_eq!(
            effective_validity(Some(60), DAY),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            effective_validity(Some(3600), DAY),
            Ok(Duration::from_secs(3600))
        );
    }

    #[test]
    fn a_request_never_lengthens() {
        assert_eq!(effective_validity(Some(10 * 86_400), DAY), Ok(DAY));
        assert_eq!(effective_validity(Some(u64::MAX), DAY), Ok(DAY));
    }

    #[test]
    fn a_request_below_sixty_seconds_is_refused_saying_so() {
        let err = effective_validity(Some(59), DAY).unwrap_err();
        assert_eq!(err, ValidityError::TooShort { requested: 59 });
        assert!(err.to_string().contains("at least 60 seconds"), "{err}");
        assert_eq!(err.status_code(), 400);
        assert!(effective_validity(Some(0), DAY).is_err());
    }

    #[test]
    fn renewal_without_jitter_is_at_the_fraction() {
        let start = SystemTime::UNIX_EPOCH + DAY;
        assert_near(renew_at(start, start + DAY, 0.5, 0.0), start + DAY / 2);
    }

    #[test]
    fn jitter_moves_renewal_by_at_most_ten_percent_of_the_point() {
        let start = SystemTime::UNIX_EPOCH;
        let end = start + Duration::from_secs(1000);
        assert_near(
            renew_at(start, end, 0.5, 1.0),
            start + Duration::from_secs(550),
        );
        assert_near(
            renew_at(start, end, 0.5, -1.0),
            start + Duration::from_secs(450),
        );
        assert_eq!(
            renew_at(start, end, 0.5, 7.0),
            renew_at(start, end, 0.5, 1.0),
            "the jitter source is clamped to [-1, 1]"
        );
    }

    #[test]
    fn renewal_stays_strictly_inside_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH;
        let end = start + Duration::from_secs(1000);
        assert_near(
            renew_at(start, end, 1.0, 1.0),
            start + Duration::from_secs(990),
        );
        assert_near(
            renew_at(start, end, 0.0, -1.0),
            start + Duration::from_secs(10),
        );
        assert_near(
            renew_at(start, end, f64::NAN, f64::INFINITY),
            start + Duration::from_secs(500),
        );
        assert_eq!(renew_at(end, start, 0.5, 0.0), end, "already expired: now");
    }

    #[test]
    fn random_jitter_stays_in_range_and_varies() {
        let samples: Vec<f64> = (0..64).map(|_| random_jitter()).collect();
        assert!(samples.iter().all(|j| (-1.0..=1.0).contains(j)));
        assert!(samples.iter().any(|j| *j != samples[0]));
    }
}
