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
/// Where the sync image has `sykli-sync`. Containers run it by this path, never through
/// `PATH` (which a pod spec's `env` could point elsewhere).
pub const SYNC_BIN: &str = "/usr/local/bin/sykli-sync";
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
    /// `source_sync: :git`: the tree holds `sykli.bundle` (HEAD as a git bundle), which a
    /// git container checks out at this commit.
    #[serde(default)]
    pub bundle: Option<BundleOptions>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleOptions {
    pub sha: String,
    /// The image with git (default: the git-clone strategy's).
    #[serde(default)]
    pub git_image: Option<String>,
}

/// Checks out the commit from the bundle the sync copied to /bundle. A constant: the commit
/// arrives in SYKLI_GIT_SHA (validated as 40 or 64 hex digits before the manifest is built).
pub const BUNDLE_SCRIPT: &str = r#"set -eu
umask 0000 # the task may run as any uid
cd /workspace
git init -q .
git fetch -q --no-tags /bundle/sykli.bundle HEAD
head=$(git rev-parse FETCH_HEAD)
[ "$head" = "$SYKLI_GIT_SHA" ] || { echo "the bundle holds $head, not $SYKLI_GIT_SHA" | tee /dev/termination-log >&2; exit 1; }
git -c advice.detachedHead=false checkout -q --detach "$SYKLI_GIT_SHA" --
printf '%s
' "$SYKLI_GIT_SHA" >/dev/termination-log 2>/dev/null || true
echo "sykli-bundle: checked out $SYKLI_GIT_SHA" >&2
"#;

#[derive(Debug, Clone)]
pub struct PvcPlan {
    pub claim: String,
    pub tree: String,
    pub image: String,
    pub node: Option<String>,
    pub mount: Mount,
    pub sync_back: bool,
    /// (commit, git image) when the tree is HEAD as a git bundle.
    pub bundle: Option<(String, String)>,
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
            bundle: match &opts.bundle {
                None => None,
                Some(_) if opts.mount == Mount::Shared => {
                    return Err(invalid(
                        "source_mount",
                        "a git bundle is checked out per Job: source_mount :shared does not apply"
                            .into(),
                    ))
                }
                Some(b) => Some(check_bundle(b)?),
            },
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

    /// The init containers filling the Job's workspace volume: a copy of the tree from the
    /// claim (`store`, mounted read-only), checked file by file against its hash; for a git
    /// bundle, the copy goes to `bundle` and a git container checks the commit out. When
    /// shared (`workspace` is the claim), the tree is checked where it is instead.
    pub fn init_containers(&self, workspace: &str, store: &str, bundle: &str) -> Vec<Container> {
        if self.mount == Mount::Shared {
            return vec![self.verify(workspace)];
        }
        let Some((sha, git_image)) = &self.bundle else {
            return self.copy(workspace, store).into_iter().collect();
        };
        let mut out: Vec<Container> = self.copy(bundle, store).into_iter().collect();
        out.push(bundle_checkout(workspace, bundle, sha, git_image));
        out
    }

    /// `sykli-sync verify` of the published tree, the claim (volume `claim`) read-only.
    fn verify(&self, claim: &str) -> Container {
        let store = store_dir();
        let mut c = self.helper(
            "sykli-verify",
            vec!["verify", "--store", &store, "--tree", &self.tree],
            claim,
            claim,
            true,
        );
        // The claim once, at the store's path (the helper also mounts a workspace).
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .retain(|m| m.mount_path == STORE_PATH);
        c
    }

    fn copy(&self, workspace: &str, store: &str) -> Option<Container> {
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
    /// workspace root) to `runs/<job>` on the claim, and the init container after it that
    /// holds the task back until the sidecar can no longer miss its end (a startup gate
    /// through the `ready` volume). Nothing without outputs or sync back.
    pub fn outputs_sidecar(
        &self,
        workspace: &str,
        store: &str,
        ready: &str,
        job: &str,
        outputs: &[String],
    ) -> Vec<Container> {
        if !self.sync_back || outputs.is_empty() || self.mount == Mount::Shared {
            return Vec::new();
        }
        let to = format!("{}/runs/{job}", store_dir());
        let marker = format!("{READY_PATH}/ready");
        let mut args = vec![
            "collect", "--from", WORKSPACE, "--to", &to, "--ready", &marker, "--",
        ];
        args.extend(outputs.iter().map(String::as_str));
        let ready_mount = |read_only: bool| VolumeMount {
            name: ready.into(),
            mount_path: READY_PATH.into(),
            read_only: read_only.then_some(true),
            ..Default::default()
        };
        let mut sidecar = self.helper("sykli-outputs", args, workspace, store, false);
        sidecar.restart_policy = Some("Always".into());
        sidecar
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(ready_mount(false));
        let gate = Container {
            name: "sykli-outputs-ready".into(),
            image: Some(self.image.clone()),
            command: Some(
                [
                    SYNC_BIN,
                    "wait-ready",
                    "--file",
                    &marker,
                    "--timeout",
                    "120",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ),
            volume_mounts: Some(vec![ready_mount(true)]),
            security_context: Some(restricted_security_context()),
            ..Default::default()
        };
        vec![sidecar, gate]
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
                std::iter::once(SYNC_BIN)
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

/// The commit and git image of a bundle, checked.
pub fn check_bundle(b: &BundleOptions) -> Result<(String, String)> {
    let invalid = |key: &str, message: String| Error::InvalidOption {
        key: key.into(),
        message,
    };
    let sha_ok = (b.sha.len() == 40 || b.sha.len() == 64)
        && b.sha
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if !sha_ok {
        return Err(invalid(
            "sha",
            format!("{:?} is not a full commit id", b.sha),
        ));
    }
    let image = b
        .git_image
        .clone()
        .unwrap_or_else(|| super::git_clone::DEFAULT_GIT_IMAGE.to_string());
    check_image(&image).map_err(|why| invalid("git_image", format!("{image:?} {why}")))?;
    Ok((b.sha.clone(), image))
}

/// The git container that checks out commit `sha` from the bundle at `/bundle` (volume
/// `bundle`) into the workspace: `source_sync: :git`, for the PVC and S3 strategies.
pub fn bundle_checkout(workspace: &str, bundle: &str, sha: &str, git_image: &str) -> Container {
    let env = |n: &str, v: &str| k8s_openapi::api::core::v1::EnvVar {
        name: n.into(),
        value: Some(v.into()),
        value_from: None,
    };
    Container {
        name: "sykli-bundle".into(),
        image: Some(git_image.to_string()),
        command: Some(vec!["sh".into(), "-c".into(), BUNDLE_SCRIPT.into()]),
        env: Some(vec![
            env("SYKLI_GIT_SHA", sha),
            env("HOME", "/tmp"),
            env("GIT_TERMINAL_PROMPT", "0"),
            env("GIT_CONFIG_COUNT", "1"),
            env("GIT_CONFIG_KEY_0", "safe.directory"),
            env("GIT_CONFIG_VALUE_0", "*"),
        ]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: workspace.into(),
                mount_path: WORKSPACE.into(),
                ..Default::default()
            },
            VolumeMount {
                name: bundle.into(),
                mount_path: "/bundle".into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        security_context: Some(restricted_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// Where our containers mount the Job's workspace.
const WORKSPACE: &str = "/workspace";
/// Where the outputs sidecar says it is ready.
const READY_PATH: &str = "/sykli-ready";

fn store_dir() -> String {
    format!("{STORE_PATH}/{STORE_DIR}")
}
