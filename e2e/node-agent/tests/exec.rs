//! `kubectl exec` through the API server to the node agent over both transports a kubelet
//! serves: SPDY/3.1 (client-go's SPDY executor, forced with
//! KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false) and WebSockets (kubectl's default), with pipes
//! and with a terminal.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use support::{Namespace, cluster};

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: sh
    image: busybox:1.36
    command: [sleep, "3600"]
"#;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Spdy,
    WebSockets,
}

/// `kubectl exec` into the test pod over `transport`, with `stdin` piped when given.
fn exec(ns: &Namespace, transport: Transport, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let c = ns.cluster;
    let mut cmd = Command::new(&c.kubectl);
    cmd.arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["-n", &ns.name, "exec"])
        .args(args)
        .env(
            "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
            match transport {
                Transport::Spdy => "false",
                Transport::WebSockets => "true",
            },
        )
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running kubectl");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        // From a thread: the output may be large too, and kubectl reads both at once.
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    child.wait_with_output().expect("kubectl output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A namespace of its own with the `shell` pod ready to exec into.
fn shell_pod(namespace: &str) -> Namespace {
    let ns = cluster().namespace(namespace);
    ns.apply(POD);
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/shell",
        "--timeout=90s",
    ]);
    ns
}

/// Runs every check over `transport` in a namespace of its own.
fn exec_checks(transport: Transport, namespace: &str) {
    let ns = shell_pod(namespace);

    // stdout
    let out = exec(
        &ns,
        transport,
        &["shell", "--", "echo", "hello", "exec"],
        None,
    );
    assert!(out.status.success(), "{transport:?}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello exec\n", "{transport:?}");

    // stderr, apart from stdout
    let out = exec(
        &ns,
        transport,
        &["shell", "--", "sh", "-c", "echo to-out; echo to-err >&2"],
        None,
    );
    assert!(out.status.success(), "{transport:?}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\n", "{transport:?}");
    assert_eq!(text(&out.stderr), "to-err\n", "{transport:?}");

    // stdin, ended by the client's EOF (cat exits only then)
    let out = exec(
        &ns,
        transport,
        &["-i", "shell", "--", "cat"],
        Some(b"through stdin\n"),
    );
    assert!(out.status.success(), "{transport:?}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "through stdin\n", "{transport:?}");

    // More than SPDY's 64 KiB initial window each way, byte for byte.
    let input: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = exec(&ns, transport, &["-i", "shell", "--", "cat"], Some(&input));
    assert!(out.status.success(), "{transport:?}: {}", text(&out.stderr));
    assert_eq!(out.stdout.len(), input.len(), "{transport:?}");
    assert!(
        out.stdout == input,
        "{transport:?}: stdout differs from stdin"
    );

    // A non-zero exit code becomes kubectl's own.
    let out = exec(&ns, transport, &["shell", "--", "sh", "-c", "exit 3"], None);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{transport:?}: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("command terminated with exit code 3"),
        "{transport:?}: {}",
        text(&out.stderr)
    );

    // A command that cannot start is an error, not a hang.
    let out = exec(&ns, transport, &["shell", "--", "no-such-command"], None);
    assert!(!out.status.success(), "{transport:?}");
}

/// `kubectl exec -ti` from inside a terminal of 40 rows and 100 columns (util-linux `script`
/// gives kubectl one): the command must see a terminal of that size.
fn exec_tty_check(transport: Transport, namespace: &str) {
    let ns = shell_pod(namespace);
    let c = ns.cluster;
    // The size arrives on its own stream right after the streams open: the command waits a
    // moment for it, as it would on a kubelet.
    let kubectl = format!(
        "stty rows 40 cols 100; {} --kubeconfig {} -n {} exec -ti shell -- sh -c \
         'sleep 1; stty size; tty; exit 5'",
        c.kubectl.display(),
        c.kubeconfig.display(),
        ns.name
    );
    let out = Command::new("script")
        .args(["-qec", &kubectl, "/dev/null"])
        .env(
            "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
            match transport {
                Transport::Spdy => "false",
                Transport::WebSockets => "true",
            },
        )
        .stdin(Stdio::null())
        .output()
        .expect("running script (util-linux)");
    let printed = text(&out.stdout);
    assert!(printed.contains("40 100"), "{transport:?}: {printed:?}");
    assert!(printed.contains("/dev/pts/"), "{transport:?}: {printed:?}");
    assert_eq!(out.status.code(), Some(5), "{transport:?}: {printed:?}");
}

#[test]
fn exec_over_spdy_pipes_stdio_and_returns_the_exit_code() {
    exec_checks(Transport::Spdy, "t-exec-spdy");
}

#[test]
fn exec_over_websockets_pipes_stdio_and_returns_the_exit_code() {
    exec_checks(Transport::WebSockets, "t-exec-ws");
}

#[test]
fn kubectl_forced_to_spdy_really_upgrades_to_spdy() {
    // kubectl logs the upgrade's request and response headers at -v=8: the proof that the
    // SPDY test above did not silently ride WebSockets.
    let ns = cluster().namespace("t-exec-spdy-proof");
    ns.apply(POD);
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/shell",
        "--timeout=90s",
    ]);
    let out = exec(&ns, Transport::Spdy, &["-v=8", "shell", "--", "true"], None);
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("SPDY/3.1"),
        "no SPDY upgrade in kubectl's log:\n{log}"
    );
    assert!(log.contains("101 Switching Protocols"), "{log}");
    assert!(log.contains("v4.channel.k8s.io"), "{log}");
}

#[test]
fn exec_with_a_tty_over_spdy_sees_a_terminal_of_the_clients_size() {
    exec_tty_check(Transport::Spdy, "t-exec-tty-spdy");
}

#[test]
fn exec_with_a_tty_over_websockets_sees_a_terminal_of_the_clients_size() {
    exec_tty_check(Transport::WebSockets, "t-exec-tty-ws");
}
