//! Pod creations in a loop while something happens to the operator (a rollout restart, the
//! leader's pod deleted): server-side dry runs, so each one goes through the real admission
//! chain and weft's webhook without loading the node.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Cluster;

/// One creation: whether the API server accepted it, whether weft's proxy was added, and what
/// kubectl said when it was refused.
#[derive(Debug)]
pub struct Attempt {
    pub ok: bool,
    pub injected: bool,
    pub detail: String,
}

pub struct CreationLoop {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Attempt>>,
}

const POD: &str = r#"{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"generateName": "loop-"},
 "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "60"]}]}}"#;

impl CreationLoop {
    /// Starts creating pods in `namespace`, which must be enrolled.
    pub fn start(c: &'static Cluster, namespace: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let namespace = namespace.to_string();
        let handle = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut attempts = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let created = c.dry_run_pod(&namespace, POD);
                    attempts.push(Attempt {
                        ok: created.is_ok(),
                        injected: created.as_ref().is_ok_and(super::has_proxy),
                        detail: created.err().unwrap_or_default(),
                    });
                    std::thread::sleep(Duration::from_millis(100));
                }
                attempts
            }
        });
        Self { stop, handle }
    }

    /// Stops the loop; every attempt, in order.
    pub fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("creation loop")
    }
}

/// Every creation was accepted and injected; `during` names what was going on.
pub fn assert_all_injected(attempts: &[Attempt], during: &str, at_least: usize) {
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok).collect();
    let bare = attempts.iter().filter(|a| a.ok && !a.injected).count();
    println!(
        "{during}: {} pod creations, {} refused, {bare} not injected",
        attempts.len(),
        failed.len()
    );
    assert!(
        attempts.len() >= at_least,
        "only {} creations during {during}",
        attempts.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} creations failed during {during}; first: {}",
        failed.len(),
        attempts.len(),
        failed[0].detail
    );
    assert_eq!(bare, 0, "pods created during {during} were not injected");
}
