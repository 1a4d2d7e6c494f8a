//! The git-clone strategy, executed: the Job sykli builds runs in the pod runner against
//! real git servers on 127.0.0.1, and the assertions are on what the task container sees.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use sykli_core::manifest::BuildOptions;
use sykli_core::pipeline::{Resource, Task};
use sykli_testkit::git_server::{GitDaemon, ServerOptions, SmartHttp};
use sykli_testkit::pod_runner::{run_pod, PodResult, RunOptions, Shell};

use support::{assert_ok, build_validated_job, git_in, pod_dir};

/// A repository with history, pushed to a bare repository under `root` (what servers serve).
struct Fixture {
    tmp: tempfile::TempDir,
    work: PathBuf,
    root: PathBuf,
    /// Commits on main, oldest first.
    commits: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("srv");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        git_in(&root, &["init", "-q", "--bare", "repo.git"]);
        git_in(&work, &["init", "-q"]);
        let write = |p: &str, c: &str| {
            let f = work.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, c).unwrap();
        };
        write("Cargo.toml", "[package]\nname = \"app\"\n");
        write("src/main.rs", "fn main() {}\n");
        write("frontend/package.json", "{\"name\": \"web\"}\n");
        let mut commits = Vec::new();
        for i in 0..6 {
            write("CHANGELOG", &format!("release {i}\n"));
            git_in(&work, &["add", "-A"]);
            git_in(&work, &["commit", "-q", "-m", &format!("commit {i}")]);
            commits.push(git_in(&work, &["rev-parse", "HEAD"]));
        }
        git_in(
            &work,
            &[
                "remote",
                "add",
                "origin",
                root.join("repo.git").to_str().unwrap(),
            ],
        );
        git_in(&work, &["push", "-q", "origin", "main"]);
        Fixture {
            tmp,
            work,
            root,
            commits,
        }
    }

    fn tip(&self) -> &str {
        self.commits.last().unwrap()
    }
}

fn resources() -> Value {
    json!({"src:.": {"type": "directory", "path": "."}, "fe": {"type": "directory", "path": "frontend"}})
}

/// The Job sykli builds for `task`, cloning `sha` from `url`; validated strictly.
fn job(task: Value, url: &str, sha: &str, branch: &str, depth: Value) -> Value {
    let task: Task = serde_json::from_value(task).unwrap();
    let resources: std::collections::BTreeMap<String, Resource> =
        serde_json::from_value(resources()).unwrap();
    let opts: BuildOptions = serde_json::from_value(json!({
        "run_id": "t1",
        "source": {"url": url, "sha": sha, "branch": (!branch.is_empty()).then_some(branch), "clone": {"depth": depth, "backoff_seconds": 1, "attempts": 4}}
    }))
    .unwrap();
    build_validated_job(&task, &resources, "sykli-t-t1", &opts)
}

fn checker(expected_sha: &str, extra: &str) -> Value {
    json!({"name": "check", "container": "any", "env": {"EXPECTED_SHA": expected_sha},
           "mounts": [{"resource": "src:.", "path": "/app", "type": "directory"}],
           "command": format!("set -eu; test -f Cargo.toml; test -f src/main.rs; test \"$(git rev-parse HEAD)\" = \"$EXPECTED_SHA\"; {extra} echo checked-ok")})
}

fn run(fx: &Fixture, job: &Value, shell: Shell) -> PodResult {
    run_pod(job, &RunOptions::new(pod_dir(fx.tmp.path())).shell(shell))
        .unwrap_or_else(|e| panic!("runner: {e}"))
}

#[test]
fn the_exact_commit_when_the_branch_has_moved_on_over_every_server_and_shell() {
    let fx = Fixture::new();
    let sha = &fx.commits[3]; // main has moved two commits past it
    let daemon = GitDaemon::start(&fx.root, ServerOptions::default()).unwrap();
    let http = SmartHttp::start(&fx.root, ServerOptions::default()).unwrap();
    let v0 = SmartHttp::start(
        &fx.root,
        ServerOptions {
            protocol_v2: false,
            ..ServerOptions::default()
        },
    )
    .unwrap();
    for (server, url) in [
        ("git daemon", daemon.url("repo.git")),
        ("smart http v2", http.url("repo.git")),
        ("smart http v0 (fallback)", v0.url("repo.git")),
    ] {
        for shell in [Shell::Busybox, Shell::Host] {
            let r = run(
                &fx,
                &job(
                    checker(sha, "test \"$(cat CHANGELOG)\" = 'release 3';"),
                    &url,
                    sha,
                    "main",
                    json!(1),
                ),
                shell,
            );
            assert_ok(&r);
            assert_eq!(
                r.container("sykli-clone")
                    .unwrap()
                    .termination_message
                    .trim(),
                sha,
                "{server} {shell:?}"
            );
        }
    }
    let fallback_log = &run(
        &fx,
        &job(checker(sha, ""), &v0.url("repo.git"), sha, "main", json!(1)),
        Shell::Busybox,
    )
    .containers[0]
        .log;
    assert!(
        fallback_log.contains("does not serve commits by id"),
        "{fallback_log}"
    );
    assert!(fallback_log.contains("deepening"), "{fallback_log}");
}

#[test]
fn a_commit_on_no_branch_tip_is_found_through_the_fallback() {
    let fx = Fixture::new();
    // A side branch whose commit is then left behind: reachable only from a tag.
    git_in(&fx.work, &["checkout", "-q", "-b", "side", &fx.commits[1]]);
    std::fs::write(fx.work.join("side.txt"), "side\n").unwrap();
    git_in(&fx.work, &["add", "-A"]);
    git_in(&fx.work, &["commit", "-q", "-m", "side"]);
    let side = git_in(&fx.work, &["rev-parse", "HEAD"]);
    git_in(
        &fx.work,
        &["commit", "-q", "--allow-empty", "-m", "side moves on"],
    );
    git_in(&fx.work, &["push", "-q", "origin", "side"]);
    let v0 = SmartHttp::start(
        &fx.root,
        ServerOptions {
            protocol_v2: false,
            ..ServerOptions::default()
        },
    )
    .unwrap();
    // No branch given: the fallback fetches every branch and deepens until it is there.
    let r = run(
        &fx,
        &job(
            checker(&side, "test -f side.txt;"),
            &v0.url("repo.git"),
            &side,
            "",
            json!(1),
        ),
        Shell::Busybox,
    );
    assert_ok(&r);
    assert_eq!(r.containers[0].termination_message.trim(), side);
}

#[test]
fn depth_one_is_shallow_and_full_has_all_history() {
    let fx = Fixture::new();
    let daemon = GitDaemon::start(&fx.root, ServerOptions::default()).unwrap();
    let url = daemon.url("repo.git");
    let shallow = run(&fx, &job(checker(fx.tip(), "test \"$(git rev-parse --is-shallow-repository)\" = true; test \"$(git rev-list --count HEAD)\" = 1;"), &url, fx.tip(), "main", json!(1)), Shell::Host);
    assert_ok(&shallow);
    let full = run(&fx, &job(checker(fx.tip(), "test \"$(git rev-parse --is-shallow-repository)\" = false; test \"$(git rev-list --count HEAD)\" = 6;"), &url, fx.tip(), "main", json!("full")), Shell::Host);
    assert_ok(&full);
    let three = run(
        &fx,
        &job(
            checker(fx.tip(), "test \"$(git rev-list --count HEAD)\" = 3;"),
            &url,
            fx.tip(),
            "main",
            json!(3),
        ),
        Shell::Busybox,
    );
    assert_ok(&three);
}

#[test]
fn a_commit_that_does_not_exist_fails_clearly_and_the_task_never_runs() {
    let fx = Fixture::new();
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let http = SmartHttp::start(&fx.root, ServerOptions::default()).unwrap();
    let v0 = SmartHttp::start(
        &fx.root,
        ServerOptions {
            protocol_v2: false,
            ..ServerOptions::default()
        },
    )
    .unwrap();
    for (url, expected) in [
        (
            http.url("repo.git"),
            format!("commit {missing} is not on branch main of "),
        ),
        (
            v0.url("repo.git"),
            format!("commit {missing} is not on branch main of "),
        ),
    ] {
        let r = run(
            &fx,
            &job(checker(missing, ""), &url, missing, "main", json!(1)),
            Shell::Busybox,
        );
        assert!(!r.succeeded());
        let clone = r.container("sykli-clone").unwrap();
        assert_eq!(clone.exit_code, Some(1));
        assert!(
            clone.termination_message.starts_with(&expected),
            "{}",
            clone.termination_message
        );
        assert!(clone.termination_message.contains("was it pushed?"));
        assert!(!r.container("task").unwrap().started);
    }
}

#[test]
fn transient_server_failures_are_retried() {
    let fx = Fixture::new();
    let http = SmartHttp::start(
        &fx.root,
        ServerOptions {
            fail_first: 2,
            ..ServerOptions::default()
        },
    )
    .unwrap();
    let r = run(
        &fx,
        &job(
            checker(fx.tip(), ""),
            &http.url("repo.git"),
            fx.tip(),
            "main",
            json!(1),
        ),
        Shell::Busybox,
    );
    assert_ok(&r);
    let log = &r.containers[0].log;
    assert_eq!(log.matches("fetch failed (attempt").count(), 2, "{log}");
    let statuses: Vec<u16> = http.requests().iter().map(|q| q.status).collect();
    assert_eq!(&statuses[..2], &[503, 503], "{statuses:?}");
}

#[test]
fn a_non_root_task_reads_writes_and_runs_git_status() {
    let fx = Fixture::new();
    let daemon = GitDaemon::start(&fx.root, ServerOptions::default()).unwrap();
    let mut task = checker(fx.tip(), "echo new > created.txt; echo more >> Cargo.toml; test \"$(id -u)\" = 1000; git status --porcelain > /tmp/st 2>&1 || true; cat /tmp/st; ! grep -q dubious /tmp/st; grep -q '^ M Cargo.toml' /tmp/st; grep -q '^?? created.txt' /tmp/st;");
    task["k8s"] = json!({"security_context": {"run_as_user": 1000, "run_as_group": 1000, "run_as_non_root": true}});
    let r = run(
        &fx,
        &job(task, &daemon.url("repo.git"), fx.tip(), "main", json!(1)),
        Shell::Host,
    );
    assert_ok(&r);
    // The clone itself ran as our unprivileged uid.
    let ws = r.volume("sykli-workspace").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(ws.join("src/main.rs")).unwrap().uid(),
        65534
    );
    assert_eq!(
        std::fs::metadata(ws.join("created.txt")).unwrap().uid(),
        1000
    );
}

#[test]
fn the_whole_repo_and_a_sub_directory_see_the_right_trees() {
    let fx = Fixture::new();
    let daemon = GitDaemon::start(&fx.root, ServerOptions::default()).unwrap();
    let task = json!({"name": "fe", "container": "node", "mounts": [{"resource": "fe", "path": "/app"}, {"resource": "src:.", "path": "/repo"}],
        "command": "set -eu; test \"$(pwd)\" = /app; test -f package.json; test ! -e Cargo.toml; test ! -e src; test -f /repo/Cargo.toml; test -f /repo/frontend/package.json; echo checked-ok"});
    let r = run(
        &fx,
        &job(task, &daemon.url("repo.git"), fx.tip(), "main", json!(1)),
        Shell::Busybox,
    );
    assert_ok(&r);
}

/// Values hostile to shells, as branch names git accepts and as task data.
const HOSTILE: &[&str] = &[
    "$(touch${IFS}/tmp/pwned)",
    "`touch${IFS}/tmp/pwned`",
    "a;touch${IFS}/tmp/pwned",
    "x'y\"z",
    "$HOME|&&>out",
    "feature/$(id)",
];

#[test]
fn hostile_branch_names_and_values_inject_nothing() {
    let fx = Fixture::new();
    let v0 = SmartHttp::start(
        &fx.root,
        ServerOptions {
            protocol_v2: false,
            ..ServerOptions::default()
        },
    )
    .unwrap();
    for (i, name) in HOSTILE.iter().enumerate() {
        git_in(&fx.work, &["branch", "-f", name, &fx.commits[2]]);
        git_in(
            &fx.work,
            &["push", "-q", "origin", &format!("refs/heads/{name}")],
        );
        // The v0 server forces the fallback, which puts the branch into a refspec.
        let value = format!(
            "{name}\n{}",
            "$(touch /tmp/pwned2) `id` ; | & \\ ".repeat(i + 1)
        );
        let task = json!({"name": name, "container": "any", "env": {"HOSTILE": value, "EXPECTED_SHA": fx.commits[2]},
            "mounts": [{"resource": "src:.", "path": format!("/app/{name}")}],
            "command": "set -eu; printf '%s' \"$HOSTILE\" > ./got; test \"$(git rev-parse HEAD)\" = \"$EXPECTED_SHA\"; echo checked-ok"});
        let job = job(task, &v0.url("repo.git"), &fx.commits[2], name, json!(1));
        let r = run(&fx, &job, Shell::Busybox);
        let logs: String = r.containers.iter().map(|c| c.log.clone()).collect();
        assert!(r.succeeded(), "{name}: {logs}");
        let ws = r.volume("sykli-workspace").unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.join("got")).unwrap(),
            value,
            "{name}: the value arrives byte for byte"
        );
        assert_eq!(r.containers[0].termination_message.trim(), fx.commits[2]);
        let clone_tmp = r.volume("sykli-tmp").unwrap().to_path_buf();
        for dir in [
            ws.to_path_buf(),
            clone_tmp,
            r.work_dir.clone(),
            PathBuf::from("/tmp"),
        ] {
            assert!(
                !dir.join("pwned").exists() && !dir.join("pwned2").exists(),
                "{name}: something ran in {}",
                dir.display()
            );
        }
    }
}

#[test]
fn a_hostile_repository_url_is_only_data() {
    let fx = Fixture::new();
    // A repository whose path is shell syntax; git and the URL rules allow it.
    let name = "$(touch${IFS}pwned-url)`touch${IFS}pwned-url2`;touch${IFS}pwned-url3.git";
    let status = Command::new("cp")
        .arg("-a")
        .arg(fx.root.join("repo.git"))
        .arg(fx.root.join(name))
        .status()
        .unwrap();
    assert!(status.success());
    let http = SmartHttp::start(&fx.root, ServerOptions::default()).unwrap();
    let url = http.url(name);
    let r = run(
        &fx,
        &job(checker(fx.tip(), ""), &url, fx.tip(), "main", json!(1)),
        Shell::Busybox,
    );
    assert_ok(&r);
    // Payloads would land in the clone's working directory (the workspace) or its /tmp.
    let ws = r.volume("sykli-workspace").unwrap().to_path_buf();
    let clone_tmp = r.volume("sykli-tmp").unwrap().to_path_buf();
    for dir in [ws, clone_tmp, r.work_dir.clone()] {
        for f in ["pwned-url", "pwned-url2", "pwned-url3.git"] {
            assert!(!dir.join(f).exists(), "something ran in {}", dir.display());
        }
    }
    assert!(
        http.requests()
            .iter()
            .any(|q| q.path.contains("touch") && q.status == 200),
        "the clone used that URL"
    );
}
