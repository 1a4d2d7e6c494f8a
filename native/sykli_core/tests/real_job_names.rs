//! One Job per task on the real Kubernetes components (`sykli-kube up`): a Job already under
//! a task's name is adopted only when it provably is that task's Job of that run, and a
//! refused one is left exactly as it was. One control plane for this file; each test has
//! its own namespace.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use serde_json::json;
use sykli_core::cluster::run::{run_job, Event, Outcome, RunOptions};
use sykli_core::cluster::Cluster;
use sykli_testkit::git_server::GitDaemon;
use sykli_testkit::kube::{ControlPlane, ControlPlaneOptions};

const TASK_NAME: &str = "sykli.io/task-name";

async fn plane() -> &'static ControlPlane {
    support::control_plane(ControlPlaneOptions {
        nodes: 1,
        ..ControlPlaneOptions::default()
    })
    .await
}

struct Env {
    _tmp: tempfile::TempDir,
    cluster: Arc<Cluster>,
    _daemon: GitDaemon,
    namespace: String,
    url: String,
    sha: String,
}

async fn env(namespace: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let (daemon, url, sha) = support::served_repo(tmp.path());
    let cluster = support::connect_real(plane().await, Some(namespace)).await;
    support::create_namespace(&cluster, namespace).await;
    Env {
        url,
        _daemon: daemon,
        namespace: namespace.into(),
        sha,
        cluster: Arc::new(cluster),
        _tmp: tmp,
    }
}

impl Env {
    fn job(&self, run: &str, task: &str, command: &str) -> Job {
        support::job_for(
            json!({"name": task, "container": "any", "command": command}),
            run,
            &self.namespace,
            &self.url,
            &self.sha,
            Some("main"),
        )
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.cluster.client.clone(), &self.namespace)
    }

    /// Runs `job` to its end (at most 30 s: an adopted stranger would never end).
    async fn run(&self, job: Job) -> (sykli_core::Result<Outcome>, Vec<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
        let opts = RunOptions {
            timeout: Some(Duration::from_secs(30)),
            ..RunOptions::default()
        };
        let outcome = run_job(self.cluster.clone(), job, opts, tx, cancel_rx).await;
        (outcome, support::drain(rx))
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
    /// and no write but the job controller's to its status (the API server's managedFields
    /// record every writer of the object).
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
        let writers = |j: &Job| -> Vec<serde_json::Value> {
            j.metadata
                .managed_fields
                .iter()
                .flatten()
                .filter(|m| m.subresource.as_deref() != Some("status"))
                .map(|m| serde_json::to_value(m).unwrap())
                .collect()
        };
        assert!(!writers(before).is_empty(), "the creator is on record");
        assert_eq!(writers(&now), writers(before), "{name} was written to");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_is_adopted_only_for_this_very_tasks_job_of_this_run() {
    let e = env("real-409").await;
    let run = "r409";

    // The collision as job names used to make it: "test/unit" ran as sykli-test-unit-<run>,
    // with the same run and task labels as "test-unit" has. Its Job is there first.
    let mine = e.job(run, "test-unit", "echo mine");
    let name = mine.metadata.name.clone().unwrap();
    assert_eq!(name, format!("sykli-test-unit-{run}"));
    let mut stranger = e.job(run, "test/unit", "echo stranger");
    stranger.metadata.name = Some(name.clone());
    // The old builder labelled the Job with its name too.
    stranger
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("sykli.io/job".into(), name.clone());
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
