//! The container launcher: a fresh single-threaded process that enters the pod's network
//! namespace, makes a private mount namespace with the container's volumes bound at their
//! mountPaths (every source opened before any target is mounted, so no mountPath can hide
//! another mount's source), then execs `setpriv` (UID/GID/capabilities) which execs the command.
//! The PID the node agent started stays the container's PID throughout. With `join_pid` it
//! instead enters the namespaces of a running container (for exec and exec probes).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::{Mode, SFlag};
use serde::{Deserialize, Serialize};

pub const SPEC_ENV: &str = "WEFT_LAUNCH_SPEC";

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LaunchSpec {
    /// `/var/run/netns/<name>` of the pod (ignored with join_pid).
    pub netns: PathBuf,
    pub hostname: String,
    pub mounts: Vec<BindMount>,
    /// The image's directory of programs (argv[0] and PATH point into it): bound back over
    /// itself when a mountPath hides it.
    #[serde(default)]
    pub image_dir: Option<PathBuf>,
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

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
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
        let plan = plan(&spec.mounts, spec.image_dir.as_deref())?;
        // Stage: open every source while the node's tree is still whole. A mountPath such as
        // `/work` or `/var` would otherwise hide the sources (under the pod's state directory,
        // or a hostPath) of the mounts after it.
        let staged = plan
            .iter()
            .map(|m| {
                nix::fcntl::open(&m.source, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                    .with_context(|| format!("opening {}", m.source.display()))
            })
            .collect::<anyhow::Result<Vec<OwnedFd>>>()?;
        for (m, source) in plan.iter().zip(&staged) {
            bind(m, source).with_context(|| {
                format!("mounting {} at {}", m.source.display(), m.target.display())
            })?;
        }
    }
    nix::unistd::setsid().context("setsid")?;
    Ok(())
}

/// The container's bind mounts in the order they are made: parents before children (fewest
/// path components first, otherwise as listed, as containerd orders a container's mounts), so
/// a mountPath inside another volume lands in that volume rather than under it. Then, if a
/// mountPath is an ancestor of the image's directory of programs, that directory is bound back
/// over itself (read-only) so the command can still be found. mountPaths in `/proc` are
/// refused, as runc refuses them: the launcher reaches its staged sources through /proc.
pub fn plan(mounts: &[BindMount], image_dir: Option<&Path>) -> anyhow::Result<Vec<BindMount>> {
    let depth = |p: &Path| {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    };
    for m in mounts {
        anyhow::ensure!(
            m.target.is_absolute(),
            "mountPath {} must be absolute",
            m.target.display()
        );
        anyhow::ensure!(
            !m.target.starts_with("/proc") && depth(&m.target) > 0,
            "mountPath {} is not allowed: it would hide the node's /proc or /",
            m.target.display()
        );
    }
    let mut plan = mounts.to_vec();
    plan.sort_by_key(|m| depth(&m.target));
    if let Some(dir) = image_dir
        && plan
            .iter()
            .any(|m| dir.starts_with(&m.target) && dir != m.target)
    {
        plan.push(BindMount {
            source: dir.to_path_buf(),
            target: dir.to_path_buf(),
            read_only: true,
        });
    }
    Ok(plan)
}

/// Binds one staged source (an O_PATH descriptor opened before any mount) at its target,
/// creating the target as a directory or an empty file to match the source.
fn bind(m: &BindMount, source: &OwnedFd) -> anyhow::Result<()> {
    let stat = nix::sys::stat::fstat(source.as_fd())?;
    let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if is_dir {
        std::fs::create_dir_all(&m.target)?;
    } else {
        if let Some(parent) = m.target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !m.target.exists() {
            File::create(&m.target)?;
        }
    }
    // The descriptor's /proc link names the source the way it was opened, whatever has been
    // mounted over its path since (the way runc mounts from pre-opened sources).
    let staged = format!("/proc/self/fd/{}", source.as_raw_fd());
    mount(
        Some(staged.as_str()),
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

#[cfg(test)]
mod tests {
    use super::{BindMount, plan};
    use std::path::{Path, PathBuf};

    fn m(source: &str, target: &str) -> BindMount {
        BindMount {
            source: PathBuf::from(source),
            target: PathBuf::from(target),
            read_only: false,
        }
    }

    fn targets(plan: &[BindMount]) -> Vec<&str> {
        plan.iter().filter_map(|m| m.target.to_str()).collect()
    }

    #[test]
    fn parents_are_mounted_before_what_lands_inside_them() {
        let mounts = [
            m("/s/token", "/var/run/secrets/kubernetes.io/serviceaccount"),
            m("/s/resolv.conf", "/etc/resolv.conf"),
            m("/s/var", "/var"),
            m("/s/top", "/work"),
            m("/s/tmp", "/tmp"),
        ];
        let plan = plan(&mounts, None).expect("allowed");
        assert_eq!(
            targets(&plan),
            [
                "/var",
                "/work",
                "/tmp",
                "/etc/resolv.conf",
                "/var/run/secrets/kubernetes.io/serviceaccount"
            ]
        );
    }

    #[test]
    fn a_volume_over_the_image_directory_gets_the_programs_bound_back() {
        let image = Path::new("/opt/weft-e2e/images/busybox/bin");
        let hidden = plan(&[m("/s/opt", "/opt"), m("/s/data", "/data")], Some(image)).unwrap();
        assert_eq!(
            targets(&hidden),
            ["/opt", "/data", "/opt/weft-e2e/images/busybox/bin"]
        );
        let back = hidden.last().unwrap();
        assert_eq!(back.source, image);
        assert!(back.read_only);
        // Nothing hides it: nothing is added.
        let visible = plan(&[m("/s/tmp", "/tmp")], Some(image)).unwrap();
        assert_eq!(targets(&visible), ["/tmp"]);
    }

    #[test]
    fn mount_paths_that_would_hide_proc_or_root_are_refused() {
        for bad in ["/proc", "/proc/sys", "/", "relative/path"] {
            assert!(plan(&[m("/s", bad)], None).is_err(), "{bad}");
        }
        assert!(plan(&[m("/s", "/procedures")], None).is_ok());
    }
}
