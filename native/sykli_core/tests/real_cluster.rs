//! The submission scenarios against a real cluster (kind, k3d, or any), opt-in:
//!
//!     KUBECONFIG=~/.kube/config cargo test -p sykli_core --test real_cluster -- --ignored
//!
//! SYKLI_TEST_NAMESPACE (default sykli-test) is created when missing. The clone scenario runs
//! when SYKLI_TEST_GIT_URL and SYKLI_TEST_GIT_SHA name a public repository and commit the
//! cluster can reach (with a file named by SYKLI_TEST_GIT_FILE, default README.md).

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use sykli_core::cluster::run::{run_job, Event, Outcome, RunOptions};
use sykli_core::cluster::{Cluster, ConnectOptions};

fn namespace() -> String {
    std::env::var("SYKLI_TEST_NAMESPACE").unwrap_or_else(|_| "sykli-test".into())
}

async fn cluster() -> Arc<Cluster> {
    let opts = ConnectOptions {
        kubeconfig: std::env::var("KUBECONFIG").ok().map(Into::into),
        context: std::env::var("SYKLI_TEST_CONTEXT").ok(),
        namespace: Some(namespace()),
    };
    Arc::new(
        Cluster::connect(&opts)
            .await
            .expect("KUBECONFIG names a reachable cluster"),
    )
}

fn job(task: Value, run: &str) -> Job {
    let url = std::env::var("SYKLI_TEST_GIT_URL")
        .unwrap_or_else(|_| "https://github.com/git/git.git".into());
    let sha = std::env::var("SYKLI_TEST_GIT_SHA").unwrap_or_else(|_| "0".repeat(40));
    support::job_for(task, run, &namespace(), &url, &sha, None)
}

async fn run(task: Value, run_id: &str) -> (Outcome, Vec<Event>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let opts = RunOptions {
        create_namespace: true,
        unschedulable_grace: Duration::from_secs(20),
        ..RunOptions::default()
    };
    let outcome = run_job(cluster().await, job(task, run_id), opts, tx, cancel_rx)
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (outcome, events)
}

fn run_id() -> String {
    format!("rc{}", std::process::id())
}

async fn assert_no_jobs(run: &str) {
    let api: Api<Job> = Api::namespaced(cluster().await.client.clone(), &namespace());
    let left = api
        .list(&ListParams::default().labels(&format!("sykli.io/run={run}")))
        .await
        .unwrap();
    assert!(
        left.items.is_empty(),
        "Jobs left: {:?}",
        left.items
            .iter()
            .map(|j| &j.metadata.name)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn real_cluster_success_failure_and_image_pull() {
    let id = run_id();
    let (ok, events) = run(
        json!({"name": "ok", "container": "busybox:1.36", "command": "echo hello-from-sykli"}),
        &id,
    )
    .await;
    assert!(ok.failure.is_none(), "{:?}", ok.failure);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Log { line, .. } if line == "hello-from-sykli")));
    let (bad, _) = run(
        json!({"name": "bad", "container": "busybox:1.36", "command": "exit 3"}),
        &id,
    )
    .await;
    assert_eq!(
        (bad.exit_code, bad.failure.map(|f| f.0)),
        (Some(3), Some("task_failed"))
    );
    let (pull, _) = run(
        json!({"name": "pull", "container": "registry.invalid/nope:1", "command": "true"}),
        &id,
    )
    .await;
    assert_eq!(pull.failure.map(|f| f.0), Some("image_pull"));
    assert_no_jobs(&id).await;
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn real_cluster_clone_and_deadline() {
    let id = run_id() + "b";
    if std::env::var("SYKLI_TEST_GIT_SHA").is_ok() {
        let file = std::env::var("SYKLI_TEST_GIT_FILE").unwrap_or_else(|_| "README.md".into());
        let (o, _) = run(json!({"name": "clone", "container": "alpine/git:v2.54.0", "env": {"F": file},
            "mounts": [{"resource": "src:.", "path": "/app"}], "command": "test -e \"$F\" && git rev-parse HEAD"}), &id).await;
        assert!(o.failure.is_none(), "{:?}", o.failure);
        assert_eq!(o.checked_out, std::env::var("SYKLI_TEST_GIT_SHA").ok());
    }
    let (slow, _) = run(
        json!({"name": "slow", "container": "busybox:1.36", "command": "sleep 600", "timeout": 5}),
        &id,
    )
    .await;
    assert_eq!(slow.failure.map(|f| f.0), Some("deadline_exceeded"));
    assert_no_jobs(&id).await;
}
