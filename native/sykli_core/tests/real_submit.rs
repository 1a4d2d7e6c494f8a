//! Submission end to end on the real Kubernetes components: the Jobs sykli builds, run with
//! kube-rs against `sykli-kube up` (kube-apiserver, the real job controller, garbage
//! collector and scheduler, and two virtual-kubelet nodes that run pods through the
//! bubblewrap pod runner), with a real git server on 127.0.0.1. One control plane for this
//! file; each test has its own namespace.

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use sykli_core::cluster::run::{Outcome, RunOptions};
use sykli_core::cluster::Cluster;
use sykli_testkit::git_server::{GitDaemon, ServerOptions};
use sykli_testkit::kube::{ControlPlane, ControlPlaneOptions};

/// Node 0 takes the tasks; node 1 is tainted, so that a task lands where a test expects.
async fn plane() -> &'static ControlPlane {
    support::control_plane(ControlPlaneOptions {
        nodes: 2,
        node_args: vec![
            "--deny-image=registry.invalid/*".into(),
            "--image-pull-backoff=500ms".into(),
        ],
        node_taints: vec!["1:dedicated=gpu:NoSchedule".into()],
        ..ControlPlaneOptions::default()
    })
    .await
}

struct Env {
    _tmp: tempfile::TempDir,
    _daemon: GitDaemon,
    cluster: std::sync::Arc<Cluster>,
    namespace: String,
    url: String,
    sha: String,
}

async fn env(namespace: &str) -> Env {
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
    let cluster = support::connect_real(plane().await, Some(namespace)).await;
    Env {
        url: daemon.url("repo.git"),
        _daemon: daemon,
        sha,
        cluster: std::sync::Arc::new(cluster),
        namespace: namespace.to_string(),
        _tmp: tmp,
    }
}

impl Env {
    fn job(&self, run: &str, task: Value) -> Job {
        support::job_for(
            task,
            run,
            &self.namespace,
            &self.url,
            &self.sha,
            Some("main"),
        )
    }

    async fn run(
        &self,
        job: Job,
        opts: RunOptions,
    ) -> (Outcome, Vec<sykli_core::cluster::run::Event>) {
        let (outcome, events) = support::spawn_run(self.cluster.clone(), job, opts)
            .await
            .unwrap();
        (outcome.unwrap(), events)
    }

    /// The Jobs left in the namespace.
    async fn jobs_left(&self) -> Vec<String> {
        let api: Api<Job> = Api::namespaced(self.cluster.client.clone(), &self.namespace);
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|j| j.metadata.name)
            .collect()
    }
}

fn create_ns() -> RunOptions {
    RunOptions {
        create_namespace: true,
        ..RunOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_finds_the_exact_commit_at_app_on_a_real_node_and_its_job_is_deleted() {
    let e = env("real-commit").await;
    let job = e.job("r1", json!({"name": "build", "container": "any", "env": {"EXPECTED": e.sha},
        "mounts": [{"resource": "src:.", "path": "/app"}],
        "command": "set -eu; test -f Cargo.toml; test \"$(git rev-parse HEAD)\" = \"$EXPECTED\"; echo checked-ok"}));
    let (o, events) = e.run(job, create_ns()).await;
    assert!(
        o.failure.is_none(),
        "{:?}\n{}",
        o.failure,
        support::logs(&events, "sykli-clone")
    );
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.checked_out.as_deref(), Some(e.sha.as_str()));
    assert!(support::logs(&events, "task").contains("checked-ok"));
    assert!(support::logs(&events, "sykli-clone").contains(&format!("checked out {}", e.sha)));
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_reports_its_exit_code_and_log() {
    let e = env("real-fail").await;
    let job = e.job(
        "r2",
        json!({"name": "fail", "container": "any", "command": "echo boom >&2; exit 3"}),
    );
    let (o, events) = e.run(job, create_ns()).await;
    assert_eq!(o.exit_code, Some(3));
    let (kind, message) = o.failure.unwrap();
    assert_eq!(kind, "task_failed");
    assert!(message.contains("exit code 3"), "{message}");
    assert!(support::logs(&events, "task").contains("boom"));
    assert!(
        e.jobs_left().await.is_empty(),
        "a failed Job is deleted too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_unschedulable_and_a_failed_clone_are_named_long_before_the_timeout() {
    let e = env("real-fail-fast").await;
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
    ];
    for (i, (task, kind, needle)) in cases.into_iter().enumerate() {
        let job = e.job(&format!("ff{i}"), task);
        let (o, _) = e.run(job, long.clone()).await;
        let (k, m) = o.failure.unwrap();
        assert_eq!(k, kind, "{m}");
        assert!(m.contains(needle), "{kind}: {m}");
    }
    // A commit the server does not have: the clone fails, and says so.
    let mut job = e.job(
        "ff2",
        json!({"name": "clone", "container": "any", "command": "true", "mounts": [{"resource": "src:.", "path": "/app"}]}),
    );
    support::set_env(
        &mut job,
        "sykli-clone",
        "SYKLI_GIT_SHA",
        "0123456789abcdef0123456789abcdef01234567",
    );
    let (o, _) = e.run(job, long.clone()).await;
    let (k, m) = o.failure.unwrap();
    assert_eq!(k, "clone_failed", "{m}");
    assert!(m.contains("was it pushed?"), "{m}");
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_own_timeout_is_named_as_the_timeout_by_the_real_job_controller() {
    let e = env("real-deadline").await;
    let job = e.job(
        "r3",
        json!({"name": "slow", "container": "any", "command": "echo start; sleep 300", "timeout": 3,
               "mounts": [{"resource": "src:.", "path": "/app"}]}),
    );
    let (o, events) = e.run(job, create_ns()).await;
    let (kind, message) = o.failure.unwrap();
    assert_eq!(kind, "deadline_exceeded", "{message}");
    assert!(
        !message.contains("clone"),
        "the task's own deadline is not a clone failure: {message}"
    );
    assert!(support::logs(&events, "task").contains("start"));
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_failed_job_is_removed_by_the_real_ttl_controller_and_its_pod_by_the_collector() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::wait::{await_condition, conditions};
    let e = env("real-ttl").await;
    let mut job = e.job(
        "r5",
        json!({"name": "kept", "container": "any", "command": "exit 4"}),
    );
    job.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(1);
    let name = job.metadata.name.clone().unwrap();
    let keep = RunOptions {
        create_namespace: true,
        keep_failed: true,
        ..RunOptions::default()
    };
    let (o, _) = e.run(job, keep).await;
    assert_eq!(o.failure.unwrap().0, "task_failed");
    let jobs: Api<Job> = Api::namespaced(e.cluster.client.clone(), &e.namespace);
    let kept = jobs.get(&name).await.expect("keep_failed keeps the Job");
    let uid = kept.metadata.uid.clone().unwrap();
    let pods: Api<Pod> = Api::namespaced(e.cluster.client.clone(), &e.namespace);
    let pod = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await
        .unwrap()
        .items
        .pop()
        .expect("the kept Job's pod");
    let pod_uid = pod.metadata.uid.clone().unwrap();
    // The ttl-after-finished controller deletes the Job a second after it finished …
    tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(jobs, &name, conditions::is_deleted(&uid)),
    )
    .await
    .expect("the Job outlived its ttlSecondsAfterFinished")
    .unwrap();
    // … and the garbage collector its pod, which it owns.
    tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(
            pods,
            &pod.metadata.name.unwrap(),
            conditions::is_deleted(&pod_uid),
        ),
    )
    .await
    .expect("the Job's pod outlived it")
    .unwrap();
}
