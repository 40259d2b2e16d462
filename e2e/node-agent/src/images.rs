//! The image table: which local programs an image reference stands for, and the process argv a
//! container gets from its image's ENTRYPOINT/CMD and its own command/args. No container runtime
//! exists here, so an "image" is a directory of executables plus the two OCI config fields.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pod::expand;

#[derive(Deserialize)]
struct TableFile {
    images: Vec<Entry>,
}

/// One image of e2e/cluster/images.json. `entrypoint` and `cmd` are the OCI image config's
/// `Entrypoint` and `Cmd`, as the real image sets them (either may be empty, not both); unknown
/// fields are refused so a misspelt one cannot silently change what a pod runs.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub repository: String,
    pub dir: String,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Image {
    pub bin_dir: PathBuf,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

pub struct ImageTable {
    entries: Vec<Entry>,
    root: PathBuf,
}

/// `registry/repo:tag@digest` → `registry/repo`.
pub fn repository_of(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rfind(':') {
        // A colon after the last slash is a tag, before it a registry port.
        Some(i) if !without_digest[i..].contains('/') => &without_digest[..i],
        _ => without_digest,
    }
}

impl ImageTable {
    pub fn load(file: &Path, root: &Path) -> anyhow::Result<Self> {
        let table: TableFile = serde_json::from_slice(&std::fs::read(file)?)?;
        Ok(Self {
            entries: table.entries_checked()?,
            root: root.to_path_buf(),
        })
    }

    /// The image, or the reason a real kubelet would give for failing to pull it.
    pub fn resolve(&self, image: &str) -> Result<Image, String> {
        let repo = repository_of(image);
        let entry = self
            .entries
            .iter()
            .find(|e| e.repository == repo)
            .ok_or_else(|| format!("image {image:?} is not in the node agent's image table (e2e/cluster/images.json)"))?;
        let bin_dir = self.root.join(&entry.dir).join("bin");
        if !bin_dir.is_dir() {
            return Err(format!(
                "image {image:?}: its programs are not installed in {}",
                bin_dir.display()
            ));
        }
        Ok(Image {
            bin_dir,
            entrypoint: entry.entrypoint.clone(),
            cmd: entry.cmd.clone(),
        })
    }
}

impl TableFile {
    fn entries_checked(self) -> anyhow::Result<Vec<Entry>> {
        for e in &self.images {
            // A real image may lack one of the two, never both (containerd: "no command
            // specified" for every pod that does not set command or args).
            anyhow::ensure!(
                !(e.entrypoint.is_empty() && e.cmd.is_empty()),
                "image {} has neither an entrypoint nor a cmd",
                e.repository
            );
        }
        Ok(self.images)
    }
}

impl Image {
    /// The container's argv, as the kubelet and containerd build it: the kubelet expands
    /// `$(VAR)` in `command` and `args` (never in the image's fields), then `command` replaces
    /// the ENTRYPOINT and drops the CMD, and `args` replace the CMD. So: neither → entrypoint +
    /// cmd; command only → command; args only → entrypoint + args; both → command + args. An
    /// empty list counts as unset, as in the CRI. The error is containerd's, for an image and
    /// pod that together name no program.
    pub fn argv(
        &self,
        command: &[String],
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Vec<String>, String> {
        let command: Vec<String> = command.iter().map(|a| expand(a, env)).collect();
        let args: Vec<String> = args.iter().map(|a| expand(a, env)).collect();
        let (command, args) = if command.is_empty() {
            let args = if args.is_empty() {
                self.cmd.clone()
            } else {
                args
            };
            (self.entrypoint.clone(), args)
        } else {
            (command, args)
        };
        let argv: Vec<String> = command.into_iter().chain(args).collect();
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err("failed to generate container spec: no command specified".into());
        }
        Ok(argv)
    }

    pub fn path_env(&self) -> String {
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.bin_dir.display()
        )
    }

    /// Resolves argv[0] as a container runtime would inside the image: a bare name through the
    /// image's PATH, an absolute path to the image's own program of that name if it has one.
    pub fn resolve_program(&self, program: &str) -> Option<PathBuf> {
        let name = Path::new(program).file_name()?.to_str()?;
        let own = self.bin_dir.join(name);
        if own.exists() {
            return Some(own);
        }
        if program.starts_with('/') {
            return Path::new(program).exists().then(|| PathBuf::from(program));
        }
        ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
    }
}

#[cfg(test)]
mod tests {
    use super::{Image, TableFile, repository_of};
    use std::path::PathBuf;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The real table, as the node agent loads it.
    fn real_table() -> Vec<super::Entry> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cluster/images.json");
        let bytes = std::fs::read(&path).expect("e2e/cluster/images.json is readable");
        let table: TableFile = serde_json::from_slice(&bytes).expect("images.json parses");
        table
            .entries_checked()
            .expect("images.json passes the load checks")
    }

    fn image(e: &super::Entry) -> Image {
        Image {
            bin_dir: PathBuf::new(),
            entrypoint: e.entrypoint.clone(),
            cmd: e.cmd.clone(),
        }
    }

    /// Kubernetes' four cases for every image of the real table, with `$(VAR)` expanded in
    /// command and args.
    #[test]
    fn four_cases_for_every_image_in_the_table() {
        let env = vec![("WHO".to_string(), "you".to_string())];
        let command = strings(&["prog", "--to=$(WHO)"]);
        let args = strings(&["arg", "$(WHO)", "$$(WHO)"]);
        let expanded_command = strings(&["prog", "--to=you"]);
        let expanded_args = strings(&["arg", "you", "$(WHO)"]);
        let entries = real_table();
        assert!(!entries.is_empty());
        for e in &entries {
            let img = image(e);
            let argv = |c: &[String], a: &[String]| img.argv(c, a, &env);
            let with = |a: &[String], b: &[String]| -> Vec<String> {
                a.iter().chain(b).cloned().collect()
            };
            let r = &e.repository;
            // neither: the image's ENTRYPOINT followed by its CMD
            assert_eq!(
                argv(&[], &[]),
                Ok(with(&e.entrypoint, &e.cmd)),
                "{r}: neither"
            );
            // command only: the CMD is dropped too
            assert_eq!(
                argv(&command, &[]),
                Ok(expanded_command.clone()),
                "{r}: command"
            );
            // args only: they replace the CMD and follow the ENTRYPOINT
            assert_eq!(
                argv(&[], &args),
                Ok(with(&e.entrypoint, &expanded_args)),
                "{r}: args"
            );
            // both: the image plays no part
            assert_eq!(
                argv(&command, &args),
                Ok(with(&expanded_command, &expanded_args)),
                "{r}: both"
            );
        }
    }

    /// What the real images set, so the table cannot drift from them unnoticed; and what a
    /// user observes with the commands the issue names.
    #[test]
    fn the_table_matches_the_real_images() {
        let entries = real_table();
        let find = |repo: &str| {
            entries
                .iter()
                .find(|e| e.repository == repo)
                .unwrap_or_else(|| panic!("{repo} is in images.json"))
        };
        let known: &[(&str, &[&str], &[&str])] = &[
            ("busybox", &[], &["sh"]),
            ("docker.io/library/busybox", &[], &["sh"]),
            ("curlimages/curl", &["/entrypoint.sh"], &["curl"]),
            ("registry.k8s.io/coredns/coredns", &["/coredns"], &[]),
            ("ghcr.io/weft-mesh/weft", &["weft"], &[]),
            ("ghcr.io/weft-mesh/weft-canary", &["weft"], &[]),
            ("weft.dev/echo", &["weft-echo"], &[]),
        ];
        for (repo, entrypoint, cmd) in known {
            let e = find(repo);
            assert_eq!(e.entrypoint, strings(entrypoint), "{repo} entrypoint");
            assert_eq!(e.cmd, strings(cmd), "{repo} cmd");
        }
        let none: &[(String, String)] = &[];
        // `kubectl run p --image=busybox -- sleep 3600` runs sleep, not `sh sleep 3600`.
        let busybox = image(find("busybox"));
        assert_eq!(
            busybox.argv(&[], &strings(&["sleep", "3600"]), none),
            Ok(strings(&["sleep", "3600"]))
        );
        // `kubectl run --image=curlimages/curl -- -s URL`: the image's entrypoint script
        // prepends curl to arguments that start with a dash.
        let curl = image(find("curlimages/curl"));
        assert_eq!(
            curl.argv(&[], &strings(&["-s", "http://x"]), none),
            Ok(strings(&["/entrypoint.sh", "-s", "http://x"]))
        );
        // The CoreDNS Deployment passes only args.
        let coredns = image(find("registry.k8s.io/coredns/coredns"));
        assert_eq!(
            coredns.argv(&[], &strings(&["-conf", "/etc/coredns/Corefile"]), none),
            Ok(strings(&["/coredns", "-conf", "/etc/coredns/Corefile"]))
        );
    }

    #[test]
    fn no_program_at_all_is_containerds_error() {
        let img = Image {
            bin_dir: PathBuf::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
        };
        let none: &[(String, String)] = &[];
        assert!(img.argv(&[], &[], none).is_err());
        assert!(img.argv(&[], &strings(&[""]), none).is_err());
        let table: TableFile =
            serde_json::from_str(r#"{"images": [{"repository": "x", "dir": "x"}]}"#).unwrap();
        assert!(table.entries_checked().is_err());
        let stale = serde_json::from_str::<TableFile>(
            r#"{"images": [{"repository": "x", "dir": "x", "command": ["sh"]}]}"#,
        );
        assert!(stale.is_err(), "an unknown field is refused");
    }

    #[test]
    fn strips_tags_and_digests_not_registry_ports() {
        assert_eq!(repository_of("busybox:1.36"), "busybox");
        assert_eq!(repository_of("busybox"), "busybox");
        assert_eq!(
            repository_of("localhost:5000/weft:dev"),
            "localhost:5000/weft"
        );
        assert_eq!(repository_of("localhost:5000/weft"), "localhost:5000/weft");
        assert_eq!(repository_of("ghcr.io/x/y@sha256:abc"), "ghcr.io/x/y");
    }
}
