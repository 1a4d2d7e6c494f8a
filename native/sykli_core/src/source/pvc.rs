//! The PVC strategy: the working tree (dirty changes included) is uploaded into a
//! PersistentVolumeClaim as a content-addressed tree (`trees/<hash>` of the `sykli-sync`
//! store), and each Job's init container copies that tree into a directory of its own on the
//! same claim (`runs/<job>`), which the task mounts. Concurrent tasks and later runs never
//! see each other's writes; with `mount: shared` the task mounts the published tree itself,
//! read-only.

use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaimVolumeSource, Volume, VolumeMount,
};
use serde::Deserialize;

use super::git_clone::{check_image, restricted_security_context};
use crate::error::{Error, Result};
use crate::manifest::names;

/// The helper image: `sykli-sync` (built from native/sykli_sync) at /usr/local/bin.
pub const DEFAULT_SYNC_IMAGE: &str = "ghcr.io/sykli/sync:0.1.0";
/// Where the claim is mounted in sykli's own containers.
pub const STORE_PATH: &str = "/store";
/// The store's directory on the claim.
pub const STORE_DIR: &str = "sykli";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mount {
    /// Each Job gets its own copy of the tree.
    #[default]
    Copy,
    /// The task mounts the published tree itself, read-only (no copy; no writes).
    Shared,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvcOptions {
    pub claim: String,
    /// The tree hash the upload published.
    pub tree: String,
    #[serde(default)]
    pub image: Option<String>,
    /// With a ReadWriteOnce claim: the node the receiver (and so the claim) is on.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub mount: Mount,
}

#[derive(Debug, Clone)]
pub struct PvcPlan {
    pub claim: String,
    pub tree: String,
    pub image: String,
    pub node: Option<String>,
    pub mount: Mount,
}

impl PvcPlan {
    pub fn new(opts: &PvcOptions) -> Result<PvcPlan> {
        let invalid = |key: &str, message: String| Error::InvalidOption {
            key: key.into(),
            message,
        };
        if !names::is_dns_subdomain(&opts.claim) {
            return Err(invalid(
                "source_pvc",
                format!("{:?} is not a valid PersistentVolumeClaim name", opts.claim),
            ));
        }
        if opts.tree.len() != 64 || !opts.tree.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                "tree",
                format!("{:?} is not a tree hash (64 hex digits)", opts.tree),
            ));
        }
        let image = opts
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_SYNC_IMAGE.to_string());
        check_image(&image).map_err(|why| invalid("sync_image", format!("{image:?} {why}")))?;
        if let Some(n) = &opts.node {
            if !names::is_dns_subdomain(n) {
                return Err(invalid("node", format!("{n:?} is not a node name")));
            }
        }
        Ok(PvcPlan {
            claim: opts.claim.clone(),
            tree: opts.tree.to_ascii_lowercase(),
            image,
            node: opts.node.clone(),
            mount: opts.mount,
        })
    }

    /// The claim, as the workspace volume.
    pub fn volume(&self, name: &str) -> Volume {
        Volume {
            name: name.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: self.claim.clone(),
                read_only: None,
            }),
            ..Default::default()
        }
    }

    /// The sub-path of the claim a task mounts for resource path `sub` ("" for the root).
    pub fn sub_path(&self, job: &str, sub: &str) -> String {
        let base = match self.mount {
            Mount::Copy => format!("{STORE_DIR}/runs/{job}"),
            Mount::Shared => format!("{STORE_DIR}/trees/{}", self.tree),
        };
        if sub.is_empty() {
            base
        } else {
            format!("{base}/{sub}")
        }
    }

    /// Whether the task's mounts are read-only (the shared tree).
    pub fn read_only(&self) -> bool {
        self.mount == Mount::Shared
    }

    /// The init container copying the tree into the Job's own directory (none when shared).
    pub fn init_container(&self, volume: &str, job: &str) -> Option<Container> {
        if self.mount == Mount::Shared {
            return None;
        }
        Some(Container {
            name: "sykli-sync".into(),
            image: Some(self.image.clone()),
            // No shell: every value is one argument.
            command: Some(
                [
                    "sykli-sync",
                    "checkout",
                    "--store",
                    &format!("{STORE_PATH}/{STORE_DIR}"),
                    "--tree",
                    &self.tree,
                    "--to",
                    &format!("{STORE_PATH}/{STORE_DIR}/runs/{job}"),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ),
            volume_mounts: Some(vec![VolumeMount {
                name: volume.into(),
                mount_path: STORE_PATH.into(),
                ..Default::default()
            }]),
            security_context: Some(restricted_security_context()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        })
    }
}
