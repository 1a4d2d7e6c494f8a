//! The pipeline JSON the sykli SDKs emit, as typed data, and the checks a Kubernetes run
//! needs before anything is built. Fields the Kubernetes target does not use are ignored,
//! so newer SDKs keep working; the `k8s` options are strict, so a typo is an error.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct Pipeline {
    #[serde(default)]
    pub version: Option<String>,
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub resources: BTreeMap<String, Resource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Resource {
    Directory {
        #[serde(default = "dot")]
        path: String,
        #[serde(default)]
        globs: Vec<String>,
    },
    Cache {
        name: String,
    },
}

fn dot() -> String {
    ".".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub name: String,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// Seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Declared outputs: paths relative to the repository root (a list, or a map of names to
    /// paths).
    #[serde(default)]
    pub outputs: Option<serde_json::Value>,
    /// Artifacts of other tasks this task reads (resolved by the sykli engine through the
    /// target's `copy_artifact`); here only whether there are any matters.
    #[serde(default)]
    pub task_inputs: Option<serde_json::Value>,
    /// Artifacts placed into the workspace before the task starts, each from the directory
    /// of the Job that produced it on the artifact claim (sykli's executor resolves
    /// `task_inputs` into these through the target).
    #[serde(default)]
    pub artifact_inputs: Vec<ArtifactInput>,
    #[serde(default)]
    pub k8s: Option<K8sOptions>,
}

/// An artifact a task reads: `path` of Job `job`'s directory on the artifact claim, placed
/// at `to` in the workspace (both paths of the repository).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactInput {
    pub job: String,
    pub path: String,
    pub to: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Directory,
    Cache,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Mount {
    pub resource: String,
    pub path: String,
    #[serde(rename = "type", default = "directory")]
    pub kind: MountKind,
}

fn directory() -> MountKind {
    MountKind::Directory
}

#[derive(Debug, Clone, Deserialize)]
pub struct Service {
    pub image: String,
    pub name: String,
}

/// A resource quantity as written (`"4"`, `"500m"`, `"32Gi"`); SDKs also emit plain numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(pub String);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(serde_json::Number),
        }
        Ok(Quantity(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::N(n) => n.to_string(),
        }))
    }
}

/// A task's Kubernetes options (`Sykli.Target.K8sOptions`), strict about unknown keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sOptions {
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    pub affinity: Option<Affinity>,
    pub priority_class_name: Option<String>,
    pub resources: Option<ResourceOptions>,
    pub gpu: Option<u32>,
    pub service_account: Option<String>,
    pub security_context: Option<SecurityContext>,
    pub host_network: Option<bool>,
    pub dns_policy: Option<String>,
    #[serde(default)]
    pub volumes: Vec<VolumeOption>,
    /// The flat form some SDKs emit: `"k8s": {"memory": "32Gi", "cpu": "4", "gpu": 2}`.
    pub memory: Option<Quantity>,
    pub cpu: Option<Quantity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    pub key: Option<String>,
    pub operator: Option<String>,
    pub value: Option<String>,
    pub effect: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Affinity {
    pub node_affinity: Option<NodeAffinity>,
    pub pod_affinity: Option<PodAffinity>,
    pub pod_anti_affinity: Option<PodAffinity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAffinity {
    #[serde(default)]
    pub required_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub preferred_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodAffinity {
    #[serde(default)]
    pub required_labels: BTreeMap<String, String>,
    pub topology_key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceOptions {
    pub request_cpu: Option<Quantity>,
    pub request_memory: Option<Quantity>,
    pub limit_cpu: Option<Quantity>,
    pub limit_memory: Option<Quantity>,
    /// Shorthand: request and limit.
    pub cpu: Option<Quantity>,
    /// Shorthand: request and limit.
    pub memory: Option<Quantity>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub privileged: Option<bool>,
    pub read_only_root_filesystem: Option<bool>,
    #[serde(default)]
    pub add_capabilities: Vec<String>,
    #[serde(default)]
    pub drop_capabilities: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeOption {
    pub name: String,
    pub mount_path: String,
    pub config_map: Option<NamedRef>,
    pub secret: Option<NamedRef>,
    pub empty_dir: Option<EmptyDirOption>,
    pub host_path: Option<HostPathOption>,
    pub pvc: Option<PvcRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedRef {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyDirOption {
    pub medium: Option<String>,
    pub size_limit: Option<Quantity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPathOption {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvcRef {
    pub claim_name: String,
}

/// Parses JSON, naming the exact place of a type error (`tasks[2].k8s.memroy`).
pub fn from_json<T: for<'de> Deserialize<'de>>(text: &[u8], what: &str) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at {path}")
        };
        Error::InvalidPipeline {
            problems: vec![format!("{what}{at}: {}", e.inner())],
        }
    })
}

impl Pipeline {
    pub fn from_json(text: &[u8]) -> Result<Pipeline> {
        let pipeline: Pipeline = from_json(text, "pipeline")?;
        pipeline.validate()?;
        Ok(pipeline)
    }

    /// Everything wrong with the pipeline for a Kubernetes run, all at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let mut names = BTreeSet::new();
        for (id, resource) in &self.resources {
            if let Resource::Directory { path, .. } = resource {
                if let Err(why) = normalize_resource_path(path) {
                    problems.push(format!("resource {id:?}: path {path:?} {why}"));
                }
            }
        }
        for task in &self.tasks {
            if !names.insert(task.name.as_str()) {
                problems.push(format!("task {:?} is defined twice", task.name));
            }
            let name = &task.name;
            problems.extend(
                task.problems(&self.resources)
                    .into_iter()
                    .map(|p| format!("task {name:?}: {p}")),
            );
        }
        for task in &self.tasks {
            for dep in &task.depends_on {
                if !names.contains(dep.as_str()) {
                    problems.push(format!(
                        "task {:?} depends on {dep:?}, which is not a task of this pipeline",
                        task.name
                    ));
                }
            }
        }
        if let Some(cycle) = self.cycle() {
            problems.push(format!(
                "tasks depend on each other in a cycle: {}",
                cycle.join(" → ")
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidPipeline { problems })
        }
    }

    /// A dependency cycle, as the task names around it (`a → b → a`), if there is one.
    pub fn cycle(&self) -> Option<Vec<String>> {
        let deps: BTreeMap<&str, Vec<&str>> = self
            .tasks
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.depends_on.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        // Depth-first search; `path` is the current chain, `done` the tasks known acyclic.
        fn visit<'a>(
            task: &'a str,
            deps: &BTreeMap<&'a str, Vec<&'a str>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<Vec<String>> {
            if let Some(start) = path.iter().position(|t| *t == task) {
                let mut cycle: Vec<String> = path[start..].iter().map(|t| t.to_string()).collect();
                cycle.push(task.to_string());
                return Some(cycle);
            }
            if done.contains(task) {
                return None;
            }
            path.push(task);
            for dep in deps.get(task).into_iter().flatten() {
                if let Some(c) = visit(dep, deps, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            done.insert(task);
            None
        }
        let mut done = BTreeSet::new();
        deps.keys()
            .find_map(|t| visit(t, &deps, &mut Vec::new(), &mut done))
    }
}

impl Task {
    /// The declared outputs' paths (strings of a list, or values of a map).
    pub fn output_paths(&self) -> Vec<String> {
        let values: Vec<&serde_json::Value> = match &self.outputs {
            Some(serde_json::Value::Array(a)) => a.iter().collect(),
            Some(serde_json::Value::Object(m)) => m.values().collect(),
            _ => Vec::new(),
        };
        values
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// Whether the task declares `outputs` or `task_inputs` (its Job mounts the artifact
    /// claim).
    pub fn uses_artifacts(&self) -> bool {
        let some = |v: &Option<serde_json::Value>| match v {
            Some(serde_json::Value::Array(a)) => !a.is_empty(),
            Some(serde_json::Value::Object(m)) => !m.is_empty(),
            _ => false,
        };
        some(&self.outputs) || some(&self.task_inputs) || !self.artifact_inputs.is_empty()
    }

    /// What is wrong with this task, each problem naming the field (callers name the task).
    pub fn problems(&self, resources: &BTreeMap<String, Resource>) -> Vec<String> {
        let mut problems = Vec::new();
        for input in &self.artifact_inputs {
            if !crate::manifest::names::is_dns_label(&input.job) {
                problems.push(format!(
                    "artifact input from Job {:?}: not a Job name",
                    input.job
                ));
            }
            for (what, path) in [("path", &input.path), ("destination", &input.to)] {
                match normalize_resource_path(path) {
                    Ok(p) if p.is_empty() => problems.push(format!(
                        "artifact input {what} {path:?} is the whole repository"
                    )),
                    Ok(_) => {}
                    Err(why) => problems.push(format!("artifact input {what} {path:?} {why}")),
                }
            }
        }
        for out in self.output_paths() {
            if let Err(why) = normalize_resource_path(&out) {
                problems.push(format!("output {out:?} {why}"));
            }
        }
        if self.name.trim().is_empty() {
            problems.push("the name is empty".to_string());
        }
        match &self.command {
            None => {
                problems.push("no command (every task run on Kubernetes needs one)".to_string())
            }
            Some(c) if c.trim().is_empty() => problems.push("the command is empty".to_string()),
            Some(_) => {}
        }
        let mut paths = BTreeSet::new();
        for m in &self.mounts {
            if !m.path.starts_with('/') {
                problems.push(format!(
                    "mount path {:?} must be absolute (like \"/app\")",
                    m.path
                ));
            } else if m.path == "/" {
                problems.push("cannot mount over the container's root \"/\"".to_string());
            } else if m.path.split('/').any(|c| c == "..") {
                problems.push(format!("mount path {:?} contains \"..\"", m.path));
            }
            if !paths.insert(m.path.trim_end_matches('/')) {
                problems.push(format!("two mounts at {:?}", m.path));
            }
            match (resources.get(&m.resource), m.kind) {
                (None, _) => problems.push(format!(
                    "mount at {:?} uses resource {:?}, which the pipeline does not define",
                    m.path, m.resource
                )),
                (Some(Resource::Directory { .. }), MountKind::Cache)
                | (Some(Resource::Cache { .. }), MountKind::Directory) => problems.push(format!(
                    "mount at {:?} has type {:?} but resource {:?} is not one",
                    m.path,
                    format!("{:?}", m.kind).to_lowercase(),
                    m.resource
                )),
                _ => {}
            }
        }
        if let Some(workdir) = &self.workdir {
            if workdir.split('/').any(|c| c == "..") {
                problems.push(format!("workdir {workdir:?} contains \"..\""));
            }
        }
        for s in &self.services {
            if s.image.trim().is_empty() {
                problems.push(format!("service {:?} has no image", s.name));
            }
        }
        problems
    }
}

/// `./frontend/` → `frontend`, `.` → `` (the repository root). Refuses absolute paths and
/// `..`: a resource is a directory of the repository.
pub fn normalize_resource_path(path: &str) -> std::result::Result<String, &'static str> {
    if path.starts_with('/') {
        return Err("is absolute; resource paths are relative to the repository root");
    }
    if path.chars().any(|c| c.is_control()) {
        return Err("contains control characters");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("contains \"..\"; resources stay inside the repository"),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}
