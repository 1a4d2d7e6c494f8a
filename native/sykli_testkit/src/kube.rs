//! The real Kubernetes control plane for tests: `sykli-kube up` (tools/kube: etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler of Kubernetes v1.37.2, and
//! virtual-kubelet nodes that run pods through `sykli-pod-runner`), started as a child
//! process and stopped when the [`ControlPlane`] is dropped (its stdin closes).
//!
//! Test binaries share one control plane and isolate by namespace; start it once with
//! `OnceLock` (see `native/sykli_core/tests/support`).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use serde::Deserialize;

/// How to start a control plane.
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// How many nodes (`sykli-kube node`); 0: none, pods stay Pending.
    pub nodes: usize,
    /// Flags of every node (`--deny-image=…`, `--runner-arg=--image-file=…`, …).
    pub node_args: Vec<String>,
    /// Taints of one node: `INDEX:KEY[=VALUE]:EFFECT`.
    pub node_taints: Vec<String>,
    /// Labels of one node: `INDEX:KEY=VALUE`.
    pub node_labels: Vec<String>,
    /// More flags of `up` itself.
    pub up_args: Vec<String>,
}

/// What `sykli-kube up` prints once everything is ready.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterInfo {
    pub kubeconfig: PathBuf,
    pub server: String,
    pub ca: PathBuf,
    pub etcd: String,
    pub nodes: Vec<String>,
}

/// A running control plane; dropping it stops every component.
pub struct ControlPlane {
    child: Child,
    stdin: Option<ChildStdin>,
    info: ClusterInfo,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// `$SYKLI_KUBE_BIN`, else `~/.cache/sykli/bin/sykli-kube` (what `tools/kube/build.sh`,
/// run by `scripts/setup`, builds).
pub fn sykli_kube_bin() -> Result<PathBuf, String> {
    let bin = match std::env::var_os("SYKLI_KUBE_BIN") {
        Some(b) => PathBuf::from(b),
        None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?)
            .join(".cache/sykli/bin/sykli-kube"),
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: build it with tools/kube/build.sh (scripts/setup does), or point SYKLI_KUBE_BIN at it",
            bin.display()
        ))
    }
}

/// `$SYKLI_POD_RUNNER`, else the `sykli-pod-runner` next to the running test binary's
/// target dir (`target/debug/sykli-pod-runner`).
pub fn pod_runner_bin() -> Result<PathBuf, String> {
    if let Some(b) = std::env::var_os("SYKLI_POD_RUNNER") {
        return Ok(PathBuf::from(b));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/debug/deps/test-… → target/debug/sykli-pod-runner
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("sykli-pod-runner");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "no sykli-pod-runner near {}: cargo build -p sykli_testkit --bin sykli-pod-runner, or set SYKLI_POD_RUNNER",
        exe.display()
    ))
}

impl ControlPlane {
    /// Starts `sykli-kube up` and waits for its JSON line (every component healthy, every
    /// node Ready).
    pub fn start(o: &ControlPlaneOptions) -> Result<ControlPlane, String> {
        let dir = tempfile::Builder::new()
            .prefix("sykli-kube-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let log = dir.path().join("sykli-kube.log");
        let mut args: Vec<OsString> = vec!["up".into(), "--dir".into()];
        args.push(dir.path().join("cluster").into());
        args.push("--etcd-unsafe-no-fsync".into());
        if o.nodes > 0 {
            args.push(format!("--nodes={}", o.nodes).into());
            let mut runner = OsString::from("--node-runner=");
            runner.push(pod_runner_bin()?);
            args.push(runner);
        }
        for a in &o.node_args {
            args.push(format!("--node-arg={a}").into());
        }
        for t in &o.node_taints {
            args.push(format!("--node-taint={t}").into());
        }
        for l in &o.node_labels {
            args.push(format!("--node-label={l}").into());
        }
        args.extend(o.up_args.iter().map(OsString::from));
        let mut child = Command::new(sykli_kube_bin()?)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("starting sykli-kube: {e}"))?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line);
        let info: ClusterInfo = match read {
            Ok(_) => serde_json::from_str(&line).map_err(|_| {
                let _ = child.kill();
                let _ = child.wait();
                format!(
                    "sykli-kube up did not start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })?,
            Err(e) => return Err(format!("reading sykli-kube's line: {e}")),
        };
        Ok(ControlPlane {
            child,
            stdin,
            info,
            log,
            _dir: dir,
        })
    }

    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.info.kubeconfig
    }

    /// The launcher's log (components log under its `cluster/logs/`).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The directory of the cluster's state and logs.
    pub fn dir(&self) -> PathBuf {
        self._dir.path().join("cluster")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.wait();
    }
}
