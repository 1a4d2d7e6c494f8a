//! The subset of the Kubernetes Pod API the runner understands, parsed from JSON.
//!
//! Unknown fields are ignored (images, resources, probes, ...); fields the runner acts on are
//! typed, so a manifest with e.g. a string `runAsUser` is rejected instead of misread.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path};

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::RunnerError;

/// Deserializes `null` (which generated manifests may contain) as the type's default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PodSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub init_containers: Vec<Container>,
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    #[serde(default, deserialize_with = "nullable")]
    pub volumes: Vec<Volume>,
    pub security_context: Option<PodSecurityContext>,
    pub active_deadline_seconds: Option<i64>,
    pub termination_grace_period_seconds: Option<i64>,
    pub hostname: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub host_aliases: Vec<HostAlias>,
    pub host_network: Option<bool>,
    pub service_account_name: Option<String>,
    pub node_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HostAlias {
    #[serde(default)]
    pub ip: String,
    #[serde(default, deserialize_with = "nullable")]
    pub hostnames: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PodSecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub fs_group: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    pub supplemental_groups: Vec<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub read_only_root_filesystem: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Container {
    #[serde(default)]
    pub name: String,
    /// Only matched against [`super::RunOptions::image_files`]: images are not pulled.
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub env: Vec<EnvVar>,
    #[serde(default, deserialize_with = "nullable")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, deserialize_with = "nullable")]
    pub volume_mounts: Vec<VolumeMount>,
    pub security_context: Option<SecurityContext>,
    pub restart_policy: Option<String>,
    pub termination_message_path: Option<String>,
    pub termination_message_policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnvVar {
    #[serde(default)]
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnvVarSource {
    pub secret_key_ref: Option<KeyRef>,
    pub config_map_key_ref: Option<KeyRef>,
    pub field_ref: Option<FieldRef>,
    pub resource_field_ref: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyRef {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub key: String,
    pub optional: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FieldRef {
    #[serde(default)]
    pub field_path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnvFromSource {
    pub prefix: Option<String>,
    pub secret_ref: Option<ObjectRef>,
    pub config_map_ref: Option<ObjectRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ObjectRef {
    #[serde(default)]
    pub name: String,
    pub optional: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VolumeMount {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mount_path: String,
    pub read_only: Option<bool>,
    pub sub_path: Option<String>,
    pub sub_path_expr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Volume {
    #[serde(default)]
    pub name: String,
    pub empty_dir: Option<Value>,
    pub secret: Option<SecretVolume>,
    pub config_map: Option<ConfigMapVolume>,
    pub persistent_volume_claim: Option<PvcVolume>,
    pub host_path: Option<HostPathVolume>,
    pub projected: Option<ProjectedVolume>,
    #[serde(rename = "downwardAPI")]
    pub downward_api: Option<DownwardApiVolume>,
    /// Every other key: used to name an unsupported volume type.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl Volume {
    /// How many volume sources the volume sets (the API server requires exactly one).
    pub fn source_count(&self) -> usize {
        [
            self.empty_dir.is_some(),
            self.secret.is_some(),
            self.config_map.is_some(),
            self.persistent_volume_claim.is_some(),
            self.host_path.is_some(),
            self.projected.is_some(),
            self.downward_api.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProjectedVolume {
    #[serde(default, deserialize_with = "nullable")]
    pub sources: Vec<VolumeProjection>,
    pub default_mode: Option<i64>,
}

/// One source of a projected volume (exactly one of its fields is set).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VolumeProjection {
    pub secret: Option<KeyProjection>,
    pub config_map: Option<KeyProjection>,
    #[serde(rename = "downwardAPI")]
    pub downward_api: Option<DownwardApiProjection>,
    pub service_account_token: Option<ServiceAccountTokenProjection>,
    /// Every other key: clusterTrustBundle, podCertificate (not supported), or a typo.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A secret or config map in a projected volume.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyProjection {
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub items: Vec<KeyToPath>,
    pub optional: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DownwardApiProjection {
    #[serde(default, deserialize_with = "nullable")]
    pub items: Vec<DownwardApiFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceAccountTokenProjection {
    #[serde(default)]
    pub path: String,
    /// Checked by the API server only; the token given in the fixtures is written as it is
    /// (the runner mints nothing, so `audience` is not read).
    pub expiration_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DownwardApiVolume {
    #[serde(default, deserialize_with = "nullable")]
    pub items: Vec<DownwardApiFile>,
    pub default_mode: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DownwardApiFile {
    #[serde(default)]
    pub path: String,
    pub field_ref: Option<FieldRef>,
    pub resource_field_ref: Option<Value>,
    pub mode: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SecretVolume {
    #[serde(default)]
    pub secret_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub items: Vec<KeyToPath>,
    pub default_mode: Option<i64>,
    pub optional: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigMapVolume {
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub items: Vec<KeyToPath>,
    pub default_mode: Option<i64>,
    pub optional: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyToPath {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub path: String,
    pub mode: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PvcVolume {
    #[serde(default)]
    pub claim_name: String,
    pub read_only: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HostPathVolume {
    #[serde(default)]
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// What the runner takes from a manifest: the pod spec plus the metadata and deadlines that
/// surround it.
#[derive(Debug)]
pub(crate) struct PodManifest {
    pub meta: ObjectMeta,
    pub spec: PodSpec,
    /// `activeDeadlineSeconds` of the Job (not of the pod template), if the manifest is a Job.
    pub job_deadline: Option<i64>,
}

fn parse<T: for<'de> Deserialize<'de>>(v: &Value, what: &str) -> Result<T, RunnerError> {
    T::deserialize(v).map_err(|e| RunnerError::InvalidManifest(format!("{what}: {e}")))
}

fn meta_at(v: &Value) -> Result<Option<ObjectMeta>, RunnerError> {
    match v.get("metadata") {
        Some(m) if !m.is_null() => Ok(Some(parse(m, "metadata")?)),
        _ => Ok(None),
    }
}

/// Finds the pod spec in a Job, a CronJob, a Pod, a pod template or a bare PodSpec.
pub(crate) fn extract(manifest: &Value) -> Result<PodManifest, RunnerError> {
    if !manifest.is_object() {
        return Err(RunnerError::InvalidManifest(
            "the manifest is not a JSON object".into(),
        ));
    }
    if manifest.get("containers").is_some() {
        return Ok(PodManifest {
            meta: ObjectMeta::default(),
            spec: parse(manifest, "pod spec")?,
            job_deadline: None,
        });
    }
    let kind = manifest.get("kind").and_then(Value::as_str).unwrap_or("");
    let outer_meta = meta_at(manifest)?;
    let spec = manifest.get("spec");
    // Job-like: spec.template.spec (a CronJob adds one more level).
    let job_spec = match kind {
        "CronJob" => spec
            .and_then(|s| s.get("jobTemplate"))
            .and_then(|t| t.get("spec")),
        _ => spec.filter(|s| s.get("template").is_some()),
    };
    if let Some(job_spec) = job_spec {
        let template = job_spec.get("template").ok_or_else(|| {
            RunnerError::InvalidManifest("the job spec has no pod template".into())
        })?;
        let pod_spec = template
            .get("spec")
            .ok_or_else(|| RunnerError::InvalidManifest("the pod template has no spec".into()))?;
        let job_deadline = match job_spec.get("activeDeadlineSeconds") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse::<i64>(v, "spec.activeDeadlineSeconds")?),
        };
        let mut meta = meta_at(template)?.unwrap_or_default();
        if let Some(outer) = outer_meta {
            if meta.name.is_none() {
                meta.name = outer.name.clone();
            }
            if meta.namespace.is_none() {
                meta.namespace = outer.namespace.clone();
            }
            if kind == "Job" {
                if let Some(job_name) = &outer.name {
                    // What the Job controller stamps on its pods.
                    for key in ["job-name", "batch.kubernetes.io/job-name"] {
                        meta.labels
                            .entry(key.to_string())
                            .or_insert_with(|| job_name.clone());
                    }
                }
            }
        }
        return Ok(PodManifest {
            meta,
            spec: parse(pod_spec, "spec.template.spec")?,
            job_deadline,
        });
    }
    if let Some(spec) = spec.filter(|s| s.get("containers").is_some()) {
        return Ok(PodManifest {
            meta: outer_meta.unwrap_or_default(),
            spec: parse(spec, "spec")?,
            job_deadline: None,
        });
    }
    Err(RunnerError::InvalidManifest(format!(
        "cannot find a pod spec in the manifest (kind {kind:?}): expected a Job, a Pod or a PodSpec"
    )))
}

/// A DNS-1123 label, which Kubernetes requires of container and volume names (and which makes
/// them safe to use as file names).
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A relative path without `..` components, as Kubernetes requires of `subPath` and item paths.
pub(crate) fn check_relative_path(p: &str, what: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if p.contains('\0') {
        return Err(format!("{what} {p:?} contains a NUL byte"));
    }
    let path = Path::new(p);
    if path.is_absolute() {
        return Err(format!("{what} {p:?} must be a relative path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{what} {p:?} must not contain '..'"));
    }
    Ok(())
}

/// An absolute path without `..` components (mount paths, working dirs, hostPath paths).
pub(crate) fn check_absolute_path(p: &str, what: &str) -> Result<(), String> {
    let path = Path::new(p);
    if !path.is_absolute() || p.contains('\0') {
        return Err(format!("{what} {p:?} must be an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{what} {p:?} must not contain '..'"));
    }
    Ok(())
}

/// The checks the API server would make before the pod ever reached a node.
pub(crate) fn validate(spec: &PodSpec) -> Result<(), RunnerError> {
    let invalid = |m: String| Err(RunnerError::InvalidManifest(m));
    if spec.containers.is_empty() {
        return invalid("the pod spec has no containers".into());
    }
    let mut volume_names = HashSet::new();
    for v in &spec.volumes {
        if !is_dns_label(&v.name) {
            return invalid(format!("volume name {:?} is not a DNS-1123 label", v.name));
        }
        if !volume_names.insert(v.name.as_str()) {
            return invalid(format!("volume name {:?} is used twice", v.name));
        }
        let sources = v.source_count();
        // Keys that are not a supported source: another volume type (or a typo).
        let other = v.other.iter().find(|(_, value)| !value.is_null());
        match (sources, other) {
            (1, None) => {}
            (0, Some((kind, _))) => {
                return Err(RunnerError::UnsupportedVolume {
                    volume: v.name.clone(),
                    kind: kind.clone(),
                })
            }
            (0, None) => return invalid(format!("volume {:?} has no volume source", v.name)),
            _ => {
                return invalid(format!(
                    "volume {:?} has more than one volume source",
                    v.name
                ))
            }
        }
        if let Some(p) = &v.projected {
            validate_projected(&v.name, p)?;
        }
        if let Some(d) = &v.downward_api {
            validate_downward_items(&v.name, &d.items)?;
        }
    }
    let mut names = HashSet::new();
    for c in &spec.init_containers {
        if let Some(p) = &c.restart_policy {
            if p != "Always" {
                return invalid(format!(
                    "init container {:?}: restartPolicy {p:?} is not supported (only \"Always\")",
                    c.name
                ));
            }
        }
    }
    for c in spec.init_containers.iter().chain(&spec.containers) {
        if !is_dns_label(&c.name) {
            return invalid(format!(
                "container name {:?} is not a DNS-1123 label",
                c.name
            ));
        }
        if !names.insert(c.name.as_str()) {
            return invalid(format!("container name {:?} is used twice", c.name));
        }
        let mut mount_paths = HashSet::new();
        for m in &c.volume_mounts {
            if !volume_names.contains(m.name.as_str()) {
                return invalid(format!(
                    "container {:?} mounts volume {:?}, which the pod does not define",
                    c.name, m.name
                ));
            }
            if let Err(e) = check_absolute_path(&m.mount_path, "mountPath") {
                return invalid(format!("container {:?}: {e}", c.name));
            }
            if !mount_paths.insert(Path::new(&m.mount_path).components().collect::<Vec<_>>()) {
                return invalid(format!(
                    "container {:?} mounts two volumes at {:?}",
                    c.name, m.mount_path
                ));
            }
            if Path::new(&m.mount_path) == Path::new("/") {
                return invalid(format!("container {:?} mounts a volume at /", c.name));
            }
            if m.sub_path.is_some() && m.sub_path_expr.is_some() {
                return invalid(format!(
                    "container {:?}: subPath and subPathExpr are mutually exclusive",
                    c.name
                ));
            }
            if let Some(sp) = &m.sub_path {
                if !sp.is_empty() {
                    if let Err(e) = check_relative_path(sp, "subPath") {
                        return invalid(format!("container {:?}: {e}", c.name));
                    }
                }
            }
        }
        if let Some(wd) = &c.working_dir {
            if !wd.is_empty() {
                if let Err(e) = check_absolute_path(wd, "workingDir") {
                    return invalid(format!("container {:?}: {e}", c.name));
                }
            }
        }
        if let Some(p) = &c.termination_message_path {
            if let Err(e) = check_absolute_path(p, "terminationMessagePath") {
                return invalid(format!("container {:?}: {e}", c.name));
            }
        }
        match c.termination_message_policy.as_deref() {
            None | Some("File") | Some("FallbackToLogsOnError") => {}
            Some(other) => {
                return invalid(format!(
                    "container {:?}: unknown terminationMessagePolicy {other:?}",
                    c.name
                ))
            }
        }
        for e in &c.env {
            if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
                return invalid(format!(
                    "container {:?}: invalid env var name {:?}",
                    c.name, e.name
                ));
            }
            if e.value.as_deref().is_some_and(|v| !v.is_empty()) && e.value_from.is_some() {
                return invalid(format!(
                    "container {:?}: env {}: value and valueFrom are mutually exclusive",
                    c.name, e.name
                ));
            }
            if let Some(from) = &e.value_from {
                let sources = [
                    from.secret_key_ref.is_some(),
                    from.config_map_key_ref.is_some(),
                    from.field_ref.is_some(),
                    from.resource_field_ref.is_some(),
                ];
                if sources.iter().filter(|s| **s).count() != 1 {
                    return invalid(format!(
                        "container {:?}: env {}: valueFrom needs exactly one source",
                        c.name, e.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// What the API server checks of a projected volume: one source per projection, relative
/// paths used once, token lifetimes of at least ten minutes.
fn validate_projected(volume: &str, p: &ProjectedVolume) -> Result<(), RunnerError> {
    let invalid = |m: String| {
        Err(RunnerError::InvalidManifest(format!(
            "volume {volume:?}: {m}"
        )))
    };
    let mut paths: HashSet<&str> = HashSet::new();
    for (i, s) in p.sources.iter().enumerate() {
        let set = [
            s.secret.is_some(),
            s.config_map.is_some(),
            s.downward_api.is_some(),
            s.service_account_token.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let other = s.other.iter().find(|(_, value)| !value.is_null());
        match (set, other) {
            (1, None) => {}
            (0, Some((kind, _))) => {
                return Err(RunnerError::Unsupported(format!(
                    "volume {volume:?}: projected source {kind:?} (sources[{i}])"
                )))
            }
            _ => {
                return invalid(format!(
                    "projected sources[{i}] needs exactly one of secret, configMap, downwardAPI, \
                     serviceAccountToken"
                ))
            }
        }
        let mut declared: Vec<&str> = Vec::new();
        if let Some(k) = s.secret.as_ref().or(s.config_map.as_ref()) {
            declared.extend(k.items.iter().map(|i| i.path.as_str()));
        }
        if let Some(d) = &s.downward_api {
            validate_downward_items(volume, &d.items)?;
            declared.extend(d.items.iter().map(|i| i.path.as_str()));
        }
        if let Some(t) = &s.service_account_token {
            if let Err(e) = check_relative_path(&t.path, "serviceAccountToken.path") {
                return invalid(e);
            }
            if let Some(secs) = t.expiration_seconds {
                if !(600..=1 << 32).contains(&secs) {
                    return invalid(format!(
                        "serviceAccountToken.expirationSeconds {secs} must be between 600 and 2^32"
                    ));
                }
            }
            declared.push(&t.path);
        }
        for path in declared {
            if !paths.insert(path) {
                return invalid(format!(
                    "projected path {path:?} is used by two sources (conflicting duplicate paths)"
                ));
            }
        }
    }
    Ok(())
}

fn validate_downward_items(volume: &str, items: &[DownwardApiFile]) -> Result<(), RunnerError> {
    let invalid = |m: String| {
        Err(RunnerError::InvalidManifest(format!(
            "volume {volume:?}: {m}"
        )))
    };
    let mut paths = HashSet::new();
    for item in items {
        if let Err(e) = check_relative_path(&item.path, "downwardAPI items[].path") {
            return invalid(e);
        }
        if !paths.insert(item.path.as_str()) {
            return invalid(format!("downwardAPI path {:?} is used twice", item.path));
        }
        if item.field_ref.is_some() == item.resource_field_ref.is_some() {
            return invalid(format!(
                "downwardAPI item {:?} needs exactly one of fieldRef and resourceFieldRef",
                item.path
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_pod_spec_of_a_job() {
        let job = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "build-1", "namespace": "ci"},
            "spec": {"activeDeadlineSeconds": 60, "template": {"spec": {
                "containers": [{"name": "main", "command": ["true"]}]}}}
        });
        let m = extract(&job).expect("job");
        assert_eq!(m.meta.name.as_deref(), Some("build-1"));
        assert_eq!(m.meta.namespace.as_deref(), Some("ci"));
        assert_eq!(
            m.meta.labels.get("job-name").map(String::as_str),
            Some("build-1")
        );
        assert_eq!(m.job_deadline, Some(60));
        assert_eq!(m.spec.containers[0].name, "main");
    }

    #[test]
    fn finds_the_pod_spec_of_a_pod_and_a_bare_spec() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}], "volumes": null}});
        let m = extract(&pod).expect("pod");
        assert_eq!(m.meta.name.as_deref(), Some("p"));
        let bare = json!({"containers": [{"name": "a"}]});
        assert_eq!(extract(&bare).expect("bare").spec.containers.len(), 1);
        assert!(extract(&json!({"kind": "Service"})).is_err());
        assert!(extract(&json!([1])).is_err());
    }

    #[test]
    fn rejects_mistyped_fields() {
        let bad = json!({"containers": [{"name": "a", "securityContext": {"runAsUser": "1000"}}]});
        assert!(matches!(
            extract(&bad),
            Err(RunnerError::InvalidManifest(_))
        ));
    }

    #[test]
    fn path_checks() {
        assert!(check_relative_path("a/b", "p").is_ok());
        assert!(check_relative_path("a/../b", "p").is_err());
        assert!(check_relative_path("/a", "p").is_err());
        assert!(check_relative_path("", "p").is_err());
        assert!(check_absolute_path("/a/b", "p").is_ok());
        assert!(check_absolute_path("a/b", "p").is_err());
        assert!(check_absolute_path("/a/../b", "p").is_err());
        assert!(is_dns_label("init-0"));
        assert!(!is_dns_label("Init"));
        assert!(!is_dns_label("../x"));
    }
}
