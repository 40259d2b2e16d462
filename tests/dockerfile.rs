//! The Dockerfile cannot be built here (no docker), so this keeps it in step with what it
//! packages: the `[[bin]]` targets of Cargo.toml, the image config/ installs and the webhook
//! injects, the commands the Deployment and the injected containers run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One Dockerfile instruction: keyword and its arguments, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (keyword, args) = current.split_once(' ').unwrap_or((current.as_str(), ""));
                out.push(Instruction {
                    keyword: keyword.to_uppercase(),
                    args: args.trim().to_string(),
                });
                current.clear();
            }
        }
    }
    out
}

/// The instructions of the last stage: what ends up in the image.
fn final_stage(all: &[Instruction]) -> &[Instruction] {
    let start = all.iter().rposition(|i| i.keyword == "FROM").unwrap();
    &all[start..]
}

/// The names of the `[[bin]]` targets of the weft package, as cargo reads Cargo.toml.
fn cargo_bins() -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(repo().join("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let weft = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "weft")
        .unwrap();
    let mut bins: Vec<String> = weft["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    bins.sort();
    bins
}

/// Executables the final stage copies into /usr/local/bin.
fn installed_binaries(dockerfile: &str) -> Vec<String> {
    let all = instructions(dockerfile);
    let mut bins: Vec<String> = final_stage(&all)
        .iter()
        .filter(|i| i.keyword == "COPY")
        .filter_map(|i| {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let dest = Path::new(words.last()?);
            dest.starts_with("/usr/local/bin")
                .then(|| dest.file_name()?.to_str().map(String::from))?
        })
        .collect();
    bins.sort();
    bins
}

#[test]
fn the_image_carries_every_binary_cargo_builds_and_builds_them_locked() {
    let dockerfile = read("Dockerfile");
    let bins = cargo_bins();
    assert_eq!(installed_binaries(&dockerfile), bins);

    let all = instructions(&dockerfile);
    let build = all
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .expect("a RUN cargo build");
    let words: Vec<&str> = build.args.split_whitespace().collect();
    for flag in ["--release", "--locked"] {
        assert!(words.contains(&flag), "cargo build without {flag}");
    }
    for bin in &bins {
        assert!(
            words.windows(2).any(|w| w == ["--bin", bin.as_str()]),
            "cargo build does not build {bin}: {}",
            build.args
        );
    }
}

#[test]
fn the_image_runs_as_non_root_and_has_iptables_for_the_init_container() {
    let dockerfile = read("Dockerfile");
    let all = instructions(&dockerfile);
    let last = final_stage(&all);
    let user = last
        .iter()
        .rfind(|i| i.keyword == "USER")
        .expect("a USER in the final stage");
    assert_eq!(user.args.split(':').next(), Some("65532"));
    // `weft-proxy init` runs these (src/proxy/iptables.rs).
    assert!(
        last.iter().any(|i| i.keyword == "RUN"
            && i.args.contains("install")
            && i.args.contains("iptables")),
        "the final stage installs no iptables"
    );
    assert!(read("src/proxy/iptables.rs").contains("\"iptables-restore\""));
}

#[test]
fn config_installs_the_image_the_webhook_injects_and_runs_binaries_it_carries() {
    // config/manager/kustomization.yaml: images: [{name: weft, newName, newTag}]
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(&read("config/manager/kustomization.yaml")).unwrap();
    let image = kustomization["images"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "weft")
        .expect("an images entry for weft");
    let installed = format!(
        "{}:{}",
        image["newName"].as_str().unwrap(),
        image["newTag"].as_str().unwrap()
    );
    // The sidecar is the operator's own image unless a MeshConfig names another.
    assert_eq!(installed, weft::webhook::state::DEFAULT_PROXY_IMAGE);

    let bins = installed_binaries(&read("Dockerfile"));
    let deployment: serde_yaml::Value =
        serde_yaml::from_str(&read("config/manager/deployment.yaml")).unwrap();
    let command = &deployment["spec"]["template"]["spec"]["containers"][0]["command"][0];
    assert!(bins.iter().any(|b| command == b.as_str()), "{command:?}");
    assert!(bins.iter().any(|b| b == weft::contract::PROXY_COMMAND));
}
