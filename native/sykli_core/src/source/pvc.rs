//! The PVC strategy: the working tree (dirty changes included) is uploaded into a
//! PersistentVolumeClaim as a content-addressed tree (`trees/<hash>` of the `sykli-sync`
//! store), and each Job's init container copies that tree from the claim (mounted
//! read-only) into the Job's own workspace volume, which the task mounts. Concurrent tasks
//! and later runs never see each other's writes; with `mount: shared` the task mounts the
//! published tree itself, read-only. Declared outputs to sync back are copied by a native
//! sidecar, when the task has ended, into `runs/<job>` of the claim, where the laptop picks
//! them up (and then removes them).

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
    /// Copy the tasks' declared outputs back to the laptop.
    #[serde(default)]
    pub sync_back: bool,
}

#[derive(Debug, Clone)]
pub struct PvcPlan {
    pub claim: String,
    pub tree: String,
    pub image: String,
    pub node: Option<String>,
    pub mount: Mount,
    pub sync_back: bool,
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
            sync_back: opts.sync_back,
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

    /// The sub-path a task mounts for resource path `sub` ("" for the root): of the Job's own
    /// workspace, or of the claim when shared.
    pub fn sub_path(&self, sub: &str) -> Option<String> {
        match self.mount {
            Mount::Copy => (!sub.is_empty()).then(|| sub.to_string()),
            Mount::Shared => Some(if sub.is_empty() {
                format!("{STORE_DIR}/trees/{}", self.tree)
            } else {
                format!("{STORE_DIR}/trees/{}/{sub}", self.tree)
            }),
        }
    }

    /// Whether the task's mounts are read-only (the shared tree).
    pub fn read_only(&self) -> bool {
        self.mount == Mount::Shared
    }

    /// The init container copying the tree from the claim (`store`, mounted read-only)
    /// into the Job's workspace volume (none when shared).
    pub fn init_container(&self, workspace: &str, store: &str) -> Option<Container> {
        if self.mount == Mount::Shared {
            return None;
        }
        let tree = self.tree.clone();
        Some(self.helper(
            "sykli-sync",
            vec![
                "checkout",
                "--store",
                &store_dir(),
                "--tree",
                &tree,
                "--to",
                WORKSPACE,
            ],
            workspace,
            store,
            true,
        ))
    }

    /// The native sidecar that, once the task has ended, copies `outputs` (relative to the
    /// workspace root) to `runs/<job>` on the claim. None without outputs or sync back.
    pub fn outputs_sidecar(
        &self,
        workspace: &str,
        store: &str,
        job: &str,
        outputs: &[String],
    ) -> Option<Container> {
        if !self.sync_back || outputs.is_empty() || self.mount == Mount::Shared {
            return None;
        }
        let to = format!("{}/runs/{job}", store_dir());
        let mut args = vec!["collect", "--from", WORKSPACE, "--to", &to, "--"];
        args.extend(outputs.iter().map(String::as_str));
        let mut c = self.helper("sykli-outputs", args, workspace, store, false);
        c.restart_policy = Some("Always".into());
        Some(c)
    }

    // A container of ours running `sykli-sync` (no shell: every value is one argument).
    fn helper(
        &self,
        name: &str,
        args: Vec<&str>,
        workspace: &str,
        store: &str,
        store_read_only: bool,
    ) -> Container {
        Container {
            name: name.into(),
            image: Some(self.image.clone()),
            command: Some(
                std::iter::once("sykli-sync")
                    .chain(args)
                    .map(str::to_string)
                    .collect(),
            ),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: workspace.into(),
                    mount_path: WORKSPACE.into(),
                    read_only: (!store_read_only).then_some(true),
                    ..Default::default()
                },
                VolumeMount {
                    name: store.into(),
                    mount_path: STORE_PATH.into(),
                    read_only: store_read_only.then_some(true),
                    ..Default::default()
                },
            ]),
            security_context: Some(restricted_security_context()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        }
    }
}

/// Where our containers mount the Job's workspace.
const WORKSPACE: &str = "/workspace";

fn store_dir() -> String {
    format!("{STORE_PATH}/{STORE_DIR}")
}
