//! The S3 strategy's Jobs on the real Kubernetes components (`sykli-kube up`): each Job's
//! URL signed at submission into a Secret the Job owns, fetched in the pod by the real
//! `sykli-sync fetch` from a SigV4-verifying S3 server on 127.0.0.1, and the Secret
//! removed with its Job by the real garbage collector. One control plane for this file;
//! each test has its own namespace.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};
use sykli_core::cluster::run::{run_job, Event, Outcome, RunOptions};
use sykli_core::cluster::Cluster;
use sykli_core::manifest::{build_job, names, BuildOptions};
use sykli_core::s3::{Bucket, S3Options};
use sykli_core::source::s3::ArchiveSigning;
use sykli_core::source::{s3, upload, SourcePlan};
use sykli_testkit::kube::{ControlPlane, ControlPlaneOptions};
use sykli_testkit::s3_server::S3Server;

const BUCKET: &str = "builds";
const IMAGE: &str = "ghcr.io/sykli/sync:test";
const WAIT: Duration = Duration::from_secs(60);

/// Every node runs the real `sykli-sync` for the sync image.
async fn plane() -> &'static ControlPlane {
    support::control_plane(ControlPlaneOptions {
        nodes: 1,
        node_args: vec![support::sync_image_arg(
            IMAGE,
            &support::target_bin("sykli-sync"),
        )],
        ..ControlPlaneOptions::default()
    })
    .await
}

fn s3_env(server: &S3Server) -> BTreeMap<String, String> {
    [
        ("AWS_ACCESS_KEY_ID", server.access_key()),
        ("AWS_SECRET_ACCESS_KEY", server.secret_key()),
        ("HOME", "/nonexistent"),
        ("AWS_REGION", server.region()),
        // No instance metadata: nothing leaves 127.0.0.1.
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn options(server: &S3Server) -> S3Options {
    S3Options {
        bucket: BUCKET.into(),
        prefix: Some("ci".into()),
        endpoint: Some(server.endpoint()),
        ..Default::default()
    }
}

/// A git repository whose working tree holds `src/main.rs`, uncommitted.
fn repo(dir: &Path) -> PathBuf {
    let root = dir.join("work");
    let repo = support::Repo::init(&root);
    repo.write("committed.txt", "committed\n");
    repo.commit_all("first");
    repo.write("src/main.rs", "fn main() {}\n");
    root
}

struct Env {
    _tmp: tempfile::TempDir,
    _server: S3Server,
    cluster: Arc<Cluster>,
    namespace: String,
    signing: ArchiveSigning,
    published: s3::Published,
}

/// A local S3 server holding the published working tree, and a client in `namespace`.
async fn env(namespace: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3")).unwrap();
    server.create_bucket(BUCKET).unwrap();
    let root = repo(tmp.path());
    let bucket = Bucket::new(&options(&server), &s3_env(&server)).unwrap();
    let published = s3::publish(
        &bucket,
        &upload::local_tree(&root, &[]).unwrap(),
        &tmp.path().join("s"),
    )
    .unwrap();
    let cluster = support::connect_real(plane().await, Some(namespace)).await;
    Env {
        signing: ArchiveSigning {
            s3: options(&server),
            key: published.key.clone(),
            env: Some(s3_env(&server)),
        },
        published,
        cluster: Arc::new(cluster),
        namespace: namespace.into(),
        _server: server,
        _tmp: tmp,
    }
}

impl Env {
    /// The Job sykli builds for `task` with the S3 strategy (the repository at /src).
    fn job(&self, run: &str, task: Value) -> Job {
        let p = &self.published;
        let mut task = task;
        task["container"] = json!("any");
        task["mounts"] = json!([{"resource": "src:.", "path": "/src", "type": "directory"}]);
        let name = names::job_name(task["name"].as_str().unwrap(), run);
        let task: sykli_core::pipeline::Task = serde_json::from_value(task).unwrap();
        let resources =
            serde_json::from_value(json!({"src:.": {"type": "directory", "path": "."}})).unwrap();
        let opts: BuildOptions = serde_json::from_value(json!({
            "namespace": self.namespace, "run_id": run,
            "source": {"strategy": "s3", "s3": {"sha256": p.sha256, "size": p.size,
                       "tree": p.tree, "key": p.key, "image": IMAGE}}
        }))
        .unwrap();
        let plan = SourcePlan::from_options(&opts.source).unwrap();
        build_job(&task, &resources, &name, &plan, &opts).unwrap()
    }

    fn opts(&self, keep_failed: bool) -> RunOptions {
        RunOptions {
            create_namespace: true,
            keep_failed,
            source_url: Some(self.signing.clone()),
            ..RunOptions::default()
        }
    }

    async fn run(&self, job: Job, opts: RunOptions) -> (sykli_core::Result<Outcome>, Vec<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
        let outcome = run_job(self.cluster.clone(), job, opts, tx, cancel_rx).await;
        (outcome, support::drain(rx))
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.cluster.client.clone(), &self.namespace)
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.cluster.client.clone(), &self.namespace)
    }

    /// Waits (on a watch) until Secret `name` is gone.
    async fn secret_gone(&self, name: &str) {
        let fut =
            kube::runtime::wait::await_condition(self.secrets(), name, |s: Option<&Secret>| {
                s.is_none()
            });
        tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("Secret {name} is still there after {WAIT:?}"))
            .unwrap();
    }

    async fn pods_text(&self, job: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.cluster.client.clone(), &self.namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
            .await
            .unwrap();
        assert!(!list.items.is_empty(), "no pod of {job}");
        serde_json::to_string(&list.items).unwrap()
    }
}

fn url_of(secret: &Secret) -> String {
    let data = secret.data.as_ref().expect("data");
    String::from_utf8(data["url"].0.clone()).unwrap()
}

/// The URL's X-Amz-Expires.
fn url_expires(url: &str) -> u64 {
    url.split("X-Amz-Expires=")
        .nth(1)
        .and_then(|q| q.split('&').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no X-Amz-Expires in the URL"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_fetches_through_its_own_secret_which_the_real_collector_removes_with_the_job() {
    let e = env("real-s3-own").await;
    let job = e.job(
        "s3a",
        json!({"name": "check", "timeout": 300,
            "command": "test -f /src/src/main.rs && echo source-ok; test -z \"$SYKLI_SOURCE_URL\" && echo no-url-here; exit 3"}),
    );
    let name = job.metadata.name.clone().unwrap();
    let secret_name = format!("{name}-source");
    assert!(!serde_json::to_string(&job).unwrap().contains("X-Amz-"));
    let (outcome, events) = e.run(job, e.opts(true)).await;
    let o = outcome.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        o.exit_code,
        Some(3),
        "{:?}\n{}",
        o.failure,
        support::logs(&events, "sykli-fetch")
    );
    assert!(o.kept);
    let task_log = support::logs(&events, "task");
    assert!(task_log.contains("source-ok"), "{task_log}");
    // The URL reaches only the fetch container, never the task's environment.
    assert!(task_log.contains("no-url-here"), "{task_log}");

    // The kept Job owns its Secret: immutable, Opaque, labelled as the Job, the URL inside.
    let kept = e.jobs().get(&name).await.unwrap();
    let secret = e.secrets().get(&secret_name).await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(secret.immutable, Some(true));
    let labels = secret.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("sykli.io/run").map(String::as_str), Some("s3a"));
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("sykli")
    );
    let refs = secret.metadata.owner_references.clone().unwrap();
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(
        (
            refs[0].api_version.as_str(),
            refs[0].kind.as_str(),
            refs[0].name.as_str()
        ),
        ("batch/v1", "Job", name.as_str())
    );
    assert_eq!(Some(&refs[0].uid), kept.metadata.uid.as_ref());
    assert_eq!(
        (refs[0].controller, refs[0].block_owner_deletion),
        (Some(false), Some(false))
    );
    let url = url_of(&secret);
    assert!(url.contains("X-Amz-Signature="));
    assert_eq!(url_expires(&url), 300 + s3::URL_MARGIN_SECONDS);
    // Neither the Job nor its pod holds the URL.
    assert!(!serde_json::to_string(&kept).unwrap().contains("X-Amz-"));
    assert!(!e.pods_text(&name).await.contains("X-Amz-"));

    // Deleted (as its TTL or kubectl would), the Job takes its Secret with it: the real
    // garbage collector follows the ownerReference.
    e.jobs()
        .delete(&name, &DeleteParams::background())
        .await
        .unwrap();
    e.secret_gone(&secret_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_secret_is_adopted_or_refused_as_the_job_is_and_never_outlives_a_failed_create() {
    let e = env("real-s3-adopt").await;
    let ns = e.namespace.clone();
    support::create_namespace(&e.cluster, &ns).await;

    // A Job that reads a URL with nothing to sign one: refused before anything exists.
    let job = e.job("s3b", json!({"name": "unsigned", "command": "true"}));
    let name = job.metadata.name.clone().unwrap();
    let opts = RunOptions {
        source_url: None,
        ..e.opts(false)
    };
    let err = e.run(job, opts).await.0.expect_err("no signing, no Job");
    assert_eq!(err.kind(), "invalid", "{err}");
    assert!(
        err.to_string().contains(&format!("Secret {name}-source"))
            && err.to_string().contains("publish the source first"),
        "{err}"
    );
    assert!(e.jobs().get_opt(&name).await.unwrap().is_none());
    assert!(e
        .secrets()
        .get_opt(&format!("{name}-source"))
        .await
        .unwrap()
        .is_none());

    // A Secret of that name that is not this task's of this run: a conflict, left as it is.
    let job = e.job("s3b", json!({"name": "planted", "command": "true"}));
    let name = job.metadata.name.clone().unwrap();
    let planted: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-source")}, "stringData": {"url": "https://elsewhere/x"}
    }))
    .unwrap();
    e.secrets()
        .create(&PostParams::default(), &planted)
        .await
        .unwrap();
    let err = e
        .run(job, e.opts(false))
        .await
        .0
        .expect_err("a stranger's Secret");
    assert_eq!(err.kind(), "conflict", "{err}");
    let msg = err.to_string();
    for part in [
        format!("Secret {ns}/{name}-source exists and is not this run's"),
        format!("kubectl -n {ns} delete secret {name}-source"),
    ] {
        assert!(msg.contains(&part), "{part:?} not in {msg}");
    }
    let still = e.secrets().get(&format!("{name}-source")).await.unwrap();
    assert_eq!(url_of(&still), "https://elsewhere/x");
    assert!(still.metadata.owner_references.is_none());
    assert!(e.jobs().get_opt(&name).await.unwrap().is_none());

    // The Job's create fails (the real API server's validation): its Secret is deleted,
    // the URL goes with it.
    let mut job = e.job("s3b", json!({"name": "refused", "command": "true"}));
    let name = job.metadata.name.clone().unwrap();
    job.spec.as_mut().unwrap().backoff_limit = Some(-1);
    let err = e
        .run(job, e.opts(false))
        .await
        .0
        .expect_err("an invalid Job");
    assert_eq!(err.kind(), "invalid", "{err}");
    assert!(!err.to_string().contains("X-Amz-"), "{err}");
    assert!(e
        .secrets()
        .get_opt(&format!("{name}-source"))
        .await
        .unwrap()
        .is_none());

    // This very task's Secret of this run, created before (a lost answer): adopted.
    let job = e.job(
        "s3b",
        json!({"name": "again", "command": "echo adopted-ok"}),
    );
    let name = job.metadata.name.clone().unwrap();
    let url = e.signing.presign(Some(300)).unwrap().url;
    let own: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-source"), "labels": job.metadata.labels,
                     "annotations": {"sykli.io/task-name": "again"}},
        "stringData": {"url": url}, "immutable": true
    }))
    .unwrap();
    e.secrets()
        .create(&PostParams::default(), &own)
        .await
        .unwrap();
    let (outcome, events) = e.run(job, e.opts(false)).await;
    let o = outcome.unwrap_or_else(|err| panic!("{err}"));
    assert!(
        o.failure.is_none(),
        "{:?}\n{}",
        o.failure,
        support::logs(&events, "sykli-fetch")
    );
    assert!(support::logs(&events, "task").contains("adopted-ok"));
    e.secret_gone(&format!("{name}-source")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_that_die_before_a_jobs_url_are_a_warning_in_that_tasks_log() {
    use sykli_testkit::moto_server::{MotoServer, Setup};
    let e = env("real-s3-sts").await;
    let tmp = tempfile::tempdir().unwrap();
    // STS (moto's) hands out credentials for an hour; a task of an hour needs 70 minutes.
    let sts = MotoServer::start(
        &tmp.path().join("moto"),
        &Setup::new().s3_role("ci", BUCKET),
    )
    .unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJub25lIn0.e30.c2ln\n").unwrap();
    let mut signing = e.signing.clone();
    signing.env = Some(
        [
            ("HOME", "/nonexistent"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            ("AWS_ROLE_ARN", sts.role_arn("ci").as_str()),
            ("AWS_ENDPOINT_URL_STS", sts.endpoint().as_str()),
            ("AWS_REGION", sts.region()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let job = e.job(
        "s3c",
        json!({"name": "long", "timeout": 3600, "command": "true"}),
    );
    let opts = RunOptions {
        source_url: Some(signing),
        ..e.opts(false)
    };
    let (outcome, events) = e.run(job, opts).await;
    outcome.unwrap_or_else(|err| panic!("{err}"));
    let warnings = support::logs(&events, sykli_core::cluster::run::SYKLI_LOG);
    assert!(
        warnings.starts_with("warning: the temporary credentials (web identity")
            && warnings.contains("needs 70 min"),
        "{warnings}"
    );
}
