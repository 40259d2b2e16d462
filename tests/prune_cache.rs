//! `make prune-cache` (e2e/scripts/prune-target.sh), which `make test` runs first: when the disk
//! under the shared build cache runs low, the workspace's own artifacts and the incremental state
//! go and third-party crates stay; when it is lower still, the whole debug profile goes; with
//! room to spare, nothing is touched. Run against a scratch target directory with the floors
//! moved, so the disk's real free space does not decide the outcome.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch target directory with a debug profile holding the workspace's and others' files.
struct Target(PathBuf);

impl Target {
    fn new(tag: &str) -> Target {
        let dir = std::env::temp_dir().join(format!("weft-prune-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let deps = dir.join("debug/deps");
        fs::create_dir_all(&deps).expect("create deps");
        fs::create_dir_all(dir.join("debug/incremental/weft-1a2b")).expect("create incremental");
        for f in Self::OURS.iter().chain(Self::THEIRS) {
            fs::write(deps.join(f), b"x").expect("write artifact");
        }
        Target(dir)
    }

    /// The workspace's: the library, a test binary, the proxy binary and their side files.
    const OURS: &[&str] = &[
        "libweft-0123456789abcdef.rlib",
        "libweft-0123456789abcdef.rmeta",
        "weft-0123456789abcdef",
        "weft-0123456789abcdef.d",
        "proxy_netns-fedcba9876543210",
        "weft_proxy-00112233445566aa",
        "weft_node_agent-00112233445566aa.d",
    ];
    /// Third-party crates, one named like a workspace target with a suffix, and a file
    /// without cargo's hash.
    const THEIRS: &[&str] = &[
        "libregex-0123456789abcdef.rlib",
        "libhyper-0123456789abcdef.rmeta",
        "weftx-0123456789abcdef",
        "weft",
    ];

    fn prune(&self, floor: &str, hard_floor: &str) -> String {
        let out = Command::new("bash")
            .arg(root().join("e2e/scripts/prune-target.sh"))
            .current_dir(root())
            .env("CARGO_TARGET_DIR", &self.0)
            .env("WEFT_CACHE_FREE_FLOOR_GB", floor)
            .env("WEFT_CACHE_HARD_FLOOR_GB", hard_floor)
            .output()
            .expect("run prune-target.sh");
        assert!(
            out.status.success(),
            "prune-target.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn has(&self, rel: &str) -> bool {
        self.0.join(rel).exists()
    }

    fn dep(&self, name: &str) -> bool {
        self.has(&format!("debug/deps/{name}"))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// Floors far above any disk: "low". Zero: "plenty".
const NEVER_ENOUGH: &str = "1000000000";

#[test]
fn low_disk_drops_the_workspace_artifacts_and_keeps_third_party_crates() {
    let t = Target::new("low");
    let said = t.prune(NEVER_ENOUGH, "0");
    assert!(
        said.contains("removing the workspace's own build artifacts"),
        "{said}"
    );
    for f in Target::OURS {
        assert!(!t.dep(f), "{f} should have been removed");
    }
    for f in Target::THEIRS {
        assert!(t.dep(f), "{f} should have been kept");
    }
    assert!(
        !t.has("debug/incremental"),
        "the incremental state should have been removed"
    );
    assert!(
        t.has("debug/deps"),
        "the profile directory stays above the hard floor"
    );
}

#[test]
fn below_the_hard_floor_the_debug_profile_goes() {
    let t = Target::new("hard");
    let said = t.prune(NEVER_ENOUGH, NEVER_ENOUGH);
    assert!(said.contains("the next build is cold"), "{said}");
    assert!(
        !t.has("debug"),
        "the debug profile should have been removed"
    );
}

#[test]
fn with_room_to_spare_nothing_is_touched() {
    let t = Target::new("room");
    let said = t.prune("0", "0");
    assert!(said.is_empty(), "nothing to say when there is room: {said}");
    for f in Target::OURS.iter().chain(Target::THEIRS) {
        assert!(t.dep(f), "{f} should have been kept");
    }
    assert!(t.has("debug/incremental/weft-1a2b"));
}
