//! Before a Job is created: does everything it references exist, with the keys it needs?
//! A missing Secret key otherwise shows up minutes later as a pod stuck in
//! CreateContainerConfigError.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret};
use kube::api::{Api, PostParams};

use super::{api_error, retry};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Secret,
    ConfigMap,
    PersistentVolumeClaim,
}

/// One object a Job needs, the keys it reads from it, and who reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub kind: Kind,
    pub name: String,
    /// key → what uses it (`env GITHUB_TOKEN of container task`).
    pub keys: BTreeMap<String, String>,
    pub used_by: String,
    pub optional: bool,
}

/// What a Job references: Secrets and ConfigMaps (volumes, env, envFrom) and claims.
pub fn needs(job: &Job) -> Vec<Need> {
    let mut needs: BTreeMap<(Kind, String), Need> = BTreeMap::new();
    let mut add =
        |kind: Kind, name: &str, key: Option<(&str, String)>, used_by: String, optional: bool| {
            let need = needs
                .entry((kind, name.to_string()))
                .or_insert_with(|| Need {
                    kind,
                    name: name.to_string(),
                    keys: BTreeMap::new(),
                    used_by: used_by.clone(),
                    optional,
                });
            need.optional &= optional;
            if let Some((k, by)) = key {
                need.keys.entry(k.to_string()).or_insert(by);
            }
        };
    let Some(pod) = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return Vec::new();
    };
    for v in pod.volumes.iter().flatten() {
        let by = format!("volume {}", v.name);
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            add(Kind::Secret, &name, None, by.clone(), optional);
            for item in s.items.iter().flatten() {
                add(
                    Kind::Secret,
                    &name,
                    Some((&item.key, by.clone())),
                    by.clone(),
                    optional,
                );
            }
        }
        if let Some(c) = &v.config_map {
            let optional = c.optional.unwrap_or(false);
            add(Kind::ConfigMap, &c.name, None, by.clone(), optional);
            for item in c.items.iter().flatten() {
                add(
                    Kind::ConfigMap,
                    &c.name,
                    Some((&item.key, by.clone())),
                    by.clone(),
                    optional,
                );
            }
        }
        if let Some(p) = &v.persistent_volume_claim {
            add(Kind::PersistentVolumeClaim, &p.claim_name, None, by, false);
        }
    }
    let containers = pod
        .init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter());
    for c in containers {
        for e in c.env.iter().flatten() {
            let by = format!("env {} of container {}", e.name, c.name);
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.secret_key_ref {
                add(
                    Kind::Secret,
                    &r.name,
                    Some((&r.key, by.clone())),
                    by.clone(),
                    r.optional.unwrap_or(false),
                );
            }
            if let Some(r) = &from.config_map_key_ref {
                add(
                    Kind::ConfigMap,
                    &r.name,
                    Some((&r.key, by.clone())),
                    by,
                    r.optional.unwrap_or(false),
                );
            }
        }
        for e in c.env_from.iter().flatten() {
            let by = format!("envFrom of container {}", c.name);
            if let Some(r) = &e.secret_ref {
                add(
                    Kind::Secret,
                    &r.name,
                    None,
                    by.clone(),
                    r.optional.unwrap_or(false),
                );
            }
            if let Some(r) = &e.config_map_ref {
                add(
                    Kind::ConfigMap,
                    &r.name,
                    None,
                    by,
                    r.optional.unwrap_or(false),
                );
            }
        }
    }
    // The Secret holding the Job's own source URL (the S3 strategy) is made at submission,
    // right before the Job: not something that must exist already.
    let own = job
        .metadata
        .name
        .as_deref()
        .map(crate::source::s3::url_secret_name);
    needs
        .into_values()
        .filter(|n| !(n.kind == Kind::Secret && Some(&n.name) == own.as_ref()))
        .collect()
}

/// What to do when the namespace does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingNamespace {
    Fail,
    Create,
    /// Only checking (`sykli info --check`): a run would create it.
    Allow,
}

/// Checks what each Job needs without creating anything: one line per problem (a missing
/// namespace, object or key), empty when a run could start. Errors are for a cluster that
/// cannot be asked (unreachable, unauthorized).
pub async fn check_jobs(
    client: &kube::Client,
    jobs: &[Job],
    missing_namespace: MissingNamespace,
) -> Result<Vec<String>> {
    let mut problems: Vec<String> = Vec::new();
    for job in jobs {
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        match check(client, &namespace, &needs(job), missing_namespace).await {
            Ok(()) => {}
            Err(Error::Cluster {
                kind: "not_found",
                message,
            }) => {
                if !problems.contains(&message) {
                    problems.push(message);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(problems)
}

/// How a user picks another namespace, for the errors that name one.
const SET_NAMESPACE: &str =
    "or run in one that exists (-n, SYKLI_K8S_NAMESPACE, or namespace: in .sykli/config.exs)";

/// Makes sure `namespace` is there (creating it with [`MissingNamespace::Create`]); an
/// account that may not read namespaces is not held to it. Errors name the namespace and
/// the two ways out: have it created, or run in another one.
pub async fn namespace_ready(
    client: &kube::Client,
    namespace: &str,
    missing_namespace: MissingNamespace,
) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match retry("reading the namespace", || namespaces.get_opt(namespace)).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) if missing_namespace == MissingNamespace::Allow => Ok(()),
        Ok(None) if missing_namespace == MissingNamespace::Create => {
            let ns = Namespace {
                metadata: kube::api::ObjectMeta {
                    name: Some(namespace.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match namespaces.create(&PostParams::default(), &ns).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 403 => Err(Error::cluster(
                    "forbidden",
                    format!(
                        "namespace {namespace:?} does not exist and this account may not create it ({}): \
                         have it created (kubectl create namespace {namespace}) {SET_NAMESPACE}",
                        s.message
                    ),
                )),
                Err(e) => Err(api_error(&format!("creating namespace {namespace}"), e)),
            }
        }
        Ok(None) => Err(Error::cluster(
            "not_found",
            format!(
                "namespace {namespace:?} does not exist: create it (kubectl create namespace {namespace}), \
                 let sykli create it (create_namespace: true) {SET_NAMESPACE}"
            ),
        )),
        Err(Error::Cluster { kind: "forbidden", .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Checks the namespace and every need; the first problem is an error naming the object,
/// the key and the fix. Objects we may not read (403) are not held against the run: the
/// account may be allowed to use what it cannot list.
pub async fn check(
    client: &kube::Client,
    namespace: &str,
    needs: &[Need],
    missing_namespace: MissingNamespace,
) -> Result<()> {
    namespace_ready(client, namespace, missing_namespace).await?;
    check_needs(client, namespace, needs).await
}

/// [`check`] without the namespace (known to be there).
pub async fn check_needs(client: &kube::Client, namespace: &str, needs: &[Need]) -> Result<()> {
    for need in needs {
        let keys: Option<Vec<String>> = match need.kind {
            Kind::Secret => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                lookup(&api, need, namespace).await?.map(|s| {
                    let mut k: Vec<String> = s.data.unwrap_or_default().into_keys().collect();
                    k.extend(s.string_data.unwrap_or_default().into_keys());
                    k
                })
            }
            Kind::ConfigMap => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                lookup(&api, need, namespace).await?.map(|c| {
                    let mut k: Vec<String> = c.data.unwrap_or_default().into_keys().collect();
                    k.extend(c.binary_data.unwrap_or_default().into_keys());
                    k
                })
            }
            Kind::PersistentVolumeClaim => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
                lookup(&api, need, namespace).await?.map(|_| Vec::new())
            }
        };
        let Some(present) = keys else { continue };
        if need.optional {
            continue;
        }
        for (key, by) in &need.keys {
            if !present.contains(key) {
                return Err(Error::cluster(
                    "not_found",
                    format!(
                        "{} {namespace}/{} has no key {key:?} ({by} reads it); it has: {}. Add the key, or fix the reference",
                        kind_name(need.kind),
                        need.name,
                        if present.is_empty() { "no keys".to_string() } else { present.join(", ") }
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Secret => "Secret",
        Kind::ConfigMap => "ConfigMap",
        Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
    }
}

/// The object, None when it may exist but we may not read it; an error when it is missing.
async fn lookup<K>(api: &Api<K>, need: &Need, namespace: &str) -> Result<Option<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let what = format!("{} {namespace}/{}", kind_name(need.kind), need.name);
    match retry(&format!("reading {what}"), || api.get_opt(&need.name)).await {
        Ok(Some(obj)) => Ok(Some(obj)),
        Ok(None) if need.optional => Ok(None),
        Ok(None) => Err(Error::cluster(
            "not_found",
            format!(
                "{what} does not exist ({} needs it): create it in namespace {namespace}, or fix the reference",
                need.used_by
            ),
        )),
        Err(Error::Cluster { kind: "forbidden", .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
