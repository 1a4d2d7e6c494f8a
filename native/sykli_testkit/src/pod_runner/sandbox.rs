//! Turns one container of the pod into a bubblewrap command line, or into the reason the kubelet
//! would refuse to create it (`CreateContainerConfigError`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::expand::EnvList;
use super::spec::{check_relative_path, Container, ObjectMeta, PodSpec};
use super::volumes::{chmod, id_from_i64, io_err, mkdir, PreparedVolume, VolumeKind};
use super::{ImageFile, RunOptions, RunnerError, Shell};

pub(crate) const BWRAP: &str = "/usr/bin/bwrap";
pub(crate) const SETPRIV: &str = "/usr/bin/setpriv";
pub(crate) const BUSYBOX: &str = "/usr/bin/busybox";
pub(crate) const ENV: &str = "/usr/bin/env";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const BUSYBOX_MOUNT: &str = "/sykli-busybox/bin";
const DEFAULT_TERMINATION_PATH: &str = "/dev/termination-log";

/// The capabilities containerd gives a container's root user by default.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Host directories bound read-only at the same place inside every sandbox.
const HOST_TREES: &[&str] = &["/usr", "/etc"];
/// Top-level host paths that are symlinks into /usr on a merged-/usr system.
const HOST_ALIASES: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Everything about the pod that every container needs.
pub(crate) struct PodContext<'a> {
    pub meta: &'a ObjectMeta,
    pub hostname: String,
    pub spec: &'a PodSpec,
    pub volumes: &'a BTreeMap<String, PreparedVolume>,
    pub opts: &'a RunOptions,
    pub work_dir: &'a Path,
    /// The host dir of busybox applet links (Shell::Busybox only).
    pub busybox_bin: Option<PathBuf>,
}

impl<'a> PodContext<'a> {
    /// The context of a pod's containers (a run, or an exec into one of them): the
    /// hostname the kubelet derives from the pod.
    pub fn new(
        meta: &'a ObjectMeta,
        spec: &'a PodSpec,
        volumes: &'a BTreeMap<String, PreparedVolume>,
        opts: &'a RunOptions,
        work_dir: &'a Path,
        busybox_bin: Option<PathBuf>,
    ) -> PodContext<'a> {
        let hostname: String = spec
            .hostname
            .clone()
            .unwrap_or_else(|| pod_name(meta))
            .chars()
            .take(63)
            .collect();
        PodContext {
            meta,
            hostname,
            spec,
            volumes,
            opts,
            work_dir,
            busybox_bin,
        }
    }
}

/// A container ready to start.
#[derive(Debug)]
pub(crate) struct Launch {
    /// bwrap's arguments (the runner adds its own status fd in front).
    pub args: Vec<OsString>,
    /// Host file bound at the container's terminationMessagePath.
    pub termination_file: PathBuf,
    pub fallback_to_logs: bool,
}

/// Why a container cannot be created: becomes reason CreateContainerConfigError.
pub(crate) type ConfigError = String;

#[derive(Debug)]
enum Op {
    Bind {
        src: PathBuf,
        dst: PathBuf,
        ro: bool,
        dev: bool,
    },
    Symlink {
        target: OsString,
        dst: PathBuf,
    },
    Dir {
        path: PathBuf,
        mode: u32,
    },
}

fn push_op(args: &mut Vec<OsString>, op: Op) {
    match op {
        Op::Bind { src, dst, ro, dev } => {
            let flag = match (dev, ro) {
                (true, _) => "--dev-bind",
                (false, true) => "--ro-bind",
                (false, false) => "--bind",
            };
            args.push(flag.into());
            args.push(src.into_os_string());
            args.push(dst.into_os_string());
        }
        Op::Symlink { target, dst } => {
            args.push("--symlink".into());
            args.push(target);
            args.push(dst.into_os_string());
        }
        Op::Dir { path, mode } => {
            args.push("--perms".into());
            args.push(format!("{mode:04o}").into());
            args.push("--dir".into());
            args.push(path.into_os_string());
        }
    }
}

/// Resolves `container` into a launch, a config error, or a runner error. With `exec`, the launch
/// runs that command (as given: no `$(VAR)` expansion, no args) in a new sandbox of the
/// container, which must have been launched before (its termination log is reused).
pub(crate) fn plan(
    ctx: &PodContext<'_>,
    container: &Container,
    exec: Option<&[String]>,
) -> Result<Result<Launch, ConfigError>, RunnerError> {
    let command: &[String] = match (exec, &container.command) {
        (Some(cmd), _) if !cmd.is_empty() => cmd,
        (Some(_), _) => {
            return Ok(Err(format!(
                "container {:?}: the command to execute is empty",
                container.name
            )))
        }
        (None, Some(c)) if !c.is_empty() => c,
        (None, _) => {
            let image = container.image.as_deref().unwrap_or("");
            match ctx.opts.image_entrypoints.iter().find(|e| e.image == image) {
                Some(e) => &e.command,
                None => {
                    return Ok(Err(format!(
                        "container {:?} has no command and image {image:?} no entrypoint the \
                         pod runner knows (set command, or give the runner the image's)",
                        container.name
                    )))
                }
            }
        }
    };

    // Identity.
    let pod_sc = ctx.spec.security_context.as_ref();
    let sc = container.security_context.as_ref();
    let uid = match sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user))
    {
        Some(u) => Some(id_from_i64(u, "runAsUser")?),
        None => None,
    };
    let run_as_non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if run_as_non_root && uid.unwrap_or(0) == 0 {
        return Ok(Err(format!(
            "container {:?}: runAsNonRoot and the container would run as root (runAsUser is {})",
            container.name,
            if uid.is_some() { "0" } else { "unset" }
        )));
    }
    let uid = uid.unwrap_or(0);
    let gid = match sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group))
    {
        Some(g) => id_from_i64(g, "runAsGroup")?,
        None => primary_gid_of(uid).unwrap_or(0),
    };
    let mut groups: Vec<u32> = Vec::new();
    if let Some(pod_sc) = pod_sc {
        for g in &pod_sc.supplemental_groups {
            groups.push(id_from_i64(*g, "supplementalGroups")?);
        }
        if let Some(g) = pod_sc.fs_group {
            groups.push(id_from_i64(g, "fsGroup")?);
        }
    }
    groups.sort_unstable();
    groups.dedup();
    let read_only_root = sc
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);

    // Environment from the spec (what $(VAR) references can see).
    let env = match container_env(ctx, container)? {
        Ok(env) => env,
        Err(e) => return Ok(Err(e)),
    };

    // Command line.
    let mut argv: Vec<OsString> = match exec {
        Some(_) => command.iter().map(OsString::from).collect(),
        None => command
            .iter()
            .chain(container.args.iter().flatten())
            .map(|a| OsString::from_vec(env.expand(a.as_bytes())))
            .collect(),
    };
    if ctx.opts.shell == Shell::Busybox && (argv[0] == "sh" || argv[0] == "/bin/sh") {
        argv.splice(0..1, [OsString::from(BUSYBOX), OsString::from("sh")]);
    }
    if argv.iter().any(|a| a.as_encoded_bytes().contains(&0)) {
        return Ok(Err(format!(
            "container {:?}: command or args contain a NUL byte",
            container.name
        )));
    }

    // Volume mounts.
    let mut mounts: Vec<Op> = Vec::new();
    for m in &container.volume_mounts {
        let Some(vol) = ctx.volumes.get(&m.name) else {
            return Err(RunnerError::InvalidManifest(format!(
                "container {:?} mounts unknown volume {:?}",
                container.name, m.name
            )));
        };
        if let Some(e) = &vol.error {
            return Ok(Err(format!(
                "container {:?}: volume {:?}: {e}",
                container.name, m.name
            )));
        }
        let sub = match (&m.sub_path, &m.sub_path_expr) {
            (Some(p), _) if !p.is_empty() => Some(p.clone()),
            (_, Some(expr)) if !expr.is_empty() => {
                let p = String::from_utf8_lossy(&env.expand(expr.as_bytes())).into_owned();
                if let Err(e) = check_relative_path(&p, "subPathExpr") {
                    return Ok(Err(format!("container {:?}: {e}", container.name)));
                }
                Some(p)
            }
            _ => None,
        };
        let src = match sub {
            None => vol.host_path.clone(),
            Some(sub) => match resolve_sub_path(vol, &sub)? {
                Ok(p) => p,
                Err(e) => {
                    return Ok(Err(format!(
                        "container {:?}: volume {:?}: {e}",
                        container.name, m.name
                    )))
                }
            },
        };
        mounts.push(Op::Bind {
            src,
            dst: PathBuf::from(&m.mount_path),
            ro: vol.force_read_only || m.read_only.unwrap_or(false),
            dev: vol.device,
        });
    }

    // Files of the container's image (what stands in for the image's own content).
    let image = container.image.as_deref().unwrap_or("");
    let image_files: Vec<&ImageFile> = ctx
        .opts
        .image_files
        .iter()
        .filter(|f| !image.is_empty() && f.image == image)
        .collect();
    for f in &image_files {
        if fs::symlink_metadata(&f.host_path).is_err() {
            return Ok(Err(format!(
                "container {:?}: {} (a file of image {image:?}) does not exist",
                container.name,
                f.host_path.display()
            )));
        }
        mounts.push(Op::Bind {
            src: f.host_path.clone(),
            dst: f.container_path.clone(),
            ro: true,
            dev: false,
        });
    }

    // The pod's /etc/hosts, as the kubelet manages it, unless the container mounts its own.
    if !container
        .volume_mounts
        .iter()
        .any(|m| Path::new(&m.mount_path) == Path::new("/etc/hosts"))
    {
        mounts.push(Op::Bind {
            src: pod_hosts_file(ctx)?,
            dst: PathBuf::from("/etc/hosts"),
            ro: true,
            dev: false,
        });
    }

    // Termination message file (an exec shares the container's).
    let containers_dir = ctx.work_dir.join("containers");
    let own_dir = containers_dir.join(&container.name);
    let termination_file = own_dir.join("termination-log");
    let bind_termination = match exec {
        Some(_) => termination_file.is_file(),
        None => {
            if !containers_dir.is_dir() {
                mkdir(&containers_dir, 0o755)?;
            }
            mkdir(&own_dir, 0o755)?;
            fs::write(&termination_file, b"")
                .map_err(io_err(format!("creating {}", termination_file.display())))?;
            chmod(&termination_file, 0o666)?;
            true
        }
    };
    let termination_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| DEFAULT_TERMINATION_PATH.to_string());
    if bind_termination {
        mounts.push(Op::Bind {
            src: termination_file.clone(),
            dst: PathBuf::from(&termination_path),
            ro: false,
            dev: false,
        });
    }
    // Parents before children, as container runtimes order mounts.
    mounts.sort_by_key(|op| match op {
        Op::Bind { dst, .. } => dst.components().count(),
        _ => 0,
    });

    // Assemble bwrap's command line.
    let mut args: Vec<OsString> = Vec::new();
    for flag in [
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
    ] {
        args.push(flag.into());
    }
    args.push("--hostname".into());
    args.push(ctx.hostname.clone().into());
    args.push("--cap-drop".into());
    args.push("ALL".into());
    for cap in DEFAULT_CAPS {
        args.push("--cap-add".into());
        args.push((*cap).into());
    }
    let mut targets: Vec<&Path> = container
        .volume_mounts
        .iter()
        .map(|m| Path::new(&m.mount_path))
        .collect();
    if bind_termination {
        targets.push(Path::new(&termination_path));
    }
    targets.extend(image_files.iter().map(|f| f.container_path.as_path()));
    if let Some(wd) = &container.working_dir {
        targets.push(Path::new(wd));
    }
    for op in host_root_ops(&targets)? {
        push_op(&mut args, op);
    }
    for a in ["--proc", "/proc", "--dev", "/dev"] {
        args.push(a.into());
    }
    for (dir, mode) in [("/tmp", 0o1777), ("/var/tmp", 0o1777), ("/root", 0o700)] {
        push_op(
            &mut args,
            Op::Dir {
                path: dir.into(),
                mode,
            },
        );
    }
    if let Some(bb) = &ctx.busybox_bin {
        push_op(
            &mut args,
            Op::Bind {
                src: bb.clone(),
                dst: BUSYBOX_MOUNT.into(),
                ro: true,
                dev: false,
            },
        );
    }
    for op in mounts {
        // bwrap would create missing parents of a mount point with mode 0700; runtimes make
        // them 0755.
        if let Op::Bind { dst, .. } = &op {
            if let Some(parent) = dst.parent().filter(|p| needs_dir(p)) {
                push_op(
                    &mut args,
                    Op::Dir {
                        path: parent.to_path_buf(),
                        mode: 0o755,
                    },
                );
            }
        }
        push_op(&mut args, op);
    }
    if let Some(wd) = container.working_dir.as_deref().filter(|w| !w.is_empty()) {
        // Container runtimes create a missing working directory.
        let under_host = ["/usr", "/etc", "/proc", "/dev", "/sys", "/sykli-busybox"]
            .iter()
            .any(|h| Path::new(wd).starts_with(h));
        if !under_host {
            push_op(
                &mut args,
                Op::Dir {
                    path: wd.into(),
                    mode: 0o755,
                },
            );
        }
    }
    if read_only_root {
        args.push("--remount-ro".into());
        args.push("/".into());
    }

    args.push("--clearenv".into());
    let path = match &ctx.busybox_bin {
        Some(_) => format!("{BUSYBOX_MOUNT}:{DEFAULT_PATH}"),
        None => DEFAULT_PATH.to_string(),
    };
    let mut full_env = EnvList::default();
    full_env.set("PATH", path.into_bytes());
    full_env.set("HOSTNAME", ctx.hostname.clone().into_bytes());
    full_env.set(
        "HOME",
        if uid == 0 {
            b"/root".to_vec()
        } else {
            b"/".to_vec()
        },
    );
    for (name, value) in env.iter() {
        full_env.set(name, value.to_vec());
    }
    for (name, value) in full_env.iter() {
        if value.contains(&0) {
            return Ok(Err(format!(
                "container {:?}: the value of env var {name} contains a NUL byte",
                container.name
            )));
        }
        args.push("--setenv".into());
        args.push(name.into());
        args.push(OsString::from_vec(value.to_vec()));
    }
    // Without a workingDir, runtimes start in /.
    args.push("--chdir".into());
    args.push(
        container
            .working_dir
            .as_deref()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .into(),
    );

    args.push("--".into());
    // bwrap exports PWD; a runtime does not (unless the container sets it).
    args.push(ENV.into());
    match env.get(b"PWD") {
        Some(pwd) => {
            let mut assignment = b"PWD=".to_vec();
            assignment.extend_from_slice(pwd);
            args.push(OsString::from_vec(assignment));
        }
        None => {
            args.push("-u".into());
            args.push("PWD".into());
        }
    }
    args.push(SETPRIV.into());
    args.push("--reuid".into());
    args.push(uid.to_string().into());
    args.push("--regid".into());
    args.push(gid.to_string().into());
    // Runtimes give containers no inheritable (hence no ambient) capabilities, and bound them
    // to the default set.
    args.push("--inh-caps=-all".into());
    let bounding: Vec<String> = DEFAULT_CAPS
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    args.push(format!("--bounding-set=-all,{}", bounding.join(",")).into());
    if groups.is_empty() {
        args.push("--clear-groups".into());
    } else {
        args.push("--groups".into());
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        args.push(list.join(",").into());
    }
    args.push("--".into());
    args.extend(argv);

    Ok(Ok(Launch {
        args,
        termination_file,
        fallback_to_logs: container.termination_message_policy.as_deref()
            == Some("FallbackToLogsOnError"),
    }))
}

/// Whether a mount point's parent must be created with `--dir` (it is not provided by the
/// host binds, /proc or /).
fn needs_dir(parent: &Path) -> bool {
    if parent == Path::new("/") || parent.starts_with("/proc") {
        return false;
    }
    let under_host = HOST_TREES.iter().any(|t| parent.starts_with(t));
    !(under_host && fs::symlink_metadata(parent).is_ok())
}

/// The primary group of `uid` in the "image" (the host's /etc/passwd), as runtimes use when
/// runAsGroup is not set.
fn primary_gid_of(uid: u32) -> Option<u32> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let (_name, _pw, u, g) = (f.next()?, f.next()?, f.next()?, f.next()?);
        (u.parse::<u32>().ok()? == uid).then(|| g.parse().ok())?
    })
}

/// The container's environment as the spec defines it: envFrom first, then env in order.
fn container_env(
    ctx: &PodContext<'_>,
    c: &Container,
) -> Result<Result<EnvList, ConfigError>, RunnerError> {
    let mut env = EnvList::default();
    for from in &c.env_from {
        let (kind, obj_ref, store) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(r), None) => ("secret", r, &ctx.opts.secrets),
            (None, Some(r)) => ("configmap", r, &ctx.opts.config_maps),
            _ => {
                return Err(RunnerError::InvalidManifest(format!(
                    "container {:?}: each envFrom entry needs exactly one of secretRef and configMapRef",
                    c.name
                )))
            }
        };
        match store.get(&obj_ref.name) {
            Some(data) => {
                let mut entries: Vec<(&String, &Vec<u8>)> = data.iter().collect();
                entries.sort();
                let prefix = from.prefix.as_deref().unwrap_or("");
                for (key, value) in entries {
                    let name = format!("{prefix}{key}");
                    // The kubelet skips keys that are not valid variable names.
                    if name.is_empty() || name.contains(['=', '\0']) {
                        continue;
                    }
                    env.set(&name, value.clone());
                }
            }
            None if obj_ref.optional.unwrap_or(false) => {}
            None => {
                return Ok(Err(format!(
                    "container {:?}: envFrom: {kind} {:?} not found",
                    c.name, obj_ref.name
                )))
            }
        }
    }
    for var in &c.env {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(r) = from
                    .secret_key_ref
                    .as_ref()
                    .or(from.config_map_key_ref.as_ref())
                {
                    let (kind, store) = if from.secret_key_ref.is_some() {
                        ("secret", &ctx.opts.secrets)
                    } else {
                        ("configmap", &ctx.opts.config_maps)
                    };
                    let optional = r.optional.unwrap_or(false);
                    match store.get(&r.name).map(|d| d.get(&r.key)) {
                        Some(Some(v)) => v.clone(),
                        _ if optional => continue,
                        None => {
                            return Ok(Err(format!(
                                "container {:?}: env {}: {kind} {:?} not found (key {:?})",
                                c.name, var.name, r.name, r.key
                            )))
                        }
                        Some(None) => {
                            return Ok(Err(format!(
                                "container {:?}: env {}: couldn't find key {:?} in {kind} {:?}",
                                c.name, var.name, r.key, r.name
                            )))
                        }
                    }
                } else if let Some(f) = &from.field_ref {
                    field_value(ctx, &f.field_path).map_err(|e| {
                        RunnerError::InvalidManifest(format!(
                            "container {:?}: env {}: {e}",
                            c.name, var.name
                        ))
                    })?
                } else if from.resource_field_ref.is_some() {
                    return Err(RunnerError::Unsupported(format!(
                        "container {:?}: env {}: resourceFieldRef is not supported by the pod runner",
                        c.name, var.name
                    )));
                } else {
                    return Err(RunnerError::InvalidManifest(format!(
                        "container {:?}: env {}: valueFrom has no source",
                        c.name, var.name
                    )));
                }
            }
            (Some(v), None) => env.expand(v.as_bytes()),
            (None, None) => Vec::new(),
        };
        env.set(&var.name, value);
    }
    Ok(Ok(env))
}

/// The pod's name (a bare PodSpec has none: "pod").
fn pod_name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_else(|| "pod".to_string())
}

/// The pod's namespace ("default" when the manifest names none, as the API server defaults it).
fn pod_namespace(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

fn field_value(ctx: &PodContext<'_>, path: &str) -> Result<Vec<u8>, String> {
    pod_field(ctx.meta, ctx.spec, path)
}

/// The downward API fields a pod can read through `fieldRef` (env, and downwardAPI volumes).
pub(crate) fn pod_field(meta: &ObjectMeta, spec: &PodSpec, path: &str) -> Result<Vec<u8>, String> {
    fn subscript<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix('[')?
            .strip_suffix(']')?;
        rest.strip_prefix('\'')
            .and_then(|r| r.strip_suffix('\''))
            .or_else(|| rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
    }
    let v = match path {
        "metadata.name" => pod_name(meta),
        "metadata.namespace" => pod_namespace(meta),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.clone().unwrap_or_else(|| "localhost".into()),
        "spec.serviceAccountName" => spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        // The sandbox shares the host's network.
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => "127.0.0.1".into(),
        _ => {
            if let Some(k) = subscript(path, "metadata.labels") {
                meta.labels.get(k).cloned().unwrap_or_default()
            } else if let Some(k) = subscript(path, "metadata.annotations") {
                meta.annotations.get(k).cloned().unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldRef.fieldPath {path:?}"));
            }
        }
    };
    Ok(v.into_bytes())
}

/// The host path a `subPath` of `vol` binds, creating a missing directory where the kubelet
/// would, and refusing paths that leave the volume through symlinks.
fn resolve_sub_path(
    vol: &PreparedVolume,
    sub: &str,
) -> Result<Result<PathBuf, ConfigError>, RunnerError> {
    let base = vol.host_path.canonicalize().map_err(io_err(format!(
        "resolving volume dir {}",
        vol.host_path.display()
    )))?;
    let mut cur = base.clone();
    for comp in Path::new(sub).components() {
        let Component::Normal(part) = comp else {
            continue;
        };
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(_) => {
                let resolved = cur
                    .canonicalize()
                    .map_err(io_err(format!("resolving {}", cur.display())))?;
                if !resolved.starts_with(&base) {
                    return Ok(Err(format!("subPath {sub:?} leaves the volume")));
                }
                cur = resolved;
            }
            Err(_) => match vol.kind {
                VolumeKind::EmptyDir | VolumeKind::Pvc | VolumeKind::HostPath => {
                    let mode = fs::metadata(&base)
                        .map(|m| m.permissions().mode() & 0o7777)
                        .unwrap_or(0o755);
                    mkdir(&cur, mode)?;
                    if let Ok(meta) = fs::metadata(&base) {
                        // Keep the volume's group (fsGroup) on created sub dirs.
                        let _ = std::os::unix::fs::chown(&cur, None, Some(meta.gid()));
                        let _ = chmod(&cur, mode);
                    }
                }
                VolumeKind::Secret
                | VolumeKind::ConfigMap
                | VolumeKind::Projected
                | VolumeKind::DownwardApi => {
                    return Ok(Err(format!("subPath {sub:?} does not exist in the volume")));
                }
            },
        }
    }
    Ok(Ok(cur))
}

/// Binds /usr and /etc read-only and recreates the /bin-style aliases. When a mount target lies
/// inside /usr or /etc at a path the host does not have, the directories above it are rebuilt
/// entry by entry on the sandbox root so that bwrap can create the mount point (a container's
/// image layers would be writable there).
/// The pod's hosts file (written once per pod, under its work dir), as the kubelet writes
/// it: the loopback names, the pod's hostname, then the spec's `hostAliases`. The sandbox
/// shares the host's network, so the pod's own address is loopback; with `hostNetwork` the
/// host's file comes first instead, as on a node.
fn pod_hosts_file(ctx: &PodContext<'_>) -> Result<PathBuf, RunnerError> {
    let path = ctx.work_dir.join("etc-hosts");
    if path.is_file() {
        return Ok(path);
    }
    let mut text = if ctx.spec.host_network == Some(true) {
        let host = fs::read_to_string("/etc/hosts").unwrap_or_default();
        format!("# Kubernetes-managed hosts file (host network).\n{host}")
    } else {
        format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             127.0.0.1\t{}\n",
            ctx.hostname
        )
    };
    if !ctx.spec.host_aliases.is_empty() {
        text.push_str("\n# Entries added by HostAliases.\n");
        for a in &ctx.spec.host_aliases {
            text.push_str(&format!("{}\t{}\n", a.ip, a.hostnames.join("\t")));
        }
    }
    fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
    chmod(&path, 0o644)?;
    Ok(path)
}

fn host_root_ops(targets: &[&Path]) -> Result<Vec<Op>, RunnerError> {
    let mut explode: BTreeSet<PathBuf> = BTreeSet::new();
    for t in targets {
        for tree in HOST_TREES {
            let tree = Path::new(tree);
            if !t.starts_with(tree) || *t == tree || fs::symlink_metadata(t).is_ok() {
                continue;
            }
            let mut dir = t.parent();
            let mut chain = Vec::new();
            while let Some(d) = dir {
                if !d.starts_with(tree) {
                    break;
                }
                chain.push(d.to_path_buf());
                dir = d.parent();
            }
            // Only the existing (real directory) ancestors need rebuilding.
            explode.extend(
                chain
                    .into_iter()
                    .filter(|d| fs::symlink_metadata(d).is_ok_and(|m| m.is_dir())),
            );
        }
    }
    let mut ops = Vec::new();
    for tree in HOST_TREES {
        emit_host_dir(Path::new(tree), &explode, &mut ops)?;
    }
    for alias in HOST_ALIASES {
        let p = Path::new(alias);
        match fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(p).map_err(io_err(format!("readlink {alias}")))?;
                ops.push(Op::Symlink {
                    target: target.into_os_string(),
                    dst: p.to_path_buf(),
                });
            }
            Ok(m) if m.is_dir() => ops.push(Op::Bind {
                src: p.to_path_buf(),
                dst: p.to_path_buf(),
                ro: true,
                dev: false,
            }),
            _ => {}
        }
    }
    Ok(ops)
}

fn emit_host_dir(
    dir: &Path,
    explode: &BTreeSet<PathBuf>,
    ops: &mut Vec<Op>,
) -> Result<(), RunnerError> {
    if !explode.contains(dir) {
        if dir.exists() {
            ops.push(Op::Bind {
                src: dir.to_path_buf(),
                dst: dir.to_path_buf(),
                ro: true,
                dev: false,
            });
        }
        return Ok(());
    }
    let meta = fs::metadata(dir).map_err(io_err(format!("stat {}", dir.display())))?;
    ops.push(Op::Dir {
        path: dir.to_path_buf(),
        mode: meta.permissions().mode() & 0o7777,
    });
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(format!("listing {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let Ok(m) = fs::symlink_metadata(&path) else {
            continue;
        };
        if m.file_type().is_symlink() {
            if let Ok(target) = fs::read_link(&path) {
                ops.push(Op::Symlink {
                    target: target.into_os_string(),
                    dst: path,
                });
            }
        } else if m.is_dir() && explode.contains(&path) {
            emit_host_dir(&path, explode, ops)?;
        } else {
            ops.push(Op::Bind {
                src: path.clone(),
                dst: path,
                ro: true,
                dev: false,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binds(ops: &[Op]) -> Vec<&Path> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Bind { dst, .. } => Some(dst.as_path()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn host_trees_are_bound_whole_unless_a_mount_point_is_missing_inside() {
        let ops = host_root_ops(&[Path::new("/workspace"), Path::new("/dev/termination-log")])
            .expect("ops");
        let b = binds(&ops);
        assert!(b.contains(&Path::new("/usr")) && b.contains(&Path::new("/etc")));

        let ops = host_root_ops(&[Path::new("/etc/sykli-test-not-there/config")]).expect("ops");
        let b = binds(&ops);
        assert!(b.contains(&Path::new("/usr")));
        assert!(!b.contains(&Path::new("/etc")));
        assert!(b.contains(&Path::new("/etc/passwd")));
        assert!(ops
            .iter()
            .any(|op| matches!(op, Op::Dir { path, .. } if path == Path::new("/etc"))));
    }

    #[test]
    fn mount_point_parents() {
        assert!(!needs_dir(Path::new("/")));
        assert!(!needs_dir(Path::new("/etc")));
        assert!(!needs_dir(Path::new("/proc/sys")));
        assert!(needs_dir(Path::new("/var/run/sykli")));
        assert!(needs_dir(Path::new("/etc/sykli-test-not-there")));
    }
}
