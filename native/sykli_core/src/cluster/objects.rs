//! Small request/response calls the Target callbacks need: read a Secret's key, create a
//! PersistentVolumeClaim.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ObjectMeta, PostParams};

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
