//! Volumes: host directories under the work dir (or given by the caller) that containers bind.
//!
//! Secret, configMap, projected and downwardAPI volumes are written as the kubelet's atomic
//! writer leaves them, minus its `..data` symlink indirection: plain files with the modes (and,
//! for service-account tokens, the owner) the kubelet gives them, in a 1777 directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::sandbox::pod_field;
use super::spec::{
    check_absolute_path, check_relative_path, DownwardApiFile, KeyToPath, ObjectMeta, PodSpec,
    ProjectedVolume,
};
use super::{RunOptions, RunnerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VolumeKind {
    EmptyDir,
    Secret,
    ConfigMap,
    Pvc,
    HostPath,
    Projected,
    DownwardApi,
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
    meta: &ObjectMeta,
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
        if v.source_count() > 1 {
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
        } else if let Some(p) = &v.projected {
            fresh_dir(&local, 0o1777)?;
            let error = match projected_files(&v.name, p, meta, spec, opts, fs_group)? {
                Ok(files) => {
                    write_files(&local, &files)?;
                    None
                }
                Err(e) => Some(e),
            };
            if let Some(gid) = fs_group {
                set_volume_ownership(&local, gid, true)?;
            }
            PreparedVolume {
                kind: VolumeKind::Projected,
                host_path: local,
                force_read_only: true,
                device: false,
                error,
            }
        } else if let Some(d) = &v.downward_api {
            fresh_dir(&local, 0o1777)?;
            let default_mode = check_mode(d.default_mode.unwrap_or(0o644), "defaultMode")?;
            let files = downward_files(&v.name, &d.items, default_mode, meta, spec)?;
            write_files(&local, &files)?;
            if let Some(gid) = fs_group {
                set_volume_ownership(&local, gid, true)?;
            }
            PreparedVolume {
                kind: VolumeKind::DownwardApi,
                host_path: local,
                force_read_only: true,
                device: false,
                error: None,
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
        } else if v.projected.is_some() {
            (VolumeKind::Projected, local, true)
        } else if v.downward_api.is_some() {
            (VolumeKind::DownwardApi, local, true)
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

/// A file of a secret, configMap, projected or downwardAPI volume, before it is written.
struct VolumeFile {
    path: String,
    data: Vec<u8>,
    mode: u32,
    /// The owner the kubelet gives it (service-account tokens of a pod with one runAsUser).
    uid: Option<u32>,
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
    match key_files(kind, name, data, items, default_mode, optional)? {
        Ok(files) => {
            write_files(dir, &files)?;
            Ok(None)
        }
        Err(e) => Ok(Some(e)),
    }
}

/// The files of a secret or config map (all keys, or the `items`), or why the kubelet could
/// not mount them (the object or a key is missing and not optional).
fn key_files(
    kind: &str,
    name: &str,
    data: Option<&HashMap<String, Vec<u8>>>,
    items: &[KeyToPath],
    default_mode: u32,
    optional: bool,
) -> Result<Result<Vec<VolumeFile>, String>, RunnerError> {
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
            return Ok(Ok(Vec::new()));
        }
        let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        return Ok(Err(if keys.is_empty() {
            format!("{kind} {name:?} not found")
        } else {
            format!("{kind} {name:?} not found (keys {})", keys.join(", "))
        }));
    };
    let mut files = Vec::new();
    if items.is_empty() {
        let mut entries: Vec<(&String, &Vec<u8>)> = data.iter().collect();
        entries.sort();
        for (key, value) in entries {
            if key.is_empty() || key == "." || key == ".." || key.contains(['/', '\0']) {
                return Err(RunnerError::InvalidFixtures(format!(
                    "{kind} {name:?} has key {key:?}, which is not a valid file name"
                )));
            }
            files.push(VolumeFile {
                path: key.clone(),
                data: value.clone(),
                mode: default_mode,
                uid: None,
            });
        }
    } else {
        for item in items {
            match data.get(&item.key) {
                Some(value) => {
                    let mode = match item.mode {
                        Some(m) => check_mode(m, "items[].mode")?,
                        None => default_mode,
                    };
                    files.push(VolumeFile {
                        path: item.path.clone(),
                        data: value.clone(),
                        mode,
                        uid: None,
                    });
                }
                None if optional => {}
                None => {
                    return Ok(Err(format!(
                        "couldn't find key {:?} in {kind} {name:?}",
                        item.key
                    )))
                }
            }
        }
    }
    Ok(Ok(files))
}

/// The files of a projected volume, all sources together (the kubelet's `collectData`), or
/// every reason the mount fails. Service-account tokens come from
/// [`RunOptions::service_account_tokens`] under `VOLUME/PATH`.
fn projected_files(
    volume: &str,
    p: &ProjectedVolume,
    meta: &ObjectMeta,
    spec: &PodSpec,
    opts: &RunOptions,
    fs_group: Option<u32>,
) -> Result<Result<Vec<VolumeFile>, String>, RunnerError> {
    let default_mode = check_mode(p.default_mode.unwrap_or(0o644), "defaultMode")?;
    let fs_user = fs_user_of(spec);
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for source in &p.sources {
        let keyed = match (&source.secret, &source.config_map) {
            (Some(s), _) => Some(("secret", s, opts.secrets.get(&s.name))),
            (_, Some(c)) => Some(("configmap", c, opts.config_maps.get(&c.name))),
            _ => None,
        };
        if let Some((kind, k, data)) = keyed {
            let optional = k.optional.unwrap_or(false);
            match key_files(kind, &k.name, data, &k.items, default_mode, optional)? {
                Ok(f) => files.extend(f),
                Err(e) => errors.push(e),
            }
        }
        if let Some(d) = &source.downward_api {
            files.extend(downward_files(volume, &d.items, default_mode, meta, spec)?);
        }
        if let Some(t) = &source.service_account_token {
            let key = format!("{volume}/{}", t.path);
            match opts.service_account_tokens.get(&key) {
                Some(token) => files.push(VolumeFile {
                    path: t.path.clone(),
                    data: token.clone().into_bytes(),
                    // With an fsGroup, the ownership pass then makes it 0640.
                    mode: if fs_user.is_some() || fs_group.is_some() {
                        0o600
                    } else {
                        default_mode
                    },
                    uid: fs_user,
                }),
                None => errors.push(format!(
                    "no service account token for path {:?} (add {key:?} to the fixtures' \
                     serviceAccountTokens)",
                    t.path
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(Ok(files))
    } else {
        Ok(Err(errors.join("; ")))
    }
}

/// The kubelet's `FsUser` of a pod: the runAsUser every init and main container runs as, if
/// they all set (or inherit) the same one.
fn fs_user_of(spec: &PodSpec) -> Option<u32> {
    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let mut user = None;
    for c in spec.init_containers.iter().chain(&spec.containers) {
        let u = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_user)?;
        if user.is_some_and(|seen| seen != u) {
            return None;
        }
        user = Some(u);
    }
    user.and_then(|u| u32::try_from(u).ok())
}

/// The files of downwardAPI items: the pod fields they name, as the kubelet formats them.
fn downward_files(
    volume: &str,
    items: &[DownwardApiFile],
    default_mode: u32,
    meta: &ObjectMeta,
    spec: &PodSpec,
) -> Result<Vec<VolumeFile>, RunnerError> {
    let mut files = Vec::new();
    for item in items {
        let Some(field) = &item.field_ref else {
            return Err(RunnerError::Unsupported(format!(
                "volume {volume:?}: downwardAPI item {:?}: resourceFieldRef is not supported by \
                 the pod runner (use a fieldRef)",
                item.path
            )));
        };
        let data = match field.field_path.as_str() {
            "metadata.labels" => format_map(&meta.labels).into_bytes(),
            "metadata.annotations" => format_map(&meta.annotations).into_bytes(),
            path => pod_field(meta, spec, path).map_err(|e| {
                RunnerError::InvalidManifest(format!(
                    "volume {volume:?}: downwardAPI item {:?}: {e}",
                    item.path
                ))
            })?,
        };
        let mode = match item.mode {
            Some(m) => check_mode(m, "items[].mode")?,
            None => default_mode,
        };
        files.push(VolumeFile {
            path: item.path.clone(),
            data,
            mode,
            uid: None,
        });
    }
    Ok(files)
}

/// The kubelet's `FormatMap`: `key="value"` lines (Go-quoted values) in key order, without a
/// final newline.
fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `%q` of a string: printable characters as they are, the rest escaped.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write_files(dir: &Path, files: &[VolumeFile]) -> Result<(), RunnerError> {
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            mkdir_all(parent, 0o755)?;
        }
        fs::write(&path, &f.data).map_err(io_err(format!("writing {}", path.display())))?;
        chmod(&path, f.mode)?;
        if let Some(uid) = f.uid {
            std::os::unix::fs::lchown(&path, Some(uid), None)
                .map_err(io_err(format!("chown {uid} {}", path.display())))?;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_formatted_as_the_kubelet_formats_them() {
        let map: BTreeMap<String, String> = [
            ("b".to_string(), "two \"quoted\"".to_string()),
            ("a".to_string(), "line\nbreak\u{1}ü".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            format_map(&map),
            "a=\"line\\nbreak\\x01ü\"\nb=\"two \\\"quoted\\\"\""
        );
        assert_eq!(format_map(&BTreeMap::new()), "");
    }
}
