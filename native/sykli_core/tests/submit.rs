//! Submission end to end: the Jobs sykli builds, run with kube-rs over TLS against the strict
//! test cluster (its kubelet runs pods in bubblewrap), with real git servers on 127.0.0.1.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};
use sykli_core::cluster::run::{run_job, Event, Outcome, Phase, RunOptions};
use sykli_core::cluster::Cluster;
use sykli_testcluster::cluster::{ClusterOptions, TestCluster};
use sykli_testkit::git_server::{GitDaemon, ServerOptions};

struct Env {
    _tmp: tempfile::TempDir,
    k8s: TestCluster,
    cluster: Arc<Cluster>,
    _daemon: GitDaemon,
    url: String,
    sha: String,
}

async fn env_with(opts: impl FnOnce(&mut ClusterOptions)) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let repo = support::Repo::init(&tmp.path().join("work"));
    repo.write("Cargo.toml", "[package]\nname = \"app\"\n");
    repo.write("src/main.rs", "fn main() {}\n");
    let sha = repo.commit_all("first");
    let srv = tmp.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    support::git(
        &srv,
        &[
            "clone",
            "-q",
            "--bare",
            repo.dir.to_str().unwrap(),
            "repo.git",
        ],
    );
    let daemon = GitDaemon::start(&srv, ServerOptions::default()).unwrap();
    let mut o = ClusterOptions::new(tmp.path().join("cluster"));
    o.deny_images = vec!["registry.invalid/*".into()];
    o.node_labels = BTreeMap::from([("pool".to_string(), "build".to_string())]);
    opts(&mut o);
    let (k8s, cluster) = support::start_cluster(o).await;
    Env {
        url: daemon.url("repo.git"),
        _daemon: daemon,
        sha,
        cluster,
        k8s,
        _tmp: tmp,
    }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

impl Env {
    fn job(&self, run: &str, task: Value) -> Job {
        support::job_for(task, run, "ci", &self.url, &self.sha, Some("main"))
    }

    async fn run(&self, job: Job, opts: RunOptions) -> (sykli_core::Result<Outcome>, Vec<Event>) {
        spawn_run(self.cluster.clone(), job, opts).await.unwrap()
    }

    async fn jobs_left(&self) -> Vec<String> {
        let api: Api<Job> = Api::namespaced(self.cluster.client.clone(), "ci");
        match api.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .filter_map(|j| j.metadata.name)
                .collect(),
            Err(_) => Vec::new(), // the namespace may not exist
        }
    }
}

use support::{logs, set_env, spawn_run};

fn create_ns() -> RunOptions {
    RunOptions {
        create_namespace: true,
        ..RunOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_finds_the_exact_commit_at_app_and_its_job_is_deleted() {
    let e = env().await;
    let job = e.job("r1", json!({"name": "build", "container": "any", "env": {"EXPECTED": e.sha},
        "mounts": [{"resource": "src:.", "path": "/app"}],
        "command": "set -eu; test -f Cargo.toml; test \"$(git rev-parse HEAD)\" = \"$EXPECTED\"; echo checked-ok"}));
    let (outcome, events) = e.run(job, create_ns()).await;
    let o = outcome.unwrap();
    assert!(
        o.failure.is_none(),
        "{:?}\n{}",
        o.failure,
        logs(&events, "sykli-clone")
    );
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.checked_out.as_deref(), Some(e.sha.as_str()));
    assert!(logs(&events, "task").contains("checked-ok"));
    assert!(logs(&events, "sykli-clone").contains(&format!("checked out {}", e.sha)));
    let phases: Vec<Phase> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::Phase { phase, .. } => Some(*phase),
            _ => None,
        })
        .collect();
    for p in [Phase::Preflight, Phase::Creating, Phase::Cleaning] {
        assert!(phases.contains(&p), "{phases:?}");
    }
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_reports_its_exit_code_and_log() {
    let e = env().await;
    let job = e.job(
        "r2",
        json!({"name": "fail", "container": "any", "command": "echo boom >&2; exit 3"}),
    );
    let (outcome, events) = e.run(job, create_ns()).await;
    let o = outcome.unwrap();
    assert_eq!(o.exit_code, Some(3));
    let (kind, message) = o.failure.unwrap();
    assert_eq!(kind, "task_failed");
    assert!(message.contains("exit code 3"), "{message}");
    assert!(logs(&events, "task").contains("boom"));
    assert!(
        e.jobs_left().await.is_empty(),
        "a failed Job is deleted too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_reasons_arrive_long_before_the_timeout() {
    let e = env().await;
    let long = RunOptions {
        create_namespace: true,
        timeout: Some(Duration::from_secs(120)),
        unschedulable_grace: Duration::from_secs(1),
        ..RunOptions::default()
    };
    let cases = [
        (
            json!({"name": "pull", "container": "registry.invalid/nope:1", "command": "true"}),
            "image_pull",
            "registry.invalid/nope:1",
        ),
        (
            json!({"name": "sched", "container": "any", "command": "true", "k8s": {"node_selector": {"gpu": "a100"}}}),
            "unschedulable",
            "node affinity/selector",
        ),
        (
            json!({"name": "clone", "container": "any", "command": "true", "mounts": [{"resource": "src:.", "path": "/app"}]}),
            "clone_failed",
            "was it pushed?",
        ),
    ];
    for (i, (task, kind, needle)) in cases.into_iter().enumerate() {
        let mut job = e.job(&format!("ff{i}"), task);
        if kind == "clone_failed" {
            set_env(
                &mut job,
                "sykli-clone",
                "SYKLI_GIT_SHA",
                "0123456789abcdef0123456789abcdef01234567",
            );
        }
        // Diagnosed from the pod, not waited out: the run's own deadline would end it as a
        // "timeout" instead of `kind`.
        let (outcome, _) = e.run(job, long.clone()).await;
        let (k, m) = outcome.unwrap().failure.unwrap();
        assert_eq!(k, kind, "{m}");
        assert!(m.contains(needle), "{kind}: {m}");
    }
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_fails_the_task_and_deletes_the_job() {
    let e = env().await;
    let job = e.job(
        "r3",
        json!({"name": "slow", "container": "any", "command": "sleep 300", "timeout": 2}),
    );
    let (outcome, _) = e.run(job, create_ns()).await;
    let (kind, _) = outcome.unwrap().failure.unwrap();
    assert_eq!(kind, "deadline_exceeded");
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_deletes_the_job() {
    let e = env().await;
    let job = e.job(
        "r4",
        json!({"name": "long", "container": "any", "command": "echo started; sleep 300"}),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(run_job(e.cluster.clone(), job, create_ns(), tx, cancel_rx));
    // Cancel once the task is really running (its first log line arrived).
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Event::Log { line, .. })) if line == "started" => break,
            Ok(Some(_)) => {}
            other => panic!("no start seen: {other:?}"),
        }
    }
    cancel.send(true).unwrap();
    let o = run.await.unwrap().unwrap();
    assert_eq!(o.failure.unwrap().0, "cancelled");
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_errors_create_nothing() {
    let e = env().await;
    // No namespace, and not allowed to create it.
    let job = e.job(
        "r5",
        json!({"name": "t", "container": "any", "command": "true"}),
    );
    let (outcome, _) = e.run(job, RunOptions::default()).await;
    let err = outcome.unwrap_err();
    assert_eq!(err.kind(), "not_found");
    assert!(
        err.to_string().contains("namespace \"ci\" does not exist"),
        "{err}"
    );

    // A Secret without the key the task reads.
    let (ok, _) = e
        .run(
            e.job(
                "r5b",
                json!({"name": "warm", "container": "any", "command": "true"}),
            ),
            create_ns(),
        )
        .await;
    assert!(ok.unwrap().failure.is_none());
    let secrets: Api<Secret> = Api::namespaced(e.cluster.client.clone(), "ci");
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "gh"}, "stringData": {"user": "x"}}))
            .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mut job = e.job(
        "r5c",
        json!({"name": "needs-token", "container": "any", "command": "true"}),
    );
    let c = &mut job
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0];
    c.env = Some(vec![serde_json::from_value(
        json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "gh", "key": "token"}}}),
    )
    .unwrap()]);
    let before = e
        .k8s
        .requests()
        .iter()
        .filter(|r| r.verb == "create" && r.path.contains("/jobs"))
        .count();
    let (outcome, _) = e.run(job, create_ns()).await;
    let err = outcome.unwrap_err();
    assert_eq!(err.kind(), "not_found");
    assert!(
        err.to_string()
            .contains("Secret ci/gh has no key \"token\" (env TOKEN of container task reads it)"),
        "{err}"
    );
    let after = e
        .k8s
        .requests()
        .iter()
        .filter(|r| r.verb == "create" && r.path.contains("/jobs"))
        .count();
    assert_eq!(before, after, "no Job was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_adopts_its_own_job_and_refuses_a_stranger() {
    let e = env().await;
    let job = e.job(
        "r6",
        json!({"name": "same", "container": "any", "command": "echo once"}),
    );
    let (ok, _) = e
        .run(
            e.job(
                "r6w",
                json!({"name": "warm", "container": "any", "command": "true"}),
            ),
            create_ns(),
        )
        .await;
    assert!(ok.unwrap().failure.is_none());
    let api: Api<Job> = Api::namespaced(e.cluster.client.clone(), "ci");
    api.create(&PostParams::default(), &job).await.unwrap();
    // The same Job again (as after a lost answer): adopted, run once, deleted.
    let (outcome, events) = e.run(job.clone(), create_ns()).await;
    assert!(outcome.unwrap().failure.is_none());
    assert_eq!(logs(&events, "task"), "once\n");
    // Another run's Job under the same name: a conflict, not adopted.
    let mut stranger = job.clone();
    stranger
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("sykli.io/run".into(), "other".into());
    api.create(&PostParams::default(), &stranger).await.unwrap();
    let (outcome, _) = e.run(job, create_ns()).await;
    let err = outcome.unwrap_err();
    assert_eq!(err.kind(), "conflict");
    assert!(err.to_string().contains("is not this run's"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_run_share_one_watch_per_resource() {
    let e = env().await;
    let (ok, _) = e
        .run(
            e.job(
                "w0",
                json!({"name": "warm", "container": "any", "command": "true"}),
            ),
            create_ns(),
        )
        .await;
    assert!(ok.unwrap().failure.is_none());
    e.k8s.clear_requests();
    let runs: Vec<_> = (0..5)
        .map(|i| {
            let job = e.job("shared", json!({"name": format!("t{i}"), "container": "any", "command": format!("echo {i}")}));
            spawn_run(e.cluster.clone(), job, RunOptions::default())
        })
        .collect();
    for r in runs {
        assert!(r.await.unwrap().0.unwrap().failure.is_none());
    }
    let watches: Vec<String> = e
        .k8s
        .requests()
        .into_iter()
        .filter(|r| r.watch)
        .map(|r| r.path)
        .collect();
    let on = |what: &str| {
        watches
            .iter()
            .filter(|p| p.contains(what) && p.contains("sykli.io%2Frun%3Dshared"))
            .count()
    };
    assert_eq!((on("/jobs"), on("/pods")), (1, 1), "{watches:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_tasks_through_api_faults_and_dropped_watches() {
    let e = env_with(|o| {
        let mut f = o.faults.clone();
        f.seed = Some(7);
        f.error_rate = BTreeMap::from([("*".to_string(), 0.10)]);
        f.error_code = Some(503);
        f.throttle_rate = 0.02;
        f.watch_drop_rate = 0.05;
        o.faults = f;
    })
    .await;
    let runs: Vec<_> = (0..100)
        .map(|i| {
            let fail = i % 10 == 9;
            let cmd = if fail {
                format!("echo task {i}; exit 4")
            } else {
                format!("echo task {i}")
            };
            let job = e.job(
                "many",
                json!({"name": format!("t{i:03}"), "container": "any", "command": cmd}),
            );
            (i, fail, spawn_run(e.cluster.clone(), job, create_ns()))
        })
        .collect();
    for (i, fail, run) in runs {
        let (outcome, events) = run.await.unwrap();
        let o = outcome.unwrap_or_else(|err| panic!("task {i}: {err}"));
        if fail {
            assert_eq!(
                (o.exit_code, o.failure.map(|f| f.0)),
                (Some(4), Some("task_failed")),
                "task {i}"
            );
        } else {
            assert!(o.failure.is_none(), "task {i}: {:?}", o.failure);
        }
        assert!(
            logs(&events, "task").contains(&format!("task {i}")),
            "task {i}: live log; events: {events:?}"
        );
    }
    assert!(e.jobs_left().await.is_empty(), "no Job is left");
    let injected = e.k8s.requests().iter().filter(|r| r.injected).count();
    assert!(injected > 20, "faults were injected ({injected})");
    // Each task's Job was created once: no duplicates made it into the store.
    let created: Vec<String> = e
        .k8s
        .requests()
        .into_iter()
        .filter(|r| {
            r.verb == "create"
                && r.path
                    .split('?')
                    .next()
                    .is_some_and(|p| p.ends_with("/jobs"))
        })
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.path)
        .collect();
    assert_eq!(created.len(), 100, "{} creates succeeded", created.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_side_deadline_ends_a_run_the_cluster_would_let_go_on() {
    let e = env().await;
    // No task timeout: the Job has no activeDeadlineSeconds, only sykli's deadline.
    let job = e.job(
        "r7",
        json!({"name": "forever", "container": "any", "command": "sleep 600"}),
    );
    assert!(job.spec.as_ref().unwrap().active_deadline_seconds.is_none());
    let opts = RunOptions {
        create_namespace: true,
        timeout: Some(Duration::from_secs(3)),
        ..RunOptions::default()
    };
    let (outcome, _) = e.run(job, opts).await;
    let (kind, message) = outcome.unwrap().failure.unwrap();
    assert_eq!(kind, "timeout");
    assert!(message.contains("no result within 3s"), "{message}");
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_line_of_ten_mib_without_newline_arrives_capped_and_marked() {
    use sykli_core::cluster::run::{truncated_marker, MAX_LOG_LINE};
    let e = env().await;
    let job = e.job(
        "r-long",
        json!({"name": "long-line", "container": "any",
            "command": "echo before; head -c 10485760 /dev/zero | tr '\\000' a"}),
    );
    let (outcome, events) = e.run(job, create_ns()).await;
    assert_eq!(outcome.unwrap().exit_code, Some(0));
    let lines: Vec<&String> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::Log { container, line } if container == "task" => Some(line),
            _ => None,
        })
        .collect();
    let expected = format!(
        "{}{}",
        "a".repeat(MAX_LOG_LINE),
        truncated_marker(MAX_LOG_LINE)
    );
    assert_eq!(
        lines.len(),
        2,
        "{:?}",
        lines.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert_eq!(lines[0], "before");
    assert!(
        *lines[1] == expected,
        "{} bytes, ending {:?}",
        lines[1].len(),
        &lines[1][lines[1].len().saturating_sub(60)..]
    );
    assert!(lines[1].ends_with("… [line truncated at 65536 bytes]"));
}

/// The test kit's hostile stand-in for the sync image.
fn hostile_sync() -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = dir.join("debug").join("sykli-hostile-sync");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p sykli_testkit --bins",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_back_over_its_limit_is_refused_naming_the_pod_and_the_limit() {
    use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
    use sykli_core::cluster::sync;
    use sykli_testcluster::ImageFile;
    const IMAGE: &str = "ghcr.io/sykli/sync:hostile";
    let e = env_with(|o| {
        o.image_files.push(ImageFile {
            image: IMAGE.into(),
            host_path: hostile_sync(),
            container_path: "/usr/local/bin/sykli-sync".into(),
        })
    })
    .await;
    let client = e.cluster.client.clone();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "ci"}})).unwrap(),
        )
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, "ci");
    claims
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "src"},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let r = sync::receiver(&e.cluster, "ci", "src", IMAGE)
        .await
        .unwrap();
    let dest = tempfile::tempdir().unwrap();
    const LIMIT: u64 = 1 << 20;

    // Within the limit, outputs land as always.
    let outputs = vec!["benign".to_string(), "out".to_string()];
    let report = sync::sync_back_limited(&e.cluster, &r, "job-ok", &outputs, dest.path(), LIMIT)
        .await
        .unwrap();
    assert_eq!(report.files, 2);
    assert!(dest.path().join("out/report.txt").exists());

    // Three times the limit, streamed by the receiver: stopped at the limit, named.
    let outputs = vec![format!("oversized-{}", 3 * LIMIT), ".".to_string()];
    let err = sync::sync_back_limited(&e.cluster, &r, "job-big", &outputs, dest.path(), LIMIT)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind(), "sync_failed", "{msg}");
    assert!(
        msg.contains("the outputs of job-big")
            && msg.contains(&format!("in pod ci/{}", r.pod))
            && msg.contains("more than 1048576 bytes")
            && msg.contains("nothing was written"),
        "{msg}"
    );
    assert!(!dest.path().join("big.bin").exists());
    let mut left: Vec<String> = std::fs::read_dir(dest.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["out"], "the spool file leaves nothing behind");

    // An answer from another pod under the receiver's name (deleted and planted between
    // the check and the exec) is not used.
    let planted = sync::Receiver {
        uid: Some("00000000-0000-0000-0000-000000000000".into()),
        ..r.clone()
    };
    let err = sync::sync_back_limited(
        &e.cluster,
        &planted,
        "job-ok",
        &["benign".to_string(), "out".to_string()],
        dest.path(),
        LIMIT,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind(), "conflict", "{msg}");
    assert!(msg.contains("the pod was replaced while it ran"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_its_namespace_once_not_once_per_task() {
    let e = env().await;
    let opts = RunOptions {
        create_namespace: true,
        ..RunOptions::default()
    };
    for task in ["one", "two", "three"] {
        let job = e.job(
            "r-ns",
            json!({"name": task, "container": "any", "command": "true"}),
        );
        let (outcome, _) = e.run(job, opts.clone()).await;
        assert!(outcome.unwrap().failure.is_none(), "{task}");
    }
    let reads = e
        .k8s
        .requests()
        .iter()
        .filter(|r| r.verb == "get" && r.path.split('?').next() == Some("/api/v1/namespaces/ci"))
        .count();
    assert_eq!(reads, 1, "three tasks of one run");
}
