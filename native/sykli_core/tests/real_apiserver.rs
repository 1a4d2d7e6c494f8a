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

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Capabilities, Namespace, Pod, SeccompProfile, SecurityContext, ServiceAccount,
};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{json, Value};
use sykli_core::cluster::{sync, Cluster, ConnectOptions};
use sykli_core::manifest::{build_pipeline, BuildOptions};
use sykli_core::pipeline::Pipeline;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TREE: &str = "2b86b949c5b09595d23bbcc9cf51e1de0185a5cce164b27a1376affda422ec5c";

/// `sykli-kube up`, stopped (its stdin closed) when dropped.
struct RealControlPlane {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

fn sykli_kube() -> PathBuf {
    let bin = std::env::var_os("SYKLI_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/sykli/bin/sykli-kube")
        });
    assert!(
        bin.is_file(),
        "{} is missing: build it with tools/kube/build.sh (scripts/setup does), or point SYKLI_KUBE_BIN at it",
        bin.display()
    );
    bin
}

impl RealControlPlane {
    fn start() -> RealControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sykli-kube.log");
        let mut child = Command::new(sykli_kube())
            .args(["up", "--dir"])
            .arg(dir.path().join("cluster"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "sykli-kube up did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        RealControlPlane {
            child,
            kubeconfig: PathBuf::from(ready["kubeconfig"].as_str().unwrap()),
            _dir: dir,
        }
    }
}

impl Drop for RealControlPlane {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
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
    let plane = tokio::task::spawn_blocking(RealControlPlane::start)
        .await
        .unwrap();
    let cluster = Cluster::connect(&ConnectOptions {
        kubeconfig: Some(plane.kubeconfig.clone()),
        context: None,
        namespace: Some("ci".into()),
    })
    .await
    .unwrap();
    let client = cluster.client.clone();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "ci", "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"}}}))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    // Pods are admitted once the service-account controller made the namespace's default.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "ci");
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        kube::runtime::wait::await_condition(accounts, "default", |sa: Option<&ServiceAccount>| {
            sa.is_some()
        }),
    )
    .await
    .expect("the default service account of ci within 120 s")
    .unwrap();

    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), "ci");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ci");
    let all = every_kind_of_job();
    assert!(all.len() >= 11);
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
