//! The AWS SDK's standard credential chain as sykli uses it, each link answered by a real
//! server on 127.0.0.1: an assume-role profile (`role_arn` + `source_profile`) exchanged
//! with moto's STS, whose S3 then checks the role's temporary credentials and policy; a
//! `credential_process` profile (a script writing JSON); ECS/EKS container credentials
//! and EC2 instance metadata (IMDSv2), answered by sykli_testkit::aws_endpoints with the
//! keys of an s3s-fs server (sykli_testkit::s3_server), which then verifies the uploads'
//! signatures. Web identity is in s3_web_identity.rs, static keys in s3.rs.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use sykli_core::error::Error;
use sykli_core::s3::{Bucket, S3Options};
use sykli_core::source::{s3, upload};
use sykli_testkit::aws_endpoints::{rfc3339, ContainerCredentials, Imds, Issued};
use sykli_testkit::moto_server::{MotoServer, Setup};
use sykli_testkit::s3_server::S3Server;

const BUCKET: &str = "builds";

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut e: BTreeMap<String, String> = [("HOME", "/nonexistent")]
        .iter()
        .chain(pairs)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Instance metadata only where a test serves it: nothing leaves 127.0.0.1.
    if !e.contains_key("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        e.insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
    }
    e
}

/// Publishes twice: the first uploads the archive (its signatures checked by the server),
/// the second finds it and sends nothing.
fn publish_twice(bucket: &Bucket, dir: &Path) -> s3::Published {
    let root = support::committed_and_dirty(dir);
    let scratch = dir.join("scratch");
    let first = s3::publish(bucket, &upload::local_tree(&root, &[]).unwrap(), &scratch).unwrap();
    assert!(
        !first.existed && first.uploaded_bytes == first.size && first.size > 0,
        "{first:?}"
    );
    let again = s3::publish(bucket, &upload::local_tree(&root, &[]).unwrap(), &scratch).unwrap();
    assert!(again.existed && again.uploaded_bytes == 0, "{again:?}");
    first
}

fn s3s(dir: &Path) -> S3Server {
    let server = S3Server::start(&dir.join("s3")).unwrap();
    server.create_bucket(BUCKET).unwrap();
    server
}

fn options(endpoint: String) -> S3Options {
    S3Options {
        bucket: BUCKET.into(),
        prefix: Some("ci".into()),
        endpoint: Some(endpoint),
        force_path_style: Some(true),
        ..Default::default()
    }
}

fn issued(server: &S3Server, lifetime: Duration) -> Issued {
    Issued {
        access_key_id: server.access_key().into(),
        secret_access_key: server.secret_key().into(),
        session_token: "session-token-from-the-endpoint".into(),
        lifetime,
    }
}

#[test]
fn an_assume_role_profile_exchanges_its_source_profiles_keys_with_sts() {
    let tmp = tempfile::tempdir().unwrap();
    const ROLE: &str = "sykli-ci";
    let moto = MotoServer::start(
        &tmp.path().join("moto"),
        &Setup::new()
            .bucket(BUCKET)
            .s3_role(ROLE, BUCKET)
            .assuming_user("ci-user")
            .trust_user(ROLE, "ci-user"),
    )
    .unwrap();
    let (key, secret) = moto.user_keys("ci-user").expect("the user's access key");
    let credentials = tmp.path().join("credentials");
    std::fs::write(
        &credentials,
        format!("[base]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    let config = tmp.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile ci]\nrole_arn = {}\nsource_profile = base\nrole_session_name = sykli-assume\n",
            moto.role_arn(ROLE)
        ),
    )
    .unwrap();
    let endpoint = moto.endpoint();
    let e = env(&[
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ("AWS_PROFILE", "ci"),
        ("AWS_ENDPOINT_URL_STS", &endpoint),
        ("AWS_REGION", moto.region()),
    ]);

    let bucket = Bucket::new(&options(moto.endpoint()), &e).unwrap();
    let creds = bucket.creds.clone().expect("credentials");
    assert_eq!(creds.source, "profile ci (assume role)");
    // The role's temporary credentials, not the user's keys.
    assert!(
        creds.access_key_id.starts_with("ASIA") && creds.access_key_id != key,
        "{creds:?}"
    );
    assert!(creds.session_token.is_some(), "{creds:?}");
    let left = bucket
        .credentials_lifetime()
        .expect("STS says when they expire");
    assert!(left > 60 && left <= 3600, "{left}");
    // One STS call (AssumeRole, signed with the user's keys), nothing to S3 yet.
    assert_eq!(moto.requests(), ["POST / 200"]);

    // moto's S3 checks the role's credentials and policy on every request.
    let p = publish_twice(&bucket, tmp.path());
    // The SDK names the operation in the query (`?x-id=PutObject`).
    let put = format!("PUT /{BUCKET}/{}?x-id=PutObject 200", p.key);
    assert_eq!(
        moto.requests().iter().filter(|r| **r == put).count(),
        1,
        "{:?}",
        moto.requests()
    );
    // A URL longer-lived than the session: the expiry warning, from STS's Expiration.
    let signed = s3::presign_for_job(&bucket, &p.key, Some(7200)).unwrap();
    assert_eq!(signed.warnings.len(), 1, "{:?}", signed.warnings);
    assert!(
        signed.warnings[0].contains("profile ci (assume role)"),
        "{:?}",
        signed.warnings
    );

    // The source profile's keys refused by STS: an s3_auth error naming the profile, never
    // the secret.
    std::fs::write(
        &credentials,
        format!("[base]\naws_access_key_id = {key}\naws_secret_access_key = not-{secret}\n"),
    )
    .unwrap();
    let err = match Bucket::new(&options(moto.endpoint()), &e) {
        Ok(b) => panic!("expected an error, got {:?}", b.creds),
        Err(err) => err,
    };
    let msg = err.to_string();
    assert_eq!(err.kind(), "s3_auth", "{msg}");
    assert!(
        msg.contains("AWS_PROFILE=ci") && msg.contains("SignatureDoesNotMatch"),
        "{msg}"
    );
    assert!(!msg.contains(&secret), "{msg}");
}

#[test]
fn a_credential_process_profile_runs_its_command_and_its_credentials_sign() {
    let tmp = tempfile::tempdir().unwrap();
    let server = s3s(tmp.path());
    let ran = tmp.path().join("ran");
    let expiration = rfc3339(SystemTime::now() + Duration::from_secs(2 * 3600));
    let script = tmp.path().join("credentials.sh");
    let json = serde_json::json!({
        "Version": 1,
        "AccessKeyId": server.access_key(),
        "SecretAccessKey": server.secret_key(),
        "SessionToken": "from-the-process",
        "Expiration": expiration,
    });
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> '{}'\ncat <<'EOF'\n{json}\nEOF\n",
            ran.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = tmp.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile proc]\ncredential_process = {}\nregion = {}\n",
            script.display(),
            server.region()
        ),
    )
    .unwrap();
    let e = env(&[
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_PROFILE", "proc"),
    ]);

    let bucket = Bucket::new(&options(server.endpoint()), &e).unwrap();
    let creds = bucket.creds.clone().expect("credentials");
    assert_eq!(creds.source, "profile proc (credential_process)");
    assert_eq!(creds.session_token.as_deref(), Some("from-the-process"));
    assert_eq!(bucket.region, server.region(), "the profile's region");
    let left = bucket
        .credentials_lifetime()
        .expect("the process said when");
    assert!((7100..=7200).contains(&left), "{left}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "run\n");
    publish_twice(&bucket, tmp.path());

    // A process that fails: its profile is named, the chain stops there.
    std::fs::write(&script, "#!/bin/sh\necho 'no session' >&2\nexit 3\n").unwrap();
    let err = match Bucket::new(&options(server.endpoint()), &e) {
        Ok(b) => panic!("expected an error, got {:?}", b.creds),
        Err(err) => err,
    };
    assert!(err.to_string().contains("AWS_PROFILE=proc"), "{err}");
}

#[test]
fn container_credentials_are_fetched_with_the_pod_identity_token() {
    let tmp = tempfile::tempdir().unwrap();
    let server = s3s(tmp.path());
    const TOKEN: &str = "eks-pod-identity-token-7c1d";
    let endpoint =
        ContainerCredentials::start(issued(&server, Duration::from_secs(6 * 3600)), Some(TOKEN))
            .unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let uri = endpoint.full_uri();
    let e = env(&[
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_file.to_str().unwrap(),
        ),
        ("AWS_REGION", server.region()),
    ]);

    let bucket = Bucket::new(&options(server.endpoint()), &e).unwrap();
    let creds = bucket.creds.clone().expect("credentials");
    assert_eq!(
        creds.source,
        "container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI)"
    );
    assert_eq!(
        creds.session_token.as_deref(),
        Some("session-token-from-the-endpoint")
    );
    let left = bucket.credentials_lifetime().expect("an expiration");
    assert!(left > 5 * 3600 && left <= 6 * 3600, "{left}");
    assert_eq!(endpoint.requests(), ["GET /v1/credentials 200 auth=ok"]);
    publish_twice(&bucket, tmp.path());

    // Another token: refused, and the error names the endpoint, never the token.
    std::fs::write(&token_file, "stolen-token").unwrap();
    let err = match Bucket::new(&options(server.endpoint()), &e) {
        Ok(b) => panic!("expected an error, got {:?}", b.creds),
        Err(err) => err,
    };
    let msg = err.to_string();
    assert!(msg.contains(&uri), "{msg}");
    assert!(
        !msg.contains("stolen-token") && !msg.contains(TOKEN),
        "{msg}"
    );
    assert!(
        endpoint
            .requests()
            .iter()
            .all(|r| r.ends_with("auth=ok") || r.ends_with("auth=wrong")),
        "{:?}",
        endpoint.requests()
    );
}

#[test]
fn instance_metadata_gives_the_roles_credentials_and_the_region_over_imdsv2() {
    let tmp = tempfile::tempdir().unwrap();
    let server = s3s(tmp.path());
    let imds = Imds::start(
        "sykli-runner",
        issued(&server, Duration::from_secs(3 * 3600)),
        "eu-north-1",
    )
    .unwrap();
    let endpoint = imds.endpoint();
    // No keys, no profile, no region: the instance says it all.
    let e = env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)]);

    let bucket = Bucket::new(&options(server.endpoint()), &e).unwrap();
    let creds = bucket.creds.clone().expect("credentials");
    assert_eq!(creds.source, "EC2 instance metadata (IMDSv2)");
    assert_eq!(bucket.region, "eu-north-1");
    let left = bucket.credentials_lifetime().expect("an expiration");
    assert!(left > 2 * 3600 && left <= 3 * 3600, "{left}");
    let requests = imds.requests();
    // A session token first, and every read with it.
    assert_eq!(
        requests.first().map(String::as_str),
        Some("PUT /latest/api/token 200"),
        "{requests:?}"
    );
    for path in [
        "GET /latest/meta-data/placement/region 200 token=ok",
        "GET /latest/meta-data/iam/security-credentials/ 200 token=ok",
        "GET /latest/meta-data/iam/security-credentials/sykli-runner 200 token=ok",
    ] {
        assert!(requests.iter().any(|r| r == path), "{path}: {requests:?}");
    }
    assert!(
        requests
            .iter()
            .all(|r| r.starts_with("PUT ") || r.ends_with("token=ok")),
        "{requests:?}"
    );
    publish_twice(&bucket, tmp.path());
}

#[test]
fn the_first_link_that_answers_wins_and_the_later_ones_are_not_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let server = s3s(tmp.path());
    let container =
        ContainerCredentials::start(issued(&server, Duration::from_secs(3600)), None).unwrap();
    let imds = Imds::start("r", issued(&server, Duration::from_secs(3600)), "eu-west-1").unwrap();
    let credentials = tmp.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            server.access_key(),
            server.secret_key()
        ),
    )
    .unwrap();
    let (uri, meta) = (container.full_uri(), imds.endpoint());
    let later = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", meta.as_str()),
        ("AWS_REGION", server.region()),
    ];

    // Environment variables before everything.
    let mut e = env(&later);
    e.insert("AWS_ACCESS_KEY_ID".into(), server.access_key().into());
    e.insert("AWS_SECRET_ACCESS_KEY".into(), server.secret_key().into());
    e.insert(
        "AWS_SHARED_CREDENTIALS_FILE".into(),
        credentials.to_str().unwrap().into(),
    );
    let b = Bucket::new(&options(server.endpoint()), &e).unwrap();
    assert_eq!(b.creds.unwrap().source, "environment (AWS_ACCESS_KEY_ID)");

    // Then the shared files' profile.
    e.remove("AWS_ACCESS_KEY_ID");
    e.remove("AWS_SECRET_ACCESS_KEY");
    let b = Bucket::new(&options(server.endpoint()), &e).unwrap();
    assert_eq!(b.creds.clone().unwrap().source, "profile default");
    publish_twice(&b, tmp.path());

    // Then the container's, before the instance's.
    e.remove("AWS_SHARED_CREDENTIALS_FILE");
    let b = Bucket::new(&options(server.endpoint()), &e).unwrap();
    assert_eq!(
        b.creds.unwrap().source,
        "container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI)"
    );
    assert_eq!(container.requests().len(), 1);
    assert_eq!(imds.requests(), Vec::<String>::new());

    // Nothing anywhere: one line naming the chain, before any request to the bucket.
    let log = server.log().len();
    let err = match Bucket::new(&options(server.endpoint()), &env(&[])) {
        Ok(b) => panic!("expected an error, got {:?}", b.creds),
        Err(err) => err,
    };
    assert!(
        matches!(&err, Error::InvalidOption { key, .. } if key == "s3 credentials"),
        "{err:?}"
    );
    assert!(err.to_string().contains("no AWS credentials"), "{err}");
    assert_eq!(server.log().len(), log);
}
