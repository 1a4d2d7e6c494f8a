//! The S3 strategy against a real S3-compatible server on 127.0.0.1 that verifies SigV4
//! (s3s-fs, see sykli_testkit::s3_server): publish, multipart, presigned URLs (fresh and
//! expired), and the pod side (`sykli-sync fetch`, the real binary) single-stream and with
//! parallel ranged requests. The Jobs, their URL Secrets and the garbage collector are in
//! real_s3.rs, on the real components.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sykli_core::s3::{Bucket, S3Options};
use sykli_core::source::{s3, upload};
use sykli_sync::Manifest;
use sykli_testkit::s3_server::S3Server;

const BUCKET: &str = "builds";

fn env(server: &S3Server, secret: Option<&str>) -> BTreeMap<String, String> {
    let mut e: BTreeMap<String, String> = [
        ("AWS_ACCESS_KEY_ID", server.access_key()),
        (
            "AWS_SECRET_ACCESS_KEY",
            secret.unwrap_or(server.secret_key()),
        ),
        ("HOME", "/nonexistent"),
        // No instance metadata: nothing leaves 127.0.0.1.
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    e.insert("AWS_REGION".into(), server.region().into());
    e
}

fn options(server: &S3Server, chunk: Option<u64>) -> S3Options {
    S3Options {
        bucket: BUCKET.into(),
        prefix: Some("ci".into()),
        endpoint: Some(server.endpoint()),
        multipart_threshold: chunk,
        multipart_chunksize: chunk,
        ..Default::default()
    }
}

/// A local S3 server with the bucket, and a repository holding `files` published into it:
/// (the server, a client of the bucket, what was published).
fn published(tmp: &Path, files: &[(&str, Vec<u8>)]) -> (S3Server, Bucket, s3::Published) {
    let server = S3Server::start(&tmp.join("s3")).unwrap();
    server.create_bucket(BUCKET).unwrap();
    let root = repo(tmp, files);
    let bucket = Bucket::new(&options(&server, None), &env(&server, None)).unwrap();
    let published = s3::publish(
        &bucket,
        &upload::local_tree(&root, &[]).unwrap(),
        &tmp.join("s"),
    )
    .unwrap();
    (server, bucket, published)
}

/// A git repository whose working tree holds `files` (name → content), some uncommitted.
fn repo(dir: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let root = dir.join("work");
    std::fs::create_dir_all(&root).unwrap();
    let git = |args: &[&str]| {
        let st = Command::new("git")
            .args(args)
            .current_dir(&root)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(root.join("committed.txt"), "committed\n").unwrap();
    git(&["add", "."]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "first",
    ]);
    for (name, content) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    root
}

/// Incompressible bytes (so the archive is as large as the files), from a seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sykli_sync() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = dir.join("debug").join("sykli-sync");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p sykli_sync --bins",
        bin.display()
    );
    bin
}

/// Runs `sykli-sync fetch` as the init container would; (status ok, stdout, stderr).
fn fetch(url: &str, p: &s3::Published, to: &Path, parallel: &str) -> (bool, String, String) {
    fetch_trusting(url, p, to, parallel, None)
}

/// [`fetch`] with the CA bundle in `SYKLI_SOURCE_CA` (`--ca-env`), as the fetch container of
/// a bucket with `s3.ca_bundle` runs.
fn fetch_trusting(
    url: &str,
    p: &s3::Published,
    to: &Path,
    parallel: &str,
    ca_pem: Option<&str>,
) -> (bool, String, String) {
    let mut cmd = Command::new(sykli_sync());
    cmd.args([
        "fetch",
        "--url-env",
        "SYKLI_SOURCE_URL",
        "--sha256",
        &p.sha256,
    ])
    .args(["--size", &p.size.to_string(), "--tree", &p.tree])
    .arg("--to")
    .arg(to)
    .arg("--download")
    .arg(to.with_extension("download"))
    .args(["--parallel", parallel, "--parallel-min", "1"])
    .env("SYKLI_SOURCE_URL", url);
    if let Some(pem) = ca_pem {
        cmd.args(["--ca-env", s3::CA_ENV]).env(s3::CA_ENV, pem);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn multipart_upload_then_single_and_parallel_downloads_give_the_identical_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3")).unwrap();
    server.create_bucket(BUCKET).unwrap();
    let root = repo(
        tmp.path(),
        &[
            ("big/a.bin", noise(1, 7 << 20)),
            ("big/b.bin", noise(2, 5 << 20)),
            ("src/dirty.rs", b"fn dirty() {}\n".to_vec()),
        ],
    );
    // Parts of 5 MiB (S3's minimum): a 12 MiB archive goes up in three.
    let bucket = Bucket::new(&options(&server, Some(5 << 20)), &env(&server, None)).unwrap();
    let local = upload::local_tree(&root, &[]).unwrap();
    let p = s3::publish(&bucket, &local, &tmp.path().join("scratch")).unwrap();
    assert!(
        !p.existed && p.uploaded_bytes == p.size && p.size > 12 << 20,
        "{p:?}"
    );
    let info = bucket.head(&p.key).unwrap().expect("the object exists");
    assert_eq!(
        (info.size, info.sha256.as_deref()),
        (p.size, Some(p.sha256.as_str()))
    );
    // Three signed parts (5 + 5 + 2 MiB) went up, each with its own payload hash.
    let parts = server.log().matches("&partNumber=").count();
    assert!(parts >= 3, "expected a multipart upload: {}", server.log());

    let url = bucket.presign_get(&p.key, 600).unwrap();
    let (ok, out, err) = fetch(&url, &p, &tmp.path().join("one"), "1");
    assert!(ok, "{err}");
    assert!(out.contains("\"ranges\":0"), "{out}");
    let (ok, out, err) = fetch(&url, &p, &tmp.path().join("four"), "4");
    assert!(ok, "{err}");
    assert!(out.contains("\"ranges\":4"), "{out}");
    for dir in ["one", "four"] {
        let got = Manifest::scan(&tmp.path().join(dir)).unwrap();
        assert_eq!(got.tree_hash(), local.tree, "{dir}");
        assert_eq!(
            std::fs::read(tmp.path().join(dir).join("big/a.bin")).unwrap(),
            std::fs::read(root.join("big/a.bin")).unwrap()
        );
    }

    // The same tree again: nothing is sent.
    let again = s3::publish(
        &bucket,
        &upload::local_tree(&root, &[]).unwrap(),
        &tmp.path().join("scratch"),
    )
    .unwrap();
    assert!(again.existed && again.uploaded_bytes == 0, "{again:?}");
}

#[test]
fn an_expired_url_fails_clearly_without_showing_the_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, bucket, p) = published(tmp.path(), &[("a.txt", b"a\n".to_vec())]);
    // Signed an hour ago for one second.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let url = bucket
        .presign_get_at(
            &p.key,
            1,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(now - 3600),
        )
        .unwrap();
    let signature = url.split("X-Amz-Signature=").nth(1).unwrap().to_string();
    let (ok, _, err) = fetch(&url, &p, &tmp.path().join("out"), "1");
    assert!(!ok);
    assert!(
        err.contains("403") && err.to_lowercase().contains("expired"),
        "{err}"
    );
    assert!(err.contains(&p.key), "{err}");
    assert!(!err.contains(&signature), "{err}");
    assert!(!tmp.path().join("out").join("a.txt").exists());
}

#[test]
fn refused_credentials_and_a_missing_bucket_are_errors_that_name_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3")).unwrap();
    server.create_bucket(BUCKET).unwrap();
    let root = repo(tmp.path(), &[("a.txt", b"a\n".to_vec())]);
    let local = upload::local_tree(&root, &[]).unwrap();

    let wrong = Bucket::new(
        &options(&server, None),
        &env(&server, Some("not-the-secret")),
    )
    .unwrap();
    let err = s3::publish(&wrong, &local, &tmp.path().join("s")).unwrap_err();
    assert_eq!(err.kind(), "s3_auth", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("SignatureDoesNotMatch") && msg.contains("environment"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret"), "{msg}");

    let mut unknown = env(&server, None);
    unknown.insert("AWS_ACCESS_KEY_ID".into(), "AKIAUNKNOWNKEY000000".into());
    let b = Bucket::new(&options(&server, None), &unknown).unwrap();
    let err = s3::publish(&b, &local, &tmp.path().join("s")).unwrap_err();
    assert_eq!(err.kind(), "s3_auth", "{err}");

    let mut o = options(&server, None);
    o.bucket = "missing".into();
    let b = Bucket::new(&o, &env(&server, None)).unwrap();
    let err = s3::publish(&b, &local, &tmp.path().join("s")).unwrap_err();
    assert_eq!(err.kind(), "s3_not_found", "{err}");
    assert!(
        err.to_string()
            .contains("bucket \"missing\" does not exist"),
        "{err}"
    );
}

/// The server's log from byte `from` on: the requests made since.
fn puts_since(server: &S3Server, from: usize) -> usize {
    server.log()[from..]
        .lines()
        .filter(|l| l.contains("PUT") && l.contains("sykli-source/"))
        .count()
}

#[test]
fn an_object_at_the_key_is_trusted_for_its_content_only() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3")).unwrap();
    server.create_bucket(BUCKET).unwrap();
    let root = repo(tmp.path(), &[("data.bin", noise(3, 256 << 10))]);
    let bucket = Bucket::new(&options(&server, None), &env(&server, None)).unwrap();
    let local = upload::local_tree(&root, &[]).unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    // Where the archive used to be written, by a name anyone could guess: a planted link
    // there is never followed.
    let sentinel = tmp.path().join("sentinel");
    std::fs::write(&sentinel, "untouched").unwrap();
    for name in [
        format!("{}.tar.gz", local.tree),
        format!("{}.tar.gz.{}", local.tree, std::process::id()),
    ] {
        std::os::unix::fs::symlink(&sentinel, scratch.join(name)).unwrap();
    }
    let planted: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();

    let first = s3::publish(&bucket, &local, &scratch).unwrap();
    assert!(!first.existed && first.warnings.is_empty(), "{first:?}");
    assert_eq!(std::fs::read_to_string(&sentinel).unwrap(), "untouched");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        planted.len(),
        "the private scratch directory is removed after the upload"
    );
    let object = server.object_path(BUCKET, &first.key);
    let good = std::fs::read(&object).unwrap();

    // Same size, metadata still claiming our SHA-256, other bytes: not trusted.
    std::fs::write(&object, noise(4, good.len())).unwrap();
    let from = server.log().len();
    let again = s3::publish(&bucket, &local, &scratch).unwrap();
    assert!(
        !again.existed && again.uploaded_bytes == again.size,
        "{again:?}"
    );
    assert_eq!((&again.sha256, again.size), (&first.sha256, first.size));
    let warning = again.warnings.join("\n");
    assert!(
        warning.contains(&first.key)
            && warning.contains("content hashes to")
            && warning.contains("uploading it again"),
        "{warning}"
    );
    assert_eq!(puts_since(&server, from), 1, "{}", &server.log()[from..]);
    assert!(
        std::fs::read(&object).unwrap() == good,
        "the object is the archive again"
    );

    // An object whose metadata matches its own bytes, put there by someone else: not the
    // archive this tree packs to.
    let other = tmp.path().join("other.tar.gz");
    std::fs::write(&other, noise(5, 1000)).unwrap();
    let (len, sha) = sykli_sync::sha256_of(std::fs::File::open(&other).unwrap()).unwrap();
    bucket
        .put_file(&first.key, &other, &sha, len, &local.tree)
        .unwrap();
    let replaced = s3::publish(&bucket, &local, &scratch).unwrap();
    assert!(!replaced.existed, "{replaced:?}");
    assert!(
        replaced.warnings.join("\n").contains("1000 bytes"),
        "{replaced:?}"
    );
    assert!(std::fs::read(&object).unwrap() == good);

    // Intact: verified, and not sent again.
    let from = server.log().len();
    let intact = s3::publish(&bucket, &local, &scratch).unwrap();
    assert!(
        intact.existed && intact.uploaded_bytes == 0 && intact.warnings.is_empty(),
        "{intact:?}"
    );
    assert_eq!(puts_since(&server, from), 0, "{}", &server.log()[from..]);
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), planted.len());

    // What changes after the publish is still the pod's to refuse.
    let url = bucket.presign_get(&intact.key, 600).unwrap();
    std::fs::write(&object, noise(6, good.len())).unwrap();
    let (ok, _, err) = fetch(&url, &intact, &tmp.path().join("out"), "1");
    assert!(!ok && err.contains("verification failed"), "{err}");
}

/// The URL's X-Amz-Expires.
fn url_expires(url: &str) -> u64 {
    url.split("X-Amz-Expires=")
        .nth(1)
        .and_then(|q| q.split('&').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no X-Amz-Expires in the URL"))
}

#[test]
fn a_jobs_url_lives_its_tasks_timeout_plus_the_margin_and_warns_when_credentials_die_first() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, bucket, p) = published(tmp.path(), &[("a.txt", b"a\n".to_vec())]);
    let margin = s3::URL_MARGIN_SECONDS;
    assert_eq!(margin, 600);
    for (deadline, expected) in [
        (Some(300), 300 + margin),
        (None, s3::UNTIMED_TASK_SECONDS + margin),
        // Beyond SigV4's seven days the fetch (first in the pod) still has a week.
        (Some(30 * 24 * 3600), 7 * 24 * 3600),
    ] {
        let signed = s3::presign_for_job(&bucket, &p.key, deadline).unwrap();
        assert_eq!(signed.expires, expected, "{deadline:?}");
        assert_eq!(url_expires(&signed.url), expected, "{deadline:?}");
        assert!(signed.warnings.is_empty(), "{:?}", signed.warnings);
        assert!(!format!("{signed:?}").contains("X-Amz-Signature"));
    }
    let signed = s3::presign_for_job(&bucket, &p.key, Some(300)).unwrap();
    let (ok, _, err) = fetch(&signed.url, &p, &tmp.path().join("out"), "1");
    assert!(ok, "{err}");

    // Temporary credentials that expire before this Job's URL would: a warning, per Job.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut temporary = bucket.clone();
    temporary.creds.as_mut().unwrap().expires_at = Some(now + 3000);
    let signed = s3::presign_for_job(&temporary, &p.key, Some(3600)).unwrap();
    assert_eq!(signed.warnings.len(), 1, "{:?}", signed.warnings);
    assert!(
        signed.warnings[0].contains("expire in 49 min")
            || signed.warnings[0].contains("expire in 50 min"),
        "{:?}",
        signed.warnings
    );
    assert!(
        signed.warnings[0].contains("needs 70 min"),
        "{:?}",
        signed.warnings
    );
    let short = s3::presign_for_job(&temporary, &p.key, Some(60)).unwrap();
    assert!(short.warnings.is_empty(), "{:?}", short.warnings);
}

#[test]
fn a_bucket_behind_a_private_ca_is_trusted_through_its_ca_bundle_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3")).unwrap();
    server.create_bucket(BUCKET).unwrap();
    let front = server.tls_front().unwrap();
    let ca = tmp.path().join("minio-ca.pem");
    // Comments and blocks other than certificates are left out of what the pods get.
    std::fs::write(
        &ca,
        format!("# the in-cluster MinIO's CA\n{}", front.ca_pem()),
    )
    .unwrap();
    let root = repo(tmp.path(), &[("a.txt", b"over tls\n".to_vec())]);
    let local = upload::local_tree(&root, &[]).unwrap();
    let mut opts = S3Options {
        endpoint: Some(front.endpoint()),
        ..options(&server, None)
    };

    // Without the bundle, the endpoint's certificate is refused: the run stops, naming it.
    let untrusted = Bucket::new(&opts, &env(&server, None)).unwrap();
    let err = s3::publish(&untrusted, &local, &tmp.path().join("s")).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind(), "s3", "{msg}");
    assert!(
        msg.contains(&front.endpoint())
            && msg.contains("UnknownIssuer")
            && msg.contains("s3.ca_bundle"),
        "{msg}"
    );

    opts.ca_bundle = Some(ca.to_str().unwrap().into());
    let bucket = Bucket::new(&opts, &env(&server, None)).unwrap();
    let p = s3::publish(&bucket, &local, &tmp.path().join("s")).unwrap();
    assert!(!p.existed && p.uploaded_bytes == p.size, "{p:?}");
    let again = s3::publish(&bucket, &local, &tmp.path().join("s")).unwrap();
    assert!(again.existed && again.uploaded_bytes == 0, "{again:?}");
    assert!(front.relayed() > 0);

    // The Job's fetch container gets the certificates (and only them) by name.
    let plan = s3::S3Plan::new(&s3::S3SourceOptions {
        sha256: p.sha256.clone(),
        size: p.size,
        tree: p.tree.clone(),
        key: Some(p.key.clone()),
        image: None,
        parallel: None,
        parallel_min: None,
        bundle: None,
        ca_bundle: opts.ca_bundle.clone(),
    })
    .unwrap();
    let fetch_container = plan.init_containers("ws", "dl", "job").remove(0);
    let args = fetch_container.command.clone().unwrap();
    let at = args.iter().position(|a| a == "--ca-env").expect("--ca-env");
    assert_eq!(args[at + 1], s3::CA_ENV);
    let env_vars = fetch_container.env.clone().unwrap();
    let pem = env_vars
        .iter()
        .find(|e| e.name == s3::CA_ENV)
        .and_then(|e| e.value.clone())
        .expect("the bundle as a plain value");
    assert_eq!(pem, bucket.ca.as_ref().unwrap().pem);
    assert!(!pem.contains("MinIO") && pem.starts_with("-----BEGIN CERTIFICATE-----"));

    // The pod side: trusted with the bundle, refused without it, never showing the URL's
    // signature.
    let url = s3::presign_for_job(&bucket, &p.key, Some(300)).unwrap().url;
    assert!(url.starts_with(&front.endpoint()), "{url}");
    let (ok, _, err) = fetch_trusting(&url, &p, &tmp.path().join("out"), "4", Some(&pem));
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(tmp.path().join("out/a.txt")).unwrap(),
        b"over tls\n"
    );
    let (ok, _, err) = fetch(&url, &p, &tmp.path().join("out2"), "1");
    assert!(!ok && err.to_lowercase().contains("certificate"), "{err}");
    let signature = url.split("X-Amz-Signature=").nth(1).unwrap();
    assert!(!err.contains(signature), "{err}");

    // Not a bundle: refused before any request, on both sides.
    let log = server.log().len();
    std::fs::write(&ca, "not a certificate\n").unwrap();
    for err in [
        Bucket::new(&opts, &env(&server, None))
            .map(|_| ())
            .unwrap_err(),
        s3::S3Plan::new(&s3::S3SourceOptions {
            sha256: p.sha256.clone(),
            size: p.size,
            tree: p.tree.clone(),
            key: None,
            image: None,
            parallel: None,
            parallel_min: None,
            bundle: None,
            ca_bundle: opts.ca_bundle.clone(),
        })
        .map(|_| ())
        .unwrap_err(),
    ] {
        assert!(
            matches!(&err, sykli_core::Error::InvalidOption { key, message }
                if key == "s3.ca_bundle" && message.contains("no certificate")),
            "{err:?}"
        );
    }
    assert_eq!(server.log().len(), log);
}
