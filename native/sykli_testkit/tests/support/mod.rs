//! What this package's integration tests share (`mod support;` in each test file; each uses
//! a part of it).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use serde_json::Value;
use sykli_core::manifest::{build_job, BuildOptions};
use sykli_core::pipeline::{Resource, Task};
use sykli_core::source::SourcePlan;
use sykli_testkit::pod_runner::PodResult;
use sykli_testkit::validate::kube_validate;

// ---------------------------------------------------------------------------------------
// git against the test servers

/// Every git command is bounded: a hung server fails the test instead of hanging it.
pub const GIT_TIMEOUT_SECS: &str = "120";

/// `timeout 120 git <args>` in `dir`, hermetic: no inherited `GIT_*` variables, no system
/// or global config, a fixed identity, no prompts (terminal or `SSH_ASKPASS`), untranslated
/// messages. Callers add what their servers need.
pub fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg(GIT_TIMEOUT_SECS)
        .arg("git")
        .args(args)
        .current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Sykli Test")
        .env("GIT_AUTHOR_EMAIL", "test@sykli.invalid")
        .env("GIT_COMMITTER_NAME", "Sykli Test")
        .env("GIT_COMMITTER_EMAIL", "test@sykli.invalid")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("SSH_ASKPASS")
        .env("LC_ALL", "C");
    cmd
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The trimmed stdout of a command that must have succeeded.
pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The stderr of a command that must have failed.
pub fn failed(out: Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} succeeded unexpectedly:\n{}",
        stderr(&out)
    );
    stderr(&out)
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A binary of this package, running until its stdin closes; its JSON line.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    pub line: Value,
}

impl Running {
    pub fn start(exe: &str, args: &[&str]) -> Running {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the JSON line");
        let line = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Running { child, stdin, line }
    }

    pub fn str(&self, key: &str) -> &str {
        self.line[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key:?} in {}", self.line))
    }

    /// Closes stdin: the process must exit, successfully.
    pub fn stop(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{status}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Jobs sykli builds, run in the pod runner

/// A git command in `dir` isolated from the machine's own configuration.
fn isolated_git(dir: &Path) -> Command {
    let mut git = Command::new("git");
    git.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
    git
}

/// Runs `git` with `args`; it must succeed. Its stdout.
fn succeed(mut git: Command, args: &[&str]) -> Vec<u8> {
    let out = git.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `git -c init.defaultBranch=main -c protocol.file.allow=always <args>` in `dir`, with a
/// fixed identity and no system or global config, for making fixture repositories (local
/// submodules included); it must succeed. Its stdout, trimmed.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let mut git = isolated_git(dir);
    git.env("GIT_AUTHOR_NAME", "T")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "T")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ]);
    String::from_utf8_lossy(&succeed(git, args))
        .trim()
        .to_string()
}

/// The raw stdout of `git <args>` in `dir` (isolated, as `git_in`); it must succeed.
pub fn git_raw(dir: &Path, args: &[&str]) -> Vec<u8> {
    let mut git = isolated_git(dir);
    git.args(["-c", "safe.directory=*"]);
    succeed(git, args)
}

/// Writes `content` to `path` under `dir`, making the directories above it.
pub fn write(dir: &Path, path: &str, content: &[u8]) {
    let f = dir.join(path);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, content).unwrap();
}

/// `n` bytes of content, different for each `seed`.
pub fn bytes(seed: u32, n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 11) as u8)
        .collect()
}

/// The Job sykli builds for `task` with `opts`, validated strictly.
pub fn build_validated_job(
    task: &Task,
    resources: &BTreeMap<String, Resource>,
    name: &str,
    opts: &BuildOptions,
) -> Value {
    let plan = SourcePlan::from_options(&opts.source).unwrap_or_else(|e| panic!("{e}"));
    let job = serde_json::to_value(
        build_job(task, resources, name, &plan, opts).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap();
    kube_validate(std::slice::from_ref(&job));
    job
}

/// A directory for a pod run under `parent`, new for every run.
pub fn pod_dir(parent: &Path) -> PathBuf {
    parent.join(format!(
        "pod-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ))
}

/// Every container's log, under a header line naming it.
pub fn logs(r: &PodResult) -> String {
    r.containers
        .iter()
        .map(|c| format!("--- {} ({:?})\n{}", c.name, c.reason, c.log))
        .collect()
}

/// The pod succeeded and its task container logged `checked-ok`.
pub fn assert_ok(r: &PodResult) {
    let logs = logs(r);
    assert!(r.succeeded(), "pod failed:\n{logs}");
    assert!(
        r.container("task").unwrap().log.contains("checked-ok"),
        "{logs}"
    );
}
