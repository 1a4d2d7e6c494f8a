//! The PVC strategy across the NIF: the local tree's hash (dirty I/O), and the upload and
//! the end of a Job's run (sync back, removal of its copy) on the tokio runtime, answered
//! with one `{tag, {:done, result}}` message.

use std::sync::Arc;

use rustler::{Encoder, Env, NifMap, ResourceArc, Term};
use serde::Deserialize;
use sykli_core::cluster::sync;
use sykli_core::source::upload;

use super::cluster::{spawn_answer, ClusterRes};
use super::NifError;

#[derive(NifMap)]
struct TreeInfo {
    tree: String,
    files: usize,
    hashed: usize,
    bytes: u64,
}

/// The tree hash the working tree containing `path` would upload as (with `bundle`, the
/// directory `path` holding `sykli.bundle`).
#[rustler::nif(schedule = "DirtyIo")]
fn k8s_source_tree(
    path: String,
    excludes: Vec<String>,
    bundle: bool,
) -> Result<TreeInfo, NifError> {
    let t = if bundle {
        upload::bundle_tree(std::path::Path::new(&path))?
    } else {
        upload::local_tree(std::path::Path::new(&path), &excludes)?
    };
    Ok(TreeInfo {
        bytes: t.manifest.total_bytes(),
        files: t.manifest.len(),
        tree: t.tree,
        hashed: t.hashed,
    })
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Target {
    namespace: String,
    claim: String,
    #[serde(default)]
    image: Option<String>,
    /// The option that named the claim, for the error when it is missing.
    #[serde(skip, default = "source_pvc")]
    setting: &'static str,
}

fn source_pvc() -> &'static str {
    "source_pvc"
}

impl Target {
    fn image(&self) -> &str {
        self.image
            .as_deref()
            .unwrap_or(sykli_core::source::pvc::DEFAULT_SYNC_IMAGE)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadJson {
    #[serde(flatten)]
    target: Target,
    root: String,
    #[serde(default)]
    excludes: Vec<String>,
    /// `source_sync: :git`: upload this directory's `sykli.bundle` instead of the tree.
    #[serde(default)]
    bundle_dir: Option<String>,
}

#[derive(NifMap)]
struct UploadEx {
    tree: String,
    node: Option<String>,
    existed: bool,
    bytes_sent: u64,
    files_sent: usize,
    files_deleted: usize,
    hashed: usize,
    files: usize,
}

/// Uploads the working tree into the claim; answers `{tag, {:done, {:ok, map}}}` or an error.
#[rustler::nif]
fn k8s_upload_source<'a>(
    env: Env<'a>,
    cluster: ResourceArc<ClusterRes>,
    options_json: String,
    tag: Term<'a>,
) -> Result<rustler::Atom, NifError> {
    let o: UploadJson = sykli_core::pipeline::from_json(options_json.as_bytes(), "upload options")?;
    let target = o.target.clone();
    in_background(env, cluster, target, tag, move |cluster, r| async move {
        let local = tokio::task::spawn_blocking(move || match o.bundle_dir {
            Some(dir) => upload::bundle_tree(std::path::Path::new(&dir)),
            None => upload::local_tree(std::path::Path::new(&o.root), &o.excludes),
        })
        .await
        .map_err(|e| sykli_core::Error::cluster("api", e.to_string()))??;
        let rep = sync::upload(&cluster, &r, local).await?;
        Ok(UploadEx {
            tree: rep.tree,
            node: r.pin_node,
            existed: rep.existed,
            bytes_sent: rep.bytes_sent,
            files_sent: rep.files_sent,
            files_deleted: rep.files_deleted,
            hashed: rep.hashed,
            files: rep.files,
        })
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishJson {
    #[serde(flatten)]
    target: Target,
    job: String,
    /// Declared outputs to copy back (relative to the repository root), into `dest`.
    #[serde(default)]
    outputs: Vec<String>,
    #[serde(default)]
    dest: Option<String>,
    /// Delete the Job's copy of the tree afterwards.
    #[serde(default)]
    remove: bool,
}

#[derive(NifMap)]
struct FinishEx {
    files: u64,
    bytes: u64,
}

/// After a Job: copy its outputs back (hardened extraction) and delete its copy of the tree.
#[rustler::nif]
fn k8s_finish_run<'a>(
    env: Env<'a>,
    cluster: ResourceArc<ClusterRes>,
    options_json: String,
    tag: Term<'a>,
) -> Result<rustler::Atom, NifError> {
    let o: FinishJson = sykli_core::pipeline::from_json(options_json.as_bytes(), "finish options")?;
    let target = o.target.clone();
    in_background(env, cluster, target, tag, move |cluster, r| async move {
        let mut ex = FinishEx { files: 0, bytes: 0 };
        if let (false, Some(dest)) = (o.outputs.is_empty(), &o.dest) {
            let rep = sync::sync_back(&cluster, &r, &o.job, &o.outputs, std::path::Path::new(dest))
                .await?;
            ex = FinishEx {
                files: rep.files,
                bytes: rep.bytes,
            };
        }
        if o.remove {
            sync::remove_run(&cluster, &r, &o.job).await?;
        }
        Ok(ex)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyJson {
    #[serde(flatten)]
    target: Target,
    /// Paths as Jobs see them: below `/artifacts/`.
    from: String,
    to: String,
    /// The run whose tasks' directories the paths are in.
    run_id: String,
}

#[derive(NifMap)]
struct CopyEx {
    files: u64,
    directories: u64,
    symlinks: u64,
    bytes: u64,
}

/// The artifact callbacks' copy: `from` to `to` on the artifact claim, in the cluster (the
/// claim's receiver pod runs `sykli-sync copy`). Paths outside `/artifacts/` are refused
/// here, before any API call. Answers `{tag, {:done, {:ok, map}}}` or an error.
#[rustler::nif]
fn k8s_copy_artifact<'a>(
    env: Env<'a>,
    cluster: ResourceArc<ClusterRes>,
    options_json: String,
    tag: Term<'a>,
) -> Result<rustler::Atom, NifError> {
    let o: CopyJson = sykli_core::pipeline::from_json(options_json.as_bytes(), "copy options")?;
    sync::artifact_rel(&o.from)?;
    sync::artifact_rel(&o.to)?;
    sync::check_run_id(&o.run_id)?;
    let target = Target {
        setting: "artifact_pvc",
        ..o.target.clone()
    };
    in_background(env, cluster, target, tag, move |cluster, r| async move {
        let rep = sync::copy_artifact(&cluster, &r, &o.run_id, &o.from, &o.to).await?;
        Ok(CopyEx {
            files: rep.files,
            directories: rep.directories,
            symlinks: rep.symlinks,
            bytes: rep.bytes,
        })
    })
}

/// Runs `work` with the claim's receiver on the runtime; its result arrives as one
/// `{tag, {:done, result}}` message. Returns at once.
fn in_background<'a, T, F>(
    env: Env<'a>,
    cluster: ResourceArc<ClusterRes>,
    target: Target,
    tag: Term<'a>,
    work: impl FnOnce(Arc<sykli_core::cluster::Cluster>, sync::Receiver) -> F + Send + 'static,
) -> Result<rustler::Atom, NifError>
where
    T: Encoder + Send + 'static,
    F: std::future::Future<Output = sykli_core::Result<T>> + Send + 'static,
{
    let cluster = Arc::clone(&cluster.cluster);
    spawn_answer(env, tag, async move {
        let r = sync::receiver_for(
            &cluster,
            &target.namespace,
            &target.claim,
            target.image(),
            target.setting,
        )
        .await?;
        work(cluster, r).await
    })
}
