//! The real Kubernetes API server judges what this project builds. `sykli-kube` (tools/kube:
//! etcd, kube-apiserver v1.37.2 with RBAC and the PodSecurity admission plugin, the
//! controller manager and the scheduler, built from the Go module proxy by
//! `tools/kube/build.sh`, which `scripts/setup` runs) is started once for this file.
//!
//! - Every Job the project builds — each source strategy, private-repository setting,
//!   artifact and option — is accepted by a server-side dry run (validation and admission
//!   of the real API server, nothing stored).
//! - In a namespace that enforces the `restricted` Pod Security profile, every pod sykli's
//!   own containers run in (clone, fetch, sync, verify, bundle, artifacts, the receiver)
//!   is admitted: the task's own containers are the user's, given a restricted context
//!   here so that any refusal is about sykli's.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, SecurityContext, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{json, Value};
use sykli_core::cluster::run::{run_job, Outcome, RunOptions};
use sykli_core::cluster::{sync, Cluster};
use sykli_core::manifest::{build_pipeline, BuildOptions};
use sykli_core::pipeline::Pipeline;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TREE: &str = "2b86b949c5b09595d23bbcc9cf51e1de0185a5cce164b27a1376affda422ec5c";

/// `sykli-kube up` without nodes, one for this test binary (pods stay Pending: what these
/// tests judge is what the API server and its controllers decide).
async fn plane() -> &'static sykli_testkit::kube::ControlPlane {
    support::control_plane(sykli_testkit::kube::ControlPlaneOptions::default()).await
}

/// A kube client as the cluster's admin.
async fn admin() -> Cluster {
    support::connect_real(plane().await, None).await
}

/// The user's part made to meet `restricted`, as sykli's helpers do.
fn restricted() -> SecurityContext {
    sykli_core::source::git_clone::restricted_security_context()
}

/// The Jobs of one task under `source` (and more build options), built as sykli builds them.
fn jobs(case: &str, task: Value, extra: Value) -> Vec<(String, Job)> {
    let p = Pipeline::from_json(
        json!({"version": "2", "tasks": [task],
               "resources": {"src:.": {"type": "directory", "path": "."},
                             "api": {"type": "directory", "path": "services/api"},
                             "cargo": {"type": "cache", "name": "cargo-registry"}}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let mut o = json!({"namespace": "ci", "run_id": "r1x2"});
    for (k, v) in extra.as_object().unwrap() {
        o[k] = v.clone();
    }
    let o: BuildOptions = serde_json::from_value(o).unwrap();
    build_pipeline(&p, &o)
        .unwrap_or_else(|e| panic!("{case}: {e}"))
        .into_iter()
        .map(|j| (case.to_string(), j))
        .collect()
}

fn every_kind_of_job() -> Vec<(String, Job)> {
    let git = |access: Value| {
        json!({"url": "https://git.example.com/org/repo.git", "sha": SHA,
                                     "branch": "main", "clone": {"access": access}})
    };
    let task = json!({"name": "build", "command": "make", "container": "gcc:14", "timeout": 900,
        "mounts": [{"resource": "src:.", "path": "/src", "type": "directory"},
                   {"resource": "api", "path": "/api", "type": "directory"},
                   {"resource": "cargo", "path": "/cargo", "type": "cache"}],
        "services": [{"image": "redis:7", "name": "cache"}],
        "k8s": {"resources": {"cpu": "500m", "memory": "1Gi"},
                "node_selector": {"pool": "build"},
                "tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}]}});
    let outputs = json!({"name": "dist", "command": "make dist", "container": "gcc:14",
        "outputs": {"app": "dist/app"},
        "mounts": [{"resource": "src:.", "path": "/src", "type": "directory"}]});
    let inputs = json!({"name": "deploy", "command": "true", "container": "gcc:14",
        "artifact_inputs": [{"job": "sykli-dist-r1x2", "path": "dist/app", "to": "bin/app"}],
        "mounts": [{"resource": "src:.", "path": "/src", "type": "directory"}]});
    let pvc = |mount: &str, extra: Value| {
        let mut p = json!({"claim": "sykli-source", "tree": TREE, "mount": mount});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        json!({"strategy": "pvc", "pvc": p})
    };
    let s3 = |bundle: Value| {
        json!({"strategy": "s3", "s3": {"sha256": "f".repeat(64), "size": 42,
        "tree": TREE, "key": format!("ci/sykli-source/{TREE}.tar.gz"), "bundle": bundle}})
    };
    let bundle = json!({"sha": SHA});
    [
        jobs("git clone", task.clone(), json!({"source": git(json!({}))})),
        jobs(
            "token, CA bundle, proxy, submodules, LFS, sparse",
            task.clone(),
            json!({"source": git(json!({"token": {"secret": "git-token"},
                "ca_bundle": {"kind": "config_map", "name": "corp-ca", "key": "ca.crt"},
                "proxy": {"https": "http://proxy.corp:3128", "no_proxy": "localhost"},
                "submodules": "recursive", "lfs": true, "sparse": ["services/api"]}))}),
        ),
        jobs(
            "ssh deploy key",
            task.clone(),
            json!({"source": {"url": "ssh://git@git.example.com/org/repo.git", "sha": SHA,
                "clone": {"access": {"ssh": {"secret": "deploy-key",
                    "known_hosts": {"kind": "config_map", "name": "git-known-hosts", "key": "known_hosts"}}}}}}),
        ),
        jobs(
            "git-credentials",
            task.clone(),
            json!({"source": git(json!({"credentials": {"secret": "git-credentials"}}))}),
        ),
        jobs(
            "pvc copy, sync back",
            outputs.clone(),
            json!({"source": pvc("copy", json!({"sync_back": true}))}),
        ),
        jobs("pvc shared", task.clone(), json!({"source": pvc("shared", json!({}))})),
        jobs(
            "pvc git bundle",
            task.clone(),
            json!({"source": pvc("copy", json!({"bundle": bundle}))}),
        ),
        jobs(
            "every k8s option",
            {
                let mut t = support::every_k8s_option_task();
                t["k8s"].as_object_mut().unwrap().remove("namespace");
                t["mounts"] = json!([{"resource": "src:.", "path": "/src", "type": "directory"}]);
                t
            },
            json!({"source": git(json!({}))}),
        ),
        jobs("s3", task.clone(), json!({"source": s3(Value::Null)})),
        jobs("s3 git bundle", task.clone(), json!({"source": s3(bundle.clone())})),
        jobs(
            "collected outputs",
            outputs,
            json!({"source": git(json!({})), "artifact_pvc": "sykli-artifacts",
                   "collect_outputs": true}),
        ),
        jobs(
            "placed inputs",
            inputs,
            json!({"source": git(json!({})), "artifact_pvc": "sykli-artifacts",
                   "collect_outputs": true}),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_api_server_accepts_every_job_and_admits_sykli_s_pods_as_restricted() {
    let client = admin().await.client;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "ci", "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"}}}))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    support::default_account(&client, "ci").await;
    // What the task options name: admission refuses a pod whose priority class or service
    // account does not exist.
    let builder: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "builder"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), "ci")
        .create(&PostParams::default(), &builder)
        .await
        .unwrap();
    let high: k8s_openapi::api::scheduling::v1::PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": "high"}, "value": 1000})).unwrap();
    Api::<k8s_openapi::api::scheduling::v1::PriorityClass>::all(client.clone())
        .create(&PostParams::default(), &high)
        .await
        .unwrap();

    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), "ci");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ci");
    let all = every_kind_of_job();
    assert!(all.len() >= 12);
    let mut refused = Vec::new();
    for (case, job) in &all {
        let name = job.metadata.name.clone().unwrap();
        if let Err(e) = jobs_api.create(&dry, job).await {
            refused.push(format!("{case}: Job {name}: {e}"));
        }
        // The pod the job controller would create, the user's containers restricted.
        let template = job.spec.as_ref().unwrap().template.clone();
        let mut spec = template.spec.unwrap();
        let sykli_s = |n: &str| n.starts_with("sykli-");
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            if !sykli_s(&c.name) {
                c.security_context = Some(restricted());
            }
        }
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("{name}-pod")),
                labels: template.metadata.and_then(|m| m.labels),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        };
        if let Err(e) = pods.create(&dry, &pod).await {
            refused.push(format!("{case}: the pod of Job {name}: {e}"));
        }
    }
    let receiver = sync::receiver_pod(
        &sykli_core::manifest::names::receiver_name("sykli-source"),
        "sykli-source",
        "ghcr.io/sykli/sync:0.1.0",
    );
    if let Err(e) = pods.create(&dry, &receiver).await {
        refused.push(format!("the receiver pod: {e}"));
    }
    assert!(refused.is_empty(), "{}", refused.join("\n"));

    // The profile is enforced: the same pod with the user's container as an image leaves it
    // (root, privileges) is refused, naming the profile.
    let (_, job) = &all[0];
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "as-the-user-left-it"},
        "spec": serde_json::to_value(job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()).unwrap()
    }))
    .unwrap();
    pod.spec.as_mut().unwrap().containers[0].security_context = None;
    let err = pods.create(&dry, &pod).await.unwrap_err().to_string();
    assert!(
        err.contains("violates PodSecurity \"restricted:latest\""),
        "{err}"
    );
}

/// The README's RBAC for Jobs, with the S3 strategy's Secret verbs.
fn readme_rbac(secret_verbs: &[&str]) -> Value {
    json!([
        {"apiGroups": ["batch"], "resources": ["jobs"],
         "verbs": ["create", "get", "list", "watch", "delete", "deletecollection"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["secrets", "configmaps", "persistentvolumeclaims"],
         "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": secret_verbs}
    ])
}

fn s3_job(namespace: &str) -> Job {
    let mut all = jobs(
        "s3",
        json!({"name": "build", "command": "make", "container": "gcc:14", "timeout": 300,
               "mounts": [{"resource": "src:.", "path": "/src", "type": "directory"}]}),
        json!({"namespace": namespace, "source": {"strategy": "s3", "s3": {"sha256": "f".repeat(64),
               "size": 42, "tree": TREE, "key": format!("ci/sykli-source/{TREE}.tar.gz")}}}),
    );
    all.remove(0).1
}

fn signing() -> sykli_core::source::s3::ArchiveSigning {
    sykli_core::source::s3::ArchiveSigning {
        s3: sykli_core::s3::S3Options {
            bucket: "builds".into(),
            region: Some("eu-west-1".into()),
            endpoint: Some("https://s3.example.com".into()),
            ..Default::default()
        },
        key: format!("ci/sykli-source/{TREE}.tar.gz"),
        env: Some(
            [
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                (
                    "AWS_SECRET_ACCESS_KEY",
                    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                ),
                ("HOME", "/nonexistent"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ),
    }
}

async fn run(cluster: Arc<Cluster>, job: Job, keep_failed: bool) -> sykli_core::Result<Outcome> {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let opts = RunOptions {
        keep_failed,
        unschedulable_grace: Duration::from_secs(1),
        timeout: Some(Duration::from_secs(120)),
        source_url: Some(signing()),
        ..RunOptions::default()
    };
    run_job(cluster, job, opts, tx, cancel_rx).await
}

/// Waits, on a watch, until `name` is gone.
async fn gone<K>(api: Api<K>, name: &str, what: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::time::timeout(
        Duration::from_secs(120),
        kube::runtime::wait::await_condition(api, name, |o: Option<&K>| o.is_none()),
    )
    .await
    .unwrap_or_else(|_| panic!("{what} still there after 120 s"))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_readme_s_rbac_the_real_job_controller_scheduler_and_garbage_collector_agree() {
    let admin = admin().await.client;
    let cluster = support::account_with(
        plane().await,
        &admin,
        "rbac",
        readme_rbac(&["create", "get", "update", "delete"]),
    )
    .await;
    let job = s3_job("rbac");
    let name = job.metadata.name.clone().unwrap();
    let secret_name = sykli_core::source::s3::url_secret_name(&name);

    // No node: the real job controller makes the pod, the real scheduler finds it no
    // node, and that is the verdict, named, with the Job kept as asked.
    let outcome = run(cluster.clone(), job.clone(), true).await.unwrap();
    let (kind, why) = outcome.failure.clone().unwrap();
    assert_eq!(kind, "unschedulable", "{why}");
    assert!(why.contains("no nodes available"), "{why}");
    assert!(outcome.kept);

    // The URL's Secret is owned by the Job (its uid, as the API has it), holds a URL
    // signed for the task's timeout plus the margin, and appears in no Job or pod.
    let jobs: Api<Job> = Api::namespaced(admin.clone(), "rbac");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(admin.clone(), "rbac");
    let kept = jobs.get(&name).await.unwrap();
    let secret = secrets.get(&secret_name).await.unwrap();
    let owner = &secret.metadata.owner_references.clone().unwrap()[0];
    assert_eq!((owner.kind.as_str(), &owner.name), ("Job", &name));
    assert_eq!(Some(&owner.uid), kept.metadata.uid.as_ref());
    let url = String::from_utf8(secret.data.unwrap()["url"].0.clone()).unwrap();
    let expires = 300 + sykli_core::source::s3::URL_MARGIN_SECONDS;
    assert!(url.contains(&format!("X-Amz-Expires={expires}")), "{url}");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "rbac");
    let in_objects = format!(
        "{}{}",
        serde_json::to_string(&kept).unwrap(),
        serde_json::to_string(&pods.list(&Default::default()).await.unwrap()).unwrap()
    );
    assert!(!in_objects.contains("X-Amz-Signature"));

    // Deleting the Job takes its pod and its Secret with it: the real garbage collector.
    jobs.delete(&name, &kube::api::DeleteParams::background())
        .await
        .unwrap();
    gone(secrets.clone(), &secret_name, "the URL Secret").await;
    gone(jobs.clone(), &name, "the Job").await;

    // Not kept: the run deletes the Job, and the collector the rest.
    let outcome = run(cluster, job.clone(), false).await.unwrap();
    assert_eq!(outcome.failure.unwrap().0, "unschedulable");
    assert!(!outcome.kept);
    gone(
        secrets.clone(),
        &secret_name,
        "the URL Secret of a deleted Job",
    )
    .await;

    // Without one verb of the table (update on secrets, for the owner reference) the run
    // fails naming it, and leaves neither the Job nor the Secret behind.
    let cluster = support::account_with(
        plane().await,
        &admin,
        "rbac-no-update",
        readme_rbac(&["create", "get", "delete"]),
    )
    .await;
    let err = run(cluster, s3_job("rbac-no-update"), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot update resource \"secrets\""), "{err}");
    let jobs: Api<Job> = Api::namespaced(admin.clone(), "rbac-no-update");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(admin, "rbac-no-update");
    gone(jobs, &name, "the Job of a failed owner update").await;
    assert!(secrets.get_opt(&secret_name).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_refused_by_pod_security_is_the_verdict_not_the_deadline() {
    let admin = admin().await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "strict", "labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}}))
    .unwrap();
    Api::<Namespace>::all(admin.client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    support::default_account(&admin.client, "strict").await;
    // An image's container as most tasks leave it: root allowed, privileges not dropped.
    let job = jobs(
        "pod security",
        json!({"name": "build", "command": "make", "container": "gcc:14", "timeout": 60,
               "mounts": [{"resource": "src:.", "path": "/src", "type": "directory"}]}),
        json!({"namespace": "strict",
               "source": {"url": "https://git.example.com/org/repo.git", "sha": SHA}}),
    )
    .remove(0)
    .1;
    let name = job.metadata.name.clone().unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let outcome = run_job(Arc::new(admin), job, RunOptions::default(), tx, cancel_rx)
        .await
        .unwrap();
    let (kind, why) = outcome.failure.unwrap();
    assert_eq!(kind, "pod_rejected", "{why}");
    assert!(
        why.starts_with(&format!(
            "the cluster refused the pod of Job strict/{name}: "
        )) && why.contains("violates PodSecurity \"restricted:latest\"")
            && why.contains("container \"task\"")
            && why.contains("namespace strict enforces that Pod Security profile")
            && !why.contains('\n'),
        "{why}"
    );
}
