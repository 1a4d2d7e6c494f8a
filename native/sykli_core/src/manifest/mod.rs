//! A task, its options and a source plan → a typed `batch/v1` Job.
//!
//! Every directory mount is backed by the workspace volume the source strategy fills (never
//! an empty directory); every option is checked the way the API server would check it, and
//! all problems of a task are reported together, each naming the key.

pub mod artifacts;
pub mod names;
pub mod quantity;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar,
    HostAlias, HostPathVolumeSource, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, PersistentVolumeClaimVolumeSource, PodAffinity, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, PreferredSchedulingTerm,
    ResourceRequirements, SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::pipeline::{self, K8sOptions, MountKind, Resource, Task};
use crate::source::{git_clone, SourceOptions, SourcePlan};
use quantity::Kind;

pub const WORKSPACE_VOLUME: &str = "sykli-workspace";
pub const TMP_VOLUME: &str = "sykli-tmp";
/// The PVC strategy's claim, where the uploaded trees are.
pub const STORE_VOLUME: &str = "sykli-store";
/// Where a git bundle lands before it is checked out (`source_sync: :git`).
pub const BUNDLE_VOLUME: &str = "sykli-bundle";
/// Where the outputs sidecar tells the task it may start.
pub const READY_VOLUME: &str = "sykli-ready";
/// The S3 strategy's download (the archive, until it is extracted).
pub const DOWNLOAD_VOLUME: &str = "sykli-download";
/// The artifact claim, in the Jobs of tasks that declare `outputs` or `task_inputs`.
pub const ARTIFACTS_VOLUME: &str = "sykli-artifacts";
/// Where the artifact outputs sidecar tells the task it may start.
pub const ARTIFACTS_READY_VOLUME: &str = "sykli-artifacts-ready";
/// Where Jobs see their parts of the artifact claim: a task's artifact is
/// `/artifacts/<task>/<name>` (its own directory, a `subPath`; see [`artifacts`]).
pub const ARTIFACTS_MOUNT: &str = "/artifacts";
pub const TASK_CONTAINER: &str = "task";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const TASK_LABEL: &str = "sykli.io/task";
pub const RUN_LABEL: &str = "sykli.io/run";
/// On the Job only: its own name (a DNS label, so a valid label value). `sykli.io/task`
/// holds a lossy form of the task's name that look-alike names share; this one selects
/// exactly the Jobs a run's cleanup deletes in one request (`cluster::cleanup`).
pub const JOB_LABEL: &str = "sykli.io/job";
/// What the Job's clone checks out: `full`, or `sparse: DIR, DIR` (git clone only).
pub const FETCH_ANNOTATION: &str = "sykli.io/fetch";

/// What the target knows beyond the task: namespace, run, source, defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildOptions {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// A namespace given on the command line: it wins over a task's own `k8s.namespace`.
    #[serde(default)]
    pub namespace_override: Option<String>,
    #[serde(default)]
    pub run_id: Option<String>,
    /// The image for tasks that name none.
    #[serde(default)]
    pub default_image: Option<String>,
    #[serde(default)]
    pub source: SourceOptions,
    #[serde(default = "default_ttl")]
    pub ttl_seconds_after_finished: i32,
    /// The artifact claim, in the Jobs of tasks that declare `outputs` or `task_inputs`
    /// (none: not mounted), each container mounting only its part (see [`artifacts`]).
    #[serde(default)]
    pub artifact_pvc: Option<String>,
    /// Collect each task's declared `outputs` from its workspace into its Job's directory
    /// on the artifact claim when it ends (what sykli's executor needs for `task_inputs`).
    #[serde(default)]
    pub collect_outputs: bool,
    /// The image of the `sykli-sync` helpers that move artifacts.
    #[serde(default)]
    pub sync_image: Option<String>,
    /// The `sizeLimit` of the workspace emptyDir, and of the others that hold the source
    /// or what a build keeps (the S3 download, the git bundle, cache mounts): a Kubernetes
    /// quantity, default [`DEFAULT_WORKSPACE_SIZE_LIMIT`].
    #[serde(default)]
    pub workspace_size_limit: Option<pipeline::Quantity>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            namespace: default_namespace(),
            namespace_override: None,
            run_id: None,
            default_image: None,
            source: SourceOptions::default(),
            ttl_seconds_after_finished: default_ttl(),
            artifact_pvc: None,
            collect_outputs: false,
            sync_image: None,
            workspace_size_limit: None,
        }
    }
}

fn default_namespace() -> String {
    "sykli".into()
}
fn default_ttl() -> i32 {
    300
}

/// Every emptyDir sykli adds has a `sizeLimit` (past it the kubelet evicts the pod), so
/// no task fills its node's disk through them. The workspace (and what holds a copy of the
/// source, or a cache mount) takes this unless `workspace_size_limit` says otherwise.
pub const DEFAULT_WORKSPACE_SIZE_LIMIT: &str = "10Gi";
/// The clone's `/tmp`: its captured git output, its private copy of the credentials, HOME.
pub const TMP_SIZE_LIMIT: &str = "1Gi";
/// The markers the outputs sidecars leave for the task.
pub const READY_SIZE_LIMIT: &str = "1Mi";

/// `workspace_size_limit`, checked as the API server checks a quantity (and more than
/// nothing), or its default.
pub fn workspace_size_limit(opts: &BuildOptions) -> Result<String> {
    let Some(q) = &opts.workspace_size_limit else {
        return Ok(DEFAULT_WORKSPACE_SIZE_LIMIT.into());
    };
    let q = q.0.trim();
    let invalid = |message: String| Error::InvalidOption {
        key: "workspace_size_limit".into(),
        message: format!("{message} (a size such as \"20Gi\", in .sykli/config.exs)"),
    };
    match quantity::check(Kind::Memory, q) {
        Ok(bytes) if bytes >= 1.0 => Ok(q.to_string()),
        Ok(_) => Err(invalid(format!("{q:?} leaves the workspace no room"))),
        Err(why) => Err(invalid(why)),
    }
}

/// Builds the Job for `task`. `plan` is the source, already validated.
pub fn build_job(
    task: &Task,
    resources: &BTreeMap<String, Resource>,
    job_name: &str,
    plan: &SourcePlan,
    opts: &BuildOptions,
) -> Result<Job> {
    let workspace_limit = workspace_size_limit(opts)?;
    let mut p = Problems::default();
    p.extend(task.problems(resources));
    if !names::is_dns_label(job_name) {
        p.push(format!(
            "job name {job_name:?} is not a DNS-1123 label of at most 63 characters (use names::job_name)"
        ));
    }
    let k8s = task.k8s.clone().unwrap_or_default();
    let namespace = opts
        .namespace_override
        .clone()
        .or_else(|| k8s.namespace.clone())
        .unwrap_or_else(|| opts.namespace.clone());
    if !names::is_dns_label(&namespace) {
        p.push(format!(
            "k8s.namespace {namespace:?} is not a valid namespace name"
        ));
    }

    let checkout = checkout(task, resources, plan, opts, &mut p);
    let fetch = checkout
        .iter()
        .map(|c| (FETCH_ANNOTATION.to_string(), c.describe()));
    let (labels, annotations) = metadata(task, plan, fetch, opts, &k8s, &mut p);
    let image = task
        .container
        .clone()
        .or_else(|| opts.default_image.clone())
        .unwrap_or_default();
    if image.is_empty() {
        p.push("no container image: give the task a container, or set a default image".into());
    } else if let Err(why) = git_clone::check_image(&image) {
        p.push(format!("container {image:?} {why}"));
    }

    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut source_mounted = false;
    for m in &task.mounts {
        match (m.kind, resources.get(&m.resource)) {
            (MountKind::Directory, Some(Resource::Directory { path, .. })) => {
                source_mounted = true;
                let sub = pipeline::normalize_resource_path(path).unwrap_or_default();
                let (sub_path, read_only) = match plan {
                    SourcePlan::GitClone(_) => ((!sub.is_empty()).then_some(sub), None),
                    SourcePlan::Pvc(pvc) => (pvc.sub_path(&sub), pvc.read_only().then_some(true)),
                    SourcePlan::S3(_) => ((!sub.is_empty()).then_some(sub), None),
                };
                mounts.push(VolumeMount {
                    name: WORKSPACE_VOLUME.into(),
                    mount_path: m.path.clone(),
                    sub_path,
                    read_only,
                    ..Default::default()
                });
            }
            (MountKind::Cache, Some(Resource::Cache { name })) => {
                let vol = format!("sykli-cache-{}", names::slug(name, 50));
                if !volumes.iter().any(|v: &Volume| v.name == vol) {
                    volumes.push(empty_dir(&vol, &workspace_limit));
                }
                mounts.push(VolumeMount {
                    name: vol,
                    mount_path: m.path.clone(),
                    ..Default::default()
                });
            }
            _ => {} // reported by task.problems
        }
    }
    let mut pod_security = None;
    let mut node_pin = None;
    if source_mounted {
        match plan {
            SourcePlan::GitClone(g) => {
                volumes.insert(0, empty_dir(WORKSPACE_VOLUME, &workspace_limit));
                volumes.insert(1, empty_dir(TMP_VOLUME, TMP_SIZE_LIMIT));
                for (i, v) in g.access.volumes().into_iter().enumerate() {
                    volumes.insert(2 + i, v);
                }
                if g.access.needs_fs_group() {
                    // 0400 Secret files become 0440 with the pod's group: readable by the
                    // clone (which runs as that group), by nothing else it runs.
                    pod_security = Some(PodSecurityContext {
                        fs_group: Some(git_clone::NONROOT),
                        ..Default::default()
                    });
                }
            }
            SourcePlan::Pvc(pvc) => {
                if pvc.read_only() {
                    volumes.insert(0, pvc.volume(WORKSPACE_VOLUME));
                } else {
                    volumes.insert(0, empty_dir(WORKSPACE_VOLUME, &workspace_limit));
                    volumes.insert(1, pvc.volume(STORE_VOLUME));
                    if pvc.bundle.is_some() {
                        volumes.insert(2, empty_dir(BUNDLE_VOLUME, &workspace_limit));
                    }
                }
                // The copy runs as a non-root user: the claim must be writable by its group.
                // OnRootMismatch: a large tree is not re-chowned at every pod start.
                pod_security = Some(PodSecurityContext {
                    fs_group: Some(git_clone::NONROOT),
                    fs_group_change_policy: Some("OnRootMismatch".into()),
                    ..Default::default()
                });
                node_pin = pvc.node.clone();
            }
            SourcePlan::S3(_) => {
                volumes.insert(0, empty_dir(WORKSPACE_VOLUME, &workspace_limit));
                volumes.insert(1, empty_dir(DOWNLOAD_VOLUME, &workspace_limit));
            }
        }
    }
    if let Some(claim) = opts.artifact_pvc.as_ref().filter(|_| task.uses_artifacts()) {
        if !names::is_dns_subdomain(claim) {
            p.push(format!(
                "artifact_pvc {claim:?} is not a valid PersistentVolumeClaim name"
            ));
        }
        // Jobs write the artifact claim: were it the source claim, they could reach the
        // published trees every later Job checks out.
        if let SourcePlan::Pvc(pvc) = plan {
            if pvc.claim == *claim {
                p.push(format!(
                    "artifact_pvc and source_pvc are both {claim:?}: Jobs write the artifact claim, so it must be another claim than the source's (give them two claims in .sykli/config.exs, e.g. artifact_pvc: \"sykli-artifacts\" and source_pvc: \"sykli-source\")"
                ));
            }
        }
        // The claim's parts are mounted at and below /artifacts: nothing else goes there.
        let reserved = |path: &str| {
            let path = path.trim_end_matches('/');
            path == ARTIFACTS_MOUNT || path.starts_with(&format!("{ARTIFACTS_MOUNT}/"))
        };
        if mounts.iter().any(|m| reserved(&m.mount_path)) {
            p.push(format!(
                "a mount at {ARTIFACTS_MOUNT}: that is where the artifact claim goes for a task with outputs or task_inputs"
            ));
        }
        for v in k8s.volumes.iter().filter(|v| reserved(&v.mount_path)) {
            p.push(format!(
                "k8s.volumes[{}]: a mount at {:?}: {ARTIFACTS_MOUNT} is where the artifact claim goes for a task with outputs or task_inputs (mount it elsewhere)",
                v.name, v.mount_path
            ));
        }
        volumes.push(Volume {
            name: ARTIFACTS_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: None,
            }),
            ..Default::default()
        });
        // Collected outputs and placed inputs move through the workspace: the task itself
        // mounts nothing of the claim. Otherwise (`artifact_path/4`'s paths) it mounts its
        // own directory, `/artifacts/<task>`, and no other task's, in its run's directory.
        if !opts.collect_outputs {
            match (
                artifacts::task_dir_problem(&task.name),
                opts.run_id.as_deref().filter(|r| !r.is_empty()),
            ) {
                (Some(problem), _) => p.push(problem),
                (None, None) => p.push(format!(
                    "no run_id in the build options: a task's own artifacts are kept in its run's directory {}/<run> on the artifact claim (give the run's id)",
                    artifacts::TASKS_DIR
                )),
                (None, Some(run)) => {
                    mounts.push(artifacts::task_mount(ARTIFACTS_VOLUME, run, &task.name))
                }
            }
        }
        // The claim is shared with the receiver pod that copies artifacts (a non-root user):
        // both reach it through the group.
        pod_security.get_or_insert_with(|| PodSecurityContext {
            fs_group: Some(git_clone::NONROOT),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            ..Default::default()
        });
    }
    user_volumes(&k8s, &mut volumes, &mut mounts, &mut p);

    let mut env: Vec<EnvVar> = Vec::new();
    for (name, value) in &task.env {
        if !names::is_env_name(name) {
            p.push(format!("env {name:?} is not a valid variable name"));
        }
        env.push(EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            value_from: None,
        });
    }
    if source_mounted && !task.env.keys().any(|k| k.starts_with("GIT_CONFIG_")) {
        // The workspace was written by another uid: let git in the task trust it.
        for (k, v) in [
            ("GIT_CONFIG_COUNT", "1"),
            ("GIT_CONFIG_KEY_0", "safe.directory"),
            ("GIT_CONFIG_VALUE_0", "*"),
        ] {
            env.push(EnvVar {
                name: k.into(),
                value: Some(v.into()),
                value_from: None,
            });
        }
    }

    let working_dir = working_dir(task, &mounts);
    let task_container = Container {
        name: TASK_CONTAINER.into(),
        image: Some(image),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            task.command.clone().unwrap_or_default(),
        ]),
        working_dir,
        env: (!env.is_empty()).then_some(env),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        resources: resources_for(&k8s, &mut p),
        security_context: k8s.security_context.as_ref().map(security_context),
        ..Default::default()
    };

    let mut init_containers = Vec::new();
    let mut grace = None;
    if source_mounted {
        match plan {
            SourcePlan::GitClone(g) => init_containers.push(g.init_container(
                WORKSPACE_VOLUME,
                TMP_VOLUME,
                checkout.as_ref().unwrap_or(&git_clone::Checkout::Full),
            )),
            SourcePlan::Pvc(pvc) => {
                init_containers.extend(pvc.init_containers(
                    WORKSPACE_VOLUME,
                    STORE_VOLUME,
                    BUNDLE_VOLUME,
                ));
                let outputs = task.output_paths();
                let gated = pvc.outputs_sidecar(
                    WORKSPACE_VOLUME,
                    STORE_VOLUME,
                    READY_VOLUME,
                    job_name,
                    &outputs,
                );
                if !gated.is_empty() {
                    init_containers.extend(gated);
                    volumes.push(empty_dir(READY_VOLUME, READY_SIZE_LIMIT));
                    // Time for the copy after the task ends.
                    grace = Some(300);
                }
            }
            SourcePlan::S3(s3) => init_containers.extend(s3.init_containers(
                WORKSPACE_VOLUME,
                DOWNLOAD_VOLUME,
                job_name,
            )),
        }
    }
    if let Some(_claim) = opts.artifact_pvc.as_ref().filter(|_| task.uses_artifacts()) {
        let image = opts
            .sync_image
            .clone()
            .unwrap_or_else(|| crate::source::pvc::DEFAULT_SYNC_IMAGE.to_string());
        if let Err(why) = git_clone::check_image(&image) {
            p.push(format!("sync_image {image:?} {why}"));
        }
        let outputs = task.output_paths();
        let collect = opts.collect_outputs && !outputs.is_empty();
        // Each run's artifacts are a directory of their own on the claim (a label value,
        // checked with the labels, is one path component).
        let run = opts.run_id.as_deref().unwrap_or_default();
        if (collect || !task.artifact_inputs.is_empty()) && run.is_empty() {
            p.push(format!(
                "no run_id in the build options: a task's collected outputs and inputs are kept in its run's directory {}/<run> on the artifact claim (give the run's id)",
                artifacts::RUNS_DIR
            ));
        }
        if (collect || !task.artifact_inputs.is_empty()) && !source_mounted {
            p.push(
                "artifacts move through the workspace: a task with outputs or inputs mounts its source (src:…)"
                    .into(),
            );
        } else {
            if !task.artifact_inputs.is_empty() {
                init_containers.push(artifacts::inputs_placer(
                    &image,
                    run,
                    &task.artifact_inputs,
                    WORKSPACE_VOLUME,
                    ARTIFACTS_VOLUME,
                ));
            }
            if collect {
                init_containers.extend(artifacts::outputs_collector(
                    &image,
                    run,
                    job_name,
                    &outputs,
                    WORKSPACE_VOLUME,
                    ARTIFACTS_VOLUME,
                    ARTIFACTS_READY_VOLUME,
                ));
                volumes.push(empty_dir(ARTIFACTS_READY_VOLUME, READY_SIZE_LIMIT));
                // Time for the copy after the task ends.
                grace = Some(300);
            }
        }
    }
    let mut container_names: BTreeSet<String> = [
        "sykli-artifacts-in",
        "sykli-artifacts-out",
        "sykli-artifacts-ready",
        "sykli-clone",
        "sykli-sync",
        "sykli-bundle",
        "sykli-outputs",
        "sykli-outputs-ready",
        "sykli-fetch",
        "sykli-verify",
        TASK_CONTAINER,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Services are reached by name, as on sykli's local target (a network alias there): the
    // sidecars share the pod's network, so each name is an alias of loopback.
    let mut service_hosts: Vec<String> = Vec::new();
    for s in &task.services {
        let mut name = names::slug(&s.name, 50);
        if name.is_empty() {
            name = "service".into();
        }
        let base = name.clone();
        let mut n = 2;
        while !container_names.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        if let Err(why) = git_clone::check_image(&s.image) {
            p.push(format!("service {:?}: image {:?} {why}", s.name, s.image));
        }
        for host in [s.name.as_str(), name.as_str()] {
            if names::is_dns_subdomain(host) && !service_hosts.iter().any(|h| h == host) {
                service_hosts.push(host.to_string());
            }
        }
        // A native sidecar: started before the task, stopped after it, never blocking the Job.
        init_containers.push(Container {
            name,
            image: Some(s.image.clone()),
            restart_policy: Some("Always".into()),
            ..Default::default()
        });
    }

    let dns_policy = k8s.dns_policy.clone();
    if let Some(d) = &dns_policy {
        if !["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"].contains(&d.as_str()) {
            p.push(format!(
                "k8s.dns_policy {d:?} is not one of ClusterFirst, ClusterFirstWithHostNet, Default, None"
            ));
        }
    }
    for (key, what) in [
        (&k8s.priority_class_name, "priority_class_name"),
        (&k8s.service_account, "service_account"),
    ] {
        if let Some(v) = key {
            if !names::is_dns_subdomain(v) {
                p.push(format!("k8s.{what} {v:?} is not a valid object name"));
            }
        }
    }
    check_labels("k8s.node_selector", &k8s.node_selector, &mut p);
    let timeout = task.timeout.map(|t| t as i64);
    if timeout == Some(0) {
        p.push("timeout must be at least 1 second".into());
    }

    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        containers: vec![task_container],
        volumes: (!volumes.is_empty()).then_some(volumes),
        node_selector: {
            let mut selector = k8s.node_selector.clone();
            // A ReadWriteOnce claim is attached to one node: the Job must run there.
            if let Some(node) = &node_pin {
                selector.insert("kubernetes.io/hostname".into(), node.clone());
            }
            (!selector.is_empty()).then_some(selector)
        },
        tolerations: tolerations(&k8s, &mut p),
        affinity: affinity(&k8s, &mut p),
        priority_class_name: k8s.priority_class_name.clone(),
        service_account_name: k8s.service_account.clone(),
        // A build has no business with the API unless its task asks for an account.
        automount_service_account_token: Some(k8s.service_account.is_some()),
        host_network: k8s.host_network,
        host_aliases: (!service_hosts.is_empty()).then(|| {
            vec![HostAlias {
                ip: "127.0.0.1".into(),
                hostnames: Some(service_hosts),
            }]
        }),
        dns_policy,
        enable_service_links: Some(false),
        security_context: pod_security,
        termination_grace_period_seconds: grace,
        ..Default::default()
    };

    p.into_result(&task.name)?;
    let mut job_labels = labels.clone();
    job_labels.insert(JOB_LABEL.into(), job_name.to_string());
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name.to_string()),
            namespace: Some(namespace),
            labels: Some(job_labels),
            annotations: Some(annotations.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0), // sykli retries tasks itself
            ttl_seconds_after_finished: Some(opts.ttl_seconds_after_finished),
            active_deadline_seconds: timeout,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: (!k8s.annotations.is_empty()).then(|| k8s.annotations.clone()),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    })
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, s: String) {
        self.0.push(s);
    }
    fn extend(&mut self, v: Vec<String>) {
        self.0.extend(v);
    }
    fn into_result(self, task: &str) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidTask {
                task: task.to_string(),
                problems: self.0,
            })
        }
    }
}

fn metadata(
    task: &Task,
    plan: &SourcePlan,
    fetch: impl Iterator<Item = (String, String)>,
    opts: &BuildOptions,
    k8s: &K8sOptions,
    p: &mut Problems,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = BTreeMap::new();
    check_labels("k8s.labels", &k8s.labels, p);
    for key in k8s.labels.keys() {
        if key == MANAGED_BY || key.starts_with("sykli.io/") {
            p.push(format!("k8s.labels: {key:?} is set by sykli"));
        }
    }
    labels.extend(k8s.labels.clone());
    labels.insert(MANAGED_BY.into(), "sykli".into());
    labels.insert(TASK_LABEL.into(), names::label_value(&task.name));
    if let Some(run) = &opts.run_id {
        if !names::is_label_value(run) {
            p.push(format!("run id {run:?} is not a valid label value"));
        }
        labels.insert(RUN_LABEL.into(), run.clone());
    }
    let mut annotations = BTreeMap::new();
    for key in k8s.annotations.keys() {
        if !names::is_qualified_name(key) {
            p.push(format!(
                "k8s.annotations: {key:?} is not a valid annotation key"
            ));
        }
    }
    annotations.extend(k8s.annotations.clone());
    annotations.insert("sykli.io/task-name".into(), task.name.clone());
    annotations.extend(plan.annotations());
    annotations.extend(fetch);
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > 256 * 1024 {
        p.push(format!(
            "annotations total {size} bytes, more than Kubernetes' 256 KiB"
        ));
    }
    (labels, annotations)
}

fn check_labels(what: &str, labels: &BTreeMap<String, String>, p: &mut Problems) {
    for (k, v) in labels {
        if !names::is_qualified_name(k) {
            p.push(format!("{what}: {k:?} is not a valid label key"));
        }
        if !names::is_label_value(v) {
            p.push(format!(
                "{what}: the value {v:?} of {k:?} is not a valid label value (≤ 63 of a-z, 0-9, '-', '_', '.', alphanumeric at both ends)"
            ));
        }
    }
}

/// What the Job's clone checks out, when the task mounts its source and the source is
/// cloned: no more than the task's mounts can show ([`git_clone::job_checkout`]). A mount
/// outside the config's `sparse` directories is a problem: it would be empty.
fn checkout(
    task: &Task,
    resources: &BTreeMap<String, Resource>,
    plan: &SourcePlan,
    opts: &BuildOptions,
    p: &mut Problems,
) -> Option<git_clone::Checkout> {
    let SourcePlan::GitClone(g) = plan else {
        return None;
    };
    let mounts: Vec<(String, &pipeline::Mount)> = task
        .mounts
        .iter()
        .filter_map(|m| match (m.kind, resources.get(&m.resource)) {
            (MountKind::Directory, Some(Resource::Directory { path, .. })) => Some((
                pipeline::normalize_resource_path(path).unwrap_or_default(),
                m,
            )),
            _ => None,
        })
        .collect();
    if mounts.is_empty() {
        return None;
    }
    // The outputs collector reads the workspace too, wherever the outputs are.
    let collects = opts.collect_outputs && opts.artifact_pvc.is_some() && task.uses_artifacts();
    let reads: Vec<String> = if collects {
        task.output_paths()
            .iter()
            .filter_map(|o| pipeline::normalize_resource_path(o).ok())
            .collect()
    } else {
        Vec::new()
    };
    let dirs: Vec<String> = mounts.iter().map(|(d, _)| d.clone()).collect();
    match git_clone::job_checkout(&dirs, &reads, &g.access.sparse) {
        Ok(c) => Some(c),
        Err(outside) => {
            let sparse = g.checkout().describe();
            for (dir, m) in mounts.iter().filter(|(d, _)| outside.contains(d)) {
                p.push(format!(
                    "the mount at {:?} ({} = {dir:?}) is outside the directories the config's sparse key checks out ({sparse}): the task would see nothing of it (add {dir:?} to sparse in .sykli/config.exs, or mount a directory inside them)",
                    m.path, m.resource
                ));
            }
            Some(g.checkout())
        }
    }
}

/// One of sykli's own emptyDirs, of at most `size_limit` (see [`DEFAULT_WORKSPACE_SIZE_LIMIT`]).
fn empty_dir(name: &str, size_limit: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(KQuantity(size_limit.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The task's workdir: absolute as given, relative to the first source mount, else that mount.
fn working_dir(task: &Task, mounts: &[VolumeMount]) -> Option<String> {
    let source = mounts
        .iter()
        .find(|m| m.name == WORKSPACE_VOLUME)
        .map(|m| m.mount_path.clone());
    match (&task.workdir, source) {
        (Some(w), _) if w.starts_with('/') => Some(w.clone()),
        (Some(w), Some(base)) => {
            let rel = w.trim_start_matches("./").trim_end_matches('/');
            Some(if rel.is_empty() || rel == "." {
                base
            } else {
                format!("{}/{rel}", base.trim_end_matches('/'))
            })
        }
        (Some(w), None) => Some(format!("/{}", w.trim_start_matches("./"))),
        (None, source) => source,
    }
}

fn user_volumes(
    k8s: &K8sOptions,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
    p: &mut Problems,
) {
    for v in &k8s.volumes {
        let key = format!("k8s.volumes[{}]", v.name);
        if !names::is_dns_label(&v.name) {
            p.push(format!("{key}: the name is not a DNS-1123 label"));
        } else if v.name.starts_with("sykli-") || volumes.iter().any(|x| x.name == v.name) {
            p.push(format!(
                "{key}: the name is taken (names starting with sykli- are sykli's)"
            ));
        }
        if !v.mount_path.starts_with('/') || v.mount_path.split('/').any(|c| c == "..") {
            p.push(format!(
                "{key}: mount_path {:?} must be absolute without \"..\"",
                v.mount_path
            ));
        }
        if mounts
            .iter()
            .any(|m| m.mount_path.trim_end_matches('/') == v.mount_path.trim_end_matches('/'))
        {
            p.push(format!(
                "{key}: something else is already mounted at {:?}",
                v.mount_path
            ));
        }
        let mut vol = Volume {
            name: v.name.clone(),
            ..Default::default()
        };
        let sources = [
            v.config_map.is_some(),
            v.secret.is_some(),
            v.empty_dir.is_some(),
            v.host_path.is_some(),
            v.pvc.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources != 1 {
            p.push(format!(
                "{key}: give exactly one of config_map, secret, empty_dir, host_path, pvc (found {sources})"
            ));
        }
        if let Some(c) = &v.config_map {
            vol.config_map = Some(ConfigMapVolumeSource {
                name: c.name.clone(),
                ..Default::default()
            });
        }
        if let Some(s) = &v.secret {
            vol.secret = Some(SecretVolumeSource {
                secret_name: Some(s.name.clone()),
                ..Default::default()
            });
        }
        if let Some(e) = &v.empty_dir {
            if let Some(m) = &e.medium {
                if !["", "Memory"].contains(&m.as_str()) {
                    p.push(format!(
                        "{key}: empty_dir.medium {m:?} is not \"\" or \"Memory\""
                    ));
                }
            }
            let size_limit = e.size_limit.as_ref().map(|q| {
                if let Err(why) = quantity::check(Kind::Memory, &q.0) {
                    p.push(format!("{key}: empty_dir.size_limit {why}"));
                }
                KQuantity(q.0.clone())
            });
            vol.empty_dir = Some(EmptyDirVolumeSource {
                medium: e.medium.clone(),
                size_limit,
                ..Default::default()
            });
        }
        if let Some(h) = &v.host_path {
            vol.host_path = Some(HostPathVolumeSource {
                path: h.path.clone(),
                type_: h.kind.clone(),
            });
        }
        if let Some(c) = &v.pvc {
            vol.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: c.claim_name.clone(),
                read_only: None,
            });
        }
        for (name, value) in [
            ("config_map", v.config_map.as_ref().map(|c| &c.name)),
            ("secret", v.secret.as_ref().map(|c| &c.name)),
            ("pvc", v.pvc.as_ref().map(|c| &c.claim_name)),
        ] {
            if let Some(n) = value {
                if !names::is_dns_subdomain(n) {
                    p.push(format!("{key}: {name} {n:?} is not a valid object name"));
                }
            }
        }
        volumes.push(vol);
        mounts.push(VolumeMount {
            name: v.name.clone(),
            mount_path: v.mount_path.clone(),
            ..Default::default()
        });
    }
}

fn resources_for(k8s: &K8sOptions, p: &mut Problems) -> Option<ResourceRequirements> {
    let r = k8s.resources.clone().unwrap_or_default();
    let cpu = r.cpu.clone().or_else(|| k8s.cpu.clone());
    let memory = r.memory.clone().or_else(|| k8s.memory.clone());
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let mut values: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    let entries = [
        (
            "requests",
            "cpu",
            r.request_cpu.clone().or_else(|| cpu.clone()),
            Kind::Cpu,
        ),
        (
            "limits",
            "cpu",
            r.limit_cpu.clone().or_else(|| cpu.clone()),
            Kind::Cpu,
        ),
        (
            "requests",
            "memory",
            r.request_memory.clone().or_else(|| memory.clone()),
            Kind::Memory,
        ),
        (
            "limits",
            "memory",
            r.limit_memory.clone().or_else(|| memory.clone()),
            Kind::Memory,
        ),
    ];
    for (side, res, q, kind) in entries {
        let Some(q) = q else { continue };
        match quantity::check(kind, &q.0) {
            Ok(v) => {
                values.insert((side, res), v);
            }
            Err(why) => p.push(format!("k8s.resources {res} {why}")),
        }
        let map = if side == "requests" {
            &mut requests
        } else {
            &mut limits
        };
        map.insert(res.to_string(), KQuantity(q.0.trim().to_string()));
    }
    for res in ["cpu", "memory"] {
        if let (Some(req), Some(lim)) =
            (values.get(&("requests", res)), values.get(&("limits", res)))
        {
            if req > lim {
                p.push(format!(
                    "k8s.resources: the {res} request is more than its limit"
                ));
            }
        }
    }
    if let Some(gpu) = k8s.gpu {
        if gpu > 0 {
            limits.insert("nvidia.com/gpu".into(), KQuantity(gpu.to_string()));
        }
    }
    (!requests.is_empty() || !limits.is_empty()).then(|| ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    })
}

fn security_context(s: &pipeline::SecurityContext) -> SecurityContext {
    let caps =
        (!s.add_capabilities.is_empty() || !s.drop_capabilities.is_empty()).then(|| Capabilities {
            add: (!s.add_capabilities.is_empty()).then(|| s.add_capabilities.clone()),
            drop: (!s.drop_capabilities.is_empty()).then(|| s.drop_capabilities.clone()),
        });
    SecurityContext {
        run_as_user: s.run_as_user,
        run_as_group: s.run_as_group,
        run_as_non_root: s.run_as_non_root,
        privileged: s.privileged,
        read_only_root_filesystem: s.read_only_root_filesystem,
        capabilities: caps,
        ..Default::default()
    }
}

fn tolerations(k8s: &K8sOptions, p: &mut Problems) -> Option<Vec<Toleration>> {
    let list: Vec<Toleration> = k8s
        .tolerations
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let operator = t.operator.clone().unwrap_or_else(|| "Equal".into());
            if operator != "Equal" && operator != "Exists" {
                p.push(format!("k8s.tolerations[{i}].operator {operator:?} is not Equal or Exists"));
            }
            if operator == "Exists" && t.value.as_deref().is_some_and(|v| !v.is_empty()) {
                p.push(format!("k8s.tolerations[{i}]: operator Exists takes no value"));
            }
            if let Some(e) = &t.effect {
                if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e.as_str()) {
                    p.push(format!(
                        "k8s.tolerations[{i}].effect {e:?} is not NoSchedule, PreferNoSchedule or NoExecute"
                    ));
                }
            }
            Toleration {
                key: t.key.clone(),
                operator: Some(operator),
                value: t.value.clone(),
                effect: t.effect.clone(),
                toleration_seconds: None,
            }
        })
        .collect();
    (!list.is_empty()).then_some(list)
}

fn affinity(k8s: &K8sOptions, p: &mut Problems) -> Option<Affinity> {
    let a = k8s.affinity.as_ref()?;
    let requirement = |k: &String, v: &String| NodeSelectorRequirement {
        key: k.clone(),
        operator: "In".into(),
        values: Some(vec![v.clone()]),
    };
    let node_affinity = a.node_affinity.as_ref().map(|n| {
        check_labels(
            "k8s.affinity.node_affinity.required_labels",
            &n.required_labels,
            p,
        );
        check_labels(
            "k8s.affinity.node_affinity.preferred_labels",
            &n.preferred_labels,
            p,
        );
        NodeAffinity {
            required_during_scheduling_ignored_during_execution: (!n.required_labels.is_empty())
                .then(|| NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(
                            n.required_labels
                                .iter()
                                .map(|(k, v)| requirement(k, v))
                                .collect(),
                        ),
                        match_fields: None,
                    }],
                }),
            preferred_during_scheduling_ignored_during_execution: (!n.preferred_labels.is_empty())
                .then(|| {
                    n.preferred_labels
                        .iter()
                        .map(|(k, v)| PreferredSchedulingTerm {
                            weight: 100,
                            preference: NodeSelectorTerm {
                                match_expressions: Some(vec![requirement(k, v)]),
                                match_fields: None,
                            },
                        })
                        .collect()
                }),
        }
    });
    let mut term = |what: &str, pa: &pipeline::PodAffinity| {
        check_labels(
            &format!("k8s.affinity.{what}.required_labels"),
            &pa.required_labels,
            p,
        );
        vec![PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(pa.required_labels.clone()),
                match_expressions: None,
            }),
            topology_key: pa
                .topology_key
                .clone()
                .unwrap_or_else(|| "kubernetes.io/hostname".into()),
            ..Default::default()
        }]
    };
    let pod_affinity = a.pod_affinity.as_ref().map(|pa| PodAffinity {
        required_during_scheduling_ignored_during_execution: Some(term("pod_affinity", pa)),
        preferred_during_scheduling_ignored_during_execution: None,
    });
    let pod_anti_affinity = a.pod_anti_affinity.as_ref().map(|pa| PodAntiAffinity {
        required_during_scheduling_ignored_during_execution: Some(term("pod_anti_affinity", pa)),
        preferred_during_scheduling_ignored_during_execution: None,
    });
    Some(Affinity {
        node_affinity,
        pod_affinity,
        pod_anti_affinity,
    })
}

/// Every Job of a pipeline, in task order, with names unique to `run_id`.
pub fn build_pipeline(pipeline: &pipeline::Pipeline, opts: &BuildOptions) -> Result<Vec<Job>> {
    let plan = SourcePlan::from_options(&opts.source)?;
    // Once for the pipeline, not once per task.
    workspace_size_limit(opts)?;
    let run = opts.run_id.clone().unwrap_or_default();
    // Two tasks under one Job name would have one run as the other: refused before any call.
    let mut problems =
        names::job_name_collisions(pipeline.tasks.iter().map(|t| t.name.as_str()), &run);
    let mut jobs = Vec::new();
    for task in &pipeline.tasks {
        match build_job(
            task,
            &pipeline.resources,
            &names::job_name(&task.name, &run),
            &plan,
            opts,
        ) {
            Ok(job) => jobs.push(job),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(jobs)
    } else {
        Err(Error::InvalidPipeline { problems })
    }
}
