//! The S3 strategy: the laptop packs the same file set as the PVC strategy into a
//! deterministic gzip-compressed tar keyed by its tree hash (`publish`), uploads it unless
//! the bucket already has it, and each Job's init container gets only a presigned GET URL:
//! `sykli-sync fetch` downloads it (ranged requests in parallel above a threshold),
//! verifies its size and SHA-256, and extracts the tree with the hardened rules into the
//! Job's workspace volume. No cloud credentials ever reach the pod.

use std::io::{self, Write};
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, EnvVar, VolumeMount};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sykli_sync::{diff, write_archive, Manifest};

use super::git_clone::{check_image, restricted_security_context};
use super::pvc::DEFAULT_SYNC_IMAGE;
use super::upload::LocalTree;
use crate::error::{Error, Result};
use crate::s3::Bucket;

/// The environment variable that carries the presigned URL into the init container.
pub const URL_ENV: &str = "SYKLI_SOURCE_URL";
/// Where the init container keeps the download (an emptyDir of its own).
pub const DOWNLOAD_PATH: &str = "/sykli-download";
const WORKSPACE: &str = "/workspace";
/// Parallel ranged requests from this size up.
pub const DEFAULT_PARALLEL_MIN: u64 = 64 << 20;
pub const DEFAULT_PARALLEL: u32 = 4;

/// What `publish` did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Published {
    pub key: String,
    pub tree: String,
    /// SHA-256 and size of the archive object.
    pub sha256: String,
    pub size: u64,
    /// Bytes sent to the bucket (0: it already had this tree).
    pub uploaded_bytes: u64,
    pub existed: bool,
    pub files: usize,
    pub hashed: usize,
}

/// Packs `local` only, for a dry run: the archive's checksum and size, hashed as it is
/// written to nowhere. No file, no call to the bucket.
pub fn pack_only(bucket: &Bucket, local: &LocalTree) -> Result<Published> {
    let (sha256, size) = pack(local, io::sink(), Path::new("the dry run's archive"))?;
    Ok(published(bucket, local, sha256, size, 0, false))
}

/// Packs `local` into `scratch` and uploads it as the tree's archive, unless the bucket
/// already holds it (with our checksum). Any failure is an error: nothing falls back.
pub fn publish(bucket: &Bucket, local: &LocalTree, scratch: &Path) -> Result<Published> {
    bucket.check()?;
    let key = bucket.archive_key(&local.tree);
    if let Some(info) = bucket.head(&key)? {
        if let Some(sha) = info.sha256.filter(|s| is_sha256(s)) {
            return Ok(published(bucket, local, sha, info.size, 0, true));
        }
    }
    std::fs::create_dir_all(scratch).map_err(|e| io_err(scratch, e))?;
    let file = scratch.join(format!("{}.tar.gz.{}", local.tree, std::process::id()));
    let result = std::fs::File::create(&file)
        .map_err(|e| io_err(&file, e))
        .and_then(|out| pack(local, out, &file))
        .and_then(|(sha256, size)| {
            let sent = bucket.put_file(&key, &file, &sha256, size, &local.tree)?;
            Ok(published(bucket, local, sha256, size, sent, false))
        });
    let _ = std::fs::remove_file(&file);
    result
}

fn published(
    bucket: &Bucket,
    local: &LocalTree,
    sha256: String,
    size: u64,
    uploaded_bytes: u64,
    existed: bool,
) -> Published {
    Published {
        key: bucket.archive_key(&local.tree),
        tree: local.tree.clone(),
        sha256,
        size,
        uploaded_bytes,
        existed,
        files: local.manifest.len(),
        hashed: local.hashed,
    }
}

/// Writes the whole tree as one archive into `out` (named `what` in errors), hashing it on
/// the way.
fn pack(local: &LocalTree, out: impl Write, what: &Path) -> Result<(String, u64)> {
    let mut w = Hashing {
        inner: io::BufWriter::with_capacity(1 << 20, out),
        hash: Sha256::new(),
        size: 0,
    };
    let delta = diff(&Manifest::new(), &local.manifest);
    write_archive(&local.root, None, &local.manifest, &delta, &mut w).map_err(|e| {
        Error::InvalidOption {
            key: "source".into(),
            message: format!("the working tree cannot be packed: {e}"),
        }
    })?;
    w.inner.flush().map_err(|e| io_err(what, e))?;
    let sha = w
        .hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((sha, w.size))
}

struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What the manifest needs: the published archive and its presigned URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3SourceOptions {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub tree: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub parallel: Option<u32>,
    #[serde(default)]
    pub parallel_min: Option<u64>,
    /// `source_sync: :git`: the archive holds `sykli.bundle` (HEAD as a git bundle), which a
    /// git container checks out at this commit.
    #[serde(default)]
    pub bundle: Option<super::pvc::BundleOptions>,
}

#[derive(Debug, Clone)]
pub struct S3Plan {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub tree: String,
    pub key: Option<String>,
    pub image: String,
    pub parallel: u32,
    pub parallel_min: u64,
    /// (commit, git image) when the archive is HEAD as a git bundle.
    pub bundle: Option<(String, String)>,
}

impl S3Plan {
    pub fn new(o: &S3SourceOptions) -> Result<S3Plan> {
        let invalid = |key: &str, message: String| Error::InvalidOption {
            key: key.into(),
            message,
        };
        if !o.url.starts_with("https://") && !o.url.starts_with("http://") {
            return Err(invalid(
                "s3",
                "the presigned URL is not an http(s) URL".into(),
            ));
        }
        if !is_sha256(&o.sha256) {
            return Err(invalid(
                "s3.sha256",
                format!("{:?} is not a SHA-256", o.sha256),
            ));
        }
        if !is_sha256(&o.tree) {
            return Err(invalid(
                "s3.tree",
                format!("{:?} is not a tree hash", o.tree),
            ));
        }
        let image = o.image.clone().unwrap_or_else(|| DEFAULT_SYNC_IMAGE.into());
        check_image(&image).map_err(|why| invalid("sync_image", format!("{image:?} {why}")))?;
        Ok(S3Plan {
            url: o.url.clone(),
            sha256: o.sha256.clone(),
            size: o.size,
            tree: o.tree.clone(),
            key: o.key.clone(),
            image,
            parallel: o.parallel.unwrap_or(DEFAULT_PARALLEL).clamp(1, 64),
            parallel_min: o.parallel_min.unwrap_or(DEFAULT_PARALLEL_MIN),
            bundle: match &o.bundle {
                None => None,
                Some(b) => Some(super::pvc::check_bundle(b)?),
            },
        })
    }

    /// The init containers that fill the workspace volume: the fetch of the archive, and
    /// for a git bundle (extracted next to the download), the checkout of its commit.
    pub fn init_containers(&self, workspace: &str, download: &str) -> Vec<Container> {
        match &self.bundle {
            None => vec![self.fetch(workspace, download, WORKSPACE)],
            Some((sha, git_image)) => vec![
                self.fetch(workspace, download, DOWNLOAD_PATH),
                super::pvc::bundle_checkout(workspace, download, sha, git_image),
            ],
        }
    }

    fn fetch(&self, workspace: &str, download: &str, to: &str) -> Container {
        let args: Vec<String> = [
            "sykli-sync",
            "fetch",
            "--url-env",
            URL_ENV,
            "--sha256",
            &self.sha256,
            "--size",
            &self.size.to_string(),
            "--tree",
            &self.tree,
            "--to",
            to,
            "--download",
            &format!("{DOWNLOAD_PATH}/.sykli-source.tar.gz"),
            "--parallel",
            &self.parallel.to_string(),
            "--parallel-min",
            &self.parallel_min.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Container {
            name: "sykli-fetch".into(),
            image: Some(self.image.clone()),
            command: Some(args),
            env: Some(vec![EnvVar {
                name: URL_ENV.into(),
                value: Some(self.url.clone()),
                value_from: None,
            }]),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: workspace.into(),
                    mount_path: WORKSPACE.into(),
                    ..Default::default()
                },
                VolumeMount {
                    name: download.into(),
                    mount_path: DOWNLOAD_PATH.into(),
                    ..Default::default()
                },
            ]),
            security_context: Some(restricted_security_context()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        }
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
