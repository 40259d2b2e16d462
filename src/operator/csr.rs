//! The CSR endpoint, `POST :15012/v1/certificates` (SPEC §7): a proxy proves its identity with
//! its projected service-account token (TokenReview, audience `weft-ca`) and the mesh's issuer
//! (the builtin CA or Vault, see [`crate::pki::Issuer`]) signs its CSR for exactly that identity. Kubernetes is reached only through [`TokenReviewer`], so
//! every answer of the endpoint is a unit test against a real CA. Work before authentication is
//! bounded ([`Admission`]: per-source and TokenReview rate limits, a cap on concurrent
//! TokenReviews, a CSR size budget) and successful reviews are cached by the token's SHA-256.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, body::Bytes};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

use super::serving::ClientAddr;
use crate::contract;
use crate::pki::{
    self, CertificateResponse, CsrError, ErrorResponse, Issuer, IssuerError, IssuerKind,
    MAX_REQUEST_BYTES, MeshCa, RequestError, ValidityError, WorkloadCsr,
    decode_certificate_request, effective_validity,
};

/// How long one request may take, body upload and TokenReview included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest bearer token passed on to the API server; projected tokens are about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Prefix of a service account's username in a TokenReview answer.
const SERVICE_ACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";
/// TokenReview `extra` key naming the pod a bound token was issued for.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";

/// What every authentication error adds, so a user knows which token is expected.
fn token_hint() -> String {
    format!(
        "the token must be the projected token with audience {} at {}/{}",
        contract::TOKEN_AUDIENCE,
        contract::TOKEN_DIR,
        contract::TOKEN_FILE
    )
}

// === TokenReview ===

/// The identity a token proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub namespace: String,
    pub service_account: String,
    /// Set when the token is bound to a pod (every projected token is).
    pub pod: Option<String>,
}

/// Why a token did not prove a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("the token was not accepted: {reason}; {hint}", hint = token_hint())]
    Unauthenticated { reason: String },
    #[error(
        "the token is valid for audiences [{}] but not {aud}; {hint}",
        audiences.join(", "),
        aud = contract::TOKEN_AUDIENCE,
        hint = token_hint()
    )]
    WrongAudience { audiences: Vec<String> },
    #[error(
        "the token belongs to {username:?}, not to a service account (system:serviceaccount:<namespace>:<name>): send the pod's own projected token; {hint}",
        hint = token_hint()
    )]
    NotServiceAccount { username: String },
    #[error(
        "could not ask the API server to review the token ({0}): retry; if this persists, check that the operator's ClusterRole allows create on tokenreviews.authentication.k8s.io"
    )]
    Api(String),
}

impl ReviewError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::NotServiceAccount { .. } => "not_service_account",
            Self::Api(_) => "token_review_failed",
        }
    }

    /// What the caller is told: the fix, without the API server's words or the token's
    /// details, which go to the operator's log only (an attacker probing tokens learns
    /// nothing from the answer).
    pub fn public_message(&self) -> String {
        match self {
            Self::Unauthenticated { .. } | Self::WrongAudience { .. } => {
                format!("the token was not accepted; {}", token_hint())
            }
            Self::NotServiceAccount { .. } => format!(
                "the token does not belong to a service account; {}",
                token_hint()
            ),
            Self::Api(_) => "the token could not be reviewed right now: retry".to_string(),
        }
    }

    /// 401 when the token proves nothing, 403 when it proves someone who is not a workload,
    /// 503 when the API server could not be asked.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::Unauthenticated { .. } | Self::WrongAudience { .. } => 401,
            Self::NotServiceAccount { .. } => 403,
            Self::Api(_) => 503,
        }
    }
}

/// Turns a bearer token into the identity it proves. Boxed future rather than `async_trait`:
/// the operator holds one as `Arc<dyn TokenReviewer>`.
pub trait TokenReviewer: Send + Sync + 'static {
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Reviewed, ReviewError>> + Send + 'a>>;
}

/// Asks the API server (TokenReview, authentication.k8s.io/v1) with audience `weft-ca`.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: Client,
}

impl KubeTokenReviewer {
    pub fn new(client: Client) -> Self {
        KubeTokenReviewer { client }
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Reviewed, ReviewError>> + Send + 'a>> {
        Box::pin(async move {
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let request = TokenReview {
                metadata: Default::default(),
                spec: TokenReviewSpec {
                    audiences: Some(vec![contract::TOKEN_AUDIENCE.to_string()]),
                    token: token.to_string(),
                },
                status: None,
            };
            let answer = api
                .create(&PostParams::default(), &request)
                .await
                .map_err(|e| ReviewError::Api(e.to_string()))?;
            reviewed_from_status(answer.status.as_ref())
        })
    }
}

/// Reads a TokenReview answer: authenticated, for audience `weft-ca`, by a service account.
/// Pure, so each way an answer can fall short is a unit test.
pub fn reviewed_from_status(status: Option<&TokenReviewStatus>) -> Result<Reviewed, ReviewError> {
    let Some(status) = status else {
        return Err(ReviewError::Api(
            "the TokenReview answer has no status".into(),
        ));
    };
    if status.authenticated != Some(true) {
        let reason = match status.error.as_deref() {
            Some(error) if !error.is_empty() => format!("the API server says: {error}"),
            _ => "the API server did not authenticate it".to_string(),
        };
        return Err(ReviewError::Unauthenticated { reason });
    }
    // The API server only authenticates a token for one of the audiences asked; checking the
    // answer too keeps a misconfigured authenticator from widening what weft accepts.
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == contract::TOKEN_AUDIENCE) {
        return Err(ReviewError::WrongAudience { audiences });
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix(SERVICE_ACCOUNT_USER_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Err(ReviewError::NotServiceAccount {
            username: username.to_string(),
        });
    };
    let pod = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|extra| extra.get(EXTRA_POD_NAME))
        .and_then(|names| names.first())
        .filter(|name| !name.is_empty())
        .cloned();
    Ok(Reviewed {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod,
    })
}

// === Rate limiting ===

/// A token bucket per identity. The map is bounded: at capacity, buckets that have refilled
/// (and so mean nothing) are dropped first, then the least recently used one, so a flood of
/// identities costs bounded memory and at worst forgets some limits.
pub struct RateLimiter {
    burst: f64,
    refill_per_second: f64,
    max_identities: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Default for RateLimiter {
    /// 10 requests at once, then one a second, for up to 10 000 identities.
    fn default() -> Self {
        RateLimiter::new(10, 1.0, 10_000)
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("burst", &self.burst)
            .field("refill_per_second", &self.refill_per_second)
            .field("max_identities", &self.max_identities)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `burst` requests at once, refilled at `refill_per_second`; both at least a little above
    /// zero so the limiter can never lock an identity out for good.
    pub fn new(burst: u32, refill_per_second: f64, max_identities: usize) -> Self {
        let refill_per_second = if refill_per_second.is_finite() {
            refill_per_second.max(0.001)
        } else {
            1.0
        };
        RateLimiter {
            burst: f64::from(burst.max(1)),
            refill_per_second,
            max_identities: max_identities.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `identity`'s bucket, or says how long until one is available.
    pub fn check(&self, identity: &str) -> Result<(), Duration> {
        self.check_at(identity, Instant::now())
    }

    fn check_at(&self, identity: &str, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another request panicked mid-update; the map of plain
        // numbers is still usable.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(identity) && buckets.len() >= self.max_identities {
            self.make_room(&mut buckets, now);
        }
        let bucket = buckets.entry(identity.to_string()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.refill_per_second,
            ))
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.refill_per_second).min(self.burst)
    }

    fn make_room(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        buckets.retain(|_, bucket| self.refilled(bucket, now) < self.burst);
        if buckets.len() >= self.max_identities {
            let oldest = buckets
                .iter()
                .min_by_key(|(_, bucket)| bucket.updated)
                .map(|(identity, _)| identity.clone());
            if let Some(oldest) = oldest {
                buckets.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

// === Before authentication ===

/// Most bytes of the CSR's PEM looked at before the token is reviewed: a P-256 CSR with one
/// SPIFFE SAN is about 600. The body limit bounds the JSON; this bounds the PEM, and the
/// DER (ASN.1 parsing and signature check, the costly part) is read only after the TokenReview.
pub const MAX_CSR_PEM_BYTES: usize = 8 * 1024;
/// Requests one source address (IPv4, or an IPv6 /64) may send at once, then per second.
pub const SOURCE_BURST: u32 = 20;
pub const SOURCE_PER_SECOND: f64 = 5.0;
/// TokenReviews (cache misses) all sources together may cause at once, then per second: the
/// API server's share of a flood.
pub const TOKEN_REVIEW_BURST: u32 = 100;
pub const TOKEN_REVIEW_PER_SECOND: f64 = 50.0;
/// TokenReviews in flight at once; more wait up to [`TOKEN_REVIEW_WAIT`] for a slot.
pub const MAX_CONCURRENT_TOKEN_REVIEWS: usize = 16;
pub const TOKEN_REVIEW_WAIT: Duration = Duration::from_secs(2);
/// How long a successful TokenReview is reused (never past the token's own `exp`): also how
/// long a token revoked by deleting its pod or service account can still get a certificate.
pub const TOKEN_REVIEW_CACHE_TTL: Duration = Duration::from_secs(10);
/// Reviews remembered at most; beyond, the ones expiring first are forgotten.
pub const TOKEN_REVIEW_CACHE_ENTRIES: usize = 10_000;
/// Source addresses the per-source limiter tracks at most.
const MAX_TRACKED_SOURCES: usize = 10_000;
/// The one bucket of the global TokenReview limiter.
const ALL_SOURCES: &str = "*";

/// What bounds the endpoint's work before and around the TokenReview.
#[derive(Debug)]
pub struct Admission {
    /// Every request, by source address, before anything is parsed.
    pub per_source: RateLimiter,
    /// TokenReviews (cache misses), all sources together.
    pub reviews: RateLimiter,
    pub review_slots: tokio::sync::Semaphore,
    pub review_wait: Duration,
    pub cache: TokenReviewCache,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            per_source: RateLimiter::new(SOURCE_BURST, SOURCE_PER_SECOND, MAX_TRACKED_SOURCES),
            reviews: RateLimiter::new(TOKEN_REVIEW_BURST, TOKEN_REVIEW_PER_SECOND, 1),
            review_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_TOKEN_REVIEWS),
            review_wait: TOKEN_REVIEW_WAIT,
            cache: TokenReviewCache::new(TOKEN_REVIEW_CACHE_TTL, TOKEN_REVIEW_CACHE_ENTRIES),
        }
    }
}

/// Successful TokenReviews by the SHA-256 of their token (the token itself is never kept), each
/// until the cache TTL or the token's `exp`, whichever comes first. Refusals are never stored,
/// so a token the API server refused is asked about again each time.
pub struct TokenReviewCache {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<[u8; 32], CachedReview>>,
}

#[derive(Debug, Clone)]
struct CachedReview {
    reviewed: Reviewed,
    expires: Instant,
}

impl std::fmt::Debug for TokenReviewCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewCache")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl TokenReviewCache {
    /// A zero `ttl` turns the cache off.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        TokenReviewCache {
            ttl,
            max_entries: max_entries.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The identity `token` proved within the last TTL, if it has not expired since.
    pub fn get(&self, token: &str) -> Option<Reviewed> {
        self.get_at(token, Instant::now())
    }

    /// Remembers a successful review of `token`.
    pub fn insert(&self, token: &str, reviewed: &Reviewed) {
        self.insert_at(token, reviewed, Instant::now(), SystemTime::now());
    }

    fn get_at(&self, token: &str, now: Instant) -> Option<Reviewed> {
        let key = token_key(token);
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match entries.get(&key) {
            Some(entry) if now < entry.expires => Some(entry.reviewed.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    fn insert_at(&self, token: &str, reviewed: &Reviewed, now: Instant, wall: SystemTime) {
        let mut lifetime = self.ttl;
        // The token's own expiry, read unverified: it can only shorten what the TokenReview
        // that just accepted the token allows, never lengthen it.
        if let Some(exp) = token_expiry(token) {
            lifetime = lifetime.min(exp.duration_since(wall).unwrap_or_default());
        }
        if lifetime.is_zero() {
            return;
        }
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= self.max_entries {
            entries.retain(|_, entry| now < entry.expires);
        }
        if entries.len() >= self.max_entries {
            let soonest = entries
                .iter()
                .min_by_key(|(_, entry)| entry.expires)
                .map(|(key, _)| *key);
            if let Some(soonest) = soonest {
                entries.remove(&soonest);
            }
        }
        entries.insert(
            token_key(token),
            CachedReview {
                reviewed: reviewed.clone(),
                expires: now + lifetime,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

fn token_key(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// The `exp` claim of a JWT (a projected service-account token), unverified; `None` for a
/// token that is no JWT or has no `exp`.
fn token_expiry(token: &str) -> Option<SystemTime> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

// === The endpoint ===

/// What the mesh configuration says about certificates for one namespace's workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPolicy {
    pub trust_domain: String,
    /// `workloadCertTTL`: the lifetime unless a request asks for less.
    pub max_ttl: Duration,
}

/// Called once per request with `"issued"` or the refusal's `metric_label()`.
pub type OutcomeHook = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Called once per request an issuer saw: which issuer, `"issued"` or the error's
/// `metric_label()`, and how long the issuer took (the issuer metrics).
pub type IssuerHook = Arc<dyn Fn(IssuerKind, &'static str, Duration) + Send + Sync>;

/// The issuer that signs instead of the builtin CA, `None` while the builtin one signs. The
/// operator's issuer controller sends a new one when `weft-ca-issuer` changes.
pub type ExternalIssuer = watch::Receiver<Option<Arc<dyn Issuer>>>;

/// Everything the endpoint needs; the operator's `Context` builds one.
pub struct CsrState {
    /// The CA, `None` until the CA-bundle controller has loaded one (answers are then 503).
    /// It signs unless `issuer` names another, and its trust bundle is the answer's roots.
    pub ca: watch::Receiver<Option<Arc<MeshCa>>>,
    /// Who signs instead of the builtin CA; `None` means always the builtin CA.
    pub issuer: Option<ExternalIssuer>,
    pub reviewer: Arc<dyn TokenReviewer>,
    /// The policy for workloads of a namespace (the revision serving it decides).
    pub policy: Arc<dyn Fn(&str) -> CertPolicy + Send + Sync>,
    /// Certificates per identity, after authentication.
    pub limiter: RateLimiter,
    /// Limits before and around authentication.
    pub admission: Admission,
    pub on_outcome: Option<OutcomeHook>,
    pub on_issuer: Option<IssuerHook>,
}

impl CsrState {
    /// The default rate limits ([`RateLimiter::default`], [`Admission::default`]) and no
    /// outcome hook.
    pub fn new(
        ca: watch::Receiver<Option<Arc<MeshCa>>>,
        reviewer: Arc<dyn TokenReviewer>,
        policy: Arc<dyn Fn(&str) -> CertPolicy + Send + Sync>,
    ) -> Self {
        CsrState {
            ca,
            issuer: None,
            reviewer,
            policy,
            limiter: RateLimiter::default(),
            admission: Admission::default(),
            on_outcome: None,
            on_issuer: None,
        }
    }
}

/// Why a request got no certificate. Every message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrEndpointError {
    #[error(
        "the request body is over the limit of {MAX_REQUEST_BYTES} bytes: send one CSR as JSON {{\"csr\": \"<PEM>\", \"validitySeconds\": N}}"
    )]
    BodyTooLarge,
    #[error("the request body could not be read ({0}): send it again")]
    BodyUnreadable(String),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(
        "missing or malformed Authorization header: send `Authorization: Bearer <token>`; {hint}",
        hint = token_hint()
    )]
    NoBearer,
    #[error(
        "the bearer token is over {MAX_TOKEN_BYTES} bytes: {hint}",
        hint = token_hint()
    )]
    TokenTooLong,
    #[error(transparent)]
    Review(#[from] ReviewError),
    #[error(transparent)]
    Validity(#[from] ValidityError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The issuer could not sign, or signed something that failed the checks.
    #[error(transparent)]
    Issuer(IssuerError),
    #[error(
        "too many certificate requests for {identity}: retry in {} s (a proxy needs one per renewal)",
        retry_after.as_secs().max(1)
    )]
    RateLimited {
        identity: String,
        retry_after: Duration,
    },
    #[error(
        "too many requests from {source_addr}: retry in {} s",
        retry_after.as_secs().max(1)
    )]
    SourceRateLimited {
        source_addr: String,
        retry_after: Duration,
    },
    #[error(
        "the operator is reviewing too many tokens ({why}): retry in {} s",
        retry_after.as_secs().max(1)
    )]
    Busy {
        why: &'static str,
        retry_after: Duration,
    },
    #[error(
        "the CSR is {size} bytes of PEM, over the {MAX_CSR_PEM_BYTES} bytes a workload CSR needs: send one P-256 CSR for the pod's SPIFFE ID"
    )]
    CsrTooLarge { size: usize },
    #[error("the mesh CA is not loaded yet: retry shortly (`weft check` shows why if it persists)")]
    CaNotReady,
    #[error(
        "the request did not complete within {} s (slow upload or slow TokenReview): retry",
        REQUEST_TIMEOUT.as_secs()
    )]
    Timeout,
    #[error("no such endpoint: POST the CSR to {}", contract::PATH_CERTIFICATES)]
    NotFound,
    #[error("method not allowed: POST the CSR to {}", contract::PATH_CERTIFICATES)]
    MethodNotAllowed,
}

impl CsrEndpointError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::BodyTooLarge => "body_too_large",
            Self::BodyUnreadable(_) => "body_unreadable",
            Self::Request(e) => e.metric_label(),
            Self::NoBearer => "no_bearer_token",
            Self::TokenTooLong => "token_too_long",
            Self::Review(e) => e.metric_label(),
            Self::Validity(e) => e.metric_label(),
            Self::Csr(e) => e.metric_label(),
            Self::Issuer(e) => e.metric_label(),
            Self::RateLimited { .. } => "rate_limited",
            Self::SourceRateLimited { .. } => "source_rate_limited",
            Self::Busy { .. } => "token_review_busy",
            Self::CsrTooLarge { .. } => "csr_too_large",
            Self::CaNotReady => "ca_not_ready",
            Self::Timeout => "timeout",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }

    pub fn status_code(&self) -> StatusCode {
        let code = match self {
            Self::BodyTooLarge => 413,
            Self::BodyUnreadable(_) => 400,
            Self::Request(e) => e.status_code(),
            Self::NoBearer | Self::TokenTooLong => 401,
            Self::Review(e) => e.status_code(),
            Self::Validity(e) => e.status_code(),
            Self::Csr(e) => e.status_code(),
            Self::Issuer(e) => e.status_code(),
            Self::RateLimited { .. } | Self::SourceRateLimited { .. } | Self::Busy { .. } => 429,
            Self::CsrTooLarge { .. } => 413,
            Self::CaNotReady | Self::Timeout => 503,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<IssuerError> for CsrEndpointError {
    /// The request's own faults read as they always did; the rest are the issuer's.
    fn from(e: IssuerError) -> Self {
        match e {
            IssuerError::Csr(e) => Self::Csr(e),
            e => Self::Issuer(e),
        }
    }
}

impl CsrEndpointError {
    /// What the caller is told; the log gets the whole error (see
    /// [`ReviewError::public_message`]).
    pub fn public_message(&self) -> String {
        match self {
            Self::Review(e) => e.public_message(),
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. }
            | Self::SourceRateLimited { retry_after, .. }
            | Self::Busy { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl IntoResponse for CsrEndpointError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let mut response =
            (status, Json(ErrorResponse::new(self.public_message()))).into_response();
        if let Some(retry_after) = self.retry_after() {
            // Whole seconds, rounded up: a client retrying exactly then finds a token.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// `POST /v1/certificates`, with every refusal as JSON `{"error": "..."}`.
pub fn router(state: CsrState) -> Router {
    router_with_timeout(state, REQUEST_TIMEOUT)
}

fn router_with_timeout(state: CsrState, timeout: Duration) -> Router {
    let state = Arc::new(state);
    let hook = state.on_outcome.clone();
    Router::new()
        .route(contract::PATH_CERTIFICATES, post(issue))
        .fallback(|| async { CsrEndpointError::NotFound })
        .method_not_allowed_fallback(|| async { CsrEndpointError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let hook = hook.clone();
            async move {
                // Covers the body upload too: the extractor reads it inside `next`.
                match tokio::time::timeout(timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => {
                        let err = CsrEndpointError::Timeout;
                        tracing::warn!(reason = err.metric_label(), "CSR refused: {err}");
                        if let Some(hook) = &hook {
                            hook(err.metric_label());
                        }
                        err.into_response()
                    }
                }
            }
        }))
        .with_state(state)
}

async fn issue(
    State(state): State<Arc<CsrState>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Requests that did not come through the accept loop (unit tests) share one source.
    let source = client.map_or_else(
        || "unknown".to_string(),
        |Extension(c)| c.source().to_string(),
    );
    let result = sign(&state, &source, &headers, body).await;
    let label = match &result {
        Ok(_) => "issued",
        Err(e) => e.metric_label(),
    };
    if let Some(hook) = &state.on_outcome {
        hook(label);
    }
    match result {
        Ok(response) => (StatusCode::OK, Json(response)).into_response(),
        Err(err) => {
            // The whole reason, the API server's words included, goes to the log only.
            if err.status_code().is_server_error() {
                tracing::warn!(reason = label, %source, "CSR refused: {err}");
            } else {
                tracing::info!(reason = label, %source, "CSR refused: {err}");
            }
            err.into_response()
        }
    }
}

async fn sign(
    state: &CsrState,
    source: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<CertificateResponse, CsrEndpointError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            CsrEndpointError::BodyTooLarge
        } else {
            CsrEndpointError::BodyUnreadable(rejection.body_text())
        }
    })?;
    state
        .admission
        .per_source
        .check(source)
        .map_err(|retry_after| CsrEndpointError::SourceRateLimited {
            source_addr: source.to_string(),
            retry_after,
        })?;
    let token = bearer_token(headers)?;
    let request = decode_certificate_request(&body)?;
    if request.csr.len() > MAX_CSR_PEM_BYTES {
        return Err(CsrEndpointError::CsrTooLarge {
            size: request.csr.len(),
        });
    }
    // Before the TokenReview: without a CA there is nothing to spend an API call on.
    let ca = state
        .ca
        .borrow()
        .clone()
        .ok_or(CsrEndpointError::CaNotReady)?;

    let reviewed = review(state, token).await?;
    let policy = (state.policy)(&reviewed.namespace);
    let identity = contract::spiffe_id(
        &policy.trust_domain,
        &reviewed.namespace,
        &reviewed.service_account,
    );
    state
        .limiter
        .check(&identity)
        .map_err(|retry_after| CsrEndpointError::RateLimited {
            identity: identity.clone(),
            retry_after,
        })?;
    let ttl = effective_validity(request.validity_seconds, policy.max_ttl)?;
    let external = state.issuer.as_ref().and_then(|rx| rx.borrow().clone());
    let issuer: Arc<dyn Issuer> = match external {
        Some(issuer) => issuer,
        None => ca.clone(),
    };
    let csr = WorkloadCsr {
        csr_pem: &request.csr,
        spiffe_id: &identity,
        namespace: &reviewed.namespace,
        service_account: &reviewed.service_account,
        ttl,
    };
    let started = Instant::now();
    let result = pki::issue(&*issuer, &csr, &ca.root_certs_pem(), SystemTime::now()).await;
    if let Some(hook) = &state.on_issuer {
        let label = match &result {
            Ok(_) => "issued",
            Err(e) => e.metric_label(),
        };
        hook(issuer.kind(), label, started.elapsed());
    }
    let issued = result?;
    tracing::info!(
        identity,
        pod = reviewed.pod.as_deref().unwrap_or("-"),
        ttl_seconds = ttl.as_secs(),
        issuer = issuer.kind().as_str(),
        "issued workload certificate"
    );
    Ok(issued.into())
}

/// The identity `token` proves: from the cache, or from a TokenReview within the global rate
/// and a concurrency slot. Only successes are cached.
async fn review(state: &CsrState, token: &str) -> Result<Reviewed, CsrEndpointError> {
    let admission = &state.admission;
    if let Some(reviewed) = admission.cache.get(token) {
        return Ok(reviewed);
    }
    admission
        .reviews
        .check(ALL_SOURCES)
        .map_err(|retry_after| CsrEndpointError::Busy {
            why: "rate of TokenReviews",
            retry_after,
        })?;
    let busy = CsrEndpointError::Busy {
        why: "TokenReviews in flight",
        retry_after: Duration::from_secs(1),
    };
    let _slot = tokio::time::timeout(admission.review_wait, admission.review_slots.acquire())
        .await
        .map_err(|_| busy.clone())?
        .map_err(|_| busy)?;
    let reviewed = state.reviewer.review(token).await?;
    admission.cache.insert(token, &reviewed);
    Ok(reviewed)
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, as RFC 7235 says).
fn bearer_token(headers: &HeaderMap) -> Result<&str, CsrEndpointError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(CsrEndpointError::NoBearer)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(CsrEndpointError::NoBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(CsrEndpointError::NoBearer);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(CsrEndpointError::TokenTooLong);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::{Body, to_bytes};
    use axum::http::Method;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use tower::ServiceExt;

    use super::*;
    use crate::pki::{
        BACKDATE, DEFAULT_ROOT_VALIDITY, WorkloadKey, certificates_from_pem, spiffe_id_of,
        verify_chain,
    };

    const TRUST_DOMAIN: &str = "cluster.local";
    const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
    const WEB_TOKEN: &str = "token-of-pets-web";
    const DB_TOKEN: &str = "token-of-pets-db";
    const OTHER_AUDIENCE_TOKEN: &str = "token-for-the-api-server";
    const EXPIRED_TOKEN: &str = "token-expired";
    const DELETED_POD_TOKEN: &str = "token-of-a-deleted-pod";
    const DELETED_ACCOUNT_TOKEN: &str = "token-of-a-deleted-service-account";
    const WEB: &str = "spiffe://cluster.local/ns/pets/sa/web";
    const DB: &str = "spiffe://cluster.local/ns/pets/sa/db";

    /// A test double for the API server's TokenReview: a fixed table of tokens.
    struct StaticTokenReviewer {
        tokens: BTreeMap<&'static str, Result<Reviewed, ReviewError>>,
        /// Delays every answer, to trip the request timeout.
        delay: Duration,
        calls: AtomicUsize,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    impl StaticTokenReviewer {
        fn new() -> Self {
            let workload = |namespace: &str, service_account: &str| {
                Ok(Reviewed {
                    namespace: namespace.into(),
                    service_account: service_account.into(),
                    pod: Some(format!("{service_account}-0")),
                })
            };
            let tokens = BTreeMap::from([
                (WEB_TOKEN, workload("pets", "web")),
                (DB_TOKEN, workload("pets", "db")),
                (
                    EXPIRED_TOKEN,
                    Err(ReviewError::Unauthenticated {
                        reason: "the API server says: [invalid bearer token, service account token has expired]".into(),
                    }),
                ),
                (
                    DELETED_POD_TOKEN,
                    Err(ReviewError::Unauthenticated {
                        reason: "the API server says: [invalid bearer token, pod \"web-0\" not found]".into(),
                    }),
                ),
                (
                    DELETED_ACCOUNT_TOKEN,
                    Err(ReviewError::Unauthenticated {
                        reason: "the API server says: [invalid bearer token, service account pets/gone not found]".into(),
                    }),
                ),
                (
                    OTHER_AUDIENCE_TOKEN,
                    Err(ReviewError::Unauthenticated {
                        reason: "the API server says: token audiences [\"https://kubernetes.default.svc\"] is invalid for the target audiences [\"weft-ca\"]".into(),
                    }),
                ),
            ]);
            StaticTokenReviewer {
                tokens,
                delay: Duration::ZERO,
                calls: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                most_in_flight: AtomicUsize::new(0),
            }
        }
    }

    impl TokenReviewer for StaticTokenReviewer {
        fn review<'a>(
            &'a self,
            token: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<Reviewed, ReviewError>> + Send + 'a>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.tokens.get(token).cloned().unwrap_or_else(|| {
                    Err(ReviewError::Unauthenticated {
                        reason: "the API server says: invalid bearer token".into(),
                    })
                })
            })
        }
    }

    struct Endpoint {
        router: Router,
        ca: Arc<MeshCa>,
        reviewer: Arc<StaticTokenReviewer>,
        outcomes: Arc<Mutex<Vec<&'static str>>>,
        _ca_sender: watch::Sender<Option<Arc<MeshCa>>>,
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        json: serde_json::Value,
    }

    impl Answer {
        fn error(&self) -> &str {
            self.json["error"].as_str().unwrap_or_default()
        }

        fn certificate(&self) -> CertificateResponse {
            serde_json::from_value(self.json.clone()).unwrap()
        }
    }

    fn endpoint_with(
        reviewer: StaticTokenReviewer,
        ca_loaded: bool,
        limiter: RateLimiter,
        timeout: Duration,
    ) -> Endpoint {
        endpoint_admitting(reviewer, ca_loaded, limiter, timeout, Admission::default())
    }

    fn endpoint_admitting(
        reviewer: StaticTokenReviewer,
        ca_loaded: bool,
        limiter: RateLimiter,
        timeout: Duration,
        admission: Admission,
    ) -> Endpoint {
        let ca = Arc::new(MeshCa::generate_root(TRUST_DOMAIN, DEFAULT_ROOT_VALIDITY).unwrap());
        let (sender, receiver) = watch::channel(ca_loaded.then(|| ca.clone()));
        let reviewer = Arc::new(reviewer);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let recorded = outcomes.clone();
        let state = CsrState {
            ca: receiver,
            issuer: None,
            on_issuer: None,
            reviewer: reviewer.clone(),
            policy: Arc::new(|_namespace: &str| CertPolicy {
                trust_domain: TRUST_DOMAIN.into(),
                max_ttl: MAX_TTL,
            }),
            limiter,
            admission,
            on_outcome: Some(Arc::new(move |label| recorded.lock().unwrap().push(label))),
        };
        Endpoint {
            router: router_with_timeout(state, timeout),
            ca,
            reviewer,
            outcomes,
            _ca_sender: sender,
        }
    }

    fn endpoint() -> Endpoint {
        endpoint_with(
            StaticTokenReviewer::new(),
            true,
            RateLimiter::default(),
            REQUEST_TIMEOUT,
        )
    }

    fn csr_for(identity: &str) -> String {
        WorkloadKey::generate().unwrap().csr_pem(identity).unwrap()
    }

    fn body_for(identity: &str, validity_seconds: Option<u64>) -> Vec<u8> {
        let mut body = serde_json::json!({ "csr": csr_for(identity) });
        if let Some(seconds) = validity_seconds {
            body["validitySeconds"] = seconds.into();
        }
        body.to_string().into_bytes()
    }

    impl Endpoint {
        async fn send(&self, authorization: Option<&str>, body: Vec<u8>) -> Answer {
            self.send_request(
                Method::POST,
                contract::PATH_CERTIFICATES,
                authorization,
                body,
            )
            .await
        }

        async fn send_request(
            &self,
            method: Method,
            path: &str,
            authorization: Option<&str>,
            body: Vec<u8>,
        ) -> Answer {
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let response = self
                .router
                .clone()
                .oneshot(request.body(Body::from(body)).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
            let json = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {bytes:?}"));
            Answer {
                status,
                headers,
                json,
            }
        }

        async fn ask(&self, token: &str, body: Vec<u8>) -> Answer {
            self.send(Some(&format!("Bearer {token}")), body).await
        }

        fn outcomes(&self) -> Vec<&'static str> {
            self.outcomes.lock().unwrap().clone()
        }
    }

    /// The leaf's DER, after checking the chain verifies to the CA's roots now.
    fn verified_leaf(ca: &MeshCa, answer: &CertificateResponse) -> Vec<u8> {
        let chain: Vec<Vec<u8>> = answer
            .cert_chain
            .iter()
            .flat_map(|pem| certificates_from_pem(pem).unwrap())
            .collect();
        let roots: Vec<Vec<u8>> = answer
            .roots
            .iter()
            .flat_map(|pem| certificates_from_pem(pem).unwrap())
            .collect();
        assert_eq!(answer.roots, ca.root_certs_pem());
        verify_chain(&chain[0], &chain[1..], &roots, SystemTime::now()).unwrap();
        chain[0].clone()
    }

    fn lifetime(leaf_der: &[u8]) -> Duration {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
        let validity = cert.validity();
        let seconds = validity.not_after.timestamp() - validity.not_before.timestamp();
        Duration::from_secs(u64::try_from(seconds).unwrap())
    }

    #[tokio::test]
    async fn a_csr_for_its_own_identity_gets_a_verifying_certificate() {
        let endpoint = endpoint();
        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        let leaf = verified_leaf(&endpoint.ca, &answer.certificate());
        assert_eq!(spiffe_id_of(&leaf).as_deref(), Some(WEB));
        assert_eq!(lifetime(&leaf), MAX_TTL + BACKDATE);
        assert_eq!(endpoint.outcomes(), vec!["issued"]);
    }

    /// An endpoint whose CSRs `issuer` signs instead of the builtin CA, recording what the
    /// issuer hook saw.
    #[allow(clippy::type_complexity)]
    fn endpoint_signed_by(
        issuer: Arc<dyn Issuer>,
    ) -> (
        Endpoint,
        watch::Sender<Option<Arc<dyn Issuer>>>,
        Arc<Mutex<Vec<(IssuerKind, &'static str)>>>,
    ) {
        let ca = Arc::new(MeshCa::generate_root(TRUST_DOMAIN, DEFAULT_ROOT_VALIDITY).unwrap());
        let (ca_sender, ca_receiver) = watch::channel(Some(ca.clone()));
        let (issuer_sender, issuer_receiver) = watch::channel(Some(issuer));
        let reviewer = Arc::new(StaticTokenReviewer::new());
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let issuer_calls = Arc::new(Mutex::new(Vec::new()));
        let (recorded, seen) = (outcomes.clone(), issuer_calls.clone());
        let mut state = CsrState::new(
            ca_receiver,
            reviewer.clone(),
            Arc::new(|_namespace: &str| CertPolicy {
                trust_domain: TRUST_DOMAIN.into(),
                max_ttl: MAX_TTL,
            }),
        );
        state.issuer = Some(issuer_receiver);
        state.on_outcome = Some(Arc::new(move |label| recorded.lock().unwrap().push(label)));
        state.on_issuer = Some(Arc::new(move |kind, label, _took| {
            seen.lock().unwrap().push((kind, label))
        }));
        let endpoint = Endpoint {
            router: router(state),
            ca,
            reviewer,
            outcomes,
            _ca_sender: ca_sender,
        };
        (endpoint, issuer_sender, issuer_calls)
    }

    /// Signs every CSR it is handed for another identity and key: what a misconfigured or
    /// hostile external issuer could return.
    struct WrongIdentityIssuer(MeshCa);

    impl Issuer for WrongIdentityIssuer {
        fn kind(&self) -> IssuerKind {
            IssuerKind::Vault
        }
        fn describe(&self) -> String {
            "an issuer that signs for db".into()
        }
        fn roots_pem(&self) -> Vec<String> {
            Issuer::roots_pem(&self.0)
        }
        fn sign<'a>(&'a self, csr: &'a WorkloadCsr<'a>, now: SystemTime) -> pki::SignFuture<'a> {
            Box::pin(async move {
                let issued = self
                    .0
                    .sign_workload_csr(&csr_for(DB), DB, csr.ttl, now)
                    .map_err(IssuerError::Csr)?;
                Ok(pki::SignedChain {
                    chain_pem: issued.cert_chain_pem,
                })
            })
        }
    }

    #[tokio::test]
    async fn another_issuer_signs_without_the_endpoint_changing_and_roots_carry_both() {
        let other = Arc::new(MeshCa::generate_root(TRUST_DOMAIN, DEFAULT_ROOT_VALIDITY).unwrap());
        let (endpoint, switch, seen) = endpoint_signed_by(other.clone());
        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        let certificate = answer.certificate();
        let mut both = endpoint.ca.root_certs_pem();
        both.extend(other.root_certs_pem());
        assert_eq!(
            certificate.roots, both,
            "the mesh's roots, then the issuer's"
        );
        let chain = certificates_from_pem(&certificate.cert_chain[0]).unwrap();
        let other_roots = certificates_from_pem(&other.roots_pem()).unwrap();
        verify_chain(
            &chain[0],
            &[] as &[Vec<u8>],
            &other_roots,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(spiffe_id_of(&chain[0]).as_deref(), Some(WEB));

        // Back to the builtin CA without a restart: the next leaf chains to the mesh root.
        switch.send_replace(None);
        let answer = endpoint.ask(DB_TOKEN, body_for(DB, None)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        verified_leaf(&endpoint.ca, &answer.certificate());
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (IssuerKind::Builtin, "issued"),
                (IssuerKind::Builtin, "issued")
            ]
        );
    }

    #[tokio::test]
    async fn a_leaf_for_another_identity_from_the_issuer_is_never_handed_out() {
        let rogue = WrongIdentityIssuer(
            MeshCa::generate_root(TRUST_DOMAIN, DEFAULT_ROOT_VALIDITY).unwrap(),
        );
        let (endpoint, _switch, seen) = endpoint_signed_by(Arc::new(rogue));
        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.json.get("certChain").is_none(), "{}", answer.json);
        assert!(
            answer.error().contains(DB) && answer.error().contains(WEB),
            "{}",
            answer.error()
        );
        assert_eq!(endpoint.outcomes(), vec!["issuer_bad_leaf"]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(IssuerKind::Vault, "issuer_bad_leaf")]
        );
    }

    #[tokio::test]
    async fn a_csr_for_another_identity_is_403_naming_both() {
        let endpoint = endpoint();
        let answer = endpoint.ask(WEB_TOKEN, body_for(DB, None)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert!(
            answer.error().contains(DB) && answer.error().contains(WEB),
            "{}",
            answer.error()
        );
        assert_eq!(endpoint.outcomes(), vec!["identity_mismatch"]);
    }

    #[tokio::test]
    async fn a_missing_or_garbage_bearer_is_401_saying_which_token() {
        let endpoint = endpoint();
        for authorization in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer    "),
            Some(&*format!("Basic {WEB_TOKEN}")),
            Some("Bearer two words"),
        ] {
            let answer = endpoint.send(authorization, body_for(WEB, None)).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
            assert!(
                answer.error().contains("Authorization: Bearer")
                    && answer
                        .error()
                        .contains("/var/run/secrets/tokens/weft-token"),
                "{}",
                answer.error()
            );
        }
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        let answer = endpoint.ask(&long, body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            endpoint.reviewer.calls.load(Ordering::SeqCst),
            0,
            "no TokenReview for a request without a usable token"
        );
    }

    #[tokio::test]
    async fn an_unknown_token_is_401_saying_which_token_but_not_the_api_servers_words() {
        let endpoint = endpoint();
        let (answer, log) = logged(endpoint.ask("garbage", body_for(WEB, None))).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(
            answer.error().contains("not accepted")
                && answer.error().contains("audience weft-ca")
                && !answer.error().contains("invalid bearer token"),
            "{}",
            answer.error()
        );
        assert!(
            log.contains("invalid bearer token") && log.contains("unauthenticated"),
            "the reason is logged: {log}"
        );
        // A lower-case scheme is still a bearer token.
        let answer = endpoint
            .send(Some(&format!("bearer {WEB_TOKEN}")), body_for(WEB, None))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    }

    #[tokio::test]
    async fn a_token_for_another_audience_is_401() {
        let endpoint = endpoint();
        let (answer, log) = logged(endpoint.ask(OTHER_AUDIENCE_TOKEN, body_for(WEB, None))).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(
            !answer.error().contains("target audiences")
                && answer
                    .error()
                    .contains("projected token with audience weft-ca"),
            "{}",
            answer.error()
        );
        assert!(log.contains("target audiences"), "{log}");
        assert_eq!(endpoint.outcomes(), vec!["unauthenticated"]);
    }

    #[tokio::test]
    async fn an_oversized_body_is_413_before_any_token_review() {
        let endpoint = endpoint();
        let body = vec![b' '; MAX_REQUEST_BYTES + 1];
        let answer = endpoint.ask(WEB_TOKEN, body).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(answer.error().contains("limit"), "{}", answer.error());
        assert_eq!(endpoint.reviewer.calls.load(Ordering::SeqCst), 0);

        // With Content-Length declared, the body is refused unread.
        let request = Request::builder()
            .method(Method::POST)
            .uri(contract::PATH_CERTIFICATES)
            .header(header::AUTHORIZATION, format!("Bearer {WEB_TOKEN}"))
            .header(header::CONTENT_LENGTH, MAX_REQUEST_BYTES + 1)
            .body(Body::from(vec![b' '; MAX_REQUEST_BYTES + 1]))
            .unwrap();
        let response = endpoint.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(endpoint.reviewer.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn garbage_json_is_400_saying_the_expected_shape() {
        let endpoint = endpoint();
        for body in [&b"not json"[..], b"{}", b"", br#"{"csr": "x"}"#] {
            let answer = endpoint.ask(WEB_TOKEN, body.to_vec()).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body:?}");
            assert!(!answer.error().is_empty());
        }
        let answer = endpoint.ask(WEB_TOKEN, b"not json".to_vec()).await;
        assert!(
            answer.error().contains("\"csr\""),
            "says the expected shape: {}",
            answer.error()
        );
    }

    #[tokio::test]
    async fn validity_is_refused_below_a_minute_honoured_above_and_capped_at_the_ttl() {
        let endpoint = endpoint();

        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, Some(30))).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(
            answer.error().contains("at least 60 seconds"),
            "{}",
            answer.error()
        );

        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, Some(120))).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        let leaf = verified_leaf(&endpoint.ca, &answer.certificate());
        assert_eq!(lifetime(&leaf), Duration::from_secs(120) + BACKDATE);

        let answer = endpoint
            .ask(WEB_TOKEN, body_for(WEB, Some(1_000_000_000)))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        let leaf = verified_leaf(&endpoint.ca, &answer.certificate());
        assert_eq!(lifetime(&leaf), MAX_TTL + BACKDATE);
    }

    #[tokio::test]
    async fn an_identity_is_rate_limited_after_its_burst_others_are_not() {
        let endpoint = endpoint_with(
            StaticTokenReviewer::new(),
            true,
            RateLimiter::new(3, 0.01, 100),
            REQUEST_TIMEOUT,
        );
        for _ in 0..3 {
            let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        }
        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(answer.error().contains(WEB), "{}", answer.error());
        let retry_after: u64 = answer.headers[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(retry_after, 100, "one token at 0.01/s");

        let answer = endpoint.ask(DB_TOKEN, body_for(DB, None)).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "another identity has its own bucket"
        );
    }

    #[tokio::test]
    async fn without_a_ca_the_answer_is_503_and_no_token_review_is_spent() {
        let endpoint = endpoint_with(
            StaticTokenReviewer::new(),
            false,
            RateLimiter::default(),
            REQUEST_TIMEOUT,
        );
        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.error().contains("not loaded"), "{}", answer.error());
        assert_eq!(endpoint.reviewer.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_slow_token_review_times_out_as_json_503() {
        let mut reviewer = StaticTokenReviewer::new();
        reviewer.delay = Duration::from_secs(60);
        let endpoint = endpoint_with(
            reviewer,
            true,
            RateLimiter::default(),
            Duration::from_millis(50),
        );
        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.error().contains("retry"), "{}", answer.error());
        assert_eq!(endpoint.outcomes(), vec!["timeout"]);
    }

    #[tokio::test]
    async fn other_paths_and_methods_answer_json_too() {
        let endpoint = endpoint();
        let answer = endpoint
            .send_request(Method::GET, contract::PATH_CERTIFICATES, None, Vec::new())
            .await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(answer.error().contains("POST"));
        let answer = endpoint
            .send_request(Method::POST, "/v1/other", None, Vec::new())
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert!(answer.error().contains(contract::PATH_CERTIFICATES));
    }

    // === Before authentication ===

    /// Runs `future` with the log captured: its result and what was logged.
    async fn logged<T>(future: impl Future<Output = T>) -> (T, String) {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogBuffer(writer.clone()))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // A callsite first hit by a test running beside this one, with no subscriber there,
        // may have cached "never"; recompute with this subscriber counted.
        tracing::callsite::rebuild_interest_cache();
        let result = future.await;
        drop(guard);
        let log = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
        (result, log)
    }

    struct LogBuffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn expired_deleted_pod_and_deleted_account_tokens_are_refused_with_the_reason_only_logged()
     {
        let endpoint = endpoint();
        for (token, reason) in [
            (EXPIRED_TOKEN, "service account token has expired"),
            (DELETED_POD_TOKEN, "pod \"web-0\" not found"),
            (DELETED_ACCOUNT_TOKEN, "service account pets/gone not found"),
        ] {
            let (answer, log) = logged(endpoint.ask(token, body_for(WEB, None))).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token}");
            assert!(
                !answer.error().contains(reason),
                "{token}: {}",
                answer.error()
            );
            assert!(
                answer.error().contains("audience weft-ca"),
                "{}",
                answer.error()
            );
            assert!(log.contains(reason), "{token}: the log says why: {log}");
            assert!(
                !log.contains(token),
                "{token}: the log never holds the token"
            );
        }
    }

    #[tokio::test]
    async fn a_successful_review_is_reused_and_a_refused_one_is_asked_again() {
        let endpoint = endpoint();
        for _ in 0..3 {
            let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        }
        assert_eq!(endpoint.reviewer.calls.load(Ordering::SeqCst), 1);
        for _ in 0..3 {
            let answer = endpoint.ask(EXPIRED_TOKEN, body_for(WEB, None)).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(endpoint.reviewer.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn one_source_is_limited_before_any_parsing_or_token_review() {
        let admission = Admission {
            per_source: RateLimiter::new(2, 0.01, 10),
            ..Admission::default()
        };
        let endpoint = endpoint_admitting(
            StaticTokenReviewer::new(),
            true,
            RateLimiter::default(),
            REQUEST_TIMEOUT,
            admission,
        );
        for _ in 0..2 {
            let answer = endpoint.ask("garbage", b"not json".to_vec()).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        }
        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.headers[header::RETRY_AFTER], "100");
        assert!(
            answer.error().contains("too many requests"),
            "{}",
            answer.error()
        );
        assert_eq!(endpoint.reviewer.calls.load(Ordering::SeqCst), 0);
        assert_eq!(endpoint.outcomes().last(), Some(&"source_rate_limited"));
    }

    #[tokio::test]
    async fn token_reviews_are_rate_limited_globally_but_cached_tokens_still_pass() {
        let admission = Admission {
            reviews: RateLimiter::new(2, 0.01, 1),
            ..Admission::default()
        };
        let endpoint = endpoint_admitting(
            StaticTokenReviewer::new(),
            true,
            RateLimiter::default(),
            REQUEST_TIMEOUT,
            admission,
        );
        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        let answer = endpoint.ask("garbage", body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        let answer = endpoint.ask(DB_TOKEN, body_for(DB, None)).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(answer.headers.contains_key(header::RETRY_AFTER));
        assert_eq!(endpoint.outcomes().last(), Some(&"token_review_busy"));
        // The web token's review is cached: no TokenReview needed, so no limit applies.
        let answer = endpoint.ask(WEB_TOKEN, body_for(WEB, None)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        assert_eq!(endpoint.reviewer.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_token_reviews_are_capped_and_the_excess_waits_then_gives_up() {
        let mut reviewer = StaticTokenReviewer::new();
        reviewer.delay = Duration::from_millis(300);
        let admission = Admission {
            review_slots: tokio::sync::Semaphore::new(2),
            review_wait: Duration::from_millis(100),
            ..Admission::default()
        };
        let endpoint = endpoint_admitting(
            reviewer,
            true,
            RateLimiter::default(),
            REQUEST_TIMEOUT,
            admission,
        );
        let answers = futures::future::join_all((0..6).map(|i| {
            endpoint.ask(
                if i % 2 == 0 { "garbage" } else { "junk" },
                body_for(WEB, None),
            )
        }))
        .await;
        let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
        assert_eq!(
            statuses.iter().filter(|&&s| s == 401).count(),
            2,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|&&s| s == 429).count(),
            4,
            "{statuses:?}"
        );
        assert_eq!(endpoint.reviewer.most_in_flight.load(Ordering::SeqCst), 2);
        assert!(
            answers
                .iter()
                .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
                .all(|a| a.error().contains("in flight")
                    && a.headers.contains_key(header::RETRY_AFTER))
        );
    }

    #[tokio::test]
    async fn a_csr_over_the_pem_budget_is_refused_before_the_token_review() {
        let endpoint = endpoint();
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            "QUFB".repeat(MAX_CSR_PEM_BYTES / 4)
        );
        let body = serde_json::json!({ "csr": pem }).to_string().into_bytes();
        assert!(body.len() < MAX_REQUEST_BYTES);
        let answer = endpoint.ask(WEB_TOKEN, body).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            answer.error().contains("bytes of PEM"),
            "{}",
            answer.error()
        );
        assert_eq!(endpoint.reviewer.calls.load(Ordering::SeqCst), 0);
    }

    // === TokenReview cache ===

    fn jwt_expiring(exp: SystemTime) -> String {
        use base64::Engine as _;
        let seconds = exp
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({ "aud": ["weft-ca"], "exp": seconds }).to_string();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2lnbmF0dXJl",
            b64.encode(r#"{"alg":"RS256"}"#),
            b64.encode(claims)
        )
    }

    fn web() -> Reviewed {
        Reviewed {
            namespace: "pets".into(),
            service_account: "web".into(),
            pod: Some("web-0".into()),
        }
    }

    #[test]
    fn a_cached_review_lasts_the_ttl_or_until_the_token_expires_whichever_is_first() {
        let cache = TokenReviewCache::new(Duration::from_secs(10), 100);
        let (now, wall) = (Instant::now(), SystemTime::now());

        // A token valid for an hour: the TTL decides.
        let long = jwt_expiring(wall + Duration::from_secs(3600));
        cache.insert_at(&long, &web(), now, wall);
        assert_eq!(
            cache.get_at(&long, now + Duration::from_secs(9)),
            Some(web())
        );
        assert_eq!(cache.get_at(&long, now + Duration::from_secs(10)), None);

        // A token expiring in 3 s: its exp decides.
        let short = jwt_expiring(wall + Duration::from_secs(3));
        cache.insert_at(&short, &web(), now, wall);
        assert_eq!(
            cache.get_at(&short, now + Duration::from_secs(2)),
            Some(web())
        );
        assert_eq!(cache.get_at(&short, now + Duration::from_secs(3)), None);

        // Already expired: not cached at all. Not a JWT: the TTL.
        let expired = jwt_expiring(wall - Duration::from_secs(1));
        cache.insert_at(&expired, &web(), now, wall);
        assert_eq!(cache.get_at(&expired, now), None);
        cache.insert_at("opaque-token", &web(), now, wall);
        assert_eq!(
            cache.get_at("opaque-token", now + Duration::from_secs(9)),
            Some(web())
        );
        // Another token never hits an entry.
        assert_eq!(cache.get_at("opaque-token2", now), None);
    }

    #[test]
    fn the_cache_keeps_a_hash_of_the_token_never_the_token_and_stays_bounded() {
        let cache = TokenReviewCache::new(Duration::from_secs(10), 3);
        let now = Instant::now();
        let wall = SystemTime::now();
        for i in 0..10 {
            cache.insert_at(
                &format!("secret-token-{i}"),
                &web(),
                now + Duration::from_secs(i),
                wall,
            );
        }
        assert_eq!(cache.len(), 3);
        // The latest survive (the ones expiring first are dropped).
        let later = now + Duration::from_secs(9);
        assert_eq!(cache.get_at("secret-token-9", later), Some(web()));
        assert_eq!(cache.get_at("secret-token-0", later), None);
        let entries = cache.entries.lock().unwrap();
        let stored = format!("{:?}", entries.keys().collect::<Vec<_>>());
        assert!(!stored.contains("secret"));
        assert!(entries.contains_key(&token_key("secret-token-9")));
        assert_eq!(
            token_key("abc").to_vec(),
            ring::digest::digest(&ring::digest::SHA256, b"abc")
                .as_ref()
                .to_vec()
        );
    }

    #[test]
    fn a_zero_ttl_turns_the_cache_off() {
        let cache = TokenReviewCache::new(Duration::ZERO, 10);
        cache.insert("t", &web());
        assert_eq!(cache.get("t"), None);
    }

    // === TokenReview answers ===

    fn status(
        authenticated: bool,
        audiences: &[&str],
        username: &str,
        pod: Option<&str>,
    ) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            error: None,
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: pod.map(|pod| BTreeMap::from([(EXTRA_POD_NAME.into(), vec![pod.into()])])),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_service_account_token_for_weft_ca_is_its_namespace_account_and_pod() {
        let answer = status(
            true,
            &["weft-ca"],
            "system:serviceaccount:pets:web",
            Some("web-7d9f-abcde"),
        );
        assert_eq!(
            reviewed_from_status(Some(&answer)),
            Ok(Reviewed {
                namespace: "pets".into(),
                service_account: "web".into(),
                pod: Some("web-7d9f-abcde".into()),
            })
        );
        let unbound = status(
            true,
            &["other", "weft-ca"],
            "system:serviceaccount:a:b",
            None,
        );
        assert_eq!(reviewed_from_status(Some(&unbound)).unwrap().pod, None);
    }

    #[test]
    fn an_unauthenticated_answer_is_401_with_the_api_servers_error_and_a_hint() {
        let mut answer = status(false, &[], "", None);
        answer.error = Some("token has expired".into());
        let err = reviewed_from_status(Some(&answer)).unwrap_err();
        assert_eq!(err.status_code(), 401);
        let message = err.to_string();
        assert!(
            message.contains("token has expired")
                && message.contains(
                    "the token must be the projected token with audience weft-ca at /var/run/secrets/tokens/weft-token"
                ),
            "{message}"
        );
        let no_verdict = TokenReviewStatus::default();
        assert_eq!(
            reviewed_from_status(Some(&no_verdict))
                .unwrap_err()
                .status_code(),
            401
        );
    }

    #[test]
    fn an_answer_for_other_audiences_is_401() {
        let answer = status(
            true,
            &["https://kubernetes.default.svc"],
            "system:serviceaccount:a:b",
            None,
        );
        let err = reviewed_from_status(Some(&answer)).unwrap_err();
        assert!(matches!(err, ReviewError::WrongAudience { .. }), "{err}");
        assert_eq!(err.status_code(), 401);
        let mut missing = answer.clone();
        missing.audiences = None;
        assert_eq!(
            reviewed_from_status(Some(&missing))
                .unwrap_err()
                .metric_label(),
            "wrong_audience"
        );
    }

    #[test]
    fn a_user_that_is_not_a_service_account_is_403() {
        for username in [
            "admin",
            "system:node:worker-1",
            "system:serviceaccount:",
            "system:serviceaccount:pets",
            "system:serviceaccount::web",
            "system:serviceaccount:pets:",
            "system:serviceaccount:pets:web:extra",
        ] {
            let answer = status(true, &["weft-ca"], username, None);
            let err = reviewed_from_status(Some(&answer)).unwrap_err();
            assert_eq!(
                err,
                ReviewError::NotServiceAccount {
                    username: username.into()
                }
            );
            assert_eq!(err.status_code(), 403);
        }
    }

    #[test]
    fn an_answer_without_status_is_an_api_failure() {
        let err = reviewed_from_status(None).unwrap_err();
        assert_eq!(err.status_code(), 503);
        assert!(err.to_string().contains("tokenreviews"), "{err}");
    }

    // === Rate limiter ===

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let limiter = RateLimiter::new(2, 1.0, 10);
        let start = Instant::now();
        assert_eq!(limiter.check_at(WEB, start), Ok(()));
        assert_eq!(limiter.check_at(WEB, start), Ok(()));
        let wait = limiter.check_at(WEB, start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        let half = start + Duration::from_millis(500);
        assert_eq!(
            limiter.check_at(WEB, half).unwrap_err(),
            Duration::from_millis(500)
        );
        assert_eq!(
            limiter.check_at(WEB, start + Duration::from_secs(1)),
            Ok(())
        );
        // A long pause refills to the burst, never beyond it.
        let later = start + Duration::from_secs(3600);
        assert_eq!(limiter.check_at(WEB, later), Ok(()));
        assert_eq!(limiter.check_at(WEB, later), Ok(()));
        assert!(limiter.check_at(WEB, later).is_err());
    }

    #[test]
    fn a_flood_of_identities_keeps_the_map_bounded() {
        let limiter = RateLimiter::new(1, 0.001, 100);
        let start = Instant::now();
        for i in 0..10_000 {
            let at = start + Duration::from_millis(i);
            assert_eq!(
                limiter.check_at(&format!("spiffe://x/ns/n/sa/{i}"), at),
                Ok(())
            );
        }
        assert!(limiter.tracked() <= 100, "{}", limiter.tracked());
        // The most recent identities are still limited.
        let at = start + Duration::from_millis(10_000);
        assert!(limiter.check_at("spiffe://x/ns/n/sa/9999", at).is_err());
    }

    #[test]
    fn refilled_buckets_are_dropped_before_limited_ones() {
        let limiter = RateLimiter::new(1, 1.0, 2);
        let start = Instant::now();
        assert_eq!(limiter.check_at("idle", start), Ok(()));
        let later = start + Duration::from_secs(10);
        assert_eq!(limiter.check_at("busy", later), Ok(()));
        // "idle" has refilled: it goes, and "busy" keeps its empty bucket.
        assert_eq!(limiter.check_at("new", later), Ok(()));
        assert!(limiter.check_at("busy", later).is_err());
        assert_eq!(limiter.tracked(), 2);
    }

    #[test]
    fn every_error_has_a_status_and_a_label() {
        let errors = [
            CsrEndpointError::BodyTooLarge,
            CsrEndpointError::NoBearer,
            CsrEndpointError::CaNotReady,
            CsrEndpointError::Timeout,
            CsrEndpointError::RateLimited {
                identity: WEB.into(),
                retry_after: Duration::from_millis(1500),
            },
        ];
        let codes: Vec<u16> = errors.iter().map(|e| e.status_code().as_u16()).collect();
        assert_eq!(codes, vec![413, 401, 503, 503, 429]);
        let response = errors[4].clone().into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert!(errors.iter().all(|e| !e.metric_label().is_empty()));
    }
}
