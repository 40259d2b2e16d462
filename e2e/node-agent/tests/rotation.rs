//! Root rotation under traffic on the local cluster (issue 24 item 4): a meshed client sends
//! requests at a fixed rate to a meshed Service (a new connection, so a new mTLS handshake,
//! each time) while `weft ca rotate --yes` moves the mesh from the builtin root to a new
//! builtin root through phases (a), (b), (c). No request fails; at the end no trust bundle
//! holds the old root (root ConfigMaps in every namespace, webhook caBundles, what every
//! proxy reports) and every proxy presents a certificate that `openssl verify` chains to the
//! new root only. Every revision carries RootRotation while it runs. One proxy (an idle
//! client) is stopped (SIGSTOP) when phase (b) begins: the rotation goes on without it, and
//! once continued it recovers by itself. Changes the mesh root: run it alone.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::ca::root_pem;
use support::{Cluster, deployed, wait_for, weft};

/// The meshed client: one `wget` every 200 ms (5 a second), each line `<unix seconds> ok|FAIL`.
const LOADGEN: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: loadgen, labels: {app: loadgen}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: loadgen
    image: busybox
    command: [sh, -c, "while true; do if timeout 10 wget -qO- http://bookstore/ >/dev/null; then echo \"$(date +%s) ok\"; else echo \"$(date +%s) FAIL\"; fi; sleep 0.2; done"]
"#;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Secret weft-system/`name`'s `ca.crt`, or "" when absent.
fn secret_cert(c: &Cluster, name: &str) -> String {
    let out = c.kubectl(&[
        "-n",
        "weft-system",
        "get",
        "secret",
        name,
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    if !out.status.success() {
        return String::new();
    }
    let b64 = String::from_utf8_lossy(&out.stdout).into_owned();
    let decoded = Command::new("bash")
        .arg("-c")
        .arg(format!("echo '{}' | base64 -d", b64.trim()))
        .output()
        .expect("base64");
    String::from_utf8_lossy(&decoded.stdout).into_owned()
}

/// The base64 body of a one-certificate PEM: what shows whether a bundle holds it.
fn body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
}

fn holds(bundle: &str, pem: &str) -> bool {
    let b: String = bundle.lines().filter(|l| !l.starts_with("-----")).collect();
    b.contains(&body(pem))
}

/// The rotation state ConfigMap's JSON.
fn state(c: &Cluster) -> serde_json::Value {
    let out = c.kubectl(&[
        "-n",
        "weft-system",
        "get",
        "configmap",
        "weft-ca-rotation",
        "-o",
        "jsonpath={.data.state}",
    ]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// A pod's proxy process stopped with SIGSTOP (the node agent runs pods as host processes;
/// the pod's POD_NAME is in the process's environment), continued on drop.
struct Stopped(u32);

impl Stopped {
    fn proxy_of(pod: &str) -> Stopped {
        let want = format!("POD_NAME={pod}");
        let pid = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                String::from_utf8_lossy(&cmd).contains("weft-proxy")
                    && String::from_utf8_lossy(&cmd).contains("run")
                    && env.split(|b| *b == 0).any(|v| v == want.as_bytes())
            })
            .unwrap_or_else(|| panic!("no weft-proxy process of pod {pod}"));
        assert!(
            Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()
                .expect("kill")
                .success()
        );
        eprintln!("stopped the proxy of {pod} (pid {pid})");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// What the replicas last heard from `pod`'s proxy (ConfigMap weft-ca-rotation-acks).
fn buyer_report(c: &Cluster, pod: &str) -> String {
    let out = c.kubectl(&[
        "-n",
        "weft-system",
        "get",
        "configmap",
        "weft-ca-rotation-acks",
        "-o",
        "json",
    ]);
    let cm: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    cm["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| serde_json::from_str::<serde_json::Value>(v.as_str()?).ok())
        .filter_map(|acks| acks.get(pod).cloned())
        .max_by_key(|a| a["seen"].as_i64().unwrap_or(0))
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// However the test ends, no rotation is left half-way in (a) or (b): it is aborted (one in
/// (c) finishes by itself).
struct AbortIfUnderWay;

impl Drop for AbortIfUnderWay {
    fn drop(&mut self) {
        let _ = weft(&["ca", "rotate", "--abort"]);
    }
}

/// `<revision> <status> <reason>` of each revision's RootRotation condition, one a line
/// (just `<revision>` for a revision without one).
fn revision_conditions(c: &Cluster) -> String {
    let out = c.kubectl(&[
        "-n",
        "weft-system",
        "get",
        "meshconfigs",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{range .status.conditions[?(@.type==\"RootRotation\")]} {.status} {.reason}{end}{\"\\n\"}{end}",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The tests of this file each rotate the mesh root: one at a time.
static ONE_ROTATION: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A meshed namespace `name` with the bookstore app and the loadgen, traffic flowing.
fn meshed_with_traffic(c: &'static Cluster, name: &str) -> support::Namespace {
    let mesh = c.namespace(name);
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(support::bookstore::APP);
    support::bookstore::rollout(&mesh);
    mesh.apply(LOADGEN);
    mesh.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/loadgen",
        "--timeout=180s",
    ]);
    wait_for(
        Duration::from_secs(60),
        || mesh.ok(&["logs", "loadgen", "-c", "loadgen", "--tail=5"]),
        |log| log.lines().filter(|l| l.ends_with(" ok")).count() >= 5,
    );
    mesh
}

/// The loadgen's answers between `from` and `to` (unix seconds): (ok, the failed lines).
fn answers(mesh: &support::Namespace, from: i64, to: i64) -> (usize, Vec<String>) {
    let log = mesh.ok(&["logs", "loadgen", "-c", "loadgen"]);
    let during: Vec<(i64, String)> = log
        .lines()
        .filter_map(|l| {
            let (t, r) = l.split_once(' ')?;
            Some((t.parse().ok()?, r.to_string()))
        })
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    let failed: Vec<String> = during
        .iter()
        .filter(|(_, r)| r != "ok")
        .map(|(t, r)| format!("{t} {r}"))
        .collect();
    (during.len() - failed.len(), failed)
}

/// The phase `weft ca rotate status` names.
fn phase() -> String {
    text(&weft(&["ca", "rotate", "status"]))
        .lines()
        .next()
        .and_then(|l| l.split("phase ").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// Whether every meshed pod of `mesh` presents a certificate that `openssl verify` chains to
/// `root` (through the intermediates it serves with it) and not to `not`; Err names the first
/// that does not.
fn every_proxy_chains_to(mesh: &support::Namespace, root: &str, not: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!(
        "weft-rotation-{}-{}",
        mesh.name,
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("root.pem"), root).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("not.pem"), not).map_err(|e| e.to_string())?;
    let pods = mesh.jsonpath("pods", "{range .items[*]}{.status.podIP}{\"\\n\"}{end}");
    let ips: Vec<&str> = pods.lines().filter(|l| !l.trim().is_empty()).collect();
    if ips.len() != 4 {
        return Err(format!(
            "bookstore x2, bookbuyer, loadgen expected: {ips:?}"
        ));
    }
    for ip in ips {
        let leaf = dir.join(format!("{ip}.pem"));
        // Everything the proxy serves: the leaf, then a plug-in CA's intermediate(s), given
        // to openssl as untrusted (only the root file is trusted).
        let served = dir.join(format!("{ip}-chain.pem"));
        let script = format!(
            "openssl s_client -connect {ip}:8080 -alpn weft/1 -showcerts </dev/null 2>/dev/null \
             | sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' > {served} && \
             openssl x509 -in {served} -out {leaf} && \
             openssl verify -CAfile {root} -untrusted {served} {leaf} && \
             ! openssl verify -CAfile {not} -untrusted {served} {leaf} >/dev/null 2>&1",
            leaf = leaf.display(),
            served = served.display(),
            root = dir.join("root.pem").display(),
            not = dir.join("not.pem").display(),
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("the proxy at {ip}: {}", text(&out)));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn an_abort_in_phase_b_rolls_back_to_the_old_root_with_no_failed_request() {
    let _one = ONE_ROTATION.lock().unwrap_or_else(|e| e.into_inner());
    let c = deployed();
    let old_root = root_pem(c);
    let mesh = meshed_with_traffic(c, "rotate-abort");
    let _guard = AbortIfUnderWay;
    let started = unix_now();
    let go = weft(&["ca", "rotate", "--yes", "--renew-within", "60s"]);
    assert!(go.status.success(), "{}", text(&go));
    let new_root = state(c)["newRoots"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(new_root.contains("BEGIN CERTIFICATE"), "{}", state(c));
    // In (b), once some proxy holds a new-root certificate, go back (renewals are spread over
    // 60 s, so the others have not renewed yet and (b) is not over).
    wait_for(
        Duration::from_secs(180),
        || text(&weft(&["ca", "rotate", "status"])),
        |s| {
            s.contains("phase Reissuing")
                && !s.contains("certificate from the new root: 0")
                && s.contains("certificate from the new root:")
        },
    );
    let abort = weft(&["ca", "rotate", "--abort"]);
    assert!(abort.status.success(), "{}", text(&abort));
    assert!(
        text(&abort).contains("Reissuing → RollingBack"),
        "{}",
        text(&abort)
    );
    wait_for(Duration::from_secs(240), phase, |p| p == "Aborted");
    let finished = unix_now();
    let history: Vec<String> = state(c)["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["phase"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        history,
        ["Trusting", "Reissuing", "RollingBack", "Aborted"],
        "{history:?}"
    );
    eprintln!("{}", text(&weft(&["ca", "rotate", "status"])));
    std::thread::sleep(Duration::from_secs(5));
    let (ok, failed) = answers(&mesh, started - 2, finished + 5);
    eprintln!(
        "requests during the rotation and its abort ({}s): {ok} ok, {} failed",
        finished - started,
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok as i64 >= finished - started, "only {ok} requests");

    // The old root is the mesh root still; the new one is in no bundle and signs nothing.
    assert_eq!(body(&secret_cert(c, "weft-ca")), body(&old_root));
    assert!(secret_cert(c, "weft-ca-next").is_empty());
    wait_for(
        Duration::from_secs(30),
        || root_pem(c),
        |pem| holds(pem, &old_root) && !holds(pem, &new_root),
    );
    every_proxy_chains_to(&mesh, &old_root, &new_root).unwrap_or_else(|e| panic!("{e}"));
}

/// Whether each pod of `ips` accepts the client certificate `cert` (chain, key): `<ip> yes|no|<error>`
/// one a line.
fn acceptance(ips: &[String], cert: &(String, String)) -> String {
    ips.iter()
        .map(|ip| {
            let verdict = match support::ca::proxy_accepts_client_cert(ip, &cert.0, &cert.1) {
                Ok(true) => "yes".to_string(),
                Ok(false) => "no".to_string(),
                Err(e) => e,
            };
            format!("{ip} {verdict}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn all_say(answers: &str, word: &str) -> bool {
    !answers.is_empty() && answers.lines().all(|l| l.ends_with(&format!(" {word}")))
}

/// `weft ca rotate --abort` in phase (a), under steady traffic: the new root had reached the
/// root ConfigMaps and the running proxies' trust bundles (each accepts a client certificate
/// of the new root, made with the key of Secret weft-ca-next), and the abort takes it out of
/// every one: no root ConfigMap, no webhook caBundle holds it, every proxy refuses that client
/// certificate again, weft-ca-next no longer holds its key, and every proxy's certificate still
/// chains to the old root only. No request fails. The bookbuyer's proxy (an idle client) is
/// stopped before the rotation, so (a), which waits for every connected proxy's report, cannot
/// end before 60 s after its last poll: the abort lands in (a), not by luck in (b).
#[test]
fn an_abort_in_phase_a_takes_the_new_root_out_of_every_bundle_with_no_failed_request() {
    let _one = ONE_ROTATION.lock().unwrap_or_else(|e| e.into_inner());
    let c = deployed();
    // A rotation left by an earlier test (one rolling back) ends first: the old root read below
    // must be the mesh's whole bundle, not one on its way out.
    wait_for(Duration::from_secs(240), phase, |p| {
        !matches!(p, "Trusting" | "Reissuing" | "Dropping" | "RollingBack")
    });
    let old_root = root_pem(c);
    let mesh = meshed_with_traffic(c, "rotate-abort-a");
    let _guard = AbortIfUnderWay;
    let buyer = mesh.jsonpath("pods -l app=bookbuyer", "{.items[0].metadata.name}");
    let ip_of = |selector: &str| -> Vec<String> {
        mesh.jsonpath(
            &format!("pods {selector}"),
            "{range .items[*]}{.status.podIP}{\"\\n\"}{end}",
        )
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
    };
    let running: Vec<String> = [ip_of("-l app=bookstore"), ip_of("-l app=loadgen")].concat();
    assert_eq!(running.len(), 3, "bookstore x2, loadgen: {running:?}");
    let away = Stopped::proxy_of(&buyer);

    let started = unix_now();
    let clock = Instant::now();
    let go = weft(&["ca", "rotate", "--yes", "--renew-within", "10s"]);
    assert!(go.status.success(), "{}", text(&go));
    let new_root = state(c)["newRoots"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(new_root.contains("BEGIN CERTIFICATE"), "{}", state(c));
    let new_key = secret_key(c, "weft-ca-next", "ca.key");
    assert!(new_key.contains("PRIVATE KEY"), "weft-ca-next holds no key");
    let probe = support::ca::client_cert_from(
        &new_root,
        &new_key,
        &format!("spiffe://cluster.local/ns/{}/sa/probe", mesh.name),
    );
    // Before the new root has spread, the proxies refuse its certificates (the check can fail).
    let before = acceptance(&running, &probe);
    eprintln!(
        "[{:>5.1}s] right after the start:\n{before}",
        clock.elapsed().as_secs_f64()
    );

    // (a) spreads the new root: the mesh's root ConfigMap, then each running proxy's bundle.
    let mesh_root = || {
        mesh.ok(&[
            "get",
            "configmap",
            "weft-ca-root-cert",
            "-o",
            "jsonpath={.data.root-cert\\.pem}",
        ])
    };
    wait_for(Duration::from_secs(60), mesh_root, |pem| {
        holds(pem, &old_root) && holds(pem, &new_root)
    });
    let trusted = wait_for(
        Duration::from_secs(60),
        || acceptance(&running, &probe),
        |a| all_say(a, "yes"),
    );
    eprintln!(
        "[{:>5.1}s] every running proxy trusts the new root:\n{trusted}",
        clock.elapsed().as_secs_f64()
    );
    let status = text(&weft(&["ca", "rotate", "status"]));
    assert_eq!(
        phase(),
        "Trusting",
        "(a) is over before the abort: {status}"
    );
    eprintln!("{}", status.trim());

    let abort = weft(&["ca", "rotate", "--abort"]);
    assert!(abort.status.success(), "{}", text(&abort));
    assert!(
        text(&abort).contains("Trusting → Aborted"),
        "{}",
        text(&abort)
    );
    let aborted_at = clock.elapsed().as_secs_f64();
    drop(away);
    assert_eq!(phases_of(c), ["Trusting", "Aborted"], "{}", state(c));

    // No trust bundle holds the new root: root ConfigMaps and webhook caBundles...
    bundles_settle_on(c, &old_root, &new_root);
    assert!(!holds(&mesh_root(), &new_root));
    // ...nor any proxy's (the away one, continued, too): each refuses the new root's
    // certificate again.
    let all: Vec<String> = [running.clone(), ip_of("-l app=bookbuyer")].concat();
    assert_eq!(all.len(), 4, "{all:?}");
    let refused = wait_for(
        Duration::from_secs(90),
        || acceptance(&all, &probe),
        |a| all_say(a, "no"),
    );
    eprintln!(
        "[{:>5.1}s] every proxy refuses the new root again ({:.1}s after the abort):\n{refused}",
        clock.elapsed().as_secs_f64(),
        clock.elapsed().as_secs_f64() - aborted_at
    );
    // The mesh root is the old one; the abandoned root's key is gone from weft-ca-next.
    assert_eq!(body(&secret_cert(c, "weft-ca")), body(&old_root));
    assert!(
        secret_key(c, "weft-ca-next", "ca.key").is_empty(),
        "weft-ca-next still holds the abandoned root's key"
    );
    every_proxy_chains_to(&mesh, &old_root, &new_root).unwrap_or_else(|e| panic!("{e}"));

    let finished = unix_now();
    std::thread::sleep(Duration::from_secs(5));
    let (ok, failed) = answers(&mesh, started - 2, finished + 5);
    eprintln!(
        "requests during the rotation, its abort and after ({}s): {ok} ok, {} failed",
        finished - started,
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok as i64 >= finished - started, "only {ok} requests");
}

#[test]
fn a_new_builtin_root_replaces_the_old_under_steady_traffic_with_no_failed_request() {
    let _one = ONE_ROTATION.lock().unwrap_or_else(|e| e.into_inner());
    let c = deployed();
    let old_root = root_pem(c);
    assert_eq!(
        body(&secret_cert(c, "weft-ca")),
        body(&old_root),
        "the published root is weft-ca's before the rotation"
    );
    let mesh = c.namespace("rotate");
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(support::bookstore::APP);
    support::bookstore::rollout(&mesh);
    mesh.apply(LOADGEN);
    mesh.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/loadgen",
        "--timeout=180s",
    ]);
    // Traffic flows before anything changes.
    wait_for(
        Duration::from_secs(60),
        || mesh.ok(&["logs", "loadgen", "-c", "loadgen", "--tail=5"]),
        |log| log.lines().filter(|l| l.ends_with(" ok")).count() >= 5,
    );

    // Without --yes nothing changes.
    let before = state(c);
    let dry = weft(&["ca", "rotate"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("run again with --yes"),
        "{}",
        text(&dry)
    );
    assert_eq!(state(c), before, "a dry run wrote a rotation state");
    let _guard = AbortIfUnderWay;

    let started = unix_now();
    let clock = Instant::now();
    let go = weft(&["ca", "rotate", "--yes", "--renew-within", "10s"]);
    assert!(go.status.success(), "{}", text(&go));
    // A second rotation while one is under way is refused, naming the way to follow it.
    let again = weft(&["ca", "rotate", "--yes"]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("weft ca rotate status"),
        "{}",
        text(&again)
    );

    // The bookbuyer's proxy (an idle client, no Service points at it) goes away when phase (b)
    // begins: stopped with SIGSTOP before it renews, it misses (b) and (c) and comes back after.
    let buyer = mesh.jsonpath("pods -l app=bookbuyer", "{.items[0].metadata.name}");
    let mut away: Option<Stopped> = None;
    let mut seen_phases: Vec<String> = Vec::new();
    // The RootRotation condition of every revision, as seen while the rotation runs.
    let mut conditions_seen: Vec<String> = Vec::new();
    let final_status = wait_for(
        Duration::from_secs(420),
        || {
            let conditions = revision_conditions(c);
            if conditions_seen.last() != Some(&conditions) {
                conditions_seen.push(conditions);
            }
            let status = text(&weft(&["ca", "rotate", "status"]));
            if let Some(phase) = status
                .lines()
                .next()
                .and_then(|l| l.split("phase ").nth(1))
                .and_then(|p| p.split_whitespace().next())
                && seen_phases.last().map(String::as_str) != Some(phase)
            {
                eprintln!(
                    "[{:>5.1}s] {}",
                    clock.elapsed().as_secs_f64(),
                    status.trim()
                );
                seen_phases.push(phase.to_string());
                if phase == "Reissuing" && away.is_none() {
                    away = Some(Stopped::proxy_of(&buyer));
                    eprintln!(
                        "its last report (fingerprints): {}",
                        buyer_report(c, &buyer)
                    );
                }
            }
            status
        },
        |s| s.contains("phase Done") || s.contains("phase Aborted"),
    );
    let finished = unix_now();
    assert!(final_status.contains("phase Done"), "{final_status}");
    // Every revision carried RootRotation=True with the phase as reason while it ran...
    assert!(
        conditions_seen
            .iter()
            .any(|c| { !c.is_empty() && c.lines().all(|l| l.ends_with(" True Reissuing")) }),
        "RootRotation seen: {conditions_seen:?}"
    );
    // ...and it leaves with the rotation.
    wait_for(
        Duration::from_secs(60),
        || revision_conditions(c),
        |c| !c.is_empty() && c.lines().all(|l| !l.contains(' ')),
    );
    eprintln!("rotation took {}s:\n{final_status}", finished - started);
    let history = state(c)["history"].clone();
    let phases: Vec<&str> = history
        .as_array()
        .map(|h| h.iter().filter_map(|e| e["phase"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        phases,
        ["Trusting", "Reissuing", "Dropping", "Done"],
        "{history}"
    );

    // The away proxy did not hold the rotation up (it is not connected after 60 s) ...
    let away = away.expect("the bookbuyer's proxy was stopped in phase (b)");
    // ... and recovers on its own once back: its next poll says its certificate is from a
    // root no longer trusted, so it renews, and its requests are answered over mTLS again.
    drop(away);
    let resumed = Instant::now();
    wait_for(
        Duration::from_secs(120),
        || {
            support::bookstore::buy(&mesh, "http://bookstore/")
                .map(|_| "ok".to_string())
                .unwrap_or_else(|e| e)
        },
        |r| r == "ok",
    );
    eprintln!(
        "the away proxy answered again {:.1}s after SIGCONT",
        resumed.elapsed().as_secs_f64()
    );

    // Let the loop run on a few seconds past the end, then count.
    std::thread::sleep(Duration::from_secs(5));
    let log = mesh.ok(&["logs", "loadgen", "-c", "loadgen"]);
    let during: Vec<(i64, &str)> = log
        .lines()
        .filter_map(|l| {
            let (t, r) = l.split_once(' ')?;
            Some((t.parse().ok()?, r))
        })
        .filter(|(t, _)| *t >= started - 2 && *t <= finished + 5)
        .collect();
    let failed: Vec<&(i64, &str)> = during.iter().filter(|(_, r)| *r != "ok").collect();
    let ok = during.len() - failed.len();
    eprintln!(
        "requests during the rotation ({}s): {} ok, {} failed",
        finished - started,
        ok,
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    // The loop really ran through the whole rotation: at least one answer per second of it.
    assert!(
        ok as i64 >= finished - started,
        "only {ok} requests in {}s",
        finished - started
    );
    let first = during.first().map(|(t, _)| *t).unwrap_or(i64::MAX);
    let last = during.last().map(|(t, _)| *t).unwrap_or(0);
    assert!(
        first <= started && last >= finished,
        "the loop stopped early: {first}..{last}"
    );

    // Afterwards: weft-ca holds the new root, weft-ca-next is gone.
    let new_root = secret_cert(c, "weft-ca");
    assert!(!new_root.is_empty() && body(&new_root) != body(&old_root));
    assert!(
        secret_cert(c, "weft-ca-next").is_empty(),
        "weft-ca-next was left"
    );

    // No trust bundle holds the old root: root ConfigMaps in every namespace...
    let configmaps = c.ok(&[
        "get",
        "configmap",
        "-A",
        "--field-selector",
        "metadata.name=weft-ca-root-cert",
        "-o",
        "json",
    ]);
    let configmaps: serde_json::Value = serde_json::from_str(&configmaps).expect("json");
    let items = configmaps["items"].as_array().cloned().unwrap_or_default();
    assert!(items.len() >= 2, "root ConfigMaps: {}", items.len());
    for cm in &items {
        let pem = cm["data"]["root-cert.pem"].as_str().unwrap_or_default();
        let ns = cm["metadata"]["namespace"].as_str().unwrap_or_default();
        assert!(
            holds(pem, &new_root),
            "{ns}'s root ConfigMap lacks the new root"
        );
        assert!(
            !holds(pem, &old_root),
            "{ns}'s root ConfigMap still holds the old root"
        );
    }
    // ...the webhooks' caBundles...
    for config in [
        "mutatingwebhookconfiguration/weft-sidecar-injector",
        "validatingwebhookconfiguration/weft-validator",
    ] {
        let bundles = c.ok(&[
            "get",
            config,
            "-o",
            "jsonpath={range .webhooks[*]}{.clientConfig.caBundle}{\"\\n\"}{end}",
        ]);
        for b64 in bundles.lines().filter(|l| !l.trim().is_empty()) {
            let pem = Command::new("bash")
                .arg("-c")
                .arg(format!("echo '{}' | base64 -d", b64.trim()))
                .output()
                .expect("base64");
            let pem = String::from_utf8_lossy(&pem.stdout);
            assert!(
                holds(&pem, &new_root),
                "{config}: caBundle lacks the new root"
            );
            assert!(
                !holds(&pem, &old_root),
                "{config}: caBundle still holds the old root"
            );
        }
    }
    // ...and what every proxy of the namespace last reported (its own bundle and leaf).
    let status = text(&weft(&["ca", "rotate", "status"]));
    assert!(
        status.contains("still trusting the old root: 0"),
        "{status}"
    );

    // Every proxy presents a certificate chaining to the new root only (openssl, from outside).
    let dir = std::env::temp_dir().join(format!("weft-rotation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("new.pem"), &new_root).expect("write");
    std::fs::write(dir.join("old.pem"), &old_root).expect("write");
    let pods = mesh.jsonpath("pods", "{range .items[*]}{.status.podIP}{\"\\n\"}{end}");
    let ips: Vec<&str> = pods.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(ips.len(), 4, "bookstore x2, bookbuyer, loadgen: {ips:?}");
    for ip in ips {
        let leaf = dir.join(format!("{ip}.pem"));
        let script = format!(
            "openssl s_client -connect {ip}:8080 -alpn weft/1 </dev/null 2>/dev/null \
             | openssl x509 -out {leaf} && openssl verify -CAfile {new} {leaf} && \
             ! openssl verify -CAfile {old} {leaf} >/dev/null 2>&1",
            leaf = leaf.display(),
            new = dir.join("new.pem").display(),
            old = dir.join("old.pem").display(),
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "the proxy at {ip} does not present a certificate of the new root only: {}",
            text(&out)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    // A finished rotation cannot be aborted, and says why.
    let abort = weft(&["ca", "rotate", "--abort"]);
    assert!(!abort.status.success());
    assert!(
        text(&abort).contains("no rotation is under way"),
        "{}",
        text(&abort)
    );
}

/// Follows `weft ca rotate status` until the rotation is Done or Aborted, printing each phase
/// as it is entered; returns the last status.
fn follow_to_the_end(limit: Duration) -> String {
    let clock = Instant::now();
    let mut seen: Option<String> = None;
    wait_for(
        limit,
        || {
            let status = text(&weft(&["ca", "rotate", "status"]));
            let now = status.lines().next().map(String::from);
            if now != seen {
                eprintln!(
                    "[{:>5.1}s] {}",
                    clock.elapsed().as_secs_f64(),
                    status.trim()
                );
                seen = now;
            }
            status
        },
        |s| s.contains("phase Done") || s.contains("phase Aborted"),
    )
}

/// The phases the rotation went through (its history).
fn phases_of(c: &Cluster) -> Vec<String> {
    state(c)["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["phase"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Err names the first trust bundle outside the proxies that lacks `root` or still holds
/// `gone`: the root ConfigMap of every namespace and every webhook's caBundle.
fn every_bundle_holds(c: &Cluster, root: &str, gone: &str) -> Result<(), String> {
    let configmaps = c.ok(&[
        "get",
        "configmap",
        "-A",
        "--field-selector",
        "metadata.name=weft-ca-root-cert",
        "-o",
        "json",
    ]);
    let configmaps: serde_json::Value =
        serde_json::from_str(&configmaps).map_err(|e| e.to_string())?;
    let items = configmaps["items"].as_array().cloned().unwrap_or_default();
    if items.len() < 2 {
        return Err(format!("only {} root ConfigMaps", items.len()));
    }
    for cm in &items {
        let pem = cm["data"]["root-cert.pem"].as_str().unwrap_or_default();
        let ns = cm["metadata"]["namespace"].as_str().unwrap_or_default();
        if !holds(pem, root) || holds(pem, gone) {
            return Err(format!(
                "{ns}'s root ConfigMap: holds the root: {}, the gone root: {}",
                holds(pem, root),
                holds(pem, gone)
            ));
        }
    }
    for config in [
        "mutatingwebhookconfiguration/weft-sidecar-injector",
        "validatingwebhookconfiguration/weft-validator",
    ] {
        let bundles = c.ok(&[
            "get",
            config,
            "-o",
            "jsonpath={range .webhooks[*]}{.clientConfig.caBundle}{\"\\n\"}{end}",
        ]);
        for b64 in bundles.lines().filter(|l| !l.trim().is_empty()) {
            let pem = Command::new("bash")
                .arg("-c")
                .arg(format!("echo '{}' | base64 -d", b64.trim()))
                .output()
                .map_err(|e| e.to_string())?;
            let pem = String::from_utf8_lossy(&pem.stdout);
            if !holds(&pem, root) || holds(&pem, gone) {
                return Err(format!(
                    "{config}: caBundle holds the root: {}, the gone root: {}",
                    holds(&pem, root),
                    holds(&pem, gone)
                ));
            }
        }
    }
    Ok(())
}

/// [`every_bundle_holds`] within 60 s (a namespace deleted by an earlier test keeps its old
/// ConfigMap until it is gone; the leader writes the others within its pass).
fn bundles_settle_on(c: &Cluster, root: &str, gone: &str) {
    wait_for(
        Duration::from_secs(60),
        || match every_bundle_holds(c, root, gone) {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        },
        |s| s == "ok",
    );
}

/// However the Vault test ends, the mesh signs with the builtin CA again and no rotation is
/// left in (a) or (b); the Vault token Secret goes.
struct BackToBuiltin(&'static Cluster);

impl Drop for BackToBuiltin {
    fn drop(&mut self) {
        let _ = weft(&["ca", "rotate", "--abort"]);
        let _ = weft(&[
            "ca",
            "issuer",
            "set",
            "builtin",
            "--without-rotation",
            "--yes",
        ]);
        let _ = self.0.kubectl(&[
            "-n",
            "weft-system",
            "delete",
            "secret",
            "weft-vault-token",
            "--ignore-not-found",
        ]);
    }
}

/// Where the Vault of this file listens (tests/issuer.rs uses another port).
const VAULT_PORT: u16 = 18208;

#[test]
fn a_switch_from_builtin_to_vault_and_back_is_a_rotation_with_no_failed_request() {
    let _one = ONE_ROTATION.lock().unwrap_or_else(|e| e.into_inner());
    let c = deployed();
    let vault = support::vault::DevVault::start(VAULT_PORT);
    let vault_root = vault.pki_as_seed_002();
    let _restore = BackToBuiltin(c);
    // Bad input first: a token Vault refuses.
    c.ok(&[
        "-n",
        "weft-system",
        "create",
        "secret",
        "generic",
        "weft-vault-token",
        "--from-literal=token=not-a-vault-token",
    ]);
    let old_root = root_pem(c);
    assert_eq!(
        body(&secret_cert(c, "weft-ca")),
        body(&old_root),
        "the builtin CA signs before the switch, its root alone published"
    );
    let mesh = meshed_with_traffic(c, "rotate-vault");

    let set = [
        "ca",
        "issuer",
        "set",
        "vault",
        "--address",
        &vault.address,
        "--role",
        "weft",
        "--token-secret",
        "weft-vault-token",
        "--renew-within",
        "10s",
    ];
    // Without --yes: says it is a rotation and what it does; nothing changes.
    let before = state(c);
    let dry = weft(&set);
    assert!(!dry.status.success());
    let said = text(&dry);
    assert!(
        said.contains("This switches the issuer from builtin (")
            && said.contains(") to vault at http://198.18.0.1:18208 (pki/sign/weft")
            && said.contains("as a root rotation")
            && said.contains("run again with --yes"),
        "{said}"
    );
    assert_eq!(state(c), before, "a dry run wrote a rotation state");
    let _guard = AbortIfUnderWay;

    // builtin -> Vault, under traffic.
    let started = unix_now();
    let go = weft(&[&set[..], &["--yes"]].concat());
    assert!(go.status.success(), "{}", text(&go));
    // With the wrong token the rotation waits in (a), naming Vault's refusal and its fix;
    // the builtin CA keeps signing and nothing else changes.
    let waiting = wait_for(
        Duration::from_secs(60),
        || text(&weft(&["ca", "rotate", "status"])),
        |s| s.contains("permission denied"),
    );
    assert!(
        waiting.contains("phase Trusting")
            && waiting.contains("Waiting for: the new issuer (vault at")
            && waiting.contains("to pass a dry signing")
            && waiting.contains("Secret weft-system/weft-vault-token"),
        "{waiting}"
    );
    eprintln!("with a wrong token:\n{waiting}");
    let issuer = text(&weft(&["ca", "issuer"]));
    assert!(
        issuer.starts_with("Issuer:   builtin") && !issuer.contains("Signing:  vault"),
        "{issuer}"
    );
    // The right token, written into the same Secret: the rotation goes on by itself.
    let fixed = c.kubectl(&[
        "-n",
        "weft-system",
        "patch",
        "secret",
        "weft-vault-token",
        "--type=merge",
        "-p",
        &format!(
            "{{\"stringData\":{{\"token\":\"{}\"}}}}",
            support::vault::ROOT_TOKEN
        ),
    ]);
    assert!(fixed.status.success(), "{}", text(&fixed));
    let last = follow_to_the_end(Duration::from_secs(420));
    let finished = unix_now();
    assert!(last.contains("phase Done"), "{last}");
    assert!(last.contains("Switching issuer to: vault at"), "{last}");
    assert_eq!(
        phases_of(c),
        ["Trusting", "Reissuing", "Dropping", "Done"],
        "{}",
        state(c)
    );
    eprintln!("builtin -> Vault took {}s", finished - started);
    std::thread::sleep(Duration::from_secs(5));
    let (ok, failed) = answers(&mesh, started - 2, finished + 5);
    eprintln!(
        "requests during builtin -> Vault: {ok} ok, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok as i64 >= finished - started, "only {ok} requests");

    // Vault signs (the ConfigMap names it now), and the old root is gone everywhere.
    let issuer = text(&weft(&["ca", "issuer"]));
    assert!(
        issuer.contains("Signing:  vault") && issuer.contains("CN=osm.root"),
        "{issuer}"
    );
    let mesh_root = secret_cert(c, "weft-ca");
    assert!(
        body(&mesh_root) != body(&old_root),
        "weft-ca holds a new root"
    );
    assert!(secret_cert(c, "weft-ca-next").is_empty());
    bundles_settle_on(c, &vault_root, &old_root);
    let status = text(&weft(&["ca", "rotate", "status"]));
    assert!(
        status.contains("still trusting the old root: 0")
            && !status.contains("certificate from the new issuer: 0"),
        "{status}"
    );
    // Every proxy's certificate chains to Vault's root, not the old one (openssl, outside).
    every_proxy_chains_to(&mesh, &vault_root, &old_root).unwrap_or_else(|e| panic!("{e}"));

    // Vault -> builtin is a rotation too: Vault's root leaves, a new mesh root signs.
    let started = unix_now();
    let back = weft(&[
        "ca",
        "issuer",
        "set",
        "builtin",
        "--renew-within",
        "10s",
        "--yes",
    ]);
    assert!(back.status.success(), "{}", text(&back));
    let last = follow_to_the_end(Duration::from_secs(420));
    let finished = unix_now();
    assert!(last.contains("phase Done"), "{last}");
    eprintln!("Vault -> builtin took {}s", finished - started);
    std::thread::sleep(Duration::from_secs(5));
    let (ok, failed) = answers(&mesh, started - 2, finished + 5);
    eprintln!(
        "requests during Vault -> builtin: {ok} ok, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let builtin_root = secret_cert(c, "weft-ca");
    assert!(body(&builtin_root) != body(&mesh_root));
    let issuer = text(&weft(&["ca", "issuer"]));
    assert!(
        issuer.contains("Signing:  builtin") && !issuer.contains("CN=osm.root"),
        "{issuer}"
    );
    bundles_settle_on(c, &builtin_root, &vault_root);
    every_proxy_chains_to(&mesh, &builtin_root, &vault_root).unwrap_or_else(|e| panic!("{e}"));
}

/// A plug-in CA made with openssl as Istio's "plug in CA certificates" task does: a root and
/// an intermediate it signs, in a Secret `name` of weft-system with Istio's `cacerts` keys.
/// Returns the root's PEM.
fn plugin_ca_secret(c: &Cluster, name: &str, cn: &str) -> String {
    let dir = std::env::temp_dir().join(format!("weft-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = format!(
        "set -e
         genkey() {{ openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1; }}
         genkey root-key.pem
         openssl req -x509 -new -key root-key.pem -subj '/O=weft-e2e/CN={cn} Root CA' -days 3650 \
           -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' \
           -out root-cert.pem
         genkey ca-key.pem
         openssl req -new -key ca-key.pem -subj '/O=weft-e2e/CN={cn} Intermediate CA' -out ca.csr
         printf 'basicConstraints=critical,CA:TRUE,pathlen:0\\nkeyUsage=critical,keyCertSign,cRLSign\\nsubjectKeyIdentifier=hash\\nauthorityKeyIdentifier=keyid\\n' > ext.cnf
         openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -days 1825 \
           -extfile ext.cnf -out ca-cert.pem 2>/dev/null
         cat ca-cert.pem root-cert.pem > cert-chain.pem"
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", text(&out));
    let file = |f: &str| format!("--from-file={}", dir.join(f).display());
    c.ok(&[
        "-n",
        "weft-system",
        "create",
        "secret",
        "generic",
        name,
        &file("ca-cert.pem"),
        &file("ca-key.pem"),
        &file("root-cert.pem"),
        &file("cert-chain.pem"),
    ]);
    let root = std::fs::read_to_string(dir.join("root-cert.pem")).expect("root-cert.pem");
    let _ = std::fs::remove_dir_all(&dir);
    root
}

/// Key `key` of Secret weft-system/`name`, decoded ("" when absent).
fn secret_key(c: &Cluster, name: &str, key: &str) -> String {
    let out = c.kubectl(&[
        "-n",
        "weft-system",
        "get",
        "secret",
        name,
        "-o",
        &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
    ]);
    if !out.status.success() {
        return String::new();
    }
    let b64 = String::from_utf8_lossy(&out.stdout).into_owned();
    let decoded = Command::new("bash")
        .arg("-c")
        .arg(format!("echo '{}' | base64 -d", b64.trim()))
        .output()
        .expect("base64");
    String::from_utf8_lossy(&decoded.stdout).into_owned()
}

/// However the plug-in test ends, the mesh goes back to a self-signed root (a rotation, so
/// the other tests' pods keep working) and the test's Secrets go.
struct BackFromPlugin(&'static Cluster);

impl Drop for BackFromPlugin {
    fn drop(&mut self) {
        let _ = weft(&["ca", "rotate", "--abort"]);
        if !secret_key(self.0, "cacerts", "root-cert.pem").is_empty() {
            let _ = wait_for(Duration::from_secs(120), phase, |p| {
                p != "Trusting" && p != "Reissuing" && p != "Dropping" && p != "RollingBack"
            });
            let _ = weft(&["ca", "rotate", "--yes", "--renew-within", "10s"]);
            let _ = follow_to_the_end(Duration::from_secs(300));
        }
        for name in ["cacerts", "cacerts-a", "cacerts-b", "cacerts-bad"] {
            let _ = self.0.kubectl(&[
                "-n",
                "weft-system",
                "delete",
                "secret",
                name,
                "--ignore-not-found",
            ]);
        }
    }
}

/// One rotation under the loadgen's traffic: `args` started with `--yes`, followed to the end;
/// asserts Done through (a), (b), (c) and no failed request, and returns the seconds it took.
fn rotate_under_traffic(c: &Cluster, mesh: &support::Namespace, what: &str, args: &[&str]) -> i64 {
    let started = unix_now();
    let go = weft(args);
    assert!(go.status.success(), "{what}: {}", text(&go));
    let last = follow_to_the_end(Duration::from_secs(420));
    let finished = unix_now();
    assert!(last.contains("phase Done"), "{what}: {last}");
    assert_eq!(
        phases_of(c),
        ["Trusting", "Reissuing", "Dropping", "Done"],
        "{what}: {}",
        state(c)
    );
    std::thread::sleep(Duration::from_secs(5));
    let (ok, failed) = answers(mesh, started - 2, finished + 5);
    eprintln!(
        "{what}: {}s, {ok} requests answered, {} failed",
        finished - started,
        failed.len()
    );
    assert!(failed.is_empty(), "{what}: failed requests: {failed:?}");
    assert!(
        ok as i64 >= finished - started,
        "{what}: only {ok} requests"
    );
    finished - started
}

/// Istio's plug-in CA (`cacerts`) under steady traffic: `weft ca rotate --cacerts <Secret>`
/// moves the mesh from the builtin root to a plug-in CA (root + intermediate made with
/// openssl), then to another plug-in CA (the Istio user's rotation of `cacerts`), then back to
/// a self-signed root, each through (a), (b), (c) with no failed request; after each no
/// trust bundle holds the root that left and every proxy's certificate chains to the new one.
#[test]
fn a_new_cacerts_replaces_the_root_under_steady_traffic_with_no_failed_request() {
    let _one = ONE_ROTATION.lock().unwrap_or_else(|e| e.into_inner());
    let c = deployed();
    let _restore = BackFromPlugin(c);
    let builtin_root = root_pem(c);
    assert_eq!(body(&secret_cert(c, "weft-ca")), body(&builtin_root));
    let mesh = meshed_with_traffic(c, "rotate-cacerts");
    let root_a = plugin_ca_secret(c, "cacerts-a", "Plugin A");
    let root_b = plugin_ca_secret(c, "cacerts-b", "Plugin B");

    // Bad input, refused before anything changes: the Secret the material goes into, one that
    // does not exist, and a key that is not the intermediate's.
    let before = state(c);
    for (args, says) in [
        (vec!["--cacerts", "cacerts"], "not cacerts"),
        (vec!["--cacerts", "no-such-secret"], "does not exist"),
    ] {
        let out = weft(&[&["ca", "rotate", "--yes"][..], &args].concat());
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    let wrong_key = secret_key(c, "cacerts-b", "ca-key.pem");
    let dir = std::env::temp_dir().join(format!("weft-cacerts-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for key in ["ca-cert.pem", "root-cert.pem", "cert-chain.pem"] {
        std::fs::write(dir.join(key), secret_key(c, "cacerts-a", key)).expect("write");
    }
    std::fs::write(dir.join("ca-key.pem"), wrong_key).expect("write");
    let file = |f: &str| format!("--from-file={}", dir.join(f).display());
    c.ok(&[
        "-n",
        "weft-system",
        "create",
        "secret",
        "generic",
        "cacerts-bad",
        &file("ca-cert.pem"),
        &file("ca-key.pem"),
        &file("root-cert.pem"),
        &file("cert-chain.pem"),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let bad = weft(&["ca", "rotate", "--yes", "--cacerts", "cacerts-bad"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("cacerts-bad")
            && text(&bad).contains("ca-key.pem is not the private key"),
        "{}",
        text(&bad)
    );
    // Without --yes: says what it does, changes nothing.
    let dry = weft(&["ca", "rotate", "--cacerts", "cacerts-a"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("to the plug-in CA of Secret weft-system/cacerts-a")
            && text(&dry).contains("Plugin A Intermediate CA")
            && text(&dry).contains("run again with --yes"),
        "{}",
        text(&dry)
    );
    assert_eq!(
        state(c),
        before,
        "a refused or dry run wrote a rotation state"
    );
    let _guard = AbortIfUnderWay;

    // builtin -> plug-in CA A.
    rotate_under_traffic(
        c,
        &mesh,
        "builtin -> cacerts A",
        &[
            "ca",
            "rotate",
            "--yes",
            "--cacerts",
            "cacerts-a",
            "--renew-within",
            "10s",
        ],
    );
    assert!(
        text(&weft(&["ca", "rotate", "status"]))
            .contains("Rotating to: the plug-in CA of Secret cacerts-a"),
    );
    assert_eq!(
        body(&secret_key(c, "cacerts", "root-cert.pem")),
        body(&root_a)
    );
    assert_eq!(
        secret_key(c, "cacerts", "ca-cert.pem"),
        secret_key(c, "cacerts-a", "ca-cert.pem"),
        "cacerts holds A's intermediate"
    );
    assert!(secret_cert(c, "weft-ca-next").is_empty());
    bundles_settle_on(c, &root_a, &builtin_root);
    every_proxy_chains_to(&mesh, &root_a, &builtin_root).unwrap_or_else(|e| panic!("{e}"));

    // Plug-in CA A -> plug-in CA B: the rotation of cacerts an Istio user does by hand.
    rotate_under_traffic(
        c,
        &mesh,
        "cacerts A -> cacerts B",
        &[
            "ca",
            "rotate",
            "--yes",
            "--cacerts",
            "cacerts-b",
            "--renew-within",
            "10s",
        ],
    );
    assert_eq!(
        body(&secret_key(c, "cacerts", "root-cert.pem")),
        body(&root_b)
    );
    bundles_settle_on(c, &root_b, &root_a);
    every_proxy_chains_to(&mesh, &root_b, &root_a).unwrap_or_else(|e| panic!("{e}"));
    let status = text(&weft(&["ca", "rotate", "status"]));
    assert!(
        status.contains("still trusting the old root: 0"),
        "{status}"
    );

    // Plug-in CA B -> a new self-signed root: cacerts is retired (emptied, marked), weft-ca
    // holds the new root.
    rotate_under_traffic(
        c,
        &mesh,
        "cacerts B -> builtin",
        &["ca", "rotate", "--yes", "--renew-within", "10s"],
    );
    assert!(
        secret_key(c, "cacerts", "root-cert.pem").is_empty(),
        "cacerts still holds a CA"
    );
    let retired = c.ok(&[
        "-n",
        "weft-system",
        "get",
        "secret",
        "cacerts",
        "-o",
        "jsonpath={.metadata.annotations.weft\\.dev/retired-by}",
    ]);
    assert!(
        retired.starts_with("rotation-"),
        "cacerts not marked retired: {retired:?}"
    );
    let new_builtin = secret_cert(c, "weft-ca");
    assert!(body(&new_builtin) != body(&builtin_root) && !new_builtin.is_empty());
    bundles_settle_on(c, &new_builtin, &root_b);
    every_proxy_chains_to(&mesh, &new_builtin, &root_b).unwrap_or_else(|e| panic!("{e}"));
    // weft check does not take the retired Secret for a broken plug-in CA.
    let check = text(&weft(&["check"]));
    assert!(
        check.contains("mesh CA Secret: Secret weft-system/weft-ca loads")
            && !check.contains("Secret weft-system/cacerts"),
        "{check}"
    );
}

/// The timed client of the bench: a request every 50 ms (at most 20 a second), each a new
/// connection, so a new mTLS handshake between the proxies; each line `<unix seconds>
/// <HTTP code> <seconds>`. Pods run as host processes (e2e/node-agent), so the busybox pod
/// calls the curl image's curl by its path, for its microsecond timing.
const TIMED_LOADGEN: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: loadgen, labels: {app: loadgen}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: loadgen
    image: busybox
    command: [sh, -c, "while true; do echo \"$(date +%s) $(/opt/weft-e2e/images/curl/bin/curl -s -m 10 -o /dev/null -w '%{http_code} %{time_total}' http://bookstore/)\"; sleep 0.05; done"]
"#;

/// Percentile `q` (0..=1) of sorted samples, nearest rank.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The loadgen's latencies (ms, sorted) and failures between `from` and `to` (unix seconds).
fn timed(log: &str, from: i64, to: i64) -> (Vec<f64>, usize) {
    let mut ms = Vec::new();
    let mut failed = 0;
    for line in log.lines() {
        let mut f = line.split_whitespace();
        let (Some(t), Some(code), Some(secs)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(t) = t.parse::<i64>() else { continue };
        if t < from || t > to {
            continue;
        }
        match (code, secs.parse::<f64>()) {
            ("200", Ok(s)) => ms.push(s * 1000.0),
            _ => failed += 1,
        }
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms, failed)
}

/// Unix seconds of an RFC 3339 time in the rotation's history.
fn unix_of(at: &str) -> i64 {
    let out = Command::new("date")
        .args(["-u", "-d", at, "+%s"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// `make bench` (e2e/bench/run.sh, its cluster stage), not `make e2e-issuers`: the p99 latency
/// of meshed requests during phase (b) of a builtin root rotation (every proxy renewing its
/// certificate and installing a new bundle) against the steady state just before it, from the
/// same client. Writes JSON to WEFT_BENCH_ROTATION_OUT when set.
#[test]
#[ignore = "a benchmark: make bench runs it"]
fn bench_added_p99_of_mesh_traffic_during_phase_b() {
    let _one = ONE_ROTATION.lock().unwrap_or_else(|e| e.into_inner());
    let c = deployed();
    let mesh = c.namespace("rotate-bench");
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(support::bookstore::APP);
    support::bookstore::rollout(&mesh);
    mesh.apply(TIMED_LOADGEN);
    mesh.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/loadgen",
        "--timeout=180s",
    ]);
    wait_for(
        Duration::from_secs(60),
        || mesh.ok(&["logs", "loadgen", "-c", "loadgen", "--tail=5"]),
        |log| log.lines().filter(|l| l.contains(" 200 ")).count() >= 5,
    );
    let steady_from = unix_now();
    std::thread::sleep(Duration::from_secs(40));
    let _guard = AbortIfUnderWay;
    let go = weft(&["ca", "rotate", "--yes", "--renew-within", "20s"]);
    assert!(go.status.success(), "{}", text(&go));
    let steady_to = unix_now() - 1;
    let last = follow_to_the_end(Duration::from_secs(420));
    assert!(last.contains("phase Done"), "{last}");
    let history = state(c)["history"].clone();
    let at = |phase: &str| {
        history
            .as_array()
            .and_then(|h| h.iter().find(|e| e["phase"] == phase))
            .and_then(|e| e["at"].as_str())
            .map(unix_of)
            .unwrap_or(0)
    };
    let (b_from, b_to) = (at("Reissuing"), at("Dropping"));
    assert!(b_from > 0 && b_to > b_from, "{history}");
    std::thread::sleep(Duration::from_secs(3));
    let log = mesh.ok(&["logs", "loadgen", "-c", "loadgen"]);
    let (steady, steady_failed) = timed(&log, steady_from, steady_to);
    let (during, during_failed) = timed(&log, b_from, b_to);
    let report = serde_json::json!({
        "steady": {"requests": steady.len(), "failed": steady_failed,
                   "p50_ms": percentile(&steady, 0.5), "p99_ms": percentile(&steady, 0.99),
                   "seconds": steady_to - steady_from},
        "phase_b": {"requests": during.len(), "failed": during_failed,
                    "p50_ms": percentile(&during, 0.5), "p99_ms": percentile(&during, 0.99),
                    "seconds": b_to - b_from},
        "added_p99_ms": percentile(&during, 0.99) - percentile(&steady, 0.99),
        "renew_within_s": 20,
        "proxies": 4,
    });
    eprintln!("{report:#}");
    if let Ok(path) = std::env::var("WEFT_BENCH_ROTATION_OUT") {
        std::fs::write(&path, report.to_string()).expect("WEFT_BENCH_ROTATION_OUT");
    }
    assert!(
        steady.len() >= 100 && during.len() >= 50,
        "too few samples: {report}"
    );
    assert_eq!(steady_failed + during_failed, 0, "{report}");
}
