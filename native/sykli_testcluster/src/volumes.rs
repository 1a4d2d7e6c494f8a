//! Claims and their volumes: the provisioner (a directory per claim under `DIR/pvcs`, made when
//! the claim is created and removed with it), and which node each volume is attached to (what
//! the attach/detach controller decides and a kubelet waits for before it mounts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

/// The finalizer the StorageObjectInUseProtection admission plugin puts on every claim.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// What provisions the claims (their `volume.kubernetes.io/storage-provisioner`).
pub const PROVISIONER: &str = "sykli.dev/hostpath";

#[derive(Debug)]
pub struct Volumes {
    root: PathBuf,
    /// Held while a claim's directory is made or removed together with its object.
    provisioning: Mutex<()>,
    /// Volume (PV) name → the nodes it is attached to.
    attached: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl Volumes {
    /// Claims live under `cluster_dir/pvcs`.
    pub fn new(cluster_dir: &Path) -> Self {
        Volumes {
            root: cluster_dir.join("pvcs"),
            provisioning: Mutex::new(()),
            attached: Mutex::new(BTreeMap::new()),
        }
    }

    /// The directory that backs claim `ns/name`.
    pub fn claim_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.root.join(ns).join(name)
    }

    /// Serializes creating (or removing) a claim's object with its directory.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.provisioning.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh, empty directory for claim `ns/name` (whatever an earlier claim of that name
    /// left is removed), writable by every uid as a provisioner's hostPath volume is.
    pub fn provision(&self, ns: &str, name: &str) -> std::io::Result<PathBuf> {
        let dir = self.claim_dir(ns, name);
        if std::fs::symlink_metadata(&dir).is_ok() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        Ok(dir)
    }

    /// Removes claim `ns/name`'s directory (the volume is deleted with its claim).
    pub fn remove(&self, ns: &str, name: &str) {
        let dir = self.claim_dir(ns, name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("sykli-test-cluster: removing {}: {e}", dir.display());
            }
        }
    }

    fn attached(&self) -> MutexGuard<'_, BTreeMap<String, BTreeSet<String>>> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_attached(&self, volume: &str, node: &str) -> bool {
        self.attached()
            .get(volume)
            .is_some_and(|nodes| nodes.contains(node))
    }

    /// Every attachment: volume → nodes.
    pub fn attachments(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.attached().clone()
    }

    pub fn attach(&self, volume: &str, node: &str) {
        self.attached()
            .entry(volume.to_string())
            .or_default()
            .insert(node.to_string());
    }

    pub fn detach(&self, volume: &str, node: &str) {
        let mut a = self.attached();
        if let Some(nodes) = a.get_mut(volume) {
            nodes.remove(node);
            if nodes.is_empty() {
                a.remove(volume);
            }
        }
    }
}

/// The claim's access modes.
pub fn access_modes(pvc: &Value) -> Vec<&str> {
    pvc.pointer("/spec/accessModes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether the volume may be attached to several nodes at once (the attach/detach
/// controller's rule: ReadWriteMany or ReadOnlyMany among the modes).
pub fn multi_attach_allowed(pvc: &Value) -> bool {
    access_modes(pvc)
        .iter()
        .any(|m| *m == "ReadWriteMany" || *m == "ReadOnlyMany")
}

/// Whether containers get the volume read-only whatever they ask for: a claim that is
/// ReadOnlyMany only (as CSI drivers publish MULTI_NODE_READER_ONLY volumes).
pub fn read_only(pvc: &Value) -> bool {
    let modes = access_modes(pvc);
    !modes.is_empty() && modes.iter().all(|m| *m == "ReadOnlyMany")
}

/// The name of the claim's volume (its PersistentVolume's name).
pub fn volume_name(pvc: &Value) -> &str {
    pvc.pointer("/spec/volumeName")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The claims a pod's volumes name: (volume name in the pod, claim name).
pub fn pod_claims(pod: &Value) -> Vec<(&str, &str)> {
    spec_claims(&pod["spec"])
}

/// The claims a pod spec's volumes name: (volume name, claim name).
pub fn spec_claims(spec: &Value) -> Vec<(&str, &str)> {
    spec.get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let claim = v
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)?;
            Some((v["name"].as_str().unwrap_or(""), claim))
        })
        .collect()
}
