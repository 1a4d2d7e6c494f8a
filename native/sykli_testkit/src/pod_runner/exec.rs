//! A command run in a new sandbox of a container of a running pod: what `kubectl exec` runs.
//!
//! The sandbox is the container's own (same host userland, image files, volume mounts with the
//! same host directories, environment, uid/gid/groups, capabilities, working directory and
//! hostname), built from the pod's work dir, so it shares the container's volumes but not its
//! pid namespace, `/tmp` or other files outside the volumes.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::process;
use super::sandbox::{self, Launch, PodContext, BUSYBOX, BWRAP, ENV, SETPRIV};
use super::volumes::{self, io_err};
use super::{check_tool, spec, RunOptions, RunnerError, Shell};

/// The bubblewrap command line of an exec sandbox.
#[derive(Debug, Clone)]
pub struct ExecSandbox {
    args: Vec<OsString>,
}

impl ExecSandbox {
    /// bwrap's arguments (without the program).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// The sandbox's command for a terminal: as [`ExecSandbox::command`], but the command's
    /// session gets the terminal on its stdin as controlling terminal (the caller sets stdin,
    /// stdout and stderr to the pseudo-terminal's replica) instead of a session without one.
    pub fn tty_command(&self, status_fd: Option<RawFd>) -> Command {
        let plain = ExecSandbox {
            args: self
                .args
                .iter()
                .filter(|a| a.as_os_str() != "--new-session")
                .cloned()
                .collect(),
        };
        let mut cmd = plain.command(status_fd);
        // SAFETY: setsid(2) and ioctl(2) are async-signal-safe; stdin is the terminal by then
        // (std sets up the child's stdio before these closures run).
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// A command that runs the sandbox. With `status_fd`, bwrap writes its JSON status
    /// documents there (`child-pid`, then `exit-code`: the command's exit code, 128+N for a
    /// signal; no `exit-code` when the sandbox could not be set up). The sandbox is killed
    /// (SIGKILL) when the thread that spawned it ends.
    pub fn command(&self, status_fd: Option<RawFd>) -> Command {
        let mut cmd = Command::new(BWRAP);
        if let Some(fd) = status_fd {
            cmd.arg("--json-status-fd").arg(fd.to_string());
        }
        cmd.args(&self.args);
        // SAFETY: the closure only makes async-signal-safe calls (fcntl, prctl, sigprocmask).
        unsafe {
            cmd.pre_exec(move || {
                process::unblock_all_signals()?;
                if let Some(fd) = status_fd {
                    // Hand the status pipe to bwrap (pipes are created close-on-exec).
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Plans `command` in a new sandbox of container `container` (an init, sidecar or main
/// container) of the pod `manifest`, which runs (or ran) with `opts` in `opts.work_dir`.
/// Inner Err: why the container cannot take the command (the kubelet's words); outer Err: the
/// manifest, the work dir or the host are unusable.
pub fn exec_sandbox(
    manifest: &Value,
    opts: &RunOptions,
    container: &str,
    command: &[String],
) -> Result<Result<ExecSandbox, String>, RunnerError> {
    let m = spec::extract(manifest)?;
    check_tool(BWRAP, "install the Debian package bubblewrap")?;
    check_tool(SETPRIV, "install the Debian package util-linux")?;
    check_tool(ENV, "install the Debian package coreutils")?;
    let Some(c) = m
        .spec
        .init_containers
        .iter()
        .chain(m.spec.containers.iter())
        .find(|c| c.name == container)
    else {
        return Err(RunnerError::InvalidManifest(format!(
            "the pod has no container named {container:?}"
        )));
    };
    let work_dir = fs::canonicalize(&opts.work_dir)
        .map_err(io_err(format!("resolving {}", opts.work_dir.display())))?;
    let volumes = volumes::existing(&m.spec, opts, &work_dir)?;
    let busybox_bin = match opts.shell {
        Shell::Busybox => {
            check_tool(BUSYBOX, "install the Debian package busybox")?;
            let dir = work_dir.join("busybox-bin");
            if !dir.is_dir() {
                return Err(RunnerError::Io {
                    context: format!("{} (the pod's busybox applets)", dir.display()),
                    source: io::Error::from(io::ErrorKind::NotFound),
                });
            }
            Some(dir)
        }
        Shell::Host => None,
    };
    let ctx = PodContext::new(
        &m.meta,
        &m.spec,
        &volumes,
        opts,
        Path::new(&work_dir),
        busybox_bin,
    );
    Ok(sandbox::plan(&ctx, c, Some(command))?.map(|Launch { args, .. }| ExecSandbox { args }))
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Stdio;

    use serde_json::json;

    use super::super::{run_pod, RunOptions};
    use super::*;

    /// Runs `sandbox`, returning (stdout, the command's exit code as bwrap reports it).
    fn run_sandbox(sandbox: &ExecSandbox) -> (String, Option<i64>) {
        let (mut status_r, status_w) = io::pipe().unwrap();
        let mut cmd = sandbox.command(Some(status_w.as_raw_fd()));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let child = cmd.spawn().unwrap();
        drop(cmd);
        drop(status_w);
        let out = child.wait_with_output().unwrap();
        let mut status = String::new();
        status_r.read_to_string(&mut status).unwrap();
        let code = serde_json::Deserializer::from_str(&status)
            .into_iter::<Value>()
            .filter_map(Result::ok)
            .filter_map(|d| d.get("exit-code").and_then(Value::as_i64))
            .last();
        (String::from_utf8_lossy(&out.stdout).into_owned(), code)
    }

    #[test]
    fn image_files_and_exec_sandboxes_see_the_pods_volumes_and_identity() {
        if unsafe { libc::geteuid() } != 0 || !Path::new(BWRAP).is_file() {
            eprintln!("skipped: needs root and bubblewrap");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let tool = host.path().join("tool");
        fs::write(&tool, "#!/bin/sh\necho \"tool $*\"\n").unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
        let manifest = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "securityContext": {"runAsUser": 1000, "runAsGroup": 2000},
                "volumes": [{"name": "shared", "emptyDir": {}}],
                "containers": [{
                    "name": "main", "image": "example.test/tool:1", "workingDir": "/shared",
                    "env": [{"name": "GREETING", "value": "hi"}],
                    "command": ["sh", "-c", "tool from-pod > /shared/out"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]
                }, {
                    "name": "other", "image": "example.test/other:1",
                    "command": ["sh", "-c", "command -v tool > /dev/null && echo seen || echo unseen"]
                }]
            }
        });
        let opts = RunOptions::new(dir.path()).image_file(
            "example.test/tool:1",
            &tool,
            "/usr/local/bin/tool",
        );
        let r = run_pod(&manifest, &opts).unwrap();
        assert!(r.succeeded(), "{r:?}");
        assert_eq!(r.container("other").unwrap().log, "unseen\n");
        assert_eq!(
            fs::read_to_string(dir.path().join("volumes/shared/out")).unwrap(),
            "tool from-pod\n"
        );

        let cmd: Vec<String> = [
            "sh",
            "-c",
            "cat out; id -u; id -g; pwd; echo $GREETING; tool x; exit 4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let sandbox = exec_sandbox(&manifest, &opts, "main", &cmd)
            .unwrap()
            .unwrap();
        let (out, code) = run_sandbox(&sandbox);
        assert_eq!(out, "tool from-pod\n1000\n2000\n/shared\nhi\ntool x\n");
        assert_eq!(code, Some(4));

        assert!(matches!(
            exec_sandbox(&manifest, &opts, "nope", &cmd),
            Err(RunnerError::InvalidManifest(_))
        ));
        assert!(exec_sandbox(&manifest, &opts, "main", &[])
            .unwrap()
            .is_err());
    }
}
