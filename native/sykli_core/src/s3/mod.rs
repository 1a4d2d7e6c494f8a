//! The S3 strategy's object storage, on the laptop or CI side, through the AWS SDK for Rust
//! (`aws-config`, `aws-sdk-s3`): where the bucket is, the standard credential chain
//! ([`credentials`]), the CAs of a private endpoint ([`ca_bundle`]), and the few calls the
//! strategy makes (ListObjectsV2, HEAD, a streamed GET, PUT, multipart upload, presigned
//! GET).
//!
//! The SDK is async and this API blocks: [`block_on`] runs the SDK's futures on the
//! caller's tokio runtime when it has a multi-threaded one (the NIF's, from a blocking
//! thread of its pool; a test's) and on a runtime of this module otherwise. Callers keep it
//! off the BEAM's schedulers (the NIF runs it on its runtime's blocking pool).

pub mod ca_bundle;
pub mod credentials;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{
    ConfigBag, Intercept, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    RuntimeComponents, SharedHttpClient,
};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls;
use aws_types::service_config::ServiceConfigKey;
use aws_types::SdkConfig;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use credentials::Credentials;

/// AWS CLI's defaults: multipart from 64 MiB (ours), parts of 16 MiB; S3's minimum part
/// is 5 MiB.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 << 20;
pub const DEFAULT_MULTIPART_CHUNKSIZE: u64 = 16 << 20;
pub const MIN_PART: u64 = 5 << 20;
/// Where archives go under the configured prefix: a lifecycle rule on
/// `<prefix>sykli-source/` can expire them.
pub const OBJECT_DIR: &str = "sykli-source/";
/// SigV4 refuses presigned URLs valid for longer than seven days.
pub const MAX_PRESIGN_SECONDS: u64 = 7 * 24 * 3600;
/// Parts of a multipart upload sent at once.
const PARALLEL_PARTS: usize = 4;
/// What a bucket is assumed to be in when nothing says (as the AWS CLI does).
const FALLBACK_REGION: &str = "us-east-1";

/// The `s3:` settings of `.sykli/config.exs`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    pub bucket: String,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// `https://host[:port]` of an S3-compatible service (MinIO, R2, GCS interop).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`); default: virtual-hosted for AWS and named
    /// hosts, path-style for IP addresses and localhost.
    #[serde(default)]
    pub force_path_style: Option<bool>,
    #[serde(default)]
    pub multipart_threshold: Option<u64>,
    #[serde(default)]
    pub multipart_chunksize: Option<u64>,
    /// A PEM file of the CAs of the endpoint's certificate (see [`ca_bundle`]).
    #[serde(default)]
    pub ca_bundle: Option<String>,
}

/// A bucket, resolved: how to address its objects and with which credentials.
#[derive(Clone)]
pub struct Bucket {
    pub name: String,
    pub region: String,
    pub prefix: String,
    /// None for a dry run, which calls nothing.
    pub creds: Option<Credentials>,
    pub multipart_threshold: u64,
    pub multipart_chunksize: u64,
    /// `scheme://host[:port]` when the bucket is not on AWS's own endpoints.
    endpoint: Option<String>,
    path_style: bool,
    /// The objects' URLs without a key: `https://bucket.s3.region.amazonaws.com`,
    /// `http://127.0.0.1:9000/bucket`.
    base_url: String,
    /// The checked CA bundle, if any.
    pub ca: Option<ca_bundle::CaBundle>,
    /// Region, retries, timeouts, the sleep and time sources of the SDK.
    sdk: SdkConfig,
    /// The S3 client's HTTPS client (with the bundle's roots when there is one).
    http: SharedHttpClient,
}

/// An object's SHA-256 (lowercase hex) and size.
pub type Digest256 = (String, u64);

/// What a HEAD found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// `x-amz-meta-sykli-sha256`, when the object is one of ours.
    pub sha256: Option<String>,
}

/// Runs a future of the SDK to its end from blocking code: on the caller's multi-threaded
/// tokio runtime when there is one (from one of its workers, or a thread of its blocking
/// pool), else on a runtime of this module's own. Never call it from an async task of a
/// current-thread runtime that other work shares: that thread waits.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(fut))
        }
        // A current-thread runtime cannot be blocked on from inside: another thread waits.
        Ok(_) => std::thread::scope(|s| {
            s.spawn(|| own_runtime().block_on(fut))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        }),
        Err(_) => own_runtime().block_on(fut),
    }
}

/// Where [`block_on`] runs a future (to spawn beside it).
pub fn runtime_handle() -> tokio::runtime::Handle {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => h,
        _ => own_runtime().handle().clone(),
    }
}

fn own_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sykli-s3")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("the S3 runtime cannot start: {e}"))
    })
}

impl Bucket {
    /// Checks the settings, then resolves the region and the credentials with the SDK's
    /// standard chains (STS, SSO, a process, container credentials or IMDS as they say),
    /// before any call to the bucket.
    pub fn new(opts: &S3Options, env: &dyn credentials::Env) -> Result<Bucket> {
        let vars = env.vars();
        block_on(Bucket::resolve(opts, vars, true))
    }

    /// The bucket's addressing only, without credentials (a dry run): nothing is called,
    /// not even instance metadata for the region.
    pub fn offline(opts: &S3Options, env: &dyn credentials::Env) -> Result<Bucket> {
        let mut vars = env.vars();
        vars.insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
        block_on(Bucket::resolve(opts, vars, false))
    }

    async fn resolve(
        opts: &S3Options,
        vars: HashMap<String, String>,
        with_credentials: bool,
    ) -> Result<Bucket> {
        let invalid = |key: &str, message: String| Error::InvalidOption {
            key: key.into(),
            message,
        };
        if !valid_bucket(&opts.bucket) {
            return Err(invalid(
                "s3.bucket",
                format!(
                    "{:?} is not a bucket name (3-63 lowercase letters, digits, dots and hyphens)",
                    opts.bucket
                ),
            ));
        }
        let prefix = match opts.prefix.as_deref().unwrap_or("") {
            "" => String::new(),
            p if p.starts_with('/') || p.split('/').any(|s| s == "..") => {
                return Err(invalid(
                    "s3.prefix",
                    format!("{p:?} must be a relative key prefix without .."),
                ))
            }
            p if p.ends_with('/') => p.to_string(),
            p => format!("{p}/"),
        };
        let threshold = opts
            .multipart_threshold
            .unwrap_or(DEFAULT_MULTIPART_THRESHOLD);
        let chunk = opts
            .multipart_chunksize
            .unwrap_or(DEFAULT_MULTIPART_CHUNKSIZE);
        if chunk < MIN_PART {
            return Err(invalid(
                "s3.multipart_chunksize",
                format!("{chunk} bytes is below S3's minimum part size of 5 MiB"),
            ));
        }
        if let Some(e) = &opts.endpoint {
            endpoint_host(e)?;
        }
        let ca = match &opts.ca_bundle {
            Some(path) => Some(ca_bundle::read(Path::new(path))?),
            None => None,
        };
        // The credential providers (STS, SSO, IMDS, containers) keep the system's roots;
        // the bundle is the bucket endpoint's.
        let providers_http = https_client(None);
        let http = match &ca {
            Some(ca) => https_client(Some(&ca.pem)),
            None => providers_http.clone(),
        };

        let loader = || {
            aws_config::defaults(BehaviorVersion::latest())
                .env(aws_types::os_shim_internal::Env::from(vars.clone()))
                .http_client(providers_http.clone())
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(30))
                        .build(),
                )
        };
        // The SDK's region chain (environment, profile, instance metadata), else us-east-1.
        let region = match &opts.region {
            Some(r) => r.clone(),
            None => loader()
                .no_credentials()
                .load()
                .await
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| FALLBACK_REGION.into()),
        };
        let loader = loader().region(Region::new(region.clone()));
        let sdk = if with_credentials {
            loader.load().await
        } else {
            loader.no_credentials().load().await
        };

        // As the SDK's S3 client resolves it: AWS_ENDPOINT_URL_S3 or the profile's `s3`
        // services section, then AWS_ENDPOINT_URL or the profile's endpoint_url.
        let endpoint = opts.endpoint.clone().or_else(|| {
            let key = ServiceConfigKey::builder()
                .service_id("S3")
                .env("AWS_ENDPOINT_URL")
                .profile("endpoint_url")
                .build()
                .ok()?;
            sdk.service_config()
                .and_then(|c| c.load_config(key))
                .or_else(|| sdk.endpoint_url().map(str::to_string))
        });
        let (scheme, endpoint_host, named) = match &endpoint {
            Some(e) => endpoint_host(e)?,
            None => (
                "https".to_string(),
                format!("s3.{region}.amazonaws.com"),
                true,
            ),
        };
        let path_style = opts
            .force_path_style
            .unwrap_or(!named || opts.bucket.contains('.'));
        let base_url = if path_style {
            format!("{scheme}://{endpoint_host}/{}", opts.bucket)
        } else {
            format!("{scheme}://{}.{endpoint_host}", opts.bucket)
        };
        let creds = if with_credentials {
            Some(credentials::resolve(&sdk, &vars).await?)
        } else {
            None
        };
        Ok(Bucket {
            name: opts.bucket.clone(),
            region,
            prefix,
            creds,
            multipart_threshold: threshold,
            multipart_chunksize: chunk,
            endpoint: endpoint.map(|_| format!("{scheme}://{endpoint_host}")),
            path_style,
            base_url,
            ca,
            sdk,
            http,
        })
    }

    /// Seconds until the credentials expire, when they are temporary and say so: a
    /// presigned URL stops working then, whatever its X-Amz-Expires.
    pub fn credentials_lifetime(&self) -> Option<u64> {
        let at = self.creds.as_ref()?.expires_at?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Some(at.saturating_sub(now))
    }

    /// The key of the archive of `tree`.
    pub fn archive_key(&self, tree: &str) -> String {
        format!("{}{OBJECT_DIR}{tree}.tar.gz", self.prefix)
    }

    /// `s3://bucket/key`, for messages.
    pub fn describe(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    /// The object's URL without a signature (what a dry run shows).
    pub fn object_url(&self, key: &str) -> String {
        format!("{}/{}", self.base_url, encode_key(key))
    }

    /// A client of the SDK signing with [`Bucket::creds`] as they are now.
    fn client(&self) -> Result<aws_sdk_s3::Client> {
        let c = self.creds.as_ref().ok_or_else(|| Error::InvalidOption {
            key: "s3 credentials".into(),
            message: "no credentials were resolved (a dry run calls nothing)".into(),
        })?;
        let creds = aws_sdk_s3::config::Credentials::new(
            &c.access_key_id,
            &c.secret_access_key,
            c.session_token.clone(),
            c.expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            "sykli",
        );
        let mut b = aws_sdk_s3::config::Builder::from(&self.sdk)
            .credentials_provider(creds)
            .http_client(self.http.clone())
            .force_path_style(self.path_style)
            // Only what S3 requires: S3-compatible services differ on the newer checksum
            // headers, and a checksum header in a presigned GET would have to be sent too.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e);
        }
        Ok(aws_sdk_s3::Client::from_conf(b.build()))
    }

    /// Checks that the bucket exists and the credentials may list it (ListObjectsV2 of at
    /// most one key): a missing bucket or refused credentials are errors, before any upload.
    pub fn check(&self) -> Result<()> {
        let client = self.client()?;
        block_on(async {
            client
                .list_objects_v2()
                .bucket(&self.name)
                .max_keys(1)
                .prefix(format!("{}{OBJECT_DIR}", self.prefix))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.error(&format!("GET {}", self.describe("")), e))
        })
    }

    /// The object at `key`, or `None`. Refused credentials are an `s3_auth` error.
    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let client = self.client()?;
        block_on(async {
            match client
                .head_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await
            {
                Ok(o) => Ok(Some(ObjectInfo {
                    size: o
                        .content_length()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                    sha256: o.metadata().and_then(|m| m.get("sykli-sha256")).cloned(),
                })),
                Err(e) if status(&e) == Some(404) => Ok(None),
                // A HEAD has no error document: ask again with a GET for the reason.
                Err(_) => match client
                    .get_object()
                    .bucket(&self.name)
                    .key(key)
                    .range("bytes=0-0")
                    .send()
                    .await
                {
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                    Err(e) => Err(self.error(&format!("GET {}", self.describe(key)), e)),
                    // It is there after all: the HEAD's answer stands.
                    Ok(_) => Err(Error::S3 {
                        kind: "s3",
                        message: format!(
                            "HEAD {} failed where a GET of it succeeds",
                            self.describe(key)
                        ),
                    }),
                },
            }
        })
    }

    /// The SHA-256 and size of the object at `key` as its bytes arrive (streamed, never
    /// held in memory), or `None` when there is none: what the bucket really serves, which
    /// its metadata only claims.
    pub fn digest(&self, key: &str) -> Result<Option<Digest256>> {
        let client = self.client()?;
        block_on(self.digest_with(client, key.to_string()))
    }

    async fn digest_with(
        &self,
        client: aws_sdk_s3::Client,
        key: String,
    ) -> Result<Option<Digest256>> {
        let what = format!("GET {}", self.describe(&key));
        let out = match client
            .get_object()
            .bucket(&self.name)
            .key(&key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(self.error(&what, e)),
        };
        let mut body = out.body;
        let (mut hash, mut size) = (Sha256::new(), 0u64);
        while let Some(chunk) = body.try_next().await.map_err(|e| Error::S3 {
            kind: "s3",
            message: format!(
                "{what}: reading the object failed: {}",
                credentials::reasons(&e)
            ),
        })? {
            hash.update(&chunk);
            size += chunk.len() as u64;
        }
        Ok(Some((hex(&hash.finalize()), size)))
    }

    /// [`Bucket::digest`] started on the runtime, while the caller does something else.
    pub(crate) fn spawn_digest(
        &self,
        key: &str,
    ) -> Result<tokio::task::JoinHandle<Result<Option<Digest256>>>> {
        let client = self.client()?;
        let (bucket, key) = (self.clone(), key.to_string());
        Ok(runtime_handle().spawn(async move { bucket.digest_with(client, key).await }))
    }

    /// Uploads `len` bytes of `file` (whose SHA-256 is `sha256`) as `key`, with our metadata;
    /// multipart above the threshold. Returns the bytes sent.
    pub fn put_file(
        &self,
        key: &str,
        file: &Path,
        sha256: &str,
        len: u64,
        tree: &str,
    ) -> Result<u64> {
        let client = self.client()?;
        block_on(async {
            if len < self.multipart_threshold {
                let body = file_body(file, 0, len).await?;
                client
                    .put_object()
                    .bucket(&self.name)
                    .key(key)
                    .content_type("application/gzip")
                    .content_length(len as i64)
                    .metadata("sykli-sha256", sha256)
                    .metadata("sykli-tree", tree)
                    .body(body)
                    .customize()
                    .interceptor(SignedPayload(sha256.to_string()))
                    .send()
                    .await
                    .map_err(|e| self.error(&format!("PUT {}", self.describe(key)), e))?;
                return Ok(len);
            }
            let created = client
                .create_multipart_upload()
                .bucket(&self.name)
                .key(key)
                .content_type("application/gzip")
                .metadata("sykli-sha256", sha256)
                .metadata("sykli-tree", tree)
                .send()
                .await
                .map_err(|e| self.error(&format!("POST {}", self.describe(key)), e))?;
            let upload_id = created.upload_id().ok_or_else(|| Error::S3 {
                kind: "s3",
                message: format!("POST {}: the answer has no UploadId", self.describe(key)),
            })?;
            let result = self.upload_parts(&client, key, file, len, upload_id).await;
            if result.is_err() {
                // Best effort: a dangling upload costs storage until a lifecycle rule aborts it.
                let _ = client
                    .abort_multipart_upload()
                    .bucket(&self.name)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
                    .await;
            }
            result
        })
    }

    async fn upload_parts(
        &self,
        client: &aws_sdk_s3::Client,
        key: &str,
        file: &Path,
        len: u64,
        upload_id: &str,
    ) -> Result<u64> {
        let chunk = self.multipart_chunksize;
        let parts =
            (0..len.div_ceil(chunk)).map(|i| (i as i32 + 1, i * chunk, chunk.min(len - i * chunk)));
        let mut done: Vec<CompletedPart> = futures::stream::iter(parts)
            .map(|(number, offset, n)| async move {
                let what = format!("PUT {} (part {number})", self.describe(key));
                let path = file.to_path_buf();
                let sha = tokio::task::spawn_blocking(move || hash_range(&path, offset, n))
                    .await
                    .map_err(|e| Error::S3 {
                        kind: "s3",
                        message: format!("{what}: hashing the part failed: {e}"),
                    })??;
                let out = client
                    .upload_part()
                    .bucket(&self.name)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(n as i64)
                    .body(file_body(file, offset, n).await?)
                    .customize()
                    .interceptor(SignedPayload(sha))
                    .send()
                    .await
                    .map_err(|e| self.error(&what, e))?;
                Ok::<_, Error>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                )
            })
            .buffer_unordered(PARALLEL_PARTS)
            .try_collect()
            .await?;
        done.sort_by_key(|p| p.part_number());
        // The SDK reads the error document S3 may send with a 200 here.
        client
            .complete_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error(&format!("POST {}", self.describe(key)), e))?;
        Ok(len)
    }

    /// A presigned GET URL for `key`, valid `expires` seconds (at most seven days).
    pub fn presign_get(&self, key: &str, expires: u64) -> Result<String> {
        self.presign_get_at(key, expires, SystemTime::now())
    }

    /// As [`Bucket::presign_get`], signed as of `start`.
    pub fn presign_get_at(&self, key: &str, expires: u64, start: SystemTime) -> Result<String> {
        if expires == 0 || expires > MAX_PRESIGN_SECONDS {
            return Err(Error::InvalidOption {
                key: "timeout".into(),
                message: format!(
                    "a presigned URL lives 1 s to 7 days; the run needs {expires} s: shorten the task timeouts"
                ),
            });
        }
        let failed = |e: String| Error::S3 {
            kind: "s3",
            message: format!("signing the GET of {} failed: {e}", self.describe(key)),
        };
        let config = PresigningConfig::builder()
            .start_time(start)
            .expires_in(Duration::from_secs(expires))
            .build()
            .map_err(|e| failed(credentials::reasons(&e)))?;
        let client = self.client()?;
        let signed = block_on(async {
            client
                .get_object()
                .bucket(&self.name)
                .key(key)
                .presigned(config)
                .await
        })
        .map_err(|e| failed(credentials::reasons(&e)))?;
        Ok(signed.uri().to_string())
    }

    /// One line naming the object, S3's reason and the fix; never a signature or secret.
    fn error<E, R>(&self, what: &str, err: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HasStatus + 'static,
    {
        let code = err
            .as_service_error()
            .and_then(|e| e.code())
            .map(str::to_string);
        let message = err
            .as_service_error()
            .and_then(|e| e.message())
            .map(str::to_string);
        match (&err, status(&err)) {
            (SdkError::ServiceError(_), Some(status)) => self.refusal(
                what,
                status,
                code.as_deref().unwrap_or(""),
                message.as_deref().unwrap_or(""),
            ),
            _ => {
                let reasons = credentials::reasons(&err);
                let hint = if reasons.contains("certificate") {
                    format!(
                        "the certificate of {} is not trusted: for a private CA, s3.ca_bundle \
                         names a PEM file of it",
                        self.endpoint_display()
                    )
                } else {
                    format!("is the endpoint {} reachable?", self.endpoint_display())
                };
                Error::S3 {
                    kind: "s3",
                    message: format!("{what}: {reasons} ({hint})"),
                }
            }
        }
    }

    fn endpoint_display(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => self.base_url.clone(),
        }
    }

    fn refusal(&self, what: &str, status: u16, code: &str, message: &str) -> Error {
        let source = self
            .creds
            .as_ref()
            .map(|c| c.source.as_str())
            .unwrap_or("nowhere");
        let reason = match (code, message) {
            ("", _) => format!("HTTP {status}"),
            (c, "") => format!("{status} {c}"),
            (c, m) => format!("{status} {c}: {m}"),
        };
        let (kind, hint) = match code {
            "InvalidAccessKeyId" | "NotSignedUp" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken"
            | "TokenRefreshRequired" | "InvalidSecurity" => (
                "s3_auth",
                format!(
                    "the credentials from {source} were refused: check the access key, secret and session token"
                ),
            ),
            "RequestTimeTooSkewed" => (
                "s3_auth",
                "this machine's clock is off: SigV4 signatures allow 15 minutes of skew".into(),
            ),
            "AccessDenied" => (
                "s3_auth",
                format!(
                    "the credentials from {source} lack a permission: sykli needs s3:GetObject, \
                     s3:PutObject and s3:ListBucket on {}",
                    self.describe(&format!("{}{OBJECT_DIR}*", self.prefix))
                ),
            ),
            "NoSuchBucket" => (
                "s3_not_found",
                format!(
                    "bucket {:?} does not exist in {} (s3.bucket, s3.region, s3.endpoint)",
                    self.name, self.region
                ),
            ),
            "PermanentRedirect" | "AuthorizationHeaderMalformed" => (
                "s3",
                format!(
                    "the bucket is in another region than {}: set s3.region",
                    self.region
                ),
            ),
            _ => ("s3", String::new()),
        };
        let message = if hint.is_empty() {
            format!("{what} answered {reason}")
        } else {
            format!("{what} answered {reason}: {hint}")
        };
        Error::S3 { kind, message }
    }
}

/// The HTTP status of an SDK response, whatever its type.
pub trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn status<E, R: HasStatus>(err: &SdkError<E, R>) -> Option<u16> {
    err.raw_response().map(HasStatus::status_code)
}

/// Signs a request's body with its SHA-256, computed beforehand (as `x-amz-content-sha256`),
/// so that the server checks what arrives: the SDK would sign a streamed file body as
/// `UNSIGNED-PAYLOAD`.
#[derive(Debug)]
struct SignedPayload(String);

impl Intercept for SignedPayload {
    fn name(&self) -> &'static str {
        "SignedPayload"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

/// An HTTPS client on rustls with ring: the system's roots, or only the bundle's.
fn https_client(ca_pem: Option<&str>) -> SharedHttpClient {
    let trust = match ca_pem {
        None => tls::TrustStore::default(),
        Some(pem) => tls::TrustStore::empty()
            .with_native_roots(false)
            .with_pem_certificate(pem.as_bytes()),
    };
    let builder = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(
        tls::rustls_provider::CryptoMode::Ring,
    ));
    match tls::TlsContext::builder().with_trust_store(trust).build() {
        Ok(ctx) => builder.tls_context(ctx).build_https(),
        Err(_) => builder.build_https(),
    }
}

/// `len` bytes of `file` from `offset`, streamed (and read again on a retry).
async fn file_body(file: &Path, offset: u64, len: u64) -> Result<ByteStream> {
    ByteStream::read_from()
        .path(file)
        .offset(offset)
        .length(Length::Exact(len))
        .build()
        .await
        .map_err(|e| Error::Io {
            path: file.to_path_buf(),
            source: std::io::Error::other(credentials::reasons(&e)),
        })
}

/// Checks an endpoint: `(scheme, host[:port], named)` — `named` is false for IP addresses
/// and localhost, which only path-style requests can reach.
fn endpoint_host(e: &str) -> Result<(String, String, bool)> {
    let invalid = |message: String| Error::InvalidOption {
        key: "s3.endpoint".into(),
        message,
    };
    let (scheme, rest) = e
        .split_once("://")
        .ok_or_else(|| invalid(format!("{e:?} is not a URL (https://host[:port])")))?;
    if scheme != "https" && scheme != "http" {
        return Err(invalid(format!(
            "{e:?}: only http and https endpoints are supported"
        )));
    }
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return Err(invalid(format!("{e:?}: give scheme://host[:port] only")));
    }
    let bare = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let named =
        bare != "localhost" && bare.parse::<std::net::IpAddr>().is_err() && !bare.starts_with('[');
    Ok((scheme.to_string(), host.to_string(), named))
}

/// A key as it appears in a URL's path: every byte but the unreserved ones and `/`
/// percent-encoded.
fn encode_key(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_range(path: &Path, offset: u64, len: u64) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    Ok(sykli_sync::sha256_of(f.take(len)).map_err(io)?.1)
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
        && !b.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env() -> BTreeMap<String, String> {
        [
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("HOME", "/nonexistent"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn bucket(opts: S3Options) -> Result<Bucket> {
        Bucket::new(&opts, &env())
    }

    #[test]
    fn addressing_follows_the_endpoint() {
        let b = bucket(S3Options {
            bucket: "builds".into(),
            region: Some("eu-west-1".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            b.object_url("a/b c"),
            "https://builds.s3.eu-west-1.amazonaws.com/a/b%20c"
        );
        let b = bucket(S3Options {
            bucket: "builds".into(),
            endpoint: Some("http://127.0.0.1:9000/".into()),
            prefix: Some("ci".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(b.region, "us-east-1");
        let key = b.archive_key("ab");
        assert_eq!(key, "ci/sykli-source/ab.tar.gz");
        assert_eq!(
            b.object_url(&key),
            "http://127.0.0.1:9000/builds/ci/sykli-source/ab.tar.gz"
        );
        let b = bucket(S3Options {
            bucket: "builds".into(),
            endpoint: Some("https://minio.example.com".into()),
            force_path_style: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert!(b
            .object_url("k")
            .starts_with("https://minio.example.com/builds/k"));
        // AWS_ENDPOINT_URL_S3 before AWS_ENDPOINT_URL, as the SDK's S3 client reads them.
        let mut e = env();
        e.insert(
            "AWS_ENDPOINT_URL".into(),
            "https://general.example.com".into(),
        );
        e.insert("AWS_ENDPOINT_URL_S3".into(), "http://localhost:9000".into());
        let b = Bucket::new(
            &S3Options {
                bucket: "builds".into(),
                ..Default::default()
            },
            &e,
        )
        .unwrap();
        assert_eq!(b.object_url("k"), "http://localhost:9000/builds/k");
    }

    #[test]
    fn bad_settings_are_refused_before_any_request() {
        for (opts, key) in [
            (
                S3Options {
                    bucket: "Bad_Bucket".into(),
                    ..Default::default()
                },
                "s3.bucket",
            ),
            (
                S3Options {
                    bucket: "ok-bucket".into(),
                    endpoint: Some("minio:9000".into()),
                    ..Default::default()
                },
                "s3.endpoint",
            ),
            (
                S3Options {
                    bucket: "ok-bucket".into(),
                    endpoint: Some("ftp://x".into()),
                    ..Default::default()
                },
                "s3.endpoint",
            ),
            (
                S3Options {
                    bucket: "ok-bucket".into(),
                    prefix: Some("../x".into()),
                    ..Default::default()
                },
                "s3.prefix",
            ),
            (
                S3Options {
                    bucket: "ok-bucket".into(),
                    multipart_chunksize: Some(1024),
                    ..Default::default()
                },
                "s3.multipart_chunksize",
            ),
            (
                S3Options {
                    bucket: "ok-bucket".into(),
                    ca_bundle: Some("/nonexistent/ca.pem".into()),
                    ..Default::default()
                },
                "s3.ca_bundle",
            ),
        ] {
            match bucket(opts) {
                Err(Error::InvalidOption { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {:?}", other.map(|b| b.name)),
            }
        }
    }

    #[test]
    fn presigned_urls_are_bounded_by_sigv4() {
        let b = bucket(S3Options {
            bucket: "builds".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(b.presign_get("k", 8 * 24 * 3600).is_err());
        let url = b.presign_get("k", 3600).unwrap();
        assert!(
            url.contains("X-Amz-Expires=3600")
                && url.contains("X-Amz-SignedHeaders=host")
                && !url.contains("SK"),
            "{url}"
        );
    }

    #[test]
    fn a_dry_run_resolves_nothing() {
        let b = Bucket::offline(
            &S3Options {
                bucket: "builds".into(),
                ..Default::default()
            },
            &BTreeMap::from([("HOME".to_string(), "/nonexistent".to_string())]),
        )
        .unwrap();
        assert!(b.creds.is_none());
        assert_eq!(b.region, "us-east-1");
        assert!(b.presign_get("k", 60).is_err());
    }

    #[test]
    fn keys_are_percent_encoded_in_urls() {
        assert_eq!(encode_key("a b/ü+c"), "a%20b/%C3%BC%2Bc");
    }
}
