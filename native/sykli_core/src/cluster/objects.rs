//! Small request/response calls the Target callbacks need: read a Secret's key, create a
//! PersistentVolumeClaim; and the Secret a Job owns (its source URL).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use super::retry;
use crate::error::{Error, Result};
use crate::manifest::{names, quantity, MANAGED_BY};

/// The value of `key` in Secret `namespace/name`; a clear error when either is missing.
pub async fn read_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = retry(&format!("reading Secret {namespace}/{name}"), || {
        api.get_opt(name)
    })
    .await?
    .ok_or_else(|| {
        Error::cluster(
            "not_found",
            format!("Secret {namespace}/{name} does not exist"),
        )
    })?;
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    data.extend(
        secret
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    let value = data.remove(key).ok_or_else(|| {
        let keys: Vec<&String> = data.keys().collect();
        Error::cluster(
            "not_found",
            format!("Secret {namespace}/{name} has no key {key:?} (it has {keys:?})"),
        )
    })?;
    String::from_utf8(value).map_err(|_| {
        Error::cluster(
            "invalid",
            format!("Secret {namespace}/{name} key {key:?} is not UTF-8 text"),
        )
    })
}

#[derive(Debug, Clone)]
pub struct VolumeRequest {
    pub name: String,
    pub size: String,
    pub storage_class: Option<String>,
    /// ReadWriteOnce (default), ReadWriteMany, ReadOnlyMany, ReadWriteOncePod.
    pub access_mode: Option<String>,
}

/// Creates the claim unless it exists (then it is used as it is).
pub async fn create_pvc(client: &kube::Client, namespace: &str, req: &VolumeRequest) -> Result<()> {
    if !names::is_dns_subdomain(&req.name) {
        return Err(Error::cluster(
            "invalid",
            format!("{:?} is not a valid PersistentVolumeClaim name", req.name),
        ));
    }
    quantity::check(quantity::Kind::Memory, &req.size)
        .map_err(|why| Error::cluster("invalid", format!("volume {} size {why}", req.name)))?;
    let mode = req
        .access_mode
        .clone()
        .unwrap_or_else(|| "ReadWriteOnce".into());
    if ![
        "ReadWriteOnce",
        "ReadWriteMany",
        "ReadOnlyMany",
        "ReadWriteOncePod",
    ]
    .contains(&mode.as_str())
    {
        return Err(Error::cluster(
            "invalid",
            format!("access mode {mode:?} is not one Kubernetes knows"),
        ));
    }
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(req.name.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.to_string(),
                "sykli".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![mode]),
            storage_class_name: req.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(req.size.clone()),
                )])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    };
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let params = PostParams::default();
    match retry(
        &format!("creating PersistentVolumeClaim {namespace}/{}", req.name),
        || api.create(&params, &pvc),
    )
    .await
    {
        Ok(_)
        | Err(Error::Cluster {
            kind: "conflict", ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates an immutable Opaque Secret (`meta` names it) holding `value` at `key`. A 409 is
/// the caller's to judge.
pub async fn create_secret(
    api: &Api<Secret>,
    mut meta: ObjectMeta,
    key: &str,
    value: &str,
) -> Result<()> {
    let name = meta.name.clone().unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels
        .entry(MANAGED_BY.to_string())
        .or_insert_with(|| "sykli".to_string());
    let secret = Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    let params = PostParams::default();
    retry(&format!("creating Secret {name}"), || {
        api.create(&params, &secret)
    })
    .await
    .map(|_| ())
}

/// Makes `job` an owner of Secret `name`, so that Kubernetes' garbage collector deletes the
/// Secret with the Job (background propagation; a kept Job keeps it). Not the controller,
/// and not blocking the owner's deletion: a foreground delete need not wait for it, and
/// blocking needs update on `jobs/finalizers` where OwnerReferencesPermissionEnforcement
/// is on. A write that raced another (409 on the resourceVersion) is done again.
pub async fn own_by_job(api: &Api<Secret>, name: &str, job: &Job) -> Result<()> {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().ok_or_else(|| {
        Error::cluster(
            "api",
            format!("Job {job_name} came back without a uid: Secret {name} cannot be owned by it"),
        )
    })?;
    let owner = OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job_name.clone(),
        uid: uid.clone(),
        controller: Some(false),
        block_owner_deletion: Some(false),
    };
    let params = PostParams::default();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut secret = retry(&format!("reading Secret {name}"), || api.get(name)).await?;
        let refs = secret
            .metadata
            .owner_references
            .get_or_insert_with(Vec::new);
        if refs.iter().any(|r| r.uid == uid) {
            return Ok(());
        }
        // An earlier Job of that name is gone (its uid differs): only this one owns it.
        refs.retain(|r| !(r.kind == "Job" && r.api_version == "batch/v1" && r.name == job_name));
        refs.push(owner.clone());
        match retry(
            &format!("making Job {job_name} the owner of Secret {name}"),
            || api.replace(name, &params, &secret),
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(Error::Cluster {
                kind: "conflict", ..
            }) if attempts < 5 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Deletes the `kind` `name` in the background (its dependents go with it, by the
/// garbage collector); one already gone is fine.
pub async fn delete_if_there<K>(api: &Api<K>, kind: &str, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams::background();
    match retry(&format!("deleting {kind} {name}"), || {
        api.delete(name, &params)
    })
    .await
    {
        Ok(_)
        | Err(Error::Cluster {
            kind: "not_found", ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}
