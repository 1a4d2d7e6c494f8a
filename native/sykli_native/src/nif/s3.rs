//! The S3 strategy across the NIF: pack, upload unless the bucket has the tree, once per
//! run (each Job's URL is signed when it is submitted: `k8s_run_job`'s `s3_source`).
//! Blocking HTTP on the tokio runtime's blocking pool; the caller gets one
//! `{tag, {:done, result}}` message.

use rustler::{Encoder, Env, NifMap, Term};
use serde::Deserialize;
use std::collections::BTreeMap;

use sykli_core::s3::{
    credentials::{self, ProcessEnv},
    Bucket, S3Options,
};
use sykli_core::source::{s3 as strategy, upload};

use super::cluster::spawn_answer;
use super::NifError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishJson {
    root: String,
    #[serde(default)]
    excludes: Vec<String>,
    /// `source_sync: :git`: this directory's `sykli.bundle` instead of the tree.
    #[serde(default)]
    bundle_dir: Option<String>,
    s3: S3Options,
    /// Where the archive is packed before the upload.
    scratch: String,
    /// Pack only: no credentials, no call to the bucket.
    #[serde(default)]
    dry_run: bool,
    /// The AWS variables and HOME as the VM sees them (System.put_env changes the VM's
    /// copy, not the OS environment this library would read).
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckJson {
    s3: S3Options,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
}

/// The chain's environment: the VM's, when Elixir passed it.
fn chain_env(env: &Option<BTreeMap<String, String>>) -> &dyn credentials::Env {
    match env {
        Some(map) => map,
        None => &ProcessEnv,
    }
}

#[derive(NifMap)]
struct PublishEx {
    key: String,
    tree: String,
    sha256: String,
    size: u64,
    uploaded_bytes: u64,
    existed: bool,
    files: usize,
    hashed: usize,
    object: String,
    /// For the user (an object at the key that was not this tree's archive, replaced).
    warnings: Vec<String>,
}

/// Publishes the source archive; answers `{tag, {:done, {:ok, map}}}` or an error.
#[rustler::nif]
fn k8s_s3_publish<'a>(
    env: Env<'a>,
    options_json: String,
    tag: Term<'a>,
) -> Result<rustler::Atom, NifError> {
    let o: PublishJson = sykli_core::pipeline::from_json(options_json.as_bytes(), "s3 options")?;
    answer_later(env, tag, move || publish(o))
}

#[derive(NifMap)]
struct CheckEx {
    bucket: String,
    region: String,
    credentials: String,
    prefix: String,
}

/// Resolves the credentials and checks that the bucket exists and lets them list the
/// archives' prefix (`sykli info --check`); answers like `k8s_s3_publish`.
#[rustler::nif]
fn k8s_s3_check<'a>(
    env: Env<'a>,
    s3_json: String,
    tag: Term<'a>,
) -> Result<rustler::Atom, NifError> {
    let o: CheckJson = sykli_core::pipeline::from_json(s3_json.as_bytes(), "s3 options")?;
    answer_later(env, tag, move || {
        let bucket = Bucket::new(&o.s3, chain_env(&o.env))?;
        bucket.check()?;
        Ok(CheckEx {
            credentials: bucket
                .creds
                .as_ref()
                .map(|c| c.source.clone())
                .unwrap_or_default(),
            prefix: format!("{}{}", bucket.prefix, sykli_core::s3::OBJECT_DIR),
            bucket: bucket.name,
            region: bucket.region,
        })
    })
}

/// Runs blocking `work` on the runtime's blocking pool, answered like every background NIF.
fn answer_later<T: Encoder + Send + 'static>(
    env: Env,
    tag: Term,
    work: impl FnOnce() -> sykli_core::Result<T> + Send + 'static,
) -> Result<rustler::Atom, NifError> {
    spawn_answer(env, tag, async move {
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|e| Err(sykli_core::Error::cluster("api", e.to_string())))
    })
}

fn publish(o: PublishJson) -> sykli_core::Result<PublishEx> {
    let bucket = if o.dry_run {
        Bucket::offline(&o.s3, chain_env(&o.env))?
    } else {
        Bucket::new(&o.s3, chain_env(&o.env))?
    };
    let local = match &o.bundle_dir {
        Some(dir) => upload::bundle_tree(std::path::Path::new(dir))?,
        None => upload::local_tree(std::path::Path::new(&o.root), &o.excludes)?,
    };
    let scratch = std::path::Path::new(&o.scratch);
    let p = if o.dry_run {
        strategy::pack_only(&bucket, &local)?
    } else {
        strategy::publish(&bucket, &local, scratch)?
    };
    let object = bucket.object_url(&p.key);
    Ok(PublishEx {
        key: p.key,
        tree: p.tree,
        sha256: p.sha256,
        size: p.size,
        uploaded_bytes: p.uploaded_bytes,
        existed: p.existed,
        files: p.files,
        hashed: p.hashed,
        object,
        warnings: p.warnings,
    })
}
