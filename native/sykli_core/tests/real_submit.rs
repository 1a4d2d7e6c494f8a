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
use sykli_core::cluster::run::{Event, Outcome, Phase, RunOptions};
use sykli_core::cluster::Cluster;
use sykli_testkit::git_server::GitDaemon;
use sykli_testkit::kube::{ControlPlane, ControlPlaneOptions};

/// The test kit's hostile stand-in for the sync image (what the nodes run for it).
const HOSTILE_SYNC: &str = "ghcr.io/sykli/sync:hostile";

/// Node 0 takes the tasks; node 1 is tainted, so that a task lands where a test expects.
async fn plane() -> &'static ControlPlane {
    support::control_plane(ControlPlaneOptions {
        nodes: 2,
        node_args: vec![
            "--deny-image=registry.invalid/*".into(),
            "--image-pull-backoff=500ms".into(),
            support::sync_image_arg(HOSTILE_SYNC, &support::target_bin("sykli-hostile-sync")),
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
    let (daemon, url, sha) = support::served_repo(tmp.path());
    let cluster = support::connect_real(plane().await, Some(namespace)).await;
    Env {
        url,
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

    async fn run(&self, job: Job, opts: RunOptions) -> (Outcome, Vec<Event>) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_deletes_the_job() {
    use sykli_core::cluster::run::run_job;
    let e = env("real-cancel").await;
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

/// "No Job was created" seen as no Job in the namespace (real_faults.rs's twin also reads
/// the proxy's request log: only reads were made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_errors_create_nothing() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::PostParams;
    let e = env("real-preflight").await;
    // No namespace, and not allowed to create it.
    let job = e.job(
        "r5",
        json!({"name": "t", "container": "any", "command": "true"}),
    );
    let (outcome, _) = support::spawn_run(e.cluster.clone(), job, RunOptions::default())
        .await
        .unwrap();
    let err = outcome.unwrap_err();
    assert_eq!(err.kind(), "not_found");
    assert!(
        err.to_string()
            .contains("namespace \"real-preflight\" does not exist"),
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
    assert!(ok.failure.is_none(), "{:?}", ok.failure);
    let secrets: Api<Secret> = Api::namespaced(e.cluster.client.clone(), &e.namespace);
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
    let (outcome, _) = support::spawn_run(e.cluster.clone(), job, create_ns())
        .await
        .unwrap();
    let err = outcome.unwrap_err();
    assert_eq!(err.kind(), "not_found");
    assert!(
        err.to_string().contains(
            "Secret real-preflight/gh has no key \"token\" (env TOKEN of container task reads it)"
        ),
        "{err}"
    );
    assert!(e.jobs_left().await.is_empty(), "no Job was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_adopts_its_own_job_and_refuses_a_stranger() {
    use kube::api::PostParams;
    let e = env("real-adopt").await;
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
    assert!(ok.failure.is_none(), "{:?}", ok.failure);
    let api: Api<Job> = Api::namespaced(e.cluster.client.clone(), &e.namespace);
    api.create(&PostParams::default(), &job).await.unwrap();
    // The same Job again (as after a lost answer): adopted, run once, deleted.
    let (o, events) = e.run(job.clone(), create_ns()).await;
    assert!(o.failure.is_none(), "{:?}", o.failure);
    assert_eq!(support::logs(&events, "task"), "once\n");
    assert!(e.jobs_left().await.is_empty());
    // Another run's Job under the same name: a conflict, not adopted.
    let mut stranger = job.clone();
    stranger
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("sykli.io/run".into(), "other".into());
    api.create(&PostParams::default(), &stranger).await.unwrap();
    let (outcome, _) = support::spawn_run(e.cluster.clone(), job, create_ns())
        .await
        .unwrap();
    let err = outcome.unwrap_err();
    assert_eq!(err.kind(), "conflict");
    assert!(err.to_string().contains("is not this run's"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_side_deadline_ends_a_run_the_cluster_would_let_go_on() {
    let e = env("real-client-deadline").await;
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
    let (o, _) = e.run(job, opts).await;
    let (kind, message) = o.failure.unwrap();
    assert_eq!(kind, "timeout");
    assert_eq!(
        message,
        "timed out after 3 s (the client-side deadline): the Job was deleted"
    );
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_line_of_ten_mib_without_newline_arrives_capped_and_marked() {
    use sykli_core::cluster::run::{truncated_marker, MAX_LOG_LINE};
    let e = env("real-long-line").await;
    let job = e.job(
        "r-long",
        json!({"name": "long-line", "container": "any",
            "command": "echo before; head -c 10485760 /dev/zero | tr '\\000' a"}),
    );
    let (o, events) = e.run(job, create_ns()).await;
    assert_eq!(o.exit_code, Some(0), "{:?}", o.failure);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_back_over_its_limit_is_refused_naming_the_pod_and_the_limit() {
    use sykli_core::cluster::sync;
    let e = env("real-sync-limit").await;
    let ns = e.namespace.as_str();
    support::create_namespace(&e.cluster, ns).await;
    let volume = e._tmp.path().join("claim-src");
    support::bound_claim(&e.cluster, ns, "src", "ReadWriteMany", &volume).await;
    let r = sync::receiver(&e.cluster, ns, "src", HOSTILE_SYNC)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let dest = tempfile::tempdir().unwrap();
    const LIMIT: u64 = 1 << 20;

    // Within the limit, outputs land as always.
    let outputs = vec!["benign".to_string(), "out".to_string()];
    let report = sync::sync_back_limited(&e.cluster, &r, "job-ok", &outputs, dest.path(), LIMIT)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
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
            && msg.contains(&format!("in pod {ns}/{}", r.pod))
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
