//! Pod volumes on the node: each volume is a directory under the pod's state directory, bound
//! into containers at their mountPaths by the launcher. ConfigMaps, Secrets, downward API files
//! and projected service-account tokens (TokenRequest, refreshed at 80% of their lifetime) are
//! rewritten in place by `sync`, so updates reach running containers as on a real kubelet.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client};

pub struct PodVolumes {
    root: PathBuf,
    /// Token files due for refresh: path → (refresh at).
    tokens: HashMap<PathBuf, Instant>,
    tmpfs: Vec<PathBuf>,
}

impl PodVolumes {
    pub fn new(pod_dir: &Path) -> Self {
        Self {
            root: pod_dir.join("volumes"),
            tokens: HashMap::new(),
            tmpfs: Vec::new(),
        }
    }

    pub fn path(&self, volume: &str) -> PathBuf {
        self.root.join(volume)
    }

    /// Creates or refreshes every volume of the pod.
    pub async fn sync(&mut self, client: &Client, pod: &Pod) -> anyhow::Result<()> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for volume in &volumes {
            let dir = self.path(&volume.name);
            std::fs::create_dir_all(&dir)?;
            set_mode(&dir, 0o755)?;
            self.sync_one(client, pod, &ns, volume, &dir)
                .await
                .with_context(|| format!("volume {:?}", volume.name))?;
        }
        Ok(())
    }

    async fn sync_one(
        &mut self,
        client: &Client,
        pod: &Pod,
        ns: &str,
        v: &Volume,
        dir: &Path,
    ) -> anyhow::Result<()> {
        if let Some(empty) = &v.empty_dir {
            if empty.medium.as_deref() == Some("Memory") && !self.tmpfs.contains(&dir.to_path_buf())
            {
                nix::mount::mount(
                    Some("tmpfs"),
                    dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::empty(),
                    Some("mode=1777"),
                )?;
                self.tmpfs.push(dir.to_path_buf());
            } else {
                set_mode(dir, 0o777)?;
            }
            return Ok(());
        }
        let mut files: BTreeMap<PathBuf, (Vec<u8>, u32)> = BTreeMap::new();
        if let Some(cm) = &v.config_map {
            let data = config_map_data(client, ns, &cm.name, cm.optional.unwrap_or(false)).await?;
            project(
                &mut files,
                data,
                cm.items.as_deref(),
                cm.default_mode.unwrap_or(0o644) as u32,
            )?;
        } else if let Some(secret) = &v.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            let data = secret_data(client, ns, &name, secret.optional.unwrap_or(false)).await?;
            project(
                &mut files,
                data,
                secret.items.as_deref(),
                secret.default_mode.unwrap_or(0o644) as u32,
            )?;
        } else if let Some(downward) = &v.downward_api {
            for item in downward.items.iter().flatten() {
                files.insert(
                    PathBuf::from(&item.path),
                    (downward_value(pod, item)?.into_bytes(), 0o644),
                );
            }
        } else if let Some(projected) = &v.projected {
            let mode = projected.default_mode.unwrap_or(0o644) as u32;
            for source in projected.sources.iter().flatten() {
                if let Some(t) = &source.service_account_token {
                    let path = dir.join(&t.path);
                    let due = self
                        .tokens
                        .get(&path)
                        .is_none_or(|at| Instant::now() >= *at);
                    if due {
                        let ttl = t.expiration_seconds.unwrap_or(3600);
                        let token = request_token(client, pod, t.audience.clone(), ttl).await?;
                        write_file(&path, token.as_bytes(), 0o644)?;
                        self.tokens.insert(
                            path,
                            Instant::now() + Duration::from_secs((ttl as u64) * 8 / 10),
                        );
                    }
                } else if let Some(cm) = &source.config_map {
                    let data =
                        config_map_data(client, ns, &cm.name, cm.optional.unwrap_or(false)).await?;
                    project(&mut files, data, cm.items.as_deref(), mode)?;
                } else if let Some(s) = &source.secret {
                    let data =
                        secret_data(client, ns, &s.name, s.optional.unwrap_or(false)).await?;
                    project(&mut files, data, s.items.as_deref(), mode)?;
                } else if let Some(d) = &source.downward_api {
                    for item in d.items.iter().flatten() {
                        files.insert(
                            PathBuf::from(&item.path),
                            (downward_value(pod, item)?.into_bytes(), mode),
                        );
                    }
                }
            }
        } else if let Some(host) = &v.host_path {
            let path = Path::new(&host.path);
            if !path.exists() {
                std::fs::create_dir_all(path)?;
            }
            return Ok(());
        } else {
            bail!(
                "this volume type is not supported by the local cluster's node agent (supported: emptyDir, configMap, secret, downwardAPI, projected, hostPath)"
            );
        }
        for (rel, (contents, mode)) in files {
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                bail!(
                    "item path {} must be relative and stay inside the volume",
                    rel.display()
                );
            }
            write_file(&dir.join(rel), &contents, mode)?;
        }
        Ok(())
    }

    /// Where a volume lives on the host, for the launcher's bind mount (hostPath volumes are
    /// their host path).
    pub fn source(&self, pod: &Pod, volume: &str) -> Option<PathBuf> {
        let v = pod
            .spec
            .as_ref()?
            .volumes
            .as_ref()?
            .iter()
            .find(|v| v.name == volume)?;
        Some(match &v.host_path {
            Some(h) => PathBuf::from(&h.path),
            None => self.path(volume),
        })
    }

    pub fn teardown(&mut self) {
        for dir in self.tmpfs.drain(..) {
            let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::read(path).ok().as_deref() == Some(contents) {
        return Ok(());
    }
    let tmp = path.with_extension("weft-tmp");
    std::fs::write(&tmp, contents)?;
    set_mode(&tmp, mode)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn project(
    files: &mut BTreeMap<PathBuf, (Vec<u8>, u32)>,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
) -> anyhow::Result<()> {
    match items {
        None => {
            for (k, v) in data {
                files.insert(PathBuf::from(k), (v, mode));
            }
        }
        Some(items) => {
            for item in items {
                let value = data
                    .get(&item.key)
                    .with_context(|| format!("key {:?} not found", item.key))?;
                files.insert(
                    PathBuf::from(&item.path),
                    (value.clone(), item.mode.map_or(mode, |m| m as u32)),
                );
            }
        }
    }
    Ok(())
}

pub async fn config_map_data(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    match Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    {
        Some(cm) => {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            out.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(out)
        }
        None if optional => Ok(BTreeMap::new()),
        None => bail!("configmap {ns}/{name} not found"),
    }
}

pub async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    match Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    {
        Some(s) => {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            out.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            Ok(out)
        }
        None if optional => Ok(BTreeMap::new()),
        None => bail!("secret {ns}/{name} not found"),
    }
}

async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    ttl: i64,
) -> anyhow::Result<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audience.into_iter().collect()),
            expiration_seconds: Some(ttl),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let issued = api
        .create_token_request(&sa, &PostParams::default(), &request)
        .await?;
    issued
        .status
        .and_then(|s| s.token)
        .context("TokenRequest returned no token")
}

/// The value of a downward API field, formatted as the kubelet formats it.
pub fn field_value(pod: &Pod, path: &str) -> anyhow::Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let map_lines = |m: Option<&BTreeMap<String, String>>| {
        m.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let keyed = |prefix: &str, m: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(m.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_lines(meta.labels.as_ref()),
        "metadata.annotations" => map_lines(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => {
            status.and_then(|s| s.host_ip.clone()).unwrap_or_default()
        }
        other => bail!("downward API field {other:?} is not supported"),
    })
}

fn downward_value(pod: &Pod, item: &DownwardAPIVolumeFile) -> anyhow::Result<String> {
    if let Some(f) = &item.field_ref {
        return field_value(pod, &f.field_path);
    }
    if let Some(r) = &item.resource_field_ref {
        return Ok(resource_value(&r.resource));
    }
    bail!(
        "downward API item {:?} has neither fieldRef nor resourceFieldRef",
        item.path
    )
}

/// Resource limits are not enforced here; report the node's capacity, as the kubelet does for
/// a container without a limit.
pub fn resource_value(resource: &str) -> String {
    match resource {
        r if r.contains("cpu") => "2".into(),
        r if r.contains("memory") => (24u64 << 30).to_string(),
        _ => "0".into(),
    }
}
