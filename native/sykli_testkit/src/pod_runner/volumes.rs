//! Volumes: host directories under the work dir (or given by the caller) that containers bind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::spec::{check_absolute_path, check_relative_path, KeyToPath, PodSpec};
use super::{RunOptions, RunnerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VolumeKind {
    EmptyDir,
    Secret,
    ConfigMap,
    Pvc,
    HostPath,
}

#[derive(Debug)]
pub(crate) struct PreparedVolume {
    pub kind: VolumeKind,
    pub host_path: PathBuf,
    /// Mounted read-only whatever the volumeMount says (secrets, config maps, read-only claims).
    pub force_read_only: bool,
    /// A device node: bound with device access.
    pub device: bool,
    /// Why a container that mounts this volume cannot be created (missing secret, ...).
    pub error: Option<String>,
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> RunnerError {
    let context = context.into();
    move |source| RunnerError::Io { context, source }
}

pub(crate) fn mkdir(path: &Path, mode: u32) -> Result<(), RunnerError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    // The umask applies to mkdir(2): set the mode explicitly, as the kubelet does.
    chmod(path, mode)
}

pub(crate) fn chmod(path: &Path, mode: u32) -> Result<(), RunnerError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(format!(
        "chmod {:o} {}",
        mode,
        path.display()
    )))
}

fn mkdir_all(path: &Path, mode: u32) -> Result<(), RunnerError> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        mkdir_all(parent, mode)?;
    }
    mkdir(path, mode)
}

/// Creates every volume of the pod. Problems a kubelet would report as a mount or config error
/// are recorded on the volume (and reported by the containers that mount it); problems that make
/// the manifest or the fixtures unusable are errors.
pub(crate) fn prepare(
    spec: &PodSpec,
    opts: &RunOptions,
    work_dir: &Path,
) -> Result<BTreeMap<String, PreparedVolume>, RunnerError> {
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .map(|g| id_from_i64(g, "fsGroup"))
        .transpose()?;
    let volumes_dir = work_dir.join("volumes");
    if !spec.volumes.is_empty() {
        mkdir_all(&volumes_dir, 0o755)?;
    }
    let mut out = BTreeMap::new();
    for v in &spec.volumes {
        let local = volumes_dir.join(&v.name);
        let type_count = [
            v.empty_dir.is_some(),
            v.secret.is_some(),
            v.config_map.is_some(),
            v.persistent_volume_claim.is_some(),
            v.host_path.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if type_count > 1 {
            return Err(RunnerError::InvalidManifest(format!(
                "volume {:?} has more than one volume source",
                v.name
            )));
        }
        let prepared = if v.empty_dir.is_some() {
            fresh_dir(&local, 0o777)?;
            if let Some(gid) = fs_group {
                set_volume_ownership(&local, gid, false)?;
            }
            PreparedVolume {
                kind: VolumeKind::EmptyDir,
                host_path: local,
                force_read_only: false,
                device: false,
                error: None,
            }
        } else if let Some(s) = &v.secret {
            fresh_dir(&local, 0o1777)?;
            let error = materialize(
                &local,
                "secret",
                &s.secret_name,
                opts.secrets.get(&s.secret_name),
                &s.items,
                s.default_mode,
                s.optional.unwrap_or(false),
            )?;
            if let Some(gid) = fs_group {
                set_volume_ownership(&local, gid, true)?;
            }
            PreparedVolume {
                kind: VolumeKind::Secret,
                host_path: local,
                force_read_only: true,
                device: false,
                error,
            }
        } else if let Some(c) = &v.config_map {
            fresh_dir(&local, 0o1777)?;
            let error = materialize(
                &local,
                "configmap",
                &c.name,
                opts.config_maps.get(&c.name),
                &c.items,
                c.default_mode,
                c.optional.unwrap_or(false),
            )?;
            if let Some(gid) = fs_group {
                set_volume_ownership(&local, gid, true)?;
            }
            PreparedVolume {
                kind: VolumeKind::ConfigMap,
                host_path: local,
                force_read_only: true,
                device: false,
                error,
            }
        } else if let Some(p) = &v.persistent_volume_claim {
            let (host_path, error) = match opts.pvcs.get(&p.claim_name) {
                Some(dir) if dir.is_dir() => (dir.clone(), None),
                Some(dir) => (
                    dir.clone(),
                    Some(format!(
                        "persistentVolumeClaim {:?} is bound to {}, which is not a directory",
                        p.claim_name,
                        dir.display()
                    )),
                ),
                None => (
                    PathBuf::new(),
                    Some(format!(
                        "persistentVolumeClaim {:?} not found (volume {:?})",
                        p.claim_name, v.name
                    )),
                ),
            };
            if let (Some(gid), None) = (fs_group, &error) {
                set_volume_ownership(&host_path, gid, false)?;
            }
            PreparedVolume {
                kind: VolumeKind::Pvc,
                host_path,
                force_read_only: p.read_only.unwrap_or(false),
                device: false,
                error,
            }
        } else if let Some(h) = &v.host_path {
            check_absolute_path(&h.path, "hostPath.path")
                .map_err(|e| RunnerError::InvalidManifest(format!("volume {:?}: {e}", v.name)))?;
            let path = PathBuf::from(&h.path);
            let (error, device) =
                check_host_path(&path, h.kind.as_deref().unwrap_or("")).map_err(|e| match e {
                    HostPathError::Invalid(m) => {
                        RunnerError::InvalidManifest(format!("volume {:?}: {m}", v.name))
                    }
                    HostPathError::Io(e) => e,
                })?;
            PreparedVolume {
                kind: VolumeKind::HostPath,
                host_path: path,
                force_read_only: false,
                device,
                error,
            }
        } else {
            let kind = v
                .other
                .keys()
                .next()
                .cloned()
                .unwrap_or_else(|| "<none>".to_string());
            return Err(RunnerError::UnsupportedVolume {
                volume: v.name.clone(),
                kind,
            });
        };
        out.insert(v.name.clone(), prepared);
    }
    Ok(out)
}

/// The volumes of a pod that already runs in `work_dir`, as [`prepare`] made them: nothing is
/// created (what a new sandbox of one of its containers binds).
pub(crate) fn existing(
    spec: &PodSpec,
    opts: &RunOptions,
    work_dir: &Path,
) -> Result<BTreeMap<String, PreparedVolume>, RunnerError> {
    use std::os::unix::fs::FileTypeExt;
    let volumes_dir = work_dir.join("volumes");
    let mut out = BTreeMap::new();
    for v in &spec.volumes {
        let local = volumes_dir.join(&v.name);
        let (kind, host_path, force_read_only) = if v.empty_dir.is_some() {
            (VolumeKind::EmptyDir, local, false)
        } else if v.secret.is_some() {
            (VolumeKind::Secret, local, true)
        } else if v.config_map.is_some() {
            (VolumeKind::ConfigMap, local, true)
        } else if let Some(p) = &v.persistent_volume_claim {
            let dir = opts.pvcs.get(&p.claim_name).cloned().ok_or_else(|| {
                RunnerError::InvalidFixtures(format!(
                    "persistentVolumeClaim {:?} not found (volume {:?})",
                    p.claim_name, v.name
                ))
            })?;
            (VolumeKind::Pvc, dir, p.read_only.unwrap_or(false))
        } else if let Some(h) = &v.host_path {
            (VolumeKind::HostPath, PathBuf::from(&h.path), false)
        } else {
            let kind = v
                .other
                .keys()
                .next()
                .cloned()
                .unwrap_or_else(|| "<none>".to_string());
            return Err(RunnerError::UnsupportedVolume {
                volume: v.name.clone(),
                kind,
            });
        };
        let meta = fs::metadata(&host_path).map_err(io_err(format!(
            "volume {:?}: {}",
            v.name,
            host_path.display()
        )))?;
        let device = kind == VolumeKind::HostPath
            && (meta.file_type().is_char_device() || meta.file_type().is_block_device());
        out.insert(
            v.name.clone(),
            PreparedVolume {
                kind,
                host_path,
                force_read_only,
                device,
                error: None,
            },
        );
    }
    Ok(out)
}

fn fresh_dir(path: &Path, mode: u32) -> Result<(), RunnerError> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(RunnerError::Io {
            context: format!(
                "creating volume dir {}: it already exists (use a fresh work dir for every run)",
                path.display()
            ),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    }
    mkdir(path, mode)
}

pub(crate) fn id_from_i64(v: i64, what: &str) -> Result<u32, RunnerError> {
    u32::try_from(v)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| RunnerError::InvalidManifest(format!("{what} {v} is out of range")))
}

fn check_mode(mode: i64, what: &str) -> Result<u32, RunnerError> {
    if (0..=0o777).contains(&mode) {
        Ok(mode as u32)
    } else {
        Err(RunnerError::InvalidManifest(format!(
            "{what} {mode} (0{mode:o}) must be between 0 and 0777"
        )))
    }
}

/// Writes the keys of a secret or config map into `dir` the way the kubelet projects them
/// (plain files, without the kubelet's `..data` symlink indirection).
fn materialize(
    dir: &Path,
    kind: &str,
    name: &str,
    data: Option<&HashMap<String, Vec<u8>>>,
    items: &[KeyToPath],
    default_mode: Option<i64>,
    optional: bool,
) -> Result<Option<String>, RunnerError> {
    let default_mode = check_mode(default_mode.unwrap_or(0o644), "defaultMode")?;
    let mut seen = HashSet::new();
    for item in items {
        check_relative_path(&item.path, "items[].path").map_err(|e| {
            RunnerError::InvalidManifest(format!("volume for {kind} {name:?}: {e}"))
        })?;
        if !seen.insert(item.path.as_str()) {
            return Err(RunnerError::InvalidManifest(format!(
                "volume for {kind} {name:?}: path {:?} is used twice",
                item.path
            )));
        }
        if let Some(m) = item.mode {
            check_mode(m, "items[].mode")?;
        }
    }
    let Some(data) = data else {
        if optional {
            return Ok(None);
        }
        let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        return Ok(Some(if keys.is_empty() {
            format!("{kind} {name:?} not found")
        } else {
            format!("{kind} {name:?} not found (keys {})", keys.join(", "))
        }));
    };
    let files: Vec<(String, &[u8], u32)> = if items.is_empty() {
        let mut entries: Vec<(&String, &Vec<u8>)> = data.iter().collect();
        entries.sort();
        let mut files = Vec::new();
        for (key, value) in entries {
            if key.is_empty() || key == "." || key == ".." || key.contains(['/', '\0']) {
                return Err(RunnerError::InvalidFixtures(format!(
                    "{kind} {name:?} has key {key:?}, which is not a valid file name"
                )));
            }
            files.push((key.clone(), value.as_slice(), default_mode));
        }
        files
    } else {
        let mut files = Vec::new();
        for item in items {
            match data.get(&item.key) {
                Some(value) => {
                    let mode = match item.mode {
                        Some(m) => check_mode(m, "items[].mode")?,
                        None => default_mode,
                    };
                    files.push((item.path.clone(), value.as_slice(), mode));
                }
                None if optional => {}
                None => {
                    return Ok(Some(format!(
                        "couldn't find key {:?} in {kind} {name:?}",
                        item.key
                    )))
                }
            }
        }
        files
    };
    for (rel, value, mode) in files {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            mkdir_all(parent, 0o755)?;
        }
        fs::write(&path, value).map_err(io_err(format!("writing {}", path.display())))?;
        chmod(&path, mode)?;
    }
    Ok(None)
}

/// What the kubelet does for `fsGroup`: the tree becomes group-owned by it, group-readable
/// (and group-writable unless the volume is read-only), and directories get the setgid bit.
fn set_volume_ownership(root: &Path, gid: u32, read_only: bool) -> Result<(), RunnerError> {
    let meta = fs::symlink_metadata(root).map_err(io_err(format!("stat {}", root.display())))?;
    std::os::unix::fs::lchown(root, None, Some(gid))
        .map_err(io_err(format!("chgrp {gid} {}", root.display())))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mut mask = if read_only { 0o440 } else { 0o660 };
    if meta.is_dir() {
        mask |= 0o2110;
    }
    chmod(root, (meta.mode() & 0o7777) | mask)?;
    if meta.is_dir() {
        let entries = fs::read_dir(root).map_err(io_err(format!("listing {}", root.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("listing {}", root.display())))?;
            set_volume_ownership(&entry.path(), gid, read_only)?;
        }
    }
    Ok(())
}

enum HostPathError {
    Invalid(String),
    Io(RunnerError),
}

/// Checks (or creates) a hostPath according to its `type`; returns the container config error,
/// if any, and whether the path is a device.
fn check_host_path(path: &Path, kind: &str) -> Result<(Option<String>, bool), HostPathError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = fs::metadata(path).ok();
    let ft = meta.as_ref().map(|m| m.file_type());
    let is_device = ft.is_some_and(|t| t.is_char_device() || t.is_block_device());
    let mismatch = |want: &str| {
        Ok((
            Some(format!("hostPath {} is not a {want}", path.display())),
            false,
        ))
    };
    match kind {
        // Without a type nothing is checked; a missing path is created as a directory, as
        // containerd does for bind sources.
        "" | "DirectoryOrCreate" => {
            if meta.is_none() {
                mkdir_all(path, 0o755).map_err(HostPathError::Io)?;
            } else if kind == "DirectoryOrCreate" && !ft.is_some_and(|t| t.is_dir()) {
                return mismatch("directory");
            }
        }
        "Directory" => {
            if !ft.is_some_and(|t| t.is_dir()) {
                return mismatch("directory");
            }
        }
        "FileOrCreate" => {
            if meta.is_none() {
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        HostPathError::Io(io_err(format!("creating {}", path.display()))(e))
                    })?;
                chmod(path, 0o644).map_err(HostPathError::Io)?;
            } else if !ft.is_some_and(|t| t.is_file()) {
                return mismatch("file");
            }
        }
        "File" => {
            if !ft.is_some_and(|t| t.is_file()) {
                return mismatch("file");
            }
        }
        "Socket" => {
            if !ft.is_some_and(|t| t.is_socket()) {
                return mismatch("socket");
            }
        }
        "CharDevice" => {
            if !ft.is_some_and(|t| t.is_char_device()) {
                return mismatch("character device");
            }
        }
        "BlockDevice" => {
            if !ft.is_some_and(|t| t.is_block_device()) {
                return mismatch("block device");
            }
        }
        other => {
            return Err(HostPathError::Invalid(format!(
                "unknown hostPath type {other:?}"
            )))
        }
    }
    Ok((None, is_device))
}
