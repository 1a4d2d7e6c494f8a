//! Submission tests that still need the strict test cluster's own instruments: its request
//! log (how many API calls a run makes, that nothing was created) and its fault injection.
//! Every other end-to-end test of submission runs on the real components
//! (`real_submit.rs`, `real_s3.rs`, `real_job_names.rs`); these move there once the
//! request-logging, fault-injecting proxy in front of the real API server exists.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};
use sykli_core::cluster::run::{Event, Outcome, RunOptions};
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

use support::{logs, spawn_run};

fn create_ns() -> RunOptions {
    RunOptions {
        create_namespace: true,
        ..RunOptions::default()
    }
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
