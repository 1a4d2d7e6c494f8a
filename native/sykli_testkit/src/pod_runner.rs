//! The pod runner: executes a Kubernetes Pod spec (or the pod template of a Job) on this machine.
//!
//! Images are ignored (but for [`RunOptions::image_files`]: host files a container sees because
//! of its image). Every container runs the host's userland inside a bubblewrap sandbox
//! (`/usr/bin/bwrap`): host `/usr` and `/etc` read-only, fresh pid/ipc/uts namespaces, the host
//! network, and the container's identity taken on with `setpriv` (no user namespace, so files a
//! container writes into a volume are owned by its uid on the host). Volumes are directories
//! under [`RunOptions::work_dir`] and are left there for the caller to inspect.
//!
//! The semantics follow the kubelet: init containers in order (a failure stops the pod),
//! native sidecars (`restartPolicy: Always` init containers) kept running until the main
//! containers have exited, main containers run concurrently, Kubernetes `$(VAR)` expansion,
//! secret/configMap/projected/downwardAPI volumes with the kubelet's modes (the
//! `kube-api-access-*` volume the API server adds included, its token from
//! [`RunOptions::service_account_tokens`]), `CreateContainerConfigError` for what the kubelet
//! would refuse, termination messages, and a deadline.
//!
//! A kubelet can drive it: [`RunOptions::on_event`] reports each container's start and final
//! state as they happen ([`ContainerEvent`]), [`RunOptions::stop`] stops the pod as a deleted
//! pod is stopped (SIGTERM, SIGKILL after `terminationGracePeriodSeconds`, sidecars last), and
//! [`exec_sandbox`] plans a command in a new sandbox of a container of a pod that runs (what
//! `kubectl exec` does), sharing the pod's volumes. The `sykli-pod-runner` binary speaks this
//! as a protocol (JSON lines, SIGTERM, `exec`) for the virtual-kubelet provider of
//! `tools/kube`. Sandboxes die with the runner: bwrap gets SIGKILL when the thread that spawned
//! it ends (`PR_SET_PDEATHSIG`), and bwrap's `--die-with-parent` takes the sandbox's pid
//! namespace along.
//!
//! Known differences from a real node: no restarts (`restartPolicy` of the pod and of sidecars
//! is not acted on), no probes or lifecycle hooks (no preStop on a stop), secret, configMap,
//! projected and downwardAPI volumes are plain files written once (no `..data` symlinks, no
//! updates), service-account tokens are the fixtures' (never minted, rotated or checked
//! against `audience`/`expirationSeconds`), downwardAPI `resourceFieldRef` and the
//! `clusterTrustBundle`/`podCertificate` projections are not supported, an exec may target a
//! container that has exited (the pod's work dir is all it needs), and the image's user
//! database is the host's `/etc/passwd`.

mod events;
mod exec;
mod expand;
mod fixtures;
mod process;
mod sandbox;
mod spec;
mod stop;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

pub use events::{rfc3339_nanos, ContainerEvent, EventSink};
pub use exec::{exec_sandbox, ExecSandbox};
pub use fixtures::Fixtures;
pub use stop::StopHandle;

use process::{Control, Outcome};
use sandbox::{Launch, PodContext, BUSYBOX, BWRAP, ENV, SETPRIV};
use stop::Wake;
use volumes::io_err;

/// Receives container log lines as they are produced: `(container name, line)`, the line
/// without its newline.
pub type LogSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The deadline used when neither the caller nor the manifest sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Which `sh` the containers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shell {
    /// The host's userland as is (on Debian, `/bin/sh` is dash).
    #[default]
    Host,
    /// Stands in for a minimal image: busybox applets first in `PATH` (plus the host's `git`,
    /// `ssh` and `git-lfs`), and a command of `sh`/`/bin/sh` runs `busybox sh` (ash).
    Busybox,
}

/// How to run a pod.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Where volumes and per-container files are created (and left after the run). Empty: a
    /// fresh directory under the system temp dir ([`PodResult::work_dir`] says which).
    pub work_dir: PathBuf,
    /// Secrets by name: key → bytes.
    pub secrets: HashMap<String, HashMap<String, Vec<u8>>>,
    /// ConfigMaps by name: key → bytes.
    pub config_maps: HashMap<String, HashMap<String, Vec<u8>>>,
    /// PersistentVolumeClaims by claimName: the host directory that backs each.
    pub pvcs: HashMap<String, PathBuf>,
    /// The tokens of projected `serviceAccountToken` sources, by `VOLUME/PATH` (the projected
    /// volume's name and the source's `path`): what the API server would mint for the pod.
    pub service_account_tokens: HashMap<String, String>,
    /// Host files (or directories) a container sees read-only because of its image: what stands
    /// in for an image's own content (a helper binary built on the host, say).
    pub image_files: Vec<ImageFile>,
    /// What a container of an image runs when it sets no `command`: the image's entrypoint.
    pub image_entrypoints: Vec<ImageEntrypoint>,
    pub shell: Shell,
    /// Overall deadline. None: the Job's (or pod's) `activeDeadlineSeconds`, else
    /// [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// Live log lines.
    pub on_log: Option<LogSink>,
    /// Live container state changes (started, terminated).
    pub on_event: Option<EventSink>,
    /// Stops the pod from outside, as the kubelet stops a pod being deleted.
    pub stop: Option<StopHandle>,
}

impl fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secret_names: Vec<&String> = self.secrets.keys().collect();
        secret_names.sort();
        let mut token_keys: Vec<&String> = self.service_account_tokens.keys().collect();
        token_keys.sort();
        f.debug_struct("RunOptions")
            .field("work_dir", &self.work_dir)
            .field("secrets", &secret_names)
            .field("config_maps", &self.config_maps.keys().collect::<Vec<_>>())
            .field("pvcs", &self.pvcs)
            .field("service_account_tokens", &token_keys)
            .field("image_files", &self.image_files)
            .field("image_entrypoints", &self.image_entrypoints)
            .field("shell", &self.shell)
            .field("timeout", &self.timeout)
            .field("on_log", &self.on_log.as_ref().map(|_| "<fn>"))
            .field("on_event", &self.on_event.as_ref().map(|_| "<fn>"))
            .field("stop", &self.stop)
            .finish()
    }
}

impl RunOptions {
    /// Options with volumes under `work_dir` and nothing else set.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            work_dir: work_dir.into(),
            ..RunOptions::default()
        }
    }

    /// Adds a secret.
    pub fn secret<K: Into<String>, V: Into<Vec<u8>>>(
        mut self,
        name: impl Into<String>,
        data: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.secrets.insert(
            name.into(),
            data.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Adds a config map.
    pub fn config_map<K: Into<String>, V: Into<Vec<u8>>>(
        mut self,
        name: impl Into<String>,
        data: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.config_maps.insert(
            name.into(),
            data.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Backs a PersistentVolumeClaim with a host directory.
    pub fn pvc(mut self, claim_name: impl Into<String>, host_dir: impl Into<PathBuf>) -> Self {
        self.pvcs.insert(claim_name.into(), host_dir.into());
        self
    }

    /// The token of the `serviceAccountToken` source with `path` in projected volume `volume`.
    pub fn service_account_token(
        mut self,
        volume: &str,
        path: &str,
        token: impl Into<String>,
    ) -> Self {
        self.service_account_tokens
            .insert(format!("{volume}/{path}"), token.into());
        self
    }

    /// Every container whose `image` is `image` sees `host_path` read-only at `container_path`.
    pub fn image_file(
        mut self,
        image: impl Into<String>,
        host_path: impl Into<PathBuf>,
        container_path: impl Into<PathBuf>,
    ) -> Self {
        self.image_files.push(ImageFile {
            image: image.into(),
            host_path: host_path.into(),
            container_path: container_path.into(),
        });
        self
    }

    /// A container of `image` that sets no `command` runs `command` (then its own `args`),
    /// as a runtime runs an image's ENTRYPOINT.
    pub fn image_entrypoint(
        mut self,
        image: impl Into<String>,
        command: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.image_entrypoints.push(ImageEntrypoint {
            image: image.into(),
            command: command.into_iter().map(Into::into).collect(),
        });
        self
    }

    pub fn shell(mut self, shell: Shell) -> Self {
        self.shell = shell;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn on_log(mut self, sink: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.on_log = Some(Arc::new(sink));
        self
    }

    pub fn on_event(mut self, sink: impl Fn(&ContainerEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(sink));
        self
    }

    pub fn stop(mut self, handle: StopHandle) -> Self {
        self.stop = Some(handle);
        self
    }

    /// Adds the secrets, config maps, claims and service-account tokens of `fixtures`.
    pub fn fixtures(mut self, fixtures: Fixtures) -> Self {
        self.secrets.extend(fixtures.secrets);
        self.config_maps.extend(fixtures.config_maps);
        self.pvcs.extend(fixtures.pvcs);
        self.service_account_tokens
            .extend(fixtures.service_account_tokens);
        self
    }
}

/// A host file or directory that is part of an image: containers whose `image` is exactly
/// `image` see `host_path` bound read-only at `container_path` (an absolute path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub image: String,
    pub host_path: PathBuf,
    pub container_path: PathBuf,
}

impl ImageFile {
    /// Parses `IMAGE=HOSTPATH:CONTAINERPATH` (the image may itself contain `:`, the paths may
    /// not contain `=`; the container path is what follows the last `:`).
    pub fn parse(spec: &str) -> Result<ImageFile, String> {
        let (image, paths) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?} is not IMAGE=HOSTPATH:CONTAINERPATH"))?;
        let (host, container) = paths
            .rsplit_once(':')
            .ok_or_else(|| format!("{spec:?} is not IMAGE=HOSTPATH:CONTAINERPATH"))?;
        if image.is_empty() || host.is_empty() {
            return Err(format!("{spec:?} is not IMAGE=HOSTPATH:CONTAINERPATH"));
        }
        if !container.starts_with('/') {
            return Err(format!(
                "{spec:?}: the container path {container:?} must be absolute"
            ));
        }
        Ok(ImageFile {
            image: image.to_string(),
            host_path: PathBuf::from(host),
            container_path: PathBuf::from(container),
        })
    }
}

/// An image's entrypoint: what a container of `image` without a `command` runs (its `args`
/// follow), standing in for the ENTRYPOINT of an image the runner never pulls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntrypoint {
    pub image: String,
    pub command: Vec<String>,
}

impl ImageEntrypoint {
    /// Parses `IMAGE=["program","arg",…]` (a JSON array of strings, not empty).
    pub fn parse(spec: &str) -> Result<ImageEntrypoint, String> {
        let usage = || format!("{spec:?} is not IMAGE=[\"program\",\"arg\",…] (a JSON array)");
        let (image, json) = spec.split_once('=').ok_or_else(usage)?;
        let command: Vec<String> = serde_json::from_str(json).map_err(|_| usage())?;
        if image.is_empty() || command.is_empty() || command[0].is_empty() {
            return Err(usage());
        }
        Ok(ImageEntrypoint {
            image: image.to_string(),
            command,
        })
    }
}

/// The pod's final phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PodPhase {
    Succeeded,
    Failed,
}

/// Where a container sits in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerKind {
    Init,
    /// An init container with `restartPolicy: Always`.
    Sidecar,
    Main,
}

/// What happened to one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerResult {
    pub name: String,
    pub kind: ContainerKind,
    /// Whether its process was started (false when the pod ended before its turn, or when it
    /// could not be created).
    pub started: bool,
    /// The exit code (128+N when killed by signal N). None if it never ran.
    pub exit_code: Option<i32>,
    /// "Completed", "Error", "CreateContainerConfigError", "StartError", "DeadlineExceeded".
    /// None if it never ran.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub termination_message: String,
    /// stdout and stderr, interleaved as written, one `\n`-terminated line at a time.
    pub log: String,
}

/// What happened to the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodResult {
    pub phase: PodPhase,
    /// "DeadlineExceeded" when the deadline passed.
    pub reason: Option<String>,
    /// Why the pod failed as a whole: the deadline, or a stop ([`RunOptions::stop`]).
    pub message: Option<String>,
    /// Init containers (and sidecars) in order, then the main containers in order.
    pub containers: Vec<ContainerResult>,
    /// Volume name → the host directory (or file) that backed it.
    pub volumes: BTreeMap<String, PathBuf>,
    /// Where volumes and per-container files were created.
    pub work_dir: PathBuf,
}

impl PodResult {
    /// The container named `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerResult> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The host directory of volume `name`.
    pub fn volume(&self, name: &str) -> Option<&Path> {
        self.volumes.get(name).map(PathBuf::as_path)
    }

    pub fn succeeded(&self) -> bool {
        self.phase == PodPhase::Succeeded
    }
}

/// Why a pod could not be run at all (as opposed to a pod that ran and failed).
#[derive(Debug)]
pub enum RunnerError {
    /// The manifest is not a pod the API server would accept.
    InvalidManifest(String),
    /// The fixtures (secrets, config maps, claims) are unusable.
    InvalidFixtures(String),
    /// A volume type the runner does not implement (`kind` is its key, e.g. "nfs").
    UnsupportedVolume {
        volume: String,
        kind: String,
    },
    /// Valid Kubernetes the runner does not implement.
    Unsupported(String),
    /// A host tool the runner needs (bwrap, setpriv, busybox) is missing.
    MissingTool {
        path: String,
        hint: String,
    },
    Io {
        context: String,
        source: io::Error,
    },
}

impl fmt::Display for RunnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunnerError::InvalidManifest(m) => write!(f, "invalid manifest: {m}"),
            RunnerError::InvalidFixtures(m) => write!(f, "invalid fixtures: {m}"),
            RunnerError::UnsupportedVolume { volume, kind } => write!(
                f,
                "volume {volume:?}: volume type {kind:?} is not supported by the pod runner"
            ),
            RunnerError::Unsupported(m) => write!(f, "not supported by the pod runner: {m}"),
            RunnerError::MissingTool { path, hint } => write!(f, "{path} is missing: {hint}"),
            RunnerError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for RunnerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunnerError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Runs `manifest` (a Job, a Pod or a PodSpec) to completion, or until [`RunOptions::stop`]
/// stops it.
pub fn run_pod(manifest: &Value, opts: &RunOptions) -> Result<PodResult, RunnerError> {
    let start = Instant::now();
    let m = spec::extract(manifest)?;
    spec::validate(&m.spec)?;
    check_tool(BWRAP, "install the Debian package bubblewrap")?;
    check_tool(SETPRIV, "install the Debian package util-linux")?;
    check_tool(ENV, "install the Debian package coreutils")?;
    if opts.shell == Shell::Busybox {
        check_tool(BUSYBOX, "install the Debian package busybox")?;
    }
    let timeout = match opts.timeout {
        Some(t) => t,
        None => {
            let mut secs = None;
            for (what, v) in [
                ("the Job's activeDeadlineSeconds", m.job_deadline),
                (
                    "the pod's activeDeadlineSeconds",
                    m.spec.active_deadline_seconds,
                ),
            ] {
                if let Some(v) = v {
                    let v = u64::try_from(v).ok().filter(|v| *v > 0).ok_or_else(|| {
                        RunnerError::InvalidManifest(format!("{what} must be positive"))
                    })?;
                    secs = Some(secs.map_or(v, |s: u64| s.min(v)));
                }
            }
            secs.map_or(DEFAULT_TIMEOUT, Duration::from_secs)
        }
    };
    let deadline = start + timeout;
    let grace = Duration::from_secs(
        m.spec
            .termination_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(30),
    );

    let work_dir = if opts.work_dir.as_os_str().is_empty() {
        fresh_temp_dir()?
    } else {
        fs::create_dir_all(&opts.work_dir)
            .map_err(io_err(format!("creating {}", opts.work_dir.display())))?;
        let dir = fs::canonicalize(&opts.work_dir)
            .map_err(io_err(format!("resolving {}", opts.work_dir.display())))?;
        for used in ["containers", "volumes"] {
            if fs::symlink_metadata(dir.join(used)).is_ok() {
                return Err(RunnerError::Io {
                    context: format!(
                        "work dir {} was used by an earlier run (it has {used}/); use a fresh one",
                        dir.display()
                    ),
                    source: io::Error::from(io::ErrorKind::AlreadyExists),
                });
            }
        }
        dir
    };
    let volumes = volumes::prepare(&m.meta, &m.spec, opts, &work_dir)?;
    let busybox_bin = match opts.shell {
        Shell::Busybox => Some(busybox_links(&work_dir)?),
        Shell::Host => None,
    };
    let ctx = PodContext::new(&m.meta, &m.spec, &volumes, opts, &work_dir, busybox_bin);

    let mut pod = Pod::new(&m.spec, opts, deadline);
    let outcome = pod.run(&ctx);
    if outcome.is_ok() && !pod.deadline_exceeded {
        if pod.stopped {
            pod.stop_all(grace);
        } else {
            pod.stop_sidecars(grace);
        }
    }
    // Whatever happened, nothing may outlive the call.
    pod.shut_down();
    outcome?;

    // A stop noticed while the pod ran interrupted an init or main container (one running, or
    // one not yet started): the pod cannot have succeeded.
    let failed = pod.deadline_exceeded
        || pod.stopped
        || pod.slots.iter().any(|s| match s.result.kind {
            ContainerKind::Sidecar => s.result.reason.as_deref() == Some(CONFIG_ERROR),
            ContainerKind::Init | ContainerKind::Main => s.result.exit_code != Some(0),
        });
    let (reason, message) = if pod.deadline_exceeded {
        (
            Some("DeadlineExceeded".to_string()),
            Some(format!(
                "Pod was active on the node longer than the specified deadline ({}s)",
                timeout.as_secs_f64()
            )),
        )
    } else if pod.stopped {
        (
            None,
            Some("the pod was stopped before its containers finished".to_string()),
        )
    } else {
        (None, None)
    };
    Ok(PodResult {
        phase: if failed {
            PodPhase::Failed
        } else {
            PodPhase::Succeeded
        },
        reason,
        message,
        containers: pod.slots.into_iter().map(|s| s.result).collect(),
        volumes: volumes
            .into_iter()
            .filter(|(_, v)| !v.host_path.as_os_str().is_empty())
            .map(|(name, v)| (name, v.host_path))
            .collect(),
        work_dir,
    })
}

const CONFIG_ERROR: &str = "CreateContainerConfigError";
const TERMINATION_MESSAGE_MAX: u64 = 4096;
const FALLBACK_LINES: usize = 80;
const FALLBACK_BYTES: usize = 2048;

fn check_tool(path: &str, hint: &str) -> Result<(), RunnerError> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(RunnerError::MissingTool {
            path: path.to_string(),
            hint: hint.to_string(),
        })
    }
}

fn fresh_temp_dir() -> Result<PathBuf, RunnerError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!(
            "sykli-pod-runner-{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(RunnerError::Io {
                    context: format!("creating {}", dir.display()),
                    source: e,
                })
            }
        }
    }
}

/// work_dir/busybox-bin: a link to busybox for every applet, plus the host's git tooling.
fn busybox_links(work_dir: &Path) -> Result<PathBuf, RunnerError> {
    let dir = work_dir.join("busybox-bin");
    if !dir.is_dir() {
        volumes::mkdir(&dir, 0o755)?;
    }
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .map_err(io_err(format!("running {BUSYBOX} --list")))?;
    if !out.status.success() {
        return Err(RunnerError::MissingTool {
            path: BUSYBOX.into(),
            hint: format!("`busybox --list` failed ({})", out.status),
        });
    }
    let mut links: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "." && *a != "..")
        .map(|a| (a.to_string(), BUSYBOX.to_string()))
        .collect();
    for (tool, candidates) in [
        ("git", &["/usr/bin/git", "/usr/local/bin/git"][..]),
        ("ssh", &["/usr/bin/ssh", "/usr/local/bin/ssh"][..]),
        (
            "git-lfs",
            &["/usr/bin/git-lfs", "/usr/local/bin/git-lfs"][..],
        ),
    ] {
        if let Some(found) = candidates.iter().find(|c| Path::new(c).is_file()) {
            links.retain(|(name, _)| name != tool);
            links.push((tool.to_string(), (*found).to_string()));
        }
    }
    for (name, target) in links {
        let link = dir.join(&name);
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).map_err(io_err(format!("replacing {}", link.display())))?;
        }
        std::os::unix::fs::symlink(&target, &link)
            .map_err(io_err(format!("linking {} -> {target}", link.display())))?;
    }
    Ok(dir)
}

/// A container that has been started.
struct Running {
    control: Arc<Control>,
    join: JoinHandle<Outcome>,
    termination_file: PathBuf,
    fallback_to_logs: bool,
}

struct Slot {
    result: ContainerResult,
    running: Option<Running>,
    /// Started and ended (its result is final).
    finished: bool,
}

impl Slot {
    fn is_running(&self) -> bool {
        self.running.is_some() && !self.finished
    }
}

struct Pod<'s> {
    spec: &'s spec::PodSpec,
    slots: Vec<Slot>,
    tx: Sender<Wake>,
    rx: Receiver<Wake>,
    on_log: Option<LogSink>,
    on_event: Option<EventSink>,
    stop: Option<StopHandle>,
    deadline: Instant,
    deadline_exceeded: bool,
    /// A stop request interrupted the run (no container starts after it).
    stopped: bool,
}

/// Why [`Pod::wait`] returned.
enum Wait {
    Done,
    DeadlinePassed,
    Stopped,
}

impl<'s> Pod<'s> {
    fn new(spec: &'s spec::PodSpec, opts: &RunOptions, deadline: Instant) -> Self {
        let slot = |c: &spec::Container, kind| Slot {
            result: ContainerResult {
                name: c.name.clone(),
                kind,
                started: false,
                exit_code: None,
                reason: None,
                message: None,
                termination_message: String::new(),
                log: String::new(),
            },
            running: None,
            finished: false,
        };
        let mut slots: Vec<Slot> = spec
            .init_containers
            .iter()
            .map(|c| {
                let kind = if c.restart_policy.as_deref() == Some("Always") {
                    ContainerKind::Sidecar
                } else {
                    ContainerKind::Init
                };
                slot(c, kind)
            })
            .collect();
        slots.extend(spec.containers.iter().map(|c| slot(c, ContainerKind::Main)));
        let (tx, rx) = mpsc::channel();
        if let Some(stop) = &opts.stop {
            stop.register(tx.clone());
        }
        Pod {
            spec,
            slots,
            tx,
            rx,
            on_log: opts.on_log.clone(),
            on_event: opts.on_event.clone(),
            stop: opts.stop.clone(),
            deadline,
            deadline_exceeded: false,
            stopped: false,
        }
    }

    /// Whether the pod has been asked to stop (and then marks it stopped).
    fn stop_requested(&mut self) -> bool {
        if self.stop.as_ref().is_some_and(StopHandle::is_stopped) {
            self.stopped = true;
        }
        self.stopped
    }

    /// Reports the final result of container `index`.
    fn terminated(&self, index: usize, started_at: Option<SystemTime>, finished_at: SystemTime) {
        let Some(sink) = &self.on_event else {
            return;
        };
        let r = &self.slots[index].result;
        sink(&ContainerEvent::Terminated {
            container: r.name.clone(),
            exit_code: r.exit_code.unwrap_or(128),
            reason: r.reason.clone().unwrap_or_else(|| "Error".to_string()),
            message: r.message.clone(),
            termination_message: r.termination_message.clone(),
            started_at,
            finished_at,
        });
    }

    fn container(&self, index: usize) -> &'s spec::Container {
        let n = self.spec.init_containers.len();
        if index < n {
            &self.spec.init_containers[index]
        } else {
            &self.spec.containers[index - n]
        }
    }

    /// Plans and starts container `index`; false if it could not be created.
    fn launch(&mut self, ctx: &PodContext<'_>, index: usize) -> Result<bool, RunnerError> {
        let container = self.container(index);
        match sandbox::plan(ctx, container, None)? {
            Err(message) => {
                let r = &mut self.slots[index].result;
                r.reason = Some(CONFIG_ERROR.to_string());
                r.message = Some(message);
                self.slots[index].finished = true;
                self.terminated(index, None, SystemTime::now());
                Ok(false)
            }
            Ok(Launch {
                args,
                termination_file,
                fallback_to_logs,
            }) => {
                let (control, join) = process::start(
                    container.name.clone(),
                    args,
                    self.on_log.clone(),
                    self.on_event.clone(),
                    index,
                    self.tx.clone(),
                )
                .map_err(io_err("starting a container thread"))?;
                self.slots[index].result.started = true;
                self.slots[index].running = Some(Running {
                    control,
                    join,
                    termination_file,
                    fallback_to_logs,
                });
                Ok(true)
            }
        }
    }

    /// Waits until `done` holds, `until` passes or a stop is requested, collecting containers
    /// as they end.
    fn wait(&mut self, done: impl Fn(&Self) -> bool, until: Instant) -> Wait {
        loop {
            if done(self) {
                return Wait::Done;
            }
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Wake::Ended(index)) => self.collect(index),
                Ok(Wake::Stop) => return Wait::Stopped,
                Err(RecvTimeoutError::Timeout) => return Wait::DeadlinePassed,
                // Unreachable while `self.tx` exists.
                Err(RecvTimeoutError::Disconnected) => return Wait::Done,
            }
        }
    }

    /// As [`Pod::wait`] while the pod is already stopping: a stop request changes nothing.
    /// True if `done` holds, false if `until` passed.
    fn wait_through_stop(&mut self, done: impl Fn(&Self) -> bool, until: Instant) -> bool {
        loop {
            match self.wait(&done, until) {
                Wait::Done => return true,
                Wait::DeadlinePassed => return false,
                Wait::Stopped => {}
            }
        }
    }

    fn wait_finished(&mut self, index: usize, until: Instant) -> Wait {
        self.wait(|p| p.slots[index].finished, until)
    }

    /// Turns the outcome of container `index` into its result.
    fn collect(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if slot.finished {
            return;
        }
        let Some(running) = slot.running.take() else {
            return;
        };
        slot.finished = true;
        let outcome = running.join.join().unwrap_or_else(|_| Outcome {
            exit_code: None,
            bwrap_status: None,
            spawn_error: Some("the container's supervising thread panicked".into()),
            deadline_killed: false,
            signal_sent: None,
            log: String::new(),
            started_at: None,
            finished_at: None,
        });
        let started_at = outcome.started_at;
        let finished_at = outcome.finished_at.unwrap_or_else(SystemTime::now);
        let r = &mut slot.result;
        let mut log = outcome.log;
        if let Some(e) = outcome.spawn_error {
            r.started = false;
            if outcome.deadline_killed {
                r.reason = Some("DeadlineExceeded".into());
            } else {
                r.reason = Some("StartError".into());
                r.message = Some(e);
            }
        } else if outcome.deadline_killed && outcome.exit_code != Some(0) {
            r.exit_code = Some(outcome.exit_code.unwrap_or(128 + libc::SIGKILL));
            r.reason = Some("DeadlineExceeded".into());
            r.message = Some("killed when the pod's deadline passed".into());
        } else if let Some(code) = outcome.exit_code.filter(|c| !is_exec_failure(*c, &log)) {
            r.exit_code = Some(code);
            r.reason = Some(if code == 0 { "Completed" } else { "Error" }.into());
        } else if let Some(signal) = outcome.signal_sent {
            // Stopped or killed by the runner before bwrap could report the command's status.
            r.exit_code = Some(128 + signal);
            r.reason = Some("Error".into());
        } else {
            // The command never ran: bwrap could not build the sandbox, or setpriv could not
            // exec the command. Runtimes report that as StartError with exit code 128.
            let message = take_runner_lines(&mut log);
            r.exit_code = Some(128);
            r.reason = Some("StartError".into());
            r.message = Some(if message.is_empty() {
                format!(
                    "the sandbox failed to start (bwrap exit status {})",
                    outcome
                        .bwrap_status
                        .map_or_else(|| "unknown".to_string(), |s| s.to_string())
                )
            } else {
                message
            });
        }
        r.termination_message = read_termination_message(&running.termination_file);
        if running.fallback_to_logs
            && r.termination_message.is_empty()
            && r.exit_code.is_some_and(|c| c != 0)
        {
            r.termination_message = log_tail(&log);
        }
        r.log = log;
        let started_at = started_at.filter(|_| r.started);
        self.terminated(index, started_at, finished_at);
    }

    fn run(&mut self, ctx: &PodContext<'_>) -> Result<(), RunnerError> {
        let n_init = self.spec.init_containers.len();
        // Init containers, in order.
        for index in 0..n_init {
            if Instant::now() >= self.deadline {
                return self.deadline_passed();
            }
            if self.stop_requested() {
                return Ok(());
            }
            if !self.launch(ctx, index)? {
                return Ok(());
            }
            if self.slots[index].result.kind == ContainerKind::Sidecar {
                continue;
            }
            match self.wait_finished(index, self.deadline) {
                Wait::Done => {}
                Wait::DeadlinePassed => return self.deadline_passed(),
                Wait::Stopped => {
                    self.stopped = true;
                    return Ok(());
                }
            }
            if self.slots[index].result.exit_code != Some(0) {
                return Ok(());
            }
        }
        // Main containers, together.
        for index in n_init..self.slots.len() {
            if self.stop_requested() {
                return Ok(());
            }
            self.launch(ctx, index)?;
        }
        let mains: Vec<usize> = (n_init..self.slots.len()).collect();
        match self.wait(
            |p| mains.iter().all(|&i| !p.slots[i].is_running()),
            self.deadline,
        ) {
            Wait::Done => {}
            Wait::DeadlinePassed => return self.deadline_passed(),
            Wait::Stopped => self.stopped = true,
        }
        Ok(())
    }

    /// Stops the pod as the kubelet stops a pod being deleted: SIGTERM to the init and main
    /// containers that run, SIGKILL to those left when the grace period ends; then the
    /// sidecars, in reverse order, each with its own grace period once its turn comes (the
    /// kubelet's termination ordering, with the deletion's grace period for every container).
    fn stop_all(&mut self, grace: Duration) {
        let regular: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].result.kind != ContainerKind::Sidecar)
            .collect();
        for &index in &regular {
            if let Some(r) = self.slots[index].running.as_ref() {
                r.control.terminate();
            }
        }
        let regular_done = |p: &Self| regular.iter().all(|&i| !p.slots[i].is_running());
        if !self.wait_through_stop(regular_done, Instant::now() + grace) {
            for &index in &regular {
                if let Some(r) = self.slots[index].running.as_ref() {
                    r.control.kill(false);
                }
            }
            // A SIGKILLed sandbox ends promptly; the bound is only a safety net.
            let _ = self.wait_through_stop(regular_done, Instant::now() + Duration::from_secs(60));
        }
        self.stop_sidecars(grace);
    }

    /// Stops the sidecars that still run, in reverse order, as the kubelet does once the main
    /// containers are done (or the pod has failed): SIGTERM, then SIGKILL after the grace period.
    fn stop_sidecars(&mut self, grace: Duration) {
        for index in (0..self.spec.init_containers.len()).rev() {
            if !self.slots[index].is_running() {
                continue;
            }
            if let Some(r) = &self.slots[index].running {
                r.control.terminate();
            }
            let until = (Instant::now() + grace).min(self.deadline.max(Instant::now()));
            if !self.wait_through_stop(|p| p.slots[index].finished, until) {
                if let Some(r) = &self.slots[index].running {
                    r.control.kill(false);
                }
            }
        }
    }

    fn deadline_passed(&mut self) -> Result<(), RunnerError> {
        self.deadline_exceeded = true;
        for slot in &self.slots {
            if let Some(r) = slot.running.as_ref().filter(|_| !slot.finished) {
                r.control.kill(true);
            }
        }
        Ok(())
    }

    /// Kills whatever still runs and collects every started container.
    fn shut_down(&mut self) {
        for slot in &self.slots {
            if let Some(r) = slot.running.as_ref().filter(|_| !slot.finished) {
                r.control.kill(false);
            }
        }
        // A SIGKILLed sandbox ends promptly; the bound is only a safety net.
        let until = Instant::now() + Duration::from_secs(60);
        let _ = self.wait_through_stop(|p| p.slots.iter().all(|s| !s.is_running()), until);
    }
}

/// setpriv's report that it could not exec the container's command (exit 126 or 127).
fn is_exec_failure(code: i32, log: &str) -> bool {
    (code == 126 || code == 127)
        && log
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("setpriv: failed to execute "))
}

/// Removes the trailing lines the runner's tools (bwrap, setpriv) wrote about a failed start,
/// and returns them.
fn take_runner_lines(log: &mut String) -> String {
    let mut lines: Vec<&str> = log.lines().collect();
    let mut taken = Vec::new();
    while let Some(last) = lines.last() {
        if last.starts_with("bwrap: ") || last.starts_with("setpriv: ") {
            taken.push(last.to_string());
            lines.pop();
        } else {
            break;
        }
    }
    taken.reverse();
    let mut rest = lines.join("\n");
    if !rest.is_empty() {
        rest.push('\n');
    }
    *log = rest;
    taken.join("\n")
}

fn read_termination_message(path: &Path) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    if let Ok(f) = fs::File::open(path) {
        let _ = f.take(TERMINATION_MESSAGE_MAX).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The kubelet's FallbackToLogsOnError message: the last 80 lines, at most 2048 bytes.
fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(FALLBACK_LINES);
    let mut tail = lines[start..].join("\n");
    if !tail.is_empty() {
        tail.push('\n');
    }
    if tail.len() > FALLBACK_BYTES {
        let mut cut = tail.len() - FALLBACK_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_string();
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_80_lines_and_2048_bytes() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let tail = log_tail(&log);
        assert!(tail.starts_with("line 20\n"));
        assert!(tail.ends_with("line 99\n"));
        let long: String = (0..10)
            .map(|i| format!("{i}{}\n", "x".repeat(500)))
            .collect();
        let tail = log_tail(&long);
        assert_eq!(tail.len(), FALLBACK_BYTES);
        assert!(tail.ends_with(&format!("9{}\n", "x".repeat(500))));
    }

    #[test]
    fn runner_lines_are_moved_out_of_the_log() {
        let mut log = "hello\nbwrap: Can't mkdir /usr/x: Read-only file system\n".to_string();
        assert_eq!(
            take_runner_lines(&mut log),
            "bwrap: Can't mkdir /usr/x: Read-only file system"
        );
        assert_eq!(log, "hello\n");
    }
}
