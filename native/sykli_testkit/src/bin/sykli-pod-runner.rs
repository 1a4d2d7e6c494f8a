//! `sykli-pod-runner`: runs a Kubernetes Job/Pod/PodSpec locally (see `sykli_testkit::pod_runner`),
//! or a command in a new sandbox of one of its containers (`exec`).
//!
//! It is what a kubelet's container runtime does for one pod, so that a kubelet (the
//! virtual-kubelet node of `tools/kube`) can drive it: `--events` streams container states and
//! logs as JSON lines, SIGTERM stops the pod gracefully, `exec` serves `kubectl exec`. The
//! protocol is described in [`USAGE`].

use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::json;
use sykli_testkit::pod_runner::{
    exec_sandbox, rfc3339_nanos, run_pod, ContainerEvent, Fixtures, ImageEntrypoint, ImageFile,
    PodPhase, PodResult, RunOptions, Shell, StopHandle,
};

const USAGE: &str = r#"usage: sykli-pod-runner --manifest FILE [--fixtures FILE] [--work-dir DIR] [--events]
           [--shell host|busybox] [--timeout SECS] [--image-file SPEC]... [--image-entrypoint SPEC]...
       sykli-pod-runner exec --manifest FILE [--fixtures FILE] --work-dir DIR --container NAME
           [--tty] [--status-file PATH] [--shell host|busybox] [--image-file SPEC]... -- CMD [ARG...]

  --manifest FILE   Job, Pod or PodSpec as JSON (- reads stdin; not with exec)
  --fixtures FILE   {"secrets": {NAME: {KEY: BASE64}}, "configMaps": {NAME: {KEY: TEXT}},
                     "pvcs": {CLAIM: HOST_DIR}, "serviceAccountTokens": {VOLUME/PATH: TOKEN}}
                    (VOLUME/PATH: a projected volume's name and its serviceAccountToken's path)
  --shell           host (default): the host's sh; busybox: busybox applets and ash
  --work-dir DIR    where volumes are created and left (default: a fresh temp dir)
  --timeout SECS    overall deadline (default: activeDeadlineSeconds, else 300)
  --image-file IMAGE=HOSTPATH:CONTAINERPATH
                    containers of IMAGE see HOSTPATH read-only at CONTAINERPATH (repeatable)
  --image-entrypoint 'IMAGE=["prog","arg"]'
                    what a container of IMAGE without a command runs (repeatable)
  --events          stdout carries JSON lines (below) instead of logs on stderr

Runs the pod to completion. Without --events, container logs go to stderr as
"[container] line" and the pod result is printed as JSON on stdout. With --events, stdout
carries one JSON object per line, flushed each line (T: RFC 3339 UTC with nanoseconds):
  {"event":"started","container":C,"at":T}
  {"event":"log","container":C,"at":T,"line":TEXT}
  {"event":"terminated","container":C,"exitCode":N,"reason":R,"message":M|null,
   "terminationMessage":TEXT,"startedAt":T|null,"finishedAt":T}
  {"event":"result","result":RESULT}                                 (always last)
per container in that order; a container that never got its turn has none. exitCode is 128
when the command never ran (CreateContainerConfigError, StartError).
SIGTERM or SIGINT stops the pod as a kubelet stops a deleted pod: SIGTERM to its running
containers, SIGKILL after terminationGracePeriodSeconds (default 30), nothing more starts;
the terminated events and the result (phase Failed, unless everything had succeeded) follow.
Exits 0 if the pod Succeeded, 1 if it Failed, 2 if it could not be run (the reason on stderr,
no result).

exec runs CMD in a new sandbox of container NAME of the pod that runs (or ran) in DIR, with
this process's stdin, stdout and stderr (--tty: they are a terminal's replica, which becomes
the command's controlling terminal). Exits with the command's exit code (128+N for signal N),
2 if the command could not be run. --status-file PATH receives exactly one JSON object:
{"exitCode":N} when the command ran, {"error":MESSAGE} when it could not (no such container,
the container cannot take it, the sandbox failed to set up). SIGTERM or SIGINT kills the
sandbox (exit code 137)."#;

/// Every flag of both forms, as given.
#[derive(Default)]
struct Args {
    exec: bool,
    manifest: Option<String>,
    fixtures: Option<String>,
    shell: Shell,
    work_dir: Option<PathBuf>,
    image_files: Vec<ImageFile>,
    image_entrypoints: Vec<ImageEntrypoint>,
    timeout: Option<Duration>,
    events: bool,
    container: Option<String>,
    tty: bool,
    status_file: Option<PathBuf>,
    command: Vec<String>,
}

/// Fills `args` from `argv`; Ok(false) for --help. On Err, `args` holds what was parsed (so
/// that an exec's status file can still receive the error).
fn parse_args(args: &mut Args, argv: impl IntoIterator<Item = String>) -> Result<bool, String> {
    let mut argv = argv.into_iter().peekable();
    if argv.peek().map(String::as_str) == Some("exec") {
        argv.next();
        args.exec = true;
    }
    while let Some(arg) = argv.next() {
        if args.exec && arg == "--" {
            args.command = argv.by_ref().collect();
            break;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(false);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match (flag.as_str(), args.exec) {
            ("--manifest", _) => args.manifest = Some(value()?),
            ("--fixtures", _) => args.fixtures = Some(value()?),
            ("--shell", _) => {
                args.shell = match value()?.as_str() {
                    "host" => Shell::Host,
                    "busybox" => Shell::Busybox,
                    other => return Err(format!("--shell must be host or busybox, not {other:?}")),
                }
            }
            ("--work-dir", _) => args.work_dir = Some(PathBuf::from(value()?)),
            ("--image-file", _) => args
                .image_files
                .push(ImageFile::parse(&value()?).map_err(|e| format!("--image-file {e}"))?),
            ("--image-entrypoint", _) => args.image_entrypoints.push(
                ImageEntrypoint::parse(&value()?).map_err(|e| format!("--image-entrypoint {e}"))?,
            ),
            ("--timeout", false) => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        format!("--timeout must be a positive number of seconds, not {v:?}")
                    })?;
                args.timeout = Some(Duration::from_secs_f64(secs));
            }
            ("--events", false) if inline.is_none() => args.events = true,
            ("--container", true) => args.container = Some(value()?),
            ("--tty", true) if inline.is_none() => args.tty = true,
            ("--status-file", true) => args.status_file = Some(PathBuf::from(value()?)),
            (other, _) => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.manifest.is_none() {
        return Err("--manifest is required".into());
    }
    if args.exec {
        if args.manifest.as_deref() == Some("-") {
            return Err(
                "exec cannot read the manifest from stdin (stdin is the command's): \
                        give --manifest a file"
                    .into(),
            );
        }
        if args.work_dir.is_none() {
            return Err("exec needs --work-dir (the pod's work dir)".into());
        }
        if args.container.is_none() {
            return Err("exec needs --container NAME".into());
        }
        if args.command.is_empty() {
            return Err("exec needs the command after --: exec ... -- CMD [ARG...]".into());
        }
    }
    Ok(true)
}

fn read_json(path: &str, what: &str) -> Result<serde_json::Value, String> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading the {what} from stdin: {e}"))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("reading the {what} {path}: {e}"))?
    };
    serde_json::from_str(&text).map_err(|e| format!("the {what} {path} is not valid JSON: {e}"))
}

/// The manifest and the options both forms share.
fn load(args: &mut Args) -> Result<(serde_json::Value, RunOptions), String> {
    let manifest = read_json(args.manifest.as_deref().unwrap_or("-"), "manifest")?;
    let mut opts = RunOptions::default().shell(args.shell);
    if let Some(path) = &args.fixtures {
        let fixtures = Fixtures::from_json(&read_json(path, "fixtures")?)
            .map_err(|e| format!("{path}: {e}"))?;
        opts = opts.fixtures(fixtures);
    }
    if let Some(dir) = args.work_dir.take() {
        opts.work_dir = dir;
    }
    opts.image_files = std::mem::take(&mut args.image_files);
    opts.image_entrypoints = std::mem::take(&mut args.image_entrypoints);
    Ok((manifest, opts))
}

/// One line of `--events`.
#[derive(Serialize)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
enum Wire<'a> {
    Started {
        container: &'a str,
        at: String,
    },
    Log {
        container: &'a str,
        at: String,
        line: &'a str,
    },
    Terminated {
        container: &'a str,
        exit_code: i32,
        reason: &'a str,
        message: Option<&'a str>,
        termination_message: &'a str,
        started_at: Option<String>,
        finished_at: String,
    },
    Result {
        result: &'a PodResult,
    },
}

impl<'a> Wire<'a> {
    fn of(e: &'a ContainerEvent) -> Wire<'a> {
        match e {
            ContainerEvent::Started { container, at } => Wire::Started {
                container,
                at: rfc3339_nanos(*at),
            },
            ContainerEvent::Terminated {
                container,
                exit_code,
                reason,
                message,
                termination_message,
                started_at,
                finished_at,
            } => Wire::Terminated {
                container,
                exit_code: *exit_code,
                reason,
                message: message.as_deref(),
                termination_message,
                started_at: started_at.map(rfc3339_nanos),
                finished_at: rfc3339_nanos(*finished_at),
            },
        }
    }

    /// Writes the line whole (stdout's lock is held for it) and flushes. A reader that has
    /// gone away is not the pod's problem: the run goes on.
    fn emit(&self) {
        let Ok(line) = serde_json::to_string(self) else {
            return;
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn run(mut args: Args, signals: libc::sigset_t) -> Result<PodPhase, String> {
    let stop = StopHandle::new();
    let on_signal = stop.clone();
    on_signals(signals, move |_| on_signal.stop())?;
    let (manifest, opts) = load(&mut args)?;
    let mut opts = opts.stop(stop);
    opts.timeout = args.timeout;
    if args.events {
        opts = opts
            .on_log(|container, line| {
                Wire::Log {
                    container,
                    at: rfc3339_nanos(SystemTime::now()),
                    line,
                }
                .emit()
            })
            .on_event(|e| Wire::of(e).emit());
    } else {
        opts = opts.on_log(|container, line| {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "[{container}] {line}");
        });
    }
    let result = run_pod(&manifest, &opts).map_err(|e| e.to_string())?;
    if args.events {
        Wire::Result { result: &result }.emit();
    } else {
        let json = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{json}").map_err(|e| format!("writing the result: {e}"))?;
    }
    Ok(result.phase)
}

/// The exec's bwrap, shared with the signal thread that may kill it.
#[derive(Default)]
struct ExecState {
    pid: Option<libc::pid_t>,
    /// Set (under the lock) before bwrap is reaped, so a signal never hits a recycled pid.
    exited: bool,
    /// A stop signal came.
    killed: bool,
}

fn lock(state: &Mutex<ExecState>) -> MutexGuard<'_, ExecState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the exec; Ok: the command's exit code, Err: why it could not run.
fn exec(mut args: Args, signals: libc::sigset_t) -> Result<i32, String> {
    use std::os::fd::AsRawFd;
    let state = Arc::new(Mutex::new(ExecState::default()));
    let on_signal = Arc::clone(&state);
    on_signals(signals, move |_| {
        let mut st = lock(&on_signal);
        st.killed = true;
        if let (Some(pid), false) = (st.pid, st.exited) {
            // SAFETY: kill(2) on our unreaped child; --die-with-parent takes the sandbox.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    })?;
    let (manifest, opts) = load(&mut args)?;
    let container = args.container.clone().unwrap_or_default();
    let sandbox = match exec_sandbox(&manifest, &opts, &container, &args.command) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(e.to_string()),
    };
    let (mut status_r, status_w) =
        std::io::pipe().map_err(|e| format!("creating the status pipe: {e}"))?;
    let mut cmd = if args.tty {
        sandbox.tty_command(Some(status_w.as_raw_fd()))
    } else {
        sandbox.command(Some(status_w.as_raw_fd()))
    };
    cmd.current_dir("/");
    // Spawned under the lock, so a signal either finds the pid or stops us here.
    let mut child = {
        let mut st = lock(&state);
        if st.killed {
            return Err(format!(
                "container {container:?}: the exec was stopped before the command started"
            ));
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("container {container:?}: starting bwrap: {e}"))?;
        st.pid = libc::pid_t::try_from(child.id()).ok();
        child
    };
    // Our copy of the write end must go, or the reader never sees EOF.
    drop(cmd);
    drop(status_w);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = status_r.read_to_string(&mut text);
        serde_json::Deserializer::from_str(&text)
            .into_iter::<serde_json::Value>()
            .filter_map(Result::ok)
            .filter_map(|d| d.get("exit-code").and_then(serde_json::Value::as_i64))
            .last()
    });
    // Wait without reaping, mark exited, then reap.
    let pid = child.id() as libc::id_t;
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid(2).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child; WNOWAIT leaves it to be reaped by Child::wait.
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    let killed = {
        let mut st = lock(&state);
        st.exited = true;
        st.killed
    };
    let bwrap_status = child
        .wait()
        .map_err(|e| format!("waiting for bwrap: {e}"))?;
    let exit_code = reader.join().unwrap_or(None);
    match exit_code.and_then(|c| i32::try_from(c).ok()) {
        Some(code) => Ok(code),
        None if killed => Ok(128 + libc::SIGKILL),
        None => Err(format!(
            "container {container:?}: the exec sandbox could not be set up (bwrap {bwrap_status}; \
             its message is on stderr)"
        )),
    }
}

/// Blocks SIGTERM and SIGINT in this thread (and so in every thread started after it), so
/// that only the thread of [`on_signals`] receives them. Children get a clean mask (std
/// resets it when it spawns).
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset fill the set we own; pthread_sigmask changes this thread's
    // mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Calls `f` with each stop signal, on a thread of its own (sigwait: no async-signal-safety
/// limits on what `f` does).
fn on_signals(set: libc::sigset_t, f: impl Fn(i32) + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait(3) on a set of signals blocked in every thread.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                f(sig);
            }
        })
        .map(|_| ())
        .map_err(|e| format!("starting the signal thread: {e}"))
}

fn write_status(path: &PathBuf, status: &serde_json::Value) -> bool {
    match fs::write(path, status.to_string()) {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "sykli-pod-runner: writing the status file {}: {e}",
                path.display()
            );
            false
        }
    }
}

fn main() -> ExitCode {
    // Before any other thread exists.
    let signals = block_stop_signals();
    let mut args = Args::default();
    match parse_args(&mut args, std::env::args().skip(1)) {
        Ok(true) => {}
        Ok(false) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            if let Some(path) = &args.status_file {
                write_status(path, &json!({ "error": e }));
            }
            eprintln!("sykli-pod-runner: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    if args.exec {
        let status_file = args.status_file.clone();
        let outcome = exec(args, signals);
        let status = match &outcome {
            Ok(code) => json!({ "exitCode": code }),
            Err(e) => json!({ "error": e }),
        };
        if let Some(path) = &status_file {
            if !write_status(path, &status) {
                return ExitCode::from(2);
            }
        }
        return match outcome {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
            Err(e) => {
                eprintln!("sykli-pod-runner: {e}");
                ExitCode::from(2)
            }
        };
    }
    match run(args, signals) {
        Ok(PodPhase::Succeeded) => ExitCode::SUCCESS,
        Ok(PodPhase::Failed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sykli-pod-runner: {e}");
            ExitCode::from(2)
        }
    }
}
