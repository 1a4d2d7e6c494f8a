//! The S3 server of `sykli_testkit::s3_server` (s3s-fs), driven by an independent client:
//! every request is signed by boto3/botocore from the test venv (tests/s3_client.py).
//! These tests check the harness — that the server really verifies signatures, expires
//! presigned URLs, serves ranges, metadata and multipart uploads, and keeps objects as
//! files — not sykli.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use sykli_testkit::s3_server::{S3Server, REGION};
use sykli_testkit::validate::venv_bin;
use tempfile::TempDir;

const BUCKET: &str = "sykli-test";

/// Where and as whom the client talks.
struct Creds {
    endpoint: String,
    access_key: String,
    secret_key: String,
    region: String,
}

impl Creds {
    fn of(server: &S3Server) -> Creds {
        Creds {
            endpoint: server.endpoint(),
            access_key: server.access_key().to_string(),
            secret_key: server.secret_key().to_string(),
            region: server.region().to_string(),
        }
    }

    /// From the JSON line of `sykli-s3-server`.
    fn of_json(line: &Value) -> Creds {
        let field = |k: &str| line[k].as_str().unwrap_or_else(|| panic!("{k} in {line}"));
        Creds {
            endpoint: field("endpoint").to_string(),
            access_key: field("access_key").to_string(),
            secret_key: field("secret_key").to_string(),
            region: field("region").to_string(),
        }
    }

    /// Runs tests/s3_client.py with `args`; returns the JSON it prints.
    fn client(&self, args: &[&str]) -> Value {
        // The checkout cargo runs this test from (it sets CARGO_MANIFEST_DIR at run time
        // too): checkouts sharing one target dir share this binary, so the compile-time
        // value may name another checkout.
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf());
        let script = manifest_dir.join("tests/s3_client.py");
        let out = Command::new(venv_bin("python"))
            .arg("-I")
            .arg(&script)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_REGION", &self.region)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .output()
            .expect("run the venv's python");
        assert!(
            out.status.success(),
            "s3_client.py {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "s3_client.py {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// A server with [`BUCKET`] made, and a scratch directory for the client's files.
struct Fixture {
    server: S3Server,
    creds: Creds,
    work: PathBuf,
    _tmp: TempDir,
}

impl Fixture {
    fn start() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let server = S3Server::start(&tmp.path().join("s3")).expect("start s3s-fs");
        server.create_bucket(BUCKET).unwrap();
        let work = tmp.path().join("work");
        fs::create_dir(&work).unwrap();
        Fixture {
            creds: Creds::of(&server),
            server,
            work,
            _tmp: tmp,
        }
    }

    fn client(&self, args: &[&str]) -> Value {
        self.creds.client(args)
    }

    /// Writes `bytes` to a file of the scratch directory; returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.work.join(name);
        fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// A boto3 `put_object` of `bytes` (with user metadata `meta`, `K=V` each).
    fn put(&self, key: &str, bytes: &[u8], meta: &[&str]) {
        let file = self.file("put.bin", bytes);
        let mut args = vec!["put", BUCKET, key, &file];
        for m in meta {
            args.extend(["--meta", m]);
        }
        let r = self.client(&args);
        assert_eq!(r["status"], 200, "{r}");
    }

    /// A signed GET of `key` with more client arguments (`--header Range:...`).
    fn get(&self, key: &str, more: &[&str]) -> Value {
        let path = format!("/{BUCKET}/{key}");
        let mut args = vec!["raw", "GET", &path];
        args.extend(more);
        self.client(&args)
    }

    /// A presigned GET URL of `key`, valid for `expires` seconds from `age` seconds ago.
    fn presign(&self, key: &str, expires: u64, age: i64, more: &[&str]) -> String {
        let path = format!("/{BUCKET}/{key}");
        let (expires, age) = (expires.to_string(), format!("--age={age}"));
        let mut args = vec!["presign", "GET", &path, "--expires", &expires, &age];
        args.extend(more);
        let r = self.client(&args);
        r["url"].as_str().expect("url").to_string()
    }

    fn fetch(&self, url: &str, more: &[&str]) -> Value {
        let mut args = vec!["fetch", url];
        args.extend(more);
        self.client(&args)
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// The body of a response the client printed.
fn body(r: &Value) -> Vec<u8> {
    let hex = r["body_hex"].as_str().expect("body_hex");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Asserts an S3 error answer: `status` and `<Code>`.
fn assert_error(r: &Value, status: u16, code: &str) {
    assert_eq!(r["status"], status, "{r}");
    assert_eq!(r["code"], code, "{r}");
}

#[test]
fn header_signatures_are_verified() {
    let f = Fixture::start();
    let data = random_bytes(100_000);
    let data_file = f.file("data.bin", &data);
    let path = |key: &str| format!("/{BUCKET}/{key}");

    // Signed with the real payload hash.
    let r = f.client(&["raw", "PUT", &path("signed"), "--body-file", &data_file]);
    assert_eq!(r["status"], 200, "{r}");
    let sent_hash = r["sent_headers"]["x-amz-content-sha256"].as_str().unwrap();
    assert!(
        sent_hash.len() == 64 && sent_hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{r}"
    );
    assert!(r["sent_headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={}/",
            f.server.access_key()
        )));
    assert_eq!(
        fs::read(f.server.object_path(BUCKET, "signed")).unwrap(),
        data
    );

    // Signed with UNSIGNED-PAYLOAD.
    let r = f.client(&[
        "raw",
        "PUT",
        &path("unsigned-payload"),
        "--body-file",
        &data_file,
        "--payload",
        "unsigned",
    ]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(
        r["sent_headers"]["x-amz-content-sha256"],
        "UNSIGNED-PAYLOAD"
    );
    assert_eq!(
        fs::read(f.server.object_path(BUCKET, "unsigned-payload")).unwrap(),
        data
    );

    // The right key reads back what was written.
    let r = f.get("signed", &[]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(body(&r), data);

    // A wrong secret, writing and reading.
    let r = f.client(&[
        "raw",
        "PUT",
        &path("wrong-secret"),
        "--body-file",
        &data_file,
        "--secret",
        "not-the-secret",
    ]);
    assert_error(&r, 403, "SignatureDoesNotMatch");
    assert!(!f.server.object_path(BUCKET, "wrong-secret").exists());
    let r = f.get("signed", &["--secret", "not-the-secret"]);
    assert_error(&r, 403, "SignatureDoesNotMatch");
    assert!(body(&r).len() < 1000, "{r}");

    // An unknown access key, and no signature at all.
    let r = f.get("signed", &["--access-key", "AKIAUNKNOWN000000000"]);
    assert_error(&r, 403, "NotSignedUp");
    let r = f.get("signed", &["--unsigned"]);
    assert_error(&r, 403, "AccessDenied");
    assert_eq!(r["message"], "Signature is required");

    // A payload hash signed for other bytes than those sent (same length) is refused, and
    // nothing is stored.
    let mut other = data.clone();
    other[50_000] ^= 0xff;
    let other_file = f.file("other.bin", &other);
    let r = f.client(&[
        "raw",
        "PUT",
        &path("tampered-body"),
        "--body-file",
        &data_file,
        "--send-body-file",
        &other_file,
    ]);
    assert_error(&r, 500, "InternalError");
    assert!(!f.server.object_path(BUCKET, "tampered-body").exists());

    // Not checked by s3s-fs: the region of the credential scope, and a session token.
    let r = f.get("signed", &["--region", "eu-west-1"]);
    assert_eq!(r["status"], 200, "{r}");
    let r = f.get("signed", &["--token", "any-session-token"]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(
        r["sent_headers"]["x-amz-security-token"],
        "any-session-token"
    );

    // The log says why requests were refused.
    let log = f.server.log();
    assert!(log.contains("SignatureDoesNotMatch"), "{log}");
    assert!(log.contains("NotSignedUp"), "{log}");
}

#[test]
fn presigned_urls_are_verified_and_expire() {
    let f = Fixture::start();
    let data = random_bytes(10_000);
    f.put("archive.tar", &data, &[]);

    // Signed a minute ago, valid for an hour: the whole object, and a range of it.
    let url = f.presign("archive.tar", 3600, 60, &[]);
    assert!(url.contains("X-Amz-Expires=3600"), "{url}");
    assert!(url.contains("X-Amz-SignedHeaders=host"), "{url}");
    let r = f.fetch(&url, &[]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(body(&r), data);
    let r = f.fetch(&url, &["--header", "Range:bytes=1000-1999"]);
    assert_eq!(r["status"], 206, "{r}");
    assert_eq!(r["headers"]["content-range"], "bytes 1000-1999/10000");
    assert_eq!(body(&r), &data[1000..2000]);

    // Signed a minute ago, valid for one second: expired.
    let expired = f.presign("archive.tar", 1, 60, &[]);
    assert!(expired.contains("X-Amz-Expires=1&"), "{expired}");
    let r = f.fetch(&expired, &[]);
    assert_error(&r, 403, "AccessDenied");
    assert_eq!(r["message"], "Request has expired");
    let r = f.fetch(&expired, &["--header", "Range:bytes=0-9"]);
    assert_error(&r, 403, "AccessDenied");

    // Tampered with: the signature, the key, the method; and signed with a wrong secret.
    let at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &url[at..at + 1] == "0" { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &url[..at], &url[at + 1..]);
    assert_error(&f.fetch(&tampered, &[]), 403, "SignatureDoesNotMatch");
    f.put("other.tar", b"other", &[]);
    let other_key = url.replace("/archive.tar?", "/other.tar?");
    assert_error(&f.fetch(&other_key, &[]), 403, "SignatureDoesNotMatch");
    assert_error(
        &f.fetch(&url, &["--method", "DELETE"]),
        403,
        "SignatureDoesNotMatch",
    );
    assert!(f.server.object_path(BUCKET, "archive.tar").exists());
    let wrong = f.presign("archive.tar", 3600, 0, &["--secret", "not-the-secret"]);
    assert_error(&f.fetch(&wrong, &[]), 403, "SignatureDoesNotMatch");

    // Dated an hour ahead: refused as skewed.
    let future = f.presign("archive.tar", 3600, -3600, &[]);
    assert_error(&f.fetch(&future, &[]), 403, "RequestTimeTooSkewed");

    // Unlike AWS, an expiry above seven days (604800 s) is accepted.
    let long = f.presign("archive.tar", 604_801, 60, &[]);
    assert_eq!(f.fetch(&long, &[])["status"], 200);
}

#[test]
fn create_bucket_ranges_metadata_and_multipart() {
    let f = Fixture::start();

    // CreateBucket through the API makes the bucket's directory.
    let r = f.client(&["create-bucket", "made-by-boto"]);
    assert_eq!(r["status"], 200, "{r}");
    assert!(f.server.bucket_path("made-by-boto").is_dir());

    // User metadata set at PUT comes back on HEAD (names lower-cased, values as sent).
    let data = random_bytes(1000);
    let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    f.put(
        "meta.bin",
        &data,
        &[&format!("sha256={digest}"), "Mixed-Case=Some Value"],
    );
    let r = f.client(&["head", BUCKET, "meta.bin"]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["metadata"]["sha256"], digest, "{r}");
    assert_eq!(r["metadata"]["mixed-case"], "Some Value", "{r}");
    assert_eq!(r["headers"]["x-amz-meta-sha256"], digest, "{r}");
    assert_eq!(r["headers"]["content-length"], "1000", "{r}");
    let r = f.client(&["raw", "HEAD", &format!("/{BUCKET}/meta.bin")]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["headers"]["x-amz-meta-sha256"], digest, "{r}");

    // Ranges: closed, open-ended, suffix; past the end is 416.
    let r = f.get("meta.bin", &["--header", "Range:bytes=10-19"]);
    assert_eq!(r["status"], 206, "{r}");
    assert_eq!(r["headers"]["content-range"], "bytes 10-19/1000");
    assert_eq!(r["headers"]["content-length"], "10");
    assert_eq!(body(&r), &data[10..20]);
    let r = f.get("meta.bin", &["--header", "Range:bytes=990-"]);
    assert_eq!(r["status"], 206, "{r}");
    assert_eq!(body(&r), &data[990..]);
    let r = f.get("meta.bin", &["--header", "Range:bytes=-5"]);
    assert_eq!(r["status"], 206, "{r}");
    assert_eq!(body(&r), &data[995..]);
    let r = f.get("meta.bin", &["--header", "Range:bytes=1000-1099"]);
    assert_error(&r, 416, "InvalidRange");

    // Multipart: 11 MiB in parts of 5 MiB (S3's minimum for all but the last).
    let big = random_bytes(11 << 20);
    let big_file = f.file("big.bin", &big);
    let r = f.client(&[
        "multipart",
        BUCKET,
        "dir/big.bin",
        &big_file,
        "--part-size",
        &(5 << 20).to_string(),
        "--meta",
        "sha256=abc",
    ]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["parts"], 3, "{r}");
    assert!(r["etag"].as_str().unwrap().ends_with("-3\""), "{r}");
    assert_eq!(
        fs::read(f.server.object_path(BUCKET, "dir/big.bin")).unwrap(),
        big
    );
    let r = f.client(&["head", BUCKET, "dir/big.bin"]);
    assert_eq!(r["metadata"]["sha256"], "abc", "{r}");
    assert_eq!(r["headers"]["content-length"], (11 << 20).to_string());
    // A range across the first part boundary.
    let (from, to) = ((5 << 20) - 100, (5 << 20) + 99);
    let r = f.get(
        "dir/big.bin",
        &["--header", &format!("Range:bytes={from}-{to}")],
    );
    assert_eq!(r["status"], 206, "{r}");
    assert_eq!(body(&r), &big[from..=to]);
    // Parts under 5 MiB (but the last) are refused when the upload completes.
    let r = f.client(&[
        "multipart",
        BUCKET,
        "small-parts.bin",
        &big_file,
        "--part-size",
        &(1 << 20).to_string(),
    ]);
    assert_error(&r, 400, "EntityTooSmall");
    assert!(!f.server.object_path(BUCKET, "small-parts.bin").exists());

    // Unlike AWS (NoSuchBucket), a PUT into a bucket that does not exist creates it; only
    // a HeadBucket (or a listing) tells a missing bucket.
    let r = f.client(&["raw", "HEAD", "/never-created"]);
    assert_eq!(r["status"], 404, "{r}");
    let r = f.client(&["raw", "GET", "/never-created/key"]);
    assert_error(&r, 404, "NoSuchKey");
    let small = f.file("small.bin", b"small");
    let r = f.client(&["raw", "PUT", "/never-created/key", "--body-file", &small]);
    assert_eq!(r["status"], 200, "{r}");
    assert!(f.server.bucket_path("never-created").is_dir());
}

#[test]
fn objects_are_files_a_test_can_overwrite() {
    let f = Fixture::start();
    let data = random_bytes(4096);
    f.put("dir/obj.bin", &data, &[]);
    let file = f.server.object_path(BUCKET, "dir/obj.bin");
    assert_eq!(
        file,
        f.server.root().join(BUCKET).join("dir").join("obj.bin")
    );
    assert_eq!(fs::read(&file).unwrap(), data);
    let etag = f.client(&["head", BUCKET, "dir/obj.bin"])["etag"].clone();

    // Corrupt one byte on disk: the server serves the corrupted bytes, with the ETag of
    // what was uploaded.
    let mut corrupted = data.clone();
    corrupted[100] ^= 0x01;
    fs::write(&file, &corrupted).unwrap();
    let r = f.get("dir/obj.bin", &[]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(body(&r), corrupted);
    assert_eq!(r["headers"]["etag"], etag, "{r}");

    // A signed PUT replaces it.
    let replacement = random_bytes(10);
    f.put("dir/obj.bin", &replacement, &[]);
    assert_eq!(body(&f.get("dir/obj.bin", &[])), replacement);
    assert_eq!(fs::read(&file).unwrap(), replacement);
}

#[test]
fn server_stops_when_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(tmp.path()).unwrap();
    let port = server.port();
    TcpStream::connect(("127.0.0.1", port)).expect("listening");
    assert_eq!(server.endpoint(), format!("http://127.0.0.1:{port}"));
    assert_eq!(server.region(), REGION);
    assert!(server.log().contains("server is running at"));
    drop(server);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// Starts `sykli-s3-server`; returns it and its JSON line.
fn start_bin(dir: &Path) -> (Child, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sykli-s3-server"))
        .args(["--dir", dir.to_str().unwrap(), "--bucket", BUCKET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (child, info)
}

fn port_of(info: &Value) -> u16 {
    let endpoint = info["endpoint"].as_str().unwrap();
    let port = endpoint.strip_prefix("http://127.0.0.1:").expect(endpoint);
    port.parse().unwrap()
}

#[test]
fn the_bin_serves_until_its_stdin_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (mut child, info) = start_bin(&dir);
    assert_eq!(info["region"], REGION);
    assert_eq!(info["root"], dir.join("data").to_str().unwrap());
    assert_eq!(info["log"], dir.join("s3s-fs.log").to_str().unwrap());
    assert!(info["pid"].as_u64().is_some(), "{info}");

    let creds = Creds::of_json(&info);
    let file = dir.join("hello.txt");
    fs::write(&file, b"hello").unwrap();
    let r = creds.client(&["put", BUCKET, "hello.txt", file.to_str().unwrap()]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(
        fs::read(dir.join("data").join(BUCKET).join("hello.txt")).unwrap(),
        b"hello"
    );

    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert!(TcpStream::connect(("127.0.0.1", port_of(&info))).is_err());
}

#[test]
fn the_server_dies_with_a_killed_bin() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, info) = start_bin(tmp.path());
    let pid = info["pid"].as_u64().unwrap() as libc::pid_t;
    // A pidfd (taken while s3s-fs surely lives) becomes readable when it exits.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );

    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    let mut poll = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ready = unsafe { libc::poll(&mut poll, 1, 30_000) };
    unsafe { libc::close(pidfd) };
    assert_eq!(
        ready, 1,
        "s3s-fs still runs 30 s after its parent was killed"
    );
    assert!(TcpStream::connect(("127.0.0.1", port_of(&info))).is_err());
}
