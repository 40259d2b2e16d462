//! The image table: which local programs an image reference stands for. No container runtime
//! exists here, so an "image" is a directory of executables plus the image's entrypoint.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Deserialize)]
struct TableFile {
    images: Vec<Entry>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct Entry {
    pub repository: String,
    pub dir: String,
    pub entrypoint: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Image {
    pub bin_dir: PathBuf,
    pub entrypoint: Vec<String>,
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
        })
    }
}

impl TableFile {
    fn entries_checked(self) -> anyhow::Result<Vec<Entry>> {
        for e in &self.images {
            anyhow::ensure!(
                !e.entrypoint.is_empty(),
                "image {} has an empty entrypoint",
                e.repository
            );
        }
        Ok(self.images)
    }
}

impl Image {
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
    use super::repository_of;

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
