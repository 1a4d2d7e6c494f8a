//! The S3 strategy across the NIF: pack, upload unless the bucket has the tree, once per
//! run (each Job's URL is signed when it is submitted: `k8s_run_job`'s `s3_source`). The
//! SDK's calls block on the NIF's tokio runtime from a thread of its blocking pool (packing
//! is blocking work too); the caller gets one `{tag, {:done, result}}` message.

use rustler::{Encoder, Env, NifMap, Term};
use serde::Deserialize;
use std::collections::BTreeMap;

use sykli_core::s3::S3Options;
use sykli_core::source::s3 as strategy;

use super::cluster::spawn_answer;
use super::NifError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckJson {
    s3: S3Options,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
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
    let o: strategy::PublishRequest =
        sykli_core::pipeline::from_json(options_json.as_bytes(), "s3 options")?;
    answer_later(env, tag, move || {
        let r = strategy::publish_request(&o)?;
        let p = r.published;
        Ok(PublishEx {
            key: p.key,
            tree: p.tree,
            sha256: p.sha256,
            size: p.size,
            uploaded_bytes: p.uploaded_bytes,
            existed: p.existed,
            files: p.files,
            hashed: p.hashed,
            object: r.object,
            warnings: p.warnings,
        })
    })
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
        let c = strategy::check_bucket(&o.s3, &o.env)?;
        Ok(CheckEx {
            bucket: c.bucket,
            region: c.region,
            credentials: c.credentials,
            prefix: c.prefix,
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
