//! The S3 strategy's object storage, on the laptop or CI side: where the bucket is, the
//! credentials chain, SigV4 signing, and the few S3 calls the strategy makes (HEAD, a
//! streamed GET, PUT, multipart upload, presigned GET). Blocking I/O (ureq): callers run it off the
//! schedulers (a dirty NIF or `spawn_blocking`).

pub mod credentials;
pub mod sigv4;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use credentials::Credentials;
use sigv4::{Request, Stamp};

/// AWS CLI's defaults: multipart from 64 MiB (ours), parts of 16 MiB; S3's minimum part
/// is 5 MiB.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 << 20;
pub const DEFAULT_MULTIPART_CHUNKSIZE: u64 = 16 << 20;
pub const MIN_PART: u64 = 5 << 20;
/// Where archives go under the configured prefix: a lifecycle rule on
/// `<prefix>sykli-source/` can expire them.
pub const OBJECT_DIR: &str = "sykli-source/";

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
}

/// A bucket, resolved: how to address its objects and with which credentials.
#[derive(Clone)]
pub struct Bucket {
    pub name: String,
    pub region: String,
    scheme: String,
    /// host[:port] of requests (the bucket's virtual host, or the endpoint's).
    host: String,
    /// `/bucket` for path-style, empty for virtual-hosted.
    path_prefix: String,
    pub prefix: String,
    /// None for a dry run, which calls nothing.
    pub creds: Option<Credentials>,
    pub multipart_threshold: u64,
    pub multipart_chunksize: u64,
    agent: ureq::Agent,
}

/// What a HEAD found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// `x-amz-meta-sykli-sha256`, when the object is one of ours.
    pub sha256: Option<String>,
}

impl Bucket {
    /// Checks the settings and resolves the credentials (STS for a web identity), before
    /// any call to the bucket.
    pub fn new(opts: &S3Options, env: &dyn credentials::Env) -> Result<Bucket> {
        let mut b = Bucket::offline(opts, env)?;
        b.creds = Some(match credentials::find(env)? {
            credentials::Found::Static(c) => c,
            credentials::Found::WebIdentity {
                token_file,
                role_arn,
                session_name,
                source,
            } => assume_role_with_web_identity(
                &b.agent,
                env,
                &b.region,
                &token_file,
                &role_arn,
                &session_name,
                &source,
            )?,
        });
        Ok(b)
    }

    /// Seconds until the credentials expire, when they are temporary and say so: a
    /// presigned URL stops working then, whatever its X-Amz-Expires.
    pub fn credentials_lifetime(&self) -> Option<u64> {
        let at = self.creds.as_ref()?.expires_at?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Some(at.saturating_sub(now))
    }

    /// The bucket's addressing only, without credentials (a dry run).
    pub fn offline(opts: &S3Options, env: &dyn credentials::Env) -> Result<Bucket> {
        if !valid_bucket(&opts.bucket) {
            return Err(Error::InvalidOption {
                key: "s3.bucket".into(),
                message: format!(
                    "{:?} is not a bucket name (3-63 lowercase letters, digits, dots and hyphens)",
                    opts.bucket
                ),
            });
        }
        let region = opts
            .region
            .clone()
            .or_else(|| env.var("AWS_REGION"))
            .or_else(|| env.var("AWS_DEFAULT_REGION"))
            .or_else(|| credentials::profile_region(env))
            .unwrap_or_else(|| "us-east-1".into());
        let prefix = match opts.prefix.as_deref().unwrap_or("") {
            "" => String::new(),
            p if p.starts_with('/') || p.split('/').any(|s| s == "..") => {
                return Err(Error::InvalidOption {
                    key: "s3.prefix".into(),
                    message: format!("{p:?} must be a relative key prefix without .."),
                })
            }
            p if p.ends_with('/') => p.to_string(),
            p => format!("{p}/"),
        };
        // As the AWS SDKs do: the S3-specific variable, then the general one.
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| env.var("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env.var("AWS_ENDPOINT_URL"));
        let (scheme, endpoint_host, named) = match &endpoint {
            Some(e) => {
                let (scheme, rest) = e.split_once("://").ok_or_else(|| Error::InvalidOption {
                    key: "s3.endpoint".into(),
                    message: format!("{e:?} is not a URL (https://host[:port])"),
                })?;
                if scheme != "https" && scheme != "http" {
                    return Err(Error::InvalidOption {
                        key: "s3.endpoint".into(),
                        message: format!("{e:?}: only http and https endpoints are supported"),
                    });
                }
                let host = rest.trim_end_matches('/');
                if host.is_empty() || host.contains(['/', '?', '#', '@']) {
                    return Err(Error::InvalidOption {
                        key: "s3.endpoint".into(),
                        message: format!("{e:?}: give scheme://host[:port] only"),
                    });
                }
                let bare = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
                let named = bare != "localhost"
                    && bare.parse::<std::net::IpAddr>().is_err()
                    && !bare.starts_with('[');
                (scheme.to_string(), host.to_string(), named)
            }
            None => (
                "https".to_string(),
                format!("s3.{region}.amazonaws.com"),
                true,
            ),
        };
        let path_style = opts
            .force_path_style
            .unwrap_or(!named || opts.bucket.contains('.'));
        let (host, path_prefix) = if path_style {
            (endpoint_host, format!("/{}", opts.bucket))
        } else {
            (format!("{}.{endpoint_host}", opts.bucket), String::new())
        };
        let threshold = opts
            .multipart_threshold
            .unwrap_or(DEFAULT_MULTIPART_THRESHOLD);
        let chunk = opts
            .multipart_chunksize
            .unwrap_or(DEFAULT_MULTIPART_CHUNKSIZE);
        if chunk < MIN_PART {
            return Err(Error::InvalidOption {
                key: "s3.multipart_chunksize".into(),
                message: format!("{chunk} bytes is below S3's minimum part size of 5 MiB"),
            });
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .build()
            .into();
        Ok(Bucket {
            name: opts.bucket.clone(),
            region,
            scheme,
            host,
            path_prefix,
            prefix,
            creds: None,
            multipart_threshold: threshold,
            multipart_chunksize: chunk,
            agent,
        })
    }

    /// The key of the archive of `tree`.
    pub fn archive_key(&self, tree: &str) -> String {
        format!("{}{OBJECT_DIR}{tree}.tar.gz", self.prefix)
    }

    /// `s3://bucket/key`, for messages.
    pub fn describe(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    fn creds(&self) -> Result<&Credentials> {
        self.creds.as_ref().ok_or_else(|| Error::InvalidOption {
            key: "s3 credentials".into(),
            message: "no credentials were resolved (a dry run calls nothing)".into(),
        })
    }

    /// The object's URL without a signature (what a dry run shows).
    pub fn object_url(&self, key: &str) -> String {
        self.url(&self.path(key), &[])
    }

    fn path(&self, key: &str) -> String {
        match (key, self.path_prefix.as_str()) {
            ("", "") => "/".into(),
            ("", bucket) => bucket.into(),
            (key, bucket) => format!("{bucket}/{}", sigv4::encode_key(key)),
        }
    }

    fn url(&self, path: &str, query: &[(String, String)]) -> String {
        let mut url = format!("{}://{}{path}", self.scheme, self.host);
        if !query.is_empty() {
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() && k == "uploads" {
                        k.clone()
                    } else {
                        format!("{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v))
                    }
                })
                .collect();
            url.push('?');
            url.push_str(&q.join("&"));
        }
        url
    }

    /// Sends one signed request; answers (status, headers, body as text).
    fn send(
        &self,
        method: &str,
        key: &str,
        query: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        body: Body,
    ) -> Result<Reply> {
        let (mut resp, what) = self.request(method, key, query, headers, body)?;
        Ok(Reply::read(&mut resp, what))
    }

    /// Sends one signed request; answers the response, its body unread, and what it was
    /// (`GET s3://bucket/key`, for messages).
    fn request(
        &self,
        method: &str,
        key: &str,
        query: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        body: Body,
    ) -> Result<(ureq::http::Response<ureq::Body>, String)> {
        let path = self.path(key);
        let payload = match &body {
            Body::Empty => sigv4::sha256_hex(b""),
            Body::Bytes(b) => sigv4::sha256_hex(b),
            Body::File { sha256, .. } => sha256.clone(),
        };
        let req = Request {
            method,
            host: &self.host,
            path: &path,
            query: query.clone(),
            headers: headers.clone(),
            payload_sha256: &payload,
        };
        let signed = sigv4::sign_headers(&req, self.creds()?, &self.region, &Stamp::now());
        let url = self.url(&path, &query);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers.iter().chain(signed.iter()) {
            builder = builder.header(k, v);
        }
        let what = format!("{method} {}", self.describe(key));
        let fail = |e: String| Error::S3 {
            kind: "s3",
            message: format!("{what}: {e}"),
        };
        let resp = match body {
            Body::Empty => {
                if method == "POST" || method == "PUT" {
                    builder = builder.header("content-length", "0");
                }
                let req = builder.body(()).map_err(|e| fail(e.to_string()))?;
                self.agent.run(req)
            }
            Body::Bytes(b) => {
                let req = builder
                    .header("content-length", b.len().to_string())
                    .body(b)
                    .map_err(|e| fail(e.to_string()))?;
                self.agent.run(req)
            }
            Body::File {
                path, offset, len, ..
            } => {
                let mut f = File::open(&path).map_err(|e| Error::Io {
                    path: path.clone(),
                    source: e,
                })?;
                f.seek(SeekFrom::Start(offset)).map_err(|e| Error::Io {
                    path: path.clone(),
                    source: e,
                })?;
                let mut part = f.take(len);
                let req = builder
                    .header("content-length", len.to_string())
                    .body(ureq::SendBody::from_reader(&mut part))
                    .map_err(|e| fail(e.to_string()))?;
                self.agent.run(req)
            }
        };
        let resp = resp.map_err(|e| {
            fail(format!(
                "{e} (is the endpoint {}://{} reachable?)",
                self.scheme, self.host
            ))
        })?;
        Ok((resp, what))
    }

    /// Checks that the bucket exists and the credentials may list it (ListObjectsV2 of at
    /// most one key): a missing bucket or refused credentials are errors, before any upload.
    pub fn check(&self) -> Result<()> {
        let r = self.send(
            "GET",
            "",
            vec![
                ("list-type".into(), "2".into()),
                ("max-keys".into(), "1".into()),
                ("prefix".into(), format!("{}{OBJECT_DIR}", self.prefix)),
            ],
            vec![],
            Body::Empty,
        )?;
        match r.status {
            200 => Ok(()),
            _ => Err(r.error(self)),
        }
    }

    /// The object at `key`, or `None`. Refused credentials are an `s3_auth` error.
    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let r = self.send("HEAD", key, vec![], vec![], Body::Empty)?;
        match r.status {
            200 => Ok(Some(ObjectInfo {
                size: r
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                sha256: r.header("x-amz-meta-sykli-sha256").map(str::to_string),
            })),
            404 => Ok(None),
            // A HEAD has no error document: ask again with a GET for the reason.
            _ => {
                let g = self.send(
                    "GET",
                    key,
                    vec![],
                    vec![("range".into(), "bytes=0-0".into())],
                    Body::Empty,
                )?;
                match g.status {
                    404 if g.code() == Some("NoSuchKey") => Ok(None),
                    _ => Err(g.error(self)),
                }
            }
        }
    }

    /// The SHA-256 and size of the object at `key` as its bytes arrive (streamed, never
    /// held in memory), or `None` when there is none: what the bucket really serves, which
    /// its metadata only claims.
    pub fn digest(&self, key: &str) -> Result<Option<(String, u64)>> {
        let (mut resp, what) = self.request("GET", key, vec![], vec![], Body::Empty)?;
        if resp.status().as_u16() != 200 {
            let r = Reply::read(&mut resp, what);
            return match r.status {
                404 if r.code() == Some("NoSuchKey") => Ok(None),
                _ => Err(r.error(self)),
            };
        }
        let (size, sha256) =
            sykli_sync::sha256_of(resp.body_mut().as_reader()).map_err(|e| Error::S3 {
                kind: "s3",
                message: format!("{what}: reading the object failed: {e}"),
            })?;
        Ok(Some((sha256, size)))
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
        let meta = vec![
            ("content-type".to_string(), "application/gzip".to_string()),
            ("x-amz-meta-sykli-sha256".to_string(), sha256.to_string()),
            ("x-amz-meta-sykli-tree".to_string(), tree.to_string()),
        ];
        if len < self.multipart_threshold {
            let r = self.send(
                "PUT",
                key,
                vec![],
                meta,
                Body::File {
                    path: file.to_path_buf(),
                    offset: 0,
                    len,
                    sha256: sha256.to_string(),
                },
            )?;
            return match r.status {
                200 => Ok(len),
                _ => Err(r.error(self)),
            };
        }
        let r = self.send(
            "POST",
            key,
            vec![("uploads".into(), String::new())],
            meta,
            Body::Empty,
        )?;
        if r.status != 200 {
            return Err(r.error(self));
        }
        let upload_id = r.tag("UploadId").ok_or_else(|| Error::S3 {
            kind: "s3",
            message: format!("{}: the answer has no UploadId", r.what),
        })?;
        let result = self.upload_parts(key, file, len, &upload_id);
        if result.is_err() {
            // Best effort: a dangling upload costs storage until a lifecycle rule aborts it.
            let _ = self.send(
                "DELETE",
                key,
                vec![("uploadId".into(), upload_id.clone())],
                vec![],
                Body::Empty,
            );
        }
        result
    }

    fn upload_parts(&self, key: &str, file: &Path, len: u64, upload_id: &str) -> Result<u64> {
        let mut parts = Vec::new();
        let mut offset = 0;
        let mut number = 1u32;
        while offset < len {
            let n = self.multipart_chunksize.min(len - offset);
            let sha = hash_range(file, offset, n)?;
            let r = self.send(
                "PUT",
                key,
                vec![
                    ("partNumber".into(), number.to_string()),
                    ("uploadId".into(), upload_id.to_string()),
                ],
                vec![],
                Body::File {
                    path: file.to_path_buf(),
                    offset,
                    len: n,
                    sha256: sha,
                },
            )?;
            if r.status != 200 {
                return Err(r.error(self));
            }
            let etag = r.header("etag").unwrap_or("").to_string();
            parts.push(format!(
                "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                xml_escape(&etag)
            ));
            offset += n;
            number += 1;
        }
        let body = format!(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{}</CompleteMultipartUpload>",
            parts.join("")
        );
        let r = self.send(
            "POST",
            key,
            vec![("uploadId".into(), upload_id.to_string())],
            vec![("content-type".into(), "application/xml".into())],
            Body::Bytes(body.into_bytes()),
        )?;
        // CompleteMultipartUpload can fail with 200 and an error document.
        if r.status != 200 || r.code().is_some() {
            return Err(r.error(self));
        }
        Ok(len)
    }

    /// A presigned GET URL for `key`, valid `expires` seconds (at most seven days).
    pub fn presign_get(&self, key: &str, expires: u64) -> Result<String> {
        self.presign_get_at(key, expires, &Stamp::now())
    }

    /// As [`Bucket::presign_get`], signed as of `stamp`.
    pub fn presign_get_at(&self, key: &str, expires: u64, stamp: &Stamp) -> Result<String> {
        if expires == 0 || expires > sigv4::MAX_PRESIGN_SECONDS {
            return Err(Error::InvalidOption {
                key: "timeout".into(),
                message: format!(
                    "a presigned URL lives 1 s to 7 days; the run needs {expires} s: shorten the task timeouts"
                ),
            });
        }
        let path = self.path(key);
        let req = Request {
            method: "GET",
            host: &self.host,
            path: &path,
            query: vec![],
            headers: vec![],
            payload_sha256: sigv4::UNSIGNED_PAYLOAD,
        };
        let q = sigv4::presign_query(&req, self.creds()?, &self.region, stamp, expires);
        Ok(format!("{}://{}{path}?{q}", self.scheme, self.host))
    }
}

enum Body {
    Empty,
    Bytes(Vec<u8>),
    File {
        path: std::path::PathBuf,
        offset: u64,
        len: u64,
        sha256: String,
    },
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    what: String,
}

impl Reply {
    /// The answer with its body as text: an error document or a small XML reply, read up
    /// to 1 MiB (a server's answer is never trusted to be small).
    fn read(resp: &mut ureq::http::Response<ureq::Body>, what: String) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .unwrap_or_default();
        Reply {
            status,
            headers,
            body,
            what,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn tag(&self, name: &str) -> Option<String> {
        sykli_sync::xml_tag(&self.body, name).map(str::to_string)
    }

    fn code(&self) -> Option<&str> {
        sykli_sync::xml_tag(&self.body, "Code")
    }

    /// One line naming the object, S3's reason and the fix.
    fn error(&self, bucket: &Bucket) -> Error {
        let source = bucket
            .creds
            .as_ref()
            .map(|c| c.source.as_str())
            .unwrap_or("nowhere");
        let code = self.code().unwrap_or("").to_string();
        let message = self.tag("Message").unwrap_or_default();
        let reason = match (code.as_str(), message.as_str()) {
            ("", _) => format!("HTTP {}", self.status),
            (c, "") => format!("{} {c}", self.status),
            (c, m) => format!("{} {c}: {m}", self.status),
        };
        let (kind, hint) = match code.as_str() {
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
                    bucket.describe(&format!("{}{OBJECT_DIR}*", bucket.prefix))
                ),
            ),
            "NoSuchBucket" => (
                "s3_not_found",
                format!(
                    "bucket {:?} does not exist in {} (s3.bucket, s3.region, s3.endpoint)",
                    bucket.name, bucket.region
                ),
            ),
            "PermanentRedirect" | "AuthorizationHeaderMalformed" => (
                "s3",
                format!(
                    "the bucket is in another region than {}: set s3.region",
                    bucket.region
                ),
            ),
            _ => ("s3", String::new()),
        };
        let message = if hint.is_empty() {
            format!("{} answered {reason}", self.what)
        } else {
            format!("{} answered {reason}: {hint}", self.what)
        };
        Error::S3 { kind, message }
    }
}

fn assume_role_with_web_identity(
    agent: &ureq::Agent,
    env: &dyn credentials::Env,
    region: &str,
    token_file: &Path,
    role_arn: &str,
    session_name: &str,
    source: &str,
) -> Result<Credentials> {
    let token = std::fs::read_to_string(token_file).map_err(|e| Error::InvalidOption {
        key: "s3 credentials".into(),
        message: format!(
            "the web identity token file {} cannot be read: {e}",
            token_file.display()
        ),
    })?;
    let endpoint = env
        .var("AWS_ENDPOINT_URL_STS")
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn),
        ("RoleSessionName", session_name),
        ("WebIdentityToken", token.trim()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", sigv4::uri_encode(v)))
    .collect::<Vec<_>>()
    .join("&");
    let mut resp = agent
        .post(&endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .send(form)
        .map_err(|e| Error::S3 {
            kind: "s3_auth",
            message: format!("STS {endpoint} (AssumeRoleWithWebIdentity for {role_arn}): {e}"),
        })?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    if status != 200 {
        let tag = |t: &str| sykli_sync::xml_tag(&body, t);
        let reason = match (tag("Code"), tag("Message")) {
            (Some(c), Some(m)) => format!("{status} {c}: {m}"),
            (Some(c), None) => format!("{status} {c}"),
            _ => format!(
                "HTTP {status}: {}",
                body.trim().chars().take(200).collect::<String>()
            ),
        };
        return Err(Error::S3 {
            kind: "s3_auth",
            message: format!(
                "STS {endpoint} refused AssumeRoleWithWebIdentity for {role_arn} ({reason})"
            ),
        });
    }
    credentials::parse_assume_role(&body, source)
}

fn hash_range(path: &Path, offset: u64, len: u64) -> Result<String> {
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = File::open(path).map_err(io)?;
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    Ok(sykli_sync::sha256_of(f.take(len)).map_err(io)?.1)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
            b.url(&b.path("a/b c"), &[]),
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
            b.url(&b.path(&key), &[]),
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
            .url(&b.path("k"), &[])
            .starts_with("https://minio.example.com/builds/k"));
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
            url.contains("X-Amz-Expires=3600") && !url.contains("SK"),
            "{url}"
        );
    }
}
