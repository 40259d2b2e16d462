//! Leader election (SPEC §11): every replica serves the webhook, the CSR endpoint and the
//! config stream, but only the holder of the Lease `weft-operator` runs the controllers.
//! `decide` is the rule; `LeaderElection::run` applies it with optimistic concurrency. Every
//! Lease call has a deadline ([`CALL_TIMEOUT`]), and a leader's look at the Lease is cut off
//! at [`RENEW_DEADLINE`] after its last renewal began: an API server that stops answering
//! makes the leader stop its controllers before another replica can take the Lease over.
//!
//! Written here rather than taken from a crate: `kube-leader-election` needs kube 4, and
//! `kube-lease-manager` (kube 5) renews with unconditional patches and lets followers sleep
//! until the recorded expiry, so a Lease given back on SIGTERM would not shorten failover.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::controllers::is_conflict;
use crate::kube::metrics::OperatorMetrics;

/// The Lease, in the operator's namespace.
pub const LEASE_NAME: &str = "weft-operator";
/// How long a holder's claim stands without renewal (`leaseDurationSeconds`). With the
/// follower's look every [`RETRY_PERIOD`] and a renewal every [`RENEW_PERIOD`], a leader cut
/// off from the API server is replaced within about 10 + 2 + 2 s (issue 21: ≤ 15 s; 15 s
/// leases measured 16.3 and 16.7 s).
pub const LEASE_DURATION_SECONDS: i32 = 10;
/// How often the leader renews.
pub const RENEW_PERIOD: Duration = Duration::from_secs(2);
/// A leader that could not renew for this long (counted from the start of its last
/// successful renewal) stops its controllers: before the lease runs out, so two replicas never
/// run them at once. A follower takes over only after seeing the Lease unchanged for the
/// lease duration on its own clock, which starts no earlier than that renewal.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(7);
/// Longest wait for one Lease call (the client's own read timeout is minutes): shorter than
/// the renew deadline, so a leader whose API server hangs still gets to retry once.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a follower looks at the Lease (and anyone retries after an error).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Bound on giving the Lease back at exit; the pod's grace period is far longer.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on the controllers' runtime winding down when a term ends.
const TERM_SHUTDOWN: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} Lease {LEASE_NAME}: {source}{}", forbidden_hint(source))]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(
        "{action} Lease {LEASE_NAME}: the API server did not answer within {after:?} (unreachable or overloaded?)"
    )]
    Timeout {
        action: &'static str,
        after: Duration,
    },
    #[error(
        "could not renew Lease {LEASE_NAME} within {RENEW_DEADLINE:?} of the last renewal (the API server did not answer in time)"
    )]
    RenewDeadline,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Timeout { .. } => "timeout",
            Error::RenewDeadline => "renew_deadline",
        }
    }
}

/// `call` with [`CALL_TIMEOUT`]: the API server's error, or its silence, as an [`Error`] of
/// `action` (kube's own errors are left to the caller, which treats conflicts specially).
async fn bounded<T>(
    action: &'static str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| Error::Timeout {
            action,
            after: CALL_TIMEOUT,
        })
}

fn forbidden_hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            " (the operator's Role needs get, create and update on leases in its namespace; see config/rbac/role.yaml)"
        }
        _ => "",
    }
}

fn kube_error(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

// === Decision ===

/// What a replica does with the Lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (never held, or given back): take it.
    Acquire,
    /// `holder` stopped renewing for longer than the lease duration: take it over.
    TakeOver { holder: String },
    /// We hold it: renew.
    Renew,
    /// Another replica holds it and renews: wait.
    Follow { holder: String },
}

/// The rule. `unchanged_for` is how long this replica has seen the same Lease record, on its
/// own clock (as client-go does), so clock skew between nodes cannot make a live claim look
/// expired.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    match holder {
        None => Decision::Acquire,
        Some(h) if h == me => Decision::Renew,
        Some(h) if unchanged_for >= lease_duration(spec) => Decision::TakeOver {
            holder: h.to_string(),
        },
        Some(h) => Decision::Follow {
            holder: h.to_string(),
        },
    }
}

fn lease_duration(spec: Option<&LeaseSpec>) -> Duration {
    let seconds = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .unwrap_or(LEASE_DURATION_SECONDS as u64);
    Duration::from_secs(seconds)
}

/// `lease` claimed (or renewed) by `me` at `now`. The resourceVersion is kept, so the write
/// fails with a conflict if anyone changed the Lease since it was read.
pub fn claimed(mut lease: Lease, me: &str, now: MicroTime) -> Lease {
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(me) {
        spec.holder_identity = Some(me.to_string());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
    lease
}

/// `lease` given back: no holder, so the next replica to look takes it at once.
pub fn released(mut lease: Lease) -> Lease {
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
    }
    lease
}

/// How long the Lease has looked the same to this replica (any write changes its
/// resourceVersion).
#[derive(Debug, Default)]
struct Observation {
    seen: Option<(String, Instant)>,
}

impl Observation {
    fn see(&mut self, resource_version: Option<&str>, now: Instant) -> Duration {
        let version = resource_version.unwrap_or_default();
        match &self.seen {
            Some((v, since)) if v == version => now.saturating_duration_since(*since),
            _ => {
                self.seen = Some((version.to_string(), now));
                Duration::ZERO
            }
        }
    }
}

// === LeaderElection ===

/// The outcome of one look at the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    /// Holding the Lease after `Acquire`, `TakeOver` or `Renew`.
    Leader(Decision),
    Follower {
        holder: String,
    },
}

pub struct LeaderElection {
    api: Api<Lease>,
    namespace: String,
    identity: String,
    metrics: Arc<OperatorMetrics>,
    /// True while this replica runs the controllers; shared with writers outside them.
    leading: Arc<AtomicBool>,
    /// Where the controllers' and the exit release's own clients connect; None: the
    /// environment's (in-cluster) configuration.
    config: Option<kube::Config>,
}

impl LeaderElection {
    /// `identity` is the pod name (`POD_NAME`): it must differ between replicas. `weft_leader`
    /// in `metrics` says whether this replica runs the controllers.
    pub fn new(
        client: Client,
        namespace: &str,
        identity: &str,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            metrics,
            leading: Arc::default(),
            config: None,
        }
    }

    /// The same, with every client (the Lease's, each term's and the exit release's) made from
    /// `config` instead of the environment: an API server of the caller's choosing (tests).
    pub fn with_config(
        config: kube::Config,
        namespace: &str,
        identity: &str,
        metrics: Arc<OperatorMetrics>,
    ) -> Result<Self, kube::Error> {
        let client = Client::try_from(config.clone())?;
        Ok(Self {
            config: Some(config),
            ..Self::new(client, namespace, identity, metrics)
        })
    }

    /// A flag that is true while this replica leads (runs the controllers). The CA-bundle
    /// controller, which runs on every replica to load the CA, writes only while it is set.
    pub fn leading(&self) -> Arc<AtomicBool> {
        self.leading.clone()
    }

    /// Runs until the process ends: while this replica holds the Lease it runs
    /// `controllers(client)` (with a client of the term's own), and stops them when it loses
    /// the Lease. When the process stops, a Lease it holds is given back.
    pub async fn run<F, Fut>(self, controllers: F)
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let controllers = Arc::new(controllers);
        let held = Arc::new(AtomicBool::new(false));
        let _release = {
            let (namespace, identity, held) =
                (self.namespace.clone(), self.identity.clone(), held.clone());
            let config = self.config.clone();
            exit_hook(move || {
                if held.load(Ordering::Acquire) {
                    release_blocking(config, &namespace, &identity);
                }
            })
        };
        let mut seen = Observation::default();
        let mut term: Option<Term> = None;
        let mut last_renewal: Option<Instant> = None;
        let mut following: Option<String> = None;
        loop {
            let started = Instant::now();
            // A leader's look ends at its renew deadline, answered or not: past it, another
            // replica may soon take the Lease over.
            let deadline = last_renewal
                .filter(|_| term.is_some())
                .map(|t| t + RENEW_DEADLINE);
            let looked = match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), self.step(&mut seen))
                    .await
                    .unwrap_or(Err(Error::RenewDeadline)),
                None => self.step(&mut seen).await,
            };
            let pause = match looked {
                Ok(Role::Leader(how)) => {
                    held.store(true, Ordering::Release);
                    // When the write began: the API server recorded it no earlier, so the
                    // deadline counted from here runs out before the Lease does.
                    last_renewal = Some(started);
                    following = None;
                    if term.as_ref().is_none_or(Term::ended) {
                        let me = &self.identity;
                        match (term.take(), how) {
                            (Some(_), _) => tracing::warn!(
                                "controllers ended on their own; starting them again"
                            ),
                            (None, Decision::TakeOver { holder }) => tracing::info!(
                                %me,
                                "leader: {holder} stopped renewing Lease {LEASE_NAME}; took it over, starting the controllers"
                            ),
                            (None, Decision::Acquire) => tracing::info!(
                                %me,
                                "leader: Lease {LEASE_NAME} was free; took it, starting the controllers"
                            ),
                            (None, _) => tracing::info!(
                                %me,
                                "leader: holding Lease {LEASE_NAME}; starting the controllers"
                            ),
                        }
                        match Term::start(controllers.clone(), self.config.clone()) {
                            Ok(t) => term = Some(t),
                            Err(e) => tracing::error!("cannot start the controllers: {e}"),
                        }
                    }
                    RENEW_PERIOD
                }
                Ok(Role::Follower { holder }) => {
                    held.store(false, Ordering::Release);
                    if term.take().is_some() {
                        tracing::warn!(%holder, "lost Lease {LEASE_NAME}; controllers stopped");
                    }
                    if following.as_deref() != Some(holder.as_str()) {
                        tracing::info!(%holder, "follower: Lease {LEASE_NAME} is held by another replica");
                        following = Some(holder);
                    }
                    RETRY_PERIOD
                }
                Err(e) => {
                    tracing::warn!(error = e.metric_label(), "leader election: {e}");
                    if term.is_some()
                        && (matches!(e, Error::RenewDeadline)
                            || last_renewal.is_none_or(|t| t.elapsed() >= RENEW_DEADLINE))
                    {
                        term = None;
                        tracing::warn!(
                            "could not renew Lease {LEASE_NAME} for {RENEW_DEADLINE:?}; controllers stopped"
                        );
                    }
                    // A leader looks again no later than its renew deadline, so it stops its
                    // controllers at the deadline, not a retry period after it: with a 10 s
                    // lease that keeps them stopped (7 s + shutdown) well before anyone may
                    // take over (10 s after seeing the last renewal).
                    match (&term, last_renewal) {
                        (Some(_), Some(t)) => RETRY_PERIOD
                            .min((t + RENEW_DEADLINE).saturating_duration_since(Instant::now())),
                        _ => RETRY_PERIOD,
                    }
                }
            };
            self.metrics.set_leader(term.is_some());
            self.leading.store(term.is_some(), Ordering::Release);
            tokio::time::sleep(pause).await;
        }
    }

    /// Reads the Lease and acts on `decide`; a lost write race makes this replica a follower.
    async fn step(&self, seen: &mut Observation) -> Result<Role, Error> {
        let Some(lease) = bounded("reading", self.api.get_opt(LEASE_NAME))
            .await?
            .map_err(kube_error("reading"))?
        else {
            return self.create().await;
        };
        let unchanged_for = seen.see(lease.metadata.resource_version.as_deref(), Instant::now());
        let previous = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default();
        match decide(lease.spec.as_ref(), &self.identity, unchanged_for) {
            Decision::Follow { holder } => Ok(Role::Follower { holder }),
            how => {
                let lease = claimed(lease, &self.identity, now());
                match bounded(
                    "updating",
                    self.api.replace(LEASE_NAME, &PostParams::default(), &lease),
                )
                .await?
                {
                    Ok(_) => Ok(Role::Leader(how)),
                    Err(e) if is_conflict(&e) => Ok(Role::Follower { holder: previous }),
                    Err(e) => Err(kube_error("updating")(e)),
                }
            }
        }
    }

    async fn create(&self) -> Result<Role, Error> {
        let lease = claimed(
            Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.to_string()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: None,
            },
            &self.identity,
            now(),
        );
        match bounded("creating", self.api.create(&PostParams::default(), &lease)).await? {
            Ok(_) => Ok(Role::Leader(Decision::Acquire)),
            // Another replica created it first; the next look says who holds it.
            Err(e) if is_conflict(&e) => Ok(Role::Follower {
                holder: String::new(),
            }),
            Err(e) => Err(kube_error("creating")(e)),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Gives the Lease back if `identity` still holds it. Returns whether it did.
async fn release(api: &Api<Lease>, identity: &str) -> Result<bool, Error> {
    let Some(lease) = api
        .get_opt(LEASE_NAME)
        .await
        .map_err(kube_error("reading"))?
    else {
        return Ok(false);
    };
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    if holder != Some(identity) {
        return Ok(false);
    }
    api.replace(LEASE_NAME, &PostParams::default(), &released(lease))
        .await
        .map_err(kube_error("releasing"))?;
    Ok(true)
}

/// Runs at process exit, when the main runtime (and its client) are already winding down:
/// so on a runtime and client of its own, bounded by `RELEASE_TIMEOUT`.
fn release_blocking(config: Option<kube::Config>, namespace: &str, identity: &str) {
    let released = on_own_runtime(RELEASE_TIMEOUT, async {
        let client = client_from(config)
            .await
            .map_err(kube_error("connecting to release"))?;
        release(&Api::namespaced(client, namespace), identity).await
    });
    match released {
        Some(Ok(true)) => tracing::info!("released Lease {LEASE_NAME} for a fast failover"),
        Some(Ok(false)) => {}
        Some(Err(e)) => tracing::warn!("{e}"),
        None => tracing::warn!("could not release Lease {LEASE_NAME} within {RELEASE_TIMEOUT:?}"),
    }
}

/// A client of `config`, or of the environment's configuration.
async fn client_from(config: Option<kube::Config>) -> Result<Client, kube::Error> {
    match config {
        Some(c) => Client::try_from(c),
        None => Client::try_default().await,
    }
}

/// Runs `work` to completion on a fresh single-threaded runtime, or gives up after `limit`.
/// Everything runtime-bound (timers included) is created inside it: the thread's own runtime
/// context may be one that is shutting down.
fn on_own_runtime<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async { tokio::time::timeout(limit, work).await.ok() })
}

// === Term ===

/// The controllers of one leadership term, on a runtime of their own: ending the term drops
/// that runtime, which cancels every task the controllers spawned (watches, retries), not
/// only the top one. Dropping a `Term` ends it.
struct Term {
    _stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Term {
    fn start<F, Fut>(controllers: Arc<F>, config: Option<kube::Config>) -> std::io::Result<Term>
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("weft-controllers".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let client = match client_from(config).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!("controllers: cannot reach the API server: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        () = controllers(client) => {}
                        _ = stopped => {}
                    }
                });
                runtime.shutdown_timeout(TERM_SHUTDOWN);
            })?;
        Ok(Term {
            _stop: stop,
            thread,
        })
    }

    /// The controllers returned (or never started): the term must be started again.
    fn ended(&self) -> bool {
        self.thread.is_finished()
    }
}

// === Exit hook ===

/// Runs its work on the runtime's blocking pool once dropped. Held by a task, it is dropped
/// when the runtime shuts down, and the runtime's shutdown waits for blocking work: so the
/// work also runs when the process exits (after SIGTERM, or any return from `main`).
struct ExitHook {
    _armed: std::sync::mpsc::Sender<()>,
}

fn exit_hook(work: impl FnOnce() + Send + 'static) -> ExitHook {
    let (armed, disarmed) = std::sync::mpsc::channel::<()>();
    tokio::task::spawn_blocking(move || {
        // Nothing is ever sent: this returns when the hook is dropped.
        let _ = disarmed.recv();
        work();
    });
    ExitHook { _armed: armed }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "weft-operator-a";
    const OTHER: &str = "weft-operator-b";

    fn held_by(holder: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            ..Default::default()
        }
    }

    fn at(second: i64) -> MicroTime {
        MicroTime(k8s_openapi::jiff::Timestamp::from_second(second).unwrap_or_default())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_free_lease_is_taken() {
        assert_eq!(decide(None, ME, secs(0)), Decision::Acquire);
        assert_eq!(decide(Some(&held_by(None)), ME, secs(0)), Decision::Acquire);
        // Released by a replica that set the holder to the empty string.
        assert_eq!(
            decide(Some(&held_by(Some(""))), ME, secs(0)),
            Decision::Acquire
        );
    }

    #[test]
    fn a_lease_held_by_me_is_renewed_however_old() {
        assert_eq!(
            decide(Some(&held_by(Some(ME))), ME, secs(0)),
            Decision::Renew
        );
        // Our own claim outlived a restart of this container: take it straight back.
        assert_eq!(
            decide(Some(&held_by(Some(ME))), ME, secs(60)),
            Decision::Renew
        );
    }

    #[test]
    fn a_lease_held_by_another_replica_is_respected_until_it_expires() {
        let other = held_by(Some(OTHER));
        let follow = Decision::Follow {
            holder: OTHER.to_string(),
        };
        assert_eq!(decide(Some(&other), ME, secs(0)), follow);
        let d = LEASE_DURATION_SECONDS as u64;
        assert_eq!(decide(Some(&other), ME, secs(d - 1)), follow);
        let take_over = Decision::TakeOver {
            holder: OTHER.to_string(),
        };
        assert_eq!(decide(Some(&other), ME, secs(d)), take_over);
    }

    #[test]
    fn expiry_uses_the_holders_duration_or_the_default() {
        let short = LeaseSpec {
            lease_duration_seconds: Some(3),
            ..held_by(Some(OTHER))
        };
        assert!(matches!(
            decide(Some(&short), ME, secs(3)),
            Decision::TakeOver { .. }
        ));
        let unset = LeaseSpec {
            lease_duration_seconds: None,
            ..held_by(Some(OTHER))
        };
        let d = LEASE_DURATION_SECONDS as u64;
        assert!(matches!(
            decide(Some(&unset), ME, secs(d - 1)),
            Decision::Follow { .. }
        ));
        assert!(matches!(
            decide(Some(&unset), ME, secs(d)),
            Decision::TakeOver { .. }
        ));
    }

    #[test]
    fn claiming_from_another_replica_counts_a_transition_and_keeps_the_version() {
        let lease = Lease {
            metadata: ObjectMeta {
                resource_version: Some("42".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                lease_transitions: Some(3),
                acquire_time: Some(at(1)),
                ..held_by(Some(OTHER))
            }),
        };
        let taken = claimed(lease, ME, at(100));
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("42"));
        let spec = taken.spec.clone().unwrap_or_default();
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(at(100)));
        assert_eq!(spec.renew_time, Some(at(100)));
        assert_eq!(spec.lease_duration_seconds, Some(LEASE_DURATION_SECONDS));

        // Renewing moves only the renew time.
        let renewed = claimed(taken, ME, at(105)).spec.unwrap_or_default();
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(at(100)));
        assert_eq!(renewed.renew_time, Some(at(105)));
    }

    #[test]
    fn a_released_lease_has_no_holder_and_is_free_at_once() {
        let lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(held_by(Some(ME))),
        };
        let free = released(lease);
        assert_eq!(
            free.spec.as_ref().and_then(|s| s.holder_identity.clone()),
            None
        );
        assert_eq!(
            decide(free.spec.as_ref(), OTHER, secs(0)),
            Decision::Acquire
        );
    }

    #[test]
    fn the_lease_ages_only_while_its_version_stays_the_same() {
        let start = Instant::now();
        let mut seen = Observation::default();
        assert_eq!(seen.see(Some("1"), start), secs(0));
        assert_eq!(seen.see(Some("1"), start + secs(7)), secs(7));
        // A renewal (new version) starts the clock again.
        assert_eq!(seen.see(Some("2"), start + secs(8)), secs(0));
        assert_eq!(seen.see(Some("2"), start + secs(20)), secs(12));
    }

    #[test]
    fn the_exit_hook_runs_before_the_runtime_finishes_shutting_down() {
        let ran = Arc::new(AtomicBool::new(false));
        let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        else {
            panic!("cannot build a runtime");
        };
        {
            let ran = ran.clone();
            runtime.spawn(async move {
                let _hook = exit_hook(move || {
                    // Like the release: async work with timers, on a runtime of its own,
                    // while this one shuts down; shutdown waits for it.
                    let done = on_own_runtime(secs(5), async {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    });
                    ran.store(done.is_some(), Ordering::SeqCst);
                });
                std::future::pending::<()>().await;
            });
        }
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        drop(runtime);
        assert!(ran.load(Ordering::SeqCst));
    }
}
