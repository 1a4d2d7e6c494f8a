//! One Job per task: look-alike task names get Job names of their own, a pipeline whose
//! tasks would still share one is refused before any call, and a Job already under a task's
//! name is adopted only when it provably is that task's Job of that run (on the strict test
//! cluster).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use sykli_core::cluster::run::{run_job, Event, Outcome, RunOptions};
use sykli_core::cluster::Cluster;
use sykli_core::manifest::{build_pipeline, names, BuildOptions};
use sykli_core::pipeline::Pipeline;
use sykli_testcluster::cluster::{ClusterOptions, TestCluster};
use sykli_testkit::git_server::{GitDaemon, ServerOptions};
use sykli_testkit::validate::kube_validate;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TASK_NAME: &str = "sykli.io/task-name";

fn opts(run: &str) -> BuildOptions {
    serde_json::from_value(json!({
        "namespace": "ci",
        "run_id": run,
        "source": {"url": "https://git.example.com/org/repo.git", "sha": SHA, "branch": "main"}
    }))
    .unwrap()
}

fn pipeline_of(tasks: &[&str]) -> Pipeline {
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|t| json!({"name": t, "command": "true", "container": "alpine"}))
        .collect();
    Pipeline::from_json(
        json!({"version": "2", "tasks": tasks})
            .to_string()
            .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn look_alike_task_names_get_jobs_of_their_own() {
    let tasks = [
        "test unit",
        "test/unit",
        "Test Unit",
        "test-unit",
        "test_unit",
        "A",
        "a",
    ];
    for run in ["r1x2", "r1x2-a2"] {
        let jobs: Vec<Value> = build_pipeline(&pipeline_of(&tasks), &opts(run))
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|j| serde_json::to_value(j).unwrap())
            .collect();
        let job_names: BTreeSet<&str> = jobs
            .iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(job_names.len(), tasks.len(), "{job_names:?}");
        for (task, job) in tasks.iter().zip(&jobs) {
            let name = job["metadata"]["name"].as_str().unwrap();
            assert!(names::is_dns_label(name), "{name}");
            assert_eq!(name, names::job_name(task, run));
            // The exact name is on the Job, for telling its owner apart on a 409.
            assert_eq!(job["metadata"]["annotations"][TASK_NAME], *task);
        }
        // A name that is its own slug keeps today's Job name.
        assert!(job_names.contains(format!("sykli-test-unit-{run}").as_str()));
        assert!(job_names.contains(format!("sykli-a-{run}").as_str()));
        kube_validate(&jobs);
    }
}

#[test]
fn tasks_that_would_share_a_job_name_are_refused_before_any_call() {
    // Both slug to "x" and their SHA-256 share the first 10 hex digits (found by search).
    let (one, two) = ("x>}>^", "x!(.)*");
    assert_eq!(names::job_name(one, "r1x2"), names::job_name(two, "r1x2"));
    let p = pipeline_of(&["build", one, "test unit", two, "test/unit"]);
    let err = build_pipeline(&p, &opts("r1x2")).unwrap_err();
    assert_eq!(err.kind(), "invalid_pipeline");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{one:?}")) && msg.contains(&format!("{two:?}")),
        "{msg}"
    );
    assert!(
        msg.contains(&names::job_name(one, "r1x2")) && msg.contains("rename one"),
        "{msg}"
    );
    assert!(
        !msg.contains("test unit"),
        "look-alikes are no problem: {msg}"
    );
    // Apart, each is fine.
    assert!(build_pipeline(&pipeline_of(&["build", one]), &opts("r1x2")).is_ok());
}

struct Env {
    _tmp: tempfile::TempDir,
    k8s: TestCluster,
    cluster: Arc<Cluster>,
    _daemon: GitDaemon,
    url: String,
    sha: String,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let repo = support::Repo::init(&tmp.path().join("work"));
    repo.write("README.md", "hello\n");
    let sha = repo.commit_all("first");
    let srv = tmp.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let bare = srv.join("repo.git");
    support::git(
        &srv,
        &[
            "clone",
            "-q",
            "--bare",
            repo.dir.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let daemon = GitDaemon::start(&srv, ServerOptions::default()).unwrap();
    let o = ClusterOptions::new(tmp.path().join("cluster"));
    let (k8s, cluster) = support::start_cluster(o).await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "ci"}})).unwrap();
    Api::<Namespace>::all(cluster.client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    Env {
        url: daemon.url("repo.git"),
        _daemon: daemon,
        sha,
        cluster,
        k8s,
        _tmp: tmp,
    }
}

impl Env {
    fn job(&self, run: &str, task: &str, command: &str) -> Job {
        support::job_for(
            json!({"name": task, "container": "any", "command": command}),
            run,
            "ci",
            &self.url,
            &self.sha,
            Some("main"),
        )
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.cluster.client.clone(), "ci")
    }

    /// Runs `job` to its end (at most 30 s: an adopted stranger would never end).
    async fn run(&self, job: Job) -> (sykli_core::Result<Outcome>, Vec<Event>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
        let opts = RunOptions {
            timeout: Some(Duration::from_secs(30)),
            ..RunOptions::default()
        };
        let outcome = run_job(self.cluster.clone(), job, opts, tx, cancel_rx).await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (outcome, events)
    }

    /// Creates `job` suspended (so nothing about it changes but its status).
    async fn plant(&self, mut job: Job) -> Job {
        job.spec.as_mut().unwrap().suspend = Some(true);
        self.jobs()
            .create(&PostParams::default(), &job)
            .await
            .unwrap()
    }

    /// `before` is still there as it was: same object, same metadata and spec, not deleted,
    /// and nothing but reads reached it.
    async fn untouched(&self, before: &Job) {
        let name = before.metadata.name.clone().unwrap();
        let now = self.jobs().get(&name).await.unwrap();
        assert_eq!(now.metadata.uid, before.metadata.uid, "{name} was replaced");
        assert!(
            now.metadata.deletion_timestamp.is_none(),
            "{name} is deleted"
        );
        assert_eq!(now.metadata.generation, before.metadata.generation);
        assert_eq!(now.metadata.labels, before.metadata.labels);
        assert_eq!(now.metadata.annotations, before.metadata.annotations);
        assert_eq!(
            serde_json::to_value(&now.spec).unwrap(),
            serde_json::to_value(&before.spec).unwrap()
        );
        let writes: Vec<_> = self
            .k8s
            .requests()
            .into_iter()
            .filter(|r| r.path.contains(&format!("/jobs/{name}")))
            .filter(|r| !matches!(r.verb.as_str(), "get" | "list" | "watch"))
            .collect();
        assert!(writes.is_empty(), "{writes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_is_adopted_only_for_this_very_tasks_job_of_this_run() {
    let e = env().await;
    let run = "r409";

    // The collision as job names used to make it: "test/unit" ran as sykli-test-unit-<run>,
    // with the same run and task labels as "test-unit" has. Its Job is there first.
    let mine = e.job(run, "test-unit", "echo mine");
    let name = mine.metadata.name.clone().unwrap();
    assert_eq!(name, format!("sykli-test-unit-{run}"));
    let mut stranger = e.job(run, "test/unit", "echo stranger");
    stranger.metadata.name = Some(name.clone());
    assert_eq!(
        stranger.metadata.labels, mine.metadata.labels,
        "labels alone cannot tell them apart"
    );
    let planted = e.plant(stranger).await;
    let (outcome, _) = e.run(mine).await;
    let err = outcome.expect_err("another task's Job must not be adopted");
    assert_eq!(err.kind(), "conflict", "{err}");
    let msg = err.to_string();
    for part in [
        name.as_str(),
        "task \"test/unit\"",
        "task \"test-unit\"",
        "rename one of the tasks",
    ] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    e.untouched(&planted).await;

    // A Job under the name with no task annotation at all: a conflict too.
    let lint = e.job(run, "lint", "echo lint");
    let mut anonymous = lint.clone();
    anonymous
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(TASK_NAME);
    let planted = e.plant(anonymous).await;
    let (outcome, _) = e.run(lint).await;
    let err = outcome.expect_err("a Job of no known task must not be adopted");
    assert_eq!(err.kind(), "conflict", "{err}");
    assert!(err.to_string().contains(TASK_NAME), "{err}");
    e.untouched(&planted).await;

    // Another run's Job of the same task: a conflict naming the run.
    let docs = e.job(run, "docs", "echo docs");
    let mut other_run = e.job("r410", "docs", "echo docs");
    other_run.metadata.name = docs.metadata.name.clone();
    let planted = e.plant(other_run).await;
    let (outcome, _) = e.run(docs).await;
    let err = outcome.expect_err("another run's Job must not be adopted");
    assert_eq!(err.kind(), "conflict", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("is not this run's") && msg.contains("run r410"),
        "{msg}"
    );
    e.untouched(&planted).await;

    // This very task's Job of this run, created before (a lost answer): adopted, run once.
    let own = e.job(run, "Test/Unit", "echo once");
    e.jobs().create(&PostParams::default(), &own).await.unwrap();
    let (outcome, events) = e.run(own).await;
    let outcome = outcome.unwrap_or_else(|err| panic!("{err}"));
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let log: Vec<&str> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::Log { container, line } if container == "task" => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(log, ["once"]);
}
