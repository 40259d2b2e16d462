//! Issue 21 item 7: leader election against an API server that stops answering the leader.
//! Two replicas share one fake API server through two listeners; the leader's listener then
//! hangs (accepts, reads, never answers), as an API server partitioned from the leader looks
//! to it. The leader must stop its controllers within the renew deadline of its last renewal,
//! and the other replica may start its own only after that: never two leaders.

mod operator_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use operator_support::{FakeApiServer, config_of};
use weft::kube::metrics::OperatorMetrics;
use weft::operator::leader::{
    LEASE_DURATION_SECONDS, LeaderElection, RENEW_DEADLINE, RETRY_PERIOD,
};

/// Whether a replica's controllers run now, as the controllers themselves see it: set when
/// they start, cleared when their future is dropped (the term's runtime shut down).
#[derive(Clone, Default)]
struct Running(Arc<AtomicBool>);

struct Stopped(Running);

impl Drop for Stopped {
    fn drop(&mut self) {
        (self.0).0.store(false, Ordering::SeqCst);
    }
}

impl Running {
    fn now(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Controllers that do nothing but say they run, until their future is dropped.
    fn start(&self) -> impl Future<Output = ()> + use<> {
        let me = self.clone();
        async move {
            me.0.store(true, Ordering::SeqCst);
            let _stopped = Stopped(me);
            std::future::pending::<()>().await
        }
    }
}

async fn until(within: Duration, what: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if what() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    what()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_steps_down_before_another_takes_over() {
    let api = FakeApiServer::default();
    let (to_a, to_b) = (api.listen().await, api.listen().await);
    let replica = |endpoint: &operator_support::Endpoint, name: &str| {
        LeaderElection::with_config(
            config_of(endpoint.addr),
            "weft-system",
            name,
            Arc::new(OperatorMetrics::new()),
        )
        .unwrap()
    };
    let (a, b) = (replica(&to_a, "replica-a"), replica(&to_b, "replica-b"));
    let (a_leads, b_leads) = (a.leading(), b.leading());
    let (a_runs, b_runs) = (Running::default(), Running::default());

    let runs = |r: &Running| {
        let r = r.clone();
        move |_client: kube::Client| r.start()
    };
    tokio::spawn(a.run(runs(&a_runs)));
    assert!(
        until(Duration::from_secs(5), || a_runs.now()).await,
        "a leads"
    );
    tokio::spawn(b.run(runs(&b_runs)));
    // b reads the Lease and follows (it is renewed every 5 s).
    tokio::time::sleep(RETRY_PERIOD * 3).await;
    assert!(a_leads.load(Ordering::SeqCst) && a_runs.now());
    assert!(
        !b_leads.load(Ordering::SeqCst) && !b_runs.now(),
        "b follows"
    );

    // The partition: a's API server stops answering. a renewed at most RENEW_PERIOD ago.
    to_a.hang(true);
    let cut = Instant::now();
    let (mut a_stopped, mut b_started) = (None, None);
    let mut both = false;
    let limit = Duration::from_secs(LEASE_DURATION_SECONDS as u64) + RETRY_PERIOD * 3;
    while cut.elapsed() < limit && (a_stopped.is_none() || b_started.is_none()) {
        let (a_now, b_now) = (a_runs.now(), b_runs.now());
        both |= a_now && b_now;
        if !a_now && a_stopped.is_none() {
            a_stopped = Some(cut.elapsed());
        }
        if b_now && b_started.is_none() {
            b_started = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "partition -> a's controllers stopped after {a_stopped:?}, b's started after {b_started:?}"
    );
    let a_stopped = a_stopped.expect("a stops its controllers though its API server hangs");
    let b_started = b_started.expect("b takes the Lease over");
    assert!(!both, "two replicas ran the controllers at once");
    // a's last renewal began at most a renew period before the cut; its deadline counts
    // from there (plus the term's runtime winding down, at most 1 s).
    assert!(
        a_stopped <= RENEW_DEADLINE + Duration::from_millis(1_500),
        "a stopped only after {a_stopped:?}"
    );
    assert!(!a_leads.load(Ordering::SeqCst));
    assert!(b_started > a_stopped);
    assert!(b_leads.load(Ordering::SeqCst));
}
