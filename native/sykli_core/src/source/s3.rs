//! The S3 strategy: the laptop packs the same file set as the PVC strategy into a
//! deterministic gzip-compressed tar keyed by its tree hash (`publish`), uploads it unless
//! the bucket already has exactly it (content verified), and each Job's init container gets
//! only a presigned GET URL, signed for that Job when it is submitted and kept in a Secret
//! the Job owns (never in the manifest): `sykli-sync fetch` downloads it (ranged requests
//! in parallel above a threshold), verifies its size and SHA-256, and extracts the tree
//! with the hardened rules into the Job's workspace volume. No cloud credentials ever
//! reach the pod.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, SecretKeySelector, VolumeMount};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sykli_sync::{diff, write_archive, Manifest};

use super::git_clone::{check_image, restricted_security_context};
use super::pvc::DEFAULT_SYNC_IMAGE;
use super::upload::LocalTree;
use crate::error::{Error, Result};
use crate::s3::credentials::{self, ProcessEnv};
use crate::s3::{ca_bundle, Bucket, S3Options, MAX_PRESIGN_SECONDS};

/// The environment variable that carries the presigned URL into the init container.
pub const URL_ENV: &str = "SYKLI_SOURCE_URL";
/// The environment variable that carries `s3.ca_bundle`'s certificates (PEM) into it.
pub const CA_ENV: &str = "SYKLI_SOURCE_CA";
/// The key of the URL in the Job's own Secret ([`url_secret_name`]).
pub const URL_SECRET_KEY: &str = "url";
/// How much longer than the task's own timeout a Job's URL lives: the Job's deadline counts
/// from its start, and scheduling, the image pulls and a slow API come before the fetch.
pub const URL_MARGIN_SECONDS: u64 = 10 * 60;
/// What a task without a timeout counts as, for its URL: nothing bounds when its fetch
/// starts, and a pod that has not fetched its source within the hour is stuck anyway.
pub const UNTIMED_TASK_SECONDS: u64 = 3600;
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
    /// For the user: an object at the key that was not this tree's archive, replaced.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Packs `local` only, for a dry run: the archive's checksum and size, hashed as it is
/// written to nowhere. No file, no call to the bucket.
pub fn pack_only(bucket: &Bucket, local: &LocalTree) -> Result<Published> {
    let (sha256, size) = pack(local, io::sink(), Path::new("the dry run's archive"))?;
    Ok(published(bucket, local, sha256, size, 0, false))
}

/// Packs `local` and uploads it as the tree's archive, unless the bucket already holds
/// exactly it. Any failure is an error: nothing falls back.
///
/// An object at the key is trusted only for its content: anyone who may write the prefix
/// can plant one with our metadata, and every Job would run it. The archive is
/// deterministic, so the local pack (hashed only) says what the object must be; the
/// object is streamed and hashed beside it, and anything else (other bytes, another size,
/// metadata that does not say so) is replaced, with a warning.
///
/// The upload's archive is written in a fresh private directory made inside `scratch`
/// (mode 0700, a random name created exclusively: nothing of a shared /tmp is reused or
/// followed) and removed with everything in it however the upload ends.
pub fn publish(bucket: &Bucket, local: &LocalTree, scratch: &Path) -> Result<Published> {
    bucket.check()?;
    let key = bucket.archive_key(&local.tree);
    let mut warnings = Vec::new();
    if let Some(info) = bucket.head(&key)? {
        // The object is streamed and hashed on the runtime while this thread packs.
        let served = bucket.spawn_digest(&key)?;
        let packed = pack(local, io::sink(), Path::new("the local archive"));
        let served = crate::s3::block_on(served).unwrap_or_else(|e| {
            Err(Error::S3 {
                kind: "s3",
                message: format!("GET {}: {e}", bucket.describe(&key)),
            })
        });
        let (sha256, size) = packed?;
        let claimed = (info.sha256.as_deref(), info.size);
        match served? {
            Some(served)
                if served == (sha256.clone(), size) && claimed == (Some(&sha256), size) =>
            {
                return Ok(published(bucket, local, sha256, size, 0, true));
            }
            served => warnings.push(format!(
                "{} was not this tree's archive ({}): uploading it again",
                bucket.describe(&key),
                mismatch(&sha256, size, claimed, served.as_ref())
            )),
        }
    }
    let dir = private_dir(scratch)?;
    let file = dir.path().join(format!("{}.tar.gz", local.tree));
    let mut p = std::fs::File::create_new(&file)
        .map_err(|e| io_err(&file, e))
        .and_then(|out| pack(local, out, &file))
        .and_then(|(sha256, size)| {
            let sent = bucket.put_file(&key, &file, &sha256, size, &local.tree)?;
            Ok(published(bucket, local, sha256, size, sent, false))
        })?;
    p.warnings = warnings;
    Ok(p)
}

/// Why an existing object is not the archive: what differs, for the warning.
fn mismatch(
    sha256: &str,
    size: u64,
    claimed: (Option<&str>, u64),
    served: Option<&(String, u64)>,
) -> String {
    match served {
        None => "it disappeared while it was checked".into(),
        Some((_, n)) if *n != size => format!("{n} bytes where the archive has {size}"),
        Some((s, _)) if s != sha256 => {
            format!("its content hashes to {s}, the archive to {sha256}")
        }
        _ => match claimed {
            (Some(c), _) if c != sha256 => format!("its metadata claims SHA-256 {c}"),
            (None, _) => "it has no x-amz-meta-sykli-sha256".into(),
            (_, n) => format!("HEAD says {n} bytes where the archive has {size}"),
        },
    }
}

/// A fresh directory of this user only (0700), with a random name created exclusively
/// inside `parent` (made when missing); removed with its contents when dropped.
fn private_dir(parent: &Path) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    tempfile::Builder::new()
        .prefix("sykli-s3-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(|e| io_err(parent, e))
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
        warnings: Vec::new(),
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

/// What the manifest needs: the published archive (its URL is signed per Job at
/// submission, see [`ArchiveSigning`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3SourceOptions {
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
    /// `s3.ca_bundle` (a PEM file on this machine): the fetch trusts its CAs.
    #[serde(default)]
    pub ca_bundle: Option<String>,
}

#[derive(Debug, Clone)]
pub struct S3Plan {
    pub sha256: String,
    pub size: u64,
    pub tree: String,
    pub key: Option<String>,
    pub image: String,
    pub parallel: u32,
    pub parallel_min: u64,
    /// (commit, git image) when the archive is HEAD as a git bundle.
    pub bundle: Option<(String, String)>,
    /// The certificates of `s3.ca_bundle`, checked: the roots the fetch trusts instead of
    /// the public ones.
    pub ca_pem: Option<String>,
}

impl S3Plan {
    pub fn new(o: &S3SourceOptions) -> Result<S3Plan> {
        let invalid = |key: &str, message: String| Error::InvalidOption {
            key: key.into(),
            message,
        };
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
            ca_pem: match &o.ca_bundle {
                None => None,
                Some(path) => Some(ca_bundle::read(Path::new(path))?.pem),
            },
        })
    }

    /// The init containers of Job `job` that fill the workspace volume: the fetch of the
    /// archive, and for a git bundle (extracted next to the download), the checkout of its
    /// commit.
    pub fn init_containers(&self, workspace: &str, download: &str, job: &str) -> Vec<Container> {
        match &self.bundle {
            None => vec![self.fetch(workspace, download, WORKSPACE, job)],
            Some((sha, git_image)) => vec![
                self.fetch(workspace, download, DOWNLOAD_PATH, job),
                super::pvc::bundle_checkout(workspace, download, sha, git_image),
            ],
        }
    }

    fn fetch(&self, workspace: &str, download: &str, to: &str, job: &str) -> Container {
        let mut args: Vec<String> = [
            super::pvc::SYNC_BIN,
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
        // From the Job's own Secret: whoever may read Jobs and pods does not get the URL.
        let mut env = vec![EnvVar {
            name: URL_ENV.into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: url_secret_name(job),
                    key: URL_SECRET_KEY.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        }];
        // Certificates are public: a plain value, read by name (never through a shell).
        if let Some(pem) = &self.ca_pem {
            args.extend(["--ca-env".to_string(), CA_ENV.to_string()]);
            env.push(EnvVar {
                name: CA_ENV.into(),
                value: Some(pem.clone()),
                value_from: None,
            });
        }
        Container {
            name: "sykli-fetch".into(),
            image: Some(self.image.clone()),
            command: Some(args),
            env: Some(env),
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

/// The Secret holding Job `job`'s source URL: created right before the Job, owned by it.
/// A Job name is a DNS label (at most 63 characters), so this is a valid Secret name.
pub fn url_secret_name(job: &str) -> String {
    format!("{job}-source")
}

/// How long the URL of a Job with this `activeDeadlineSeconds` lives: the task's own
/// timeout ([`UNTIMED_TASK_SECONDS`] without one) plus [`URL_MARGIN_SECONDS`], within the
/// seven days SigV4 allows (the fetch comes first in the pod, long before that).
pub fn url_lifetime(active_deadline_seconds: Option<i64>) -> u64 {
    let task = active_deadline_seconds
        .filter(|s| *s > 0)
        .map_or(UNTIMED_TASK_SECONDS, |s| s as u64);
    task.saturating_add(URL_MARGIN_SECONDS)
        .min(MAX_PRESIGN_SECONDS)
}

/// A URL signed for one Job.
#[derive(Clone)]
pub struct JobUrl {
    pub url: String,
    /// Its X-Amz-Expires, in seconds.
    pub expires: u64,
    /// For the user: the URL may die before the Job fetches it.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for JobUrl {
    // The URL is a capability: never in a log or a panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobUrl")
            .field("expires", &self.expires)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// Signs the GET of `key` for a Job with this `activeDeadlineSeconds` ([`url_lifetime`]).
/// Temporary credentials that expire sooner take the URL with them: that is a warning.
pub fn presign_for_job(
    bucket: &Bucket,
    key: &str,
    active_deadline_seconds: Option<i64>,
) -> Result<JobUrl> {
    let expires = url_lifetime(active_deadline_seconds);
    let mut warnings = Vec::new();
    if let Some(left) = bucket.credentials_lifetime().filter(|left| *left < expires) {
        warnings.push(format!(
            "the temporary credentials ({}) expire in {} min, and this Job's presigned URL with them \
             (it needs {} min): if its pod starts later it cannot fetch the source (ask for longer \
             sessions, or use long-lived credentials)",
            bucket
                .creds
                .as_ref()
                .map(|c| c.source.as_str())
                .unwrap_or("?"),
            left / 60,
            expires.div_ceil(60)
        ));
    }
    Ok(JobUrl {
        url: bucket.presign_get(key, expires)?,
        expires,
        warnings,
    })
}

/// What signs a Job's URL of the published archive when the Job is submitted: the bucket
/// settings, the archive's key, and the environment of the AWS chain (the caller's, when
/// given: a VM's `System.put_env` is not the OS environment). Resolved per Job, so
/// temporary credentials are fresh for each.
#[derive(Clone)]
pub struct ArchiveSigning {
    pub s3: S3Options,
    pub key: String,
    pub env: Option<BTreeMap<String, String>>,
}

impl std::fmt::Debug for ArchiveSigning {
    // The environment holds the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveSigning")
            .field("bucket", &self.s3.bucket)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ArchiveSigning {
    /// Resolves the credentials and signs the URL (blocking: the chain may ask STS, SSO, a
    /// process, container credentials or instance metadata).
    pub fn presign(&self, active_deadline_seconds: Option<i64>) -> Result<JobUrl> {
        let bucket = Bucket::new(&self.s3, chain_env(&self.env))?;
        presign_for_job(&bucket, &self.key, active_deadline_seconds)
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

/// What the publish of a run asks (the NIF's `k8s_s3_publish`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub root: String,
    #[serde(default)]
    pub excludes: Vec<String>,
    /// `source_sync: :git`: this directory's `sykli.bundle` instead of the tree.
    #[serde(default)]
    pub bundle_dir: Option<String>,
    pub s3: S3Options,
    /// Where the archive is packed before the upload.
    pub scratch: String,
    /// Pack only: no credentials, no call to the bucket.
    #[serde(default)]
    pub dry_run: bool,
    /// The AWS variables and HOME as the caller sees them (the BEAM's environment is not
    /// the process's), else the process's.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

/// What a publish did, and the object's URL without a signature.
#[derive(Debug, Clone)]
pub struct PublishReport {
    pub published: Published,
    pub object: String,
}

/// Packs the tree (or the bundle) and publishes it, or packs only for a dry run. Blocking.
pub fn publish_request(r: &PublishRequest) -> Result<PublishReport> {
    let env = chain_env(&r.env);
    let bucket = if r.dry_run {
        Bucket::offline(&r.s3, env)?
    } else {
        Bucket::new(&r.s3, env)?
    };
    let local = match &r.bundle_dir {
        Some(dir) => super::upload::bundle_tree(Path::new(dir))?,
        None => super::upload::local_tree(Path::new(&r.root), &r.excludes)?,
    };
    let published = if r.dry_run {
        pack_only(&bucket, &local)?
    } else {
        publish(&bucket, &local, Path::new(&r.scratch))?
    };
    let object = bucket.object_url(&published.key);
    Ok(PublishReport { published, object })
}

/// What `sykli info --check` shows of the bucket.
#[derive(Debug, Clone)]
pub struct BucketCheck {
    pub bucket: String,
    pub region: String,
    /// Where the credentials came from.
    pub credentials: String,
    /// The archives' prefix (`<prefix>sykli-source/`).
    pub prefix: String,
}

/// Resolves the credentials and checks that the bucket exists and lets them list the
/// archives' prefix. Blocking.
pub fn check_bucket(s3: &S3Options, env: &Option<BTreeMap<String, String>>) -> Result<BucketCheck> {
    let bucket = Bucket::new(s3, chain_env(env))?;
    bucket.check()?;
    Ok(BucketCheck {
        credentials: bucket
            .creds
            .as_ref()
            .map(|c| c.source.clone())
            .unwrap_or_default(),
        prefix: format!("{}{}", bucket.prefix, crate::s3::OBJECT_DIR),
        bucket: bucket.name,
        region: bucket.region,
    })
}

fn chain_env(env: &Option<BTreeMap<String, String>>) -> &dyn credentials::Env {
    match env {
        Some(map) => map,
        None => &ProcessEnv,
    }
}
