//! The container launcher: a fresh single-threaded process that enters the pod's network
//! namespace, makes a private mount namespace with the container's volumes bound at their
//! mountPaths, then execs `setpriv` (UID/GID/capabilities) which execs the command. The PID the
//! node agent started stays the container's PID throughout. With `join_pid` it instead enters
//! the namespaces of a running container (for exec and exec probes).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

pub const SPEC_ENV: &str = "WEFT_LAUNCH_SPEC";

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LaunchSpec {
    /// `/var/run/netns/<name>` of the pod (ignored with join_pid).
    pub netns: PathBuf,
    pub hostname: String,
    pub mounts: Vec<BindMount>,
    /// Enter the namespaces of this running container instead of making new ones.
    pub join_pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Capabilities the process keeps, lower-case without `cap_` (e.g. "net_admin").
    pub capabilities: Vec<String>,
    pub no_new_privs: bool,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub argv: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// The capabilities a container runtime grants a root container by default (containerd's list).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "chown",
    "dac_override",
    "fsetid",
    "fowner",
    "mknod",
    "net_raw",
    "setgid",
    "setuid",
    "setfcap",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "kill",
    "audit_write",
];

pub fn main() -> anyhow::Result<()> {
    let spec: LaunchSpec =
        serde_json::from_str(&std::env::var(SPEC_ENV).context("WEFT_LAUNCH_SPEC is not set")?)?;
    // Errors go to the container's stderr (its log), where `kubectl logs` shows them.
    if let Err(e) = enter(&spec) {
        eprintln!("weft-node-agent: cannot start container: {e:#}");
        std::process::exit(128);
    }
    let err = exec(&spec);
    eprintln!("weft-node-agent: exec {:?}: {err:#}", spec.argv);
    std::process::exit(127);
}

fn enter(spec: &LaunchSpec) -> anyhow::Result<()> {
    if let Some(pid) = spec.join_pid {
        for (ns, flag) in [
            ("net", CloneFlags::CLONE_NEWNET),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ] {
            let f = File::open(format!("/proc/{pid}/ns/{ns}"))
                .with_context(|| format!("container process {pid} is gone"))?;
            setns(f.as_fd(), flag).with_context(|| format!("setns {ns}"))?;
        }
    } else {
        let f =
            File::open(&spec.netns).with_context(|| format!("opening {}", spec.netns.display()))?;
        setns(f.as_fd(), CloneFlags::CLONE_NEWNET).context("setns net")?;
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS).context("unshare mount+uts")?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .context("making / private")?;
        nix::unistd::sethostname(&spec.hostname).context("sethostname")?;
        for m in &spec.mounts {
            bind(m).with_context(|| {
                format!("mounting {} at {}", m.source.display(), m.target.display())
            })?;
        }
    }
    nix::unistd::setsid().context("setsid")?;
    Ok(())
}

fn bind(m: &BindMount) -> anyhow::Result<()> {
    if m.source.is_dir() {
        std::fs::create_dir_all(&m.target)?;
    } else {
        if let Some(parent) = m.target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !m.target.exists() {
            File::create(&m.target)?;
        }
    }
    mount(
        Some(&m.source),
        &m.target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    if m.read_only {
        mount(
            None::<&str>,
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
    }
    Ok(())
}

fn exec(spec: &LaunchSpec) -> anyhow::Error {
    let Some(program) = spec.argv.first() else {
        return anyhow::anyhow!("empty command");
    };
    if let Err(e) = std::env::set_current_dir(&spec.cwd) {
        return anyhow::anyhow!("working directory {}: {e}", spec.cwd.display());
    }
    let caps = if spec.capabilities.is_empty() {
        "-all".to_string()
    } else {
        format!(
            "-all,{}",
            spec.capabilities
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let groups = if spec.groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            spec.groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let mut argv = vec![
        "setpriv".to_string(),
        format!("--reuid={}", spec.uid),
        format!("--regid={}", spec.gid),
        groups,
        format!("--bounding-set={caps}"),
        format!("--inh-caps={caps}"),
    ];
    // A non-root process keeps its capabilities across exec only as ambient ones.
    if spec.uid != 0 && !spec.capabilities.is_empty() {
        argv.push(format!("--ambient-caps={caps}"));
    }
    if spec.no_new_privs {
        argv.push("--no-new-privs".into());
    }
    argv.push("--".into());
    argv.push(program.clone());
    argv.extend(spec.argv.iter().skip(1).cloned());
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let c_argv: Vec<CString> = argv.iter().map(|a| to_c(a)).collect();
    let c_env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect();
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(setpriv) = setpriv else {
        return anyhow::anyhow!("setpriv (util-linux) is not installed");
    };
    match nix::unistd::execve(&to_c(setpriv), &c_argv, &c_env) {
        Ok(never) => match never {},
        Err(e) => {
            if !Path::new(program).exists() {
                return anyhow::anyhow!("{program}: no such file");
            }
            anyhow::anyhow!("{e}")
        }
    }
}
