//! The S3 strategy's web identity credentials against a real STS: moto's server
//! (sykli_testkit::moto_server), with IAM auth enforced, as both the STS and the S3
//! endpoint. `Bucket::new` exchanges the token file for temporary credentials with
//! `AssumeRoleWithWebIdentity` (from the environment variables and from a shared config
//! profile), and `publish` then uploads with them: moto's S3 recomputes each signature
//! with the temporary secret, demands the session token STS gave with the key, and
//! evaluates the role's policy, which allows only what sykli documents it needs.
//!
//! Not checked by moto (see the module doc of moto_server): the web identity token itself
//! (any string is exchanged), the role's trust policy, the credentials' expiry, and
//! presigned URLs (tests/s3.rs covers those against s3s-fs).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sykli_core::error::Error;
use sykli_core::s3::{Bucket, S3Options};
use sykli_core::source::{s3, upload};
use sykli_testkit::moto_server::{MotoServer, Setup};

const BUCKET: &str = "builds";
/// A role allowed s3:GetObject, s3:PutObject and s3:ListBucket on BUCKET, nothing more.
const ROLE: &str = "sykli-ci";
/// A role that exists but is allowed nothing.
const POWERLESS: &str = "sykli-nothing";

/// JWT-shaped, as a CI provider's OIDC token file holds (moto does not verify it).
const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.\
    eyJpc3MiOiJodHRwczovL3Rva2VuLmFjdGlvbnMuZXhhbXBsZS5jb20iLCJzdWIiOiJyZXBvOnN5a2xpIiwiYXVkIjoic3RzLmFtYXpvbmF3cy5jb20ifQ.\
    c2lnbmF0dXJl";

fn moto(dir: &Path) -> MotoServer {
    MotoServer::start(
        &dir.join("moto"),
        &Setup::new()
            .bucket(BUCKET)
            .s3_role(ROLE, BUCKET)
            .role(POWERLESS, None),
    )
    .unwrap()
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("web-identity-token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path
}

/// No static keys, no shared files: only the web identity and where STS is.
fn web_identity_env(server: &MotoServer, token: &Path, role_arn: &str) -> BTreeMap<String, String> {
    [
        ("HOME", "/nonexistent"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
        ("AWS_ROLE_ARN", role_arn),
        ("AWS_ROLE_SESSION_NAME", "sykli-test"),
        ("AWS_ENDPOINT_URL_STS", &server.endpoint()),
        ("AWS_REGION", server.region()),
        // No instance metadata: nothing leaves 127.0.0.1.
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn options(server: &MotoServer) -> S3Options {
    S3Options {
        bucket: BUCKET.into(),
        endpoint: Some(server.endpoint()),
        force_path_style: Some(true),
        ..Default::default()
    }
}

fn s3_auth_error(result: sykli_core::error::Result<s3::Published>) -> String {
    match result {
        Err(
            e @ Error::S3 {
                kind: "s3_auth", ..
            },
        ) => e.to_string(),
        other => panic!("expected an s3_auth error, got {other:?}"),
    }
}

/// Publishes twice with `bucket`: the first uploads the archive, the second finds it.
fn publish_twice(bucket: &Bucket, root: &Path, scratch: &Path) -> s3::Published {
    let local = upload::local_tree(root, &[]).unwrap();
    let first = s3::publish(bucket, &local, scratch).unwrap();
    assert!(
        !first.existed && first.uploaded_bytes == first.size && first.size > 0,
        "{first:?}"
    );
    let info = bucket
        .head(&first.key)
        .unwrap()
        .expect("the archive exists");
    assert_eq!(
        (info.size, info.sha256.as_deref()),
        (first.size, Some(first.sha256.as_str()))
    );
    let again = s3::publish(bucket, &upload::local_tree(root, &[]).unwrap(), scratch).unwrap();
    assert!(again.existed && again.uploaded_bytes == 0, "{again:?}");
    assert_eq!(
        (again.key.as_str(), again.sha256.as_str()),
        (first.key.as_str(), first.sha256.as_str())
    );
    first
}

#[test]
fn a_web_identity_from_the_environment_is_exchanged_with_sts_and_its_credentials_publish() {
    let tmp = tempfile::tempdir().unwrap();
    let server = moto(tmp.path());
    let token = token_file(tmp.path());
    let env = web_identity_env(&server, &token, &server.role_arn(ROLE));

    let bucket = Bucket::new(&options(&server), &env).unwrap();
    let creds = bucket.creds.clone().expect("credentials were resolved");
    assert!(creds.source.contains("web identity"), "{creds:?}");
    // Temporary credentials: an ASIA key (moto's, as AWS's) and a session token.
    assert!(creds.access_key_id.starts_with("ASIA"), "{creds:?}");
    let token_sent = creds.session_token.clone().expect("a session token");
    assert!(!token_sent.is_empty());
    // STS says when they expire (an hour by default): presigned URLs die with them.
    let left = bucket.credentials_lifetime().expect("an expiration");
    assert!(left > 60 && left <= 12 * 3600, "{left}");
    // One call to STS, nothing to S3 yet.
    assert_eq!(server.requests(), ["POST / 200"]);

    let root = support::committed_and_dirty(tmp.path());
    let p = publish_twice(&bucket, &root, &tmp.path().join("scratch"));
    // The SDK names the operation in the query (`?x-id=PutObject`).
    let put = format!("PUT /{BUCKET}/{}?x-id=PutObject 200", p.key);
    assert_eq!(
        server.requests().iter().filter(|r| **r == put).count(),
        1,
        "{:?}",
        server.requests()
    );

    // The same temporary key with anything but its own secret and token is refused.
    let local = upload::local_tree(&root, &[]).unwrap();
    let scratch = tmp.path().join("scratch");
    let with = |f: &dyn Fn(&mut sykli_core::s3::credentials::Credentials)| {
        let mut b = bucket.clone();
        f(b.creds.as_mut().unwrap());
        s3::publish(&b, &local, &scratch)
    };
    let msg = s3_auth_error(with(&|c| {
        c.session_token = Some(format!("{token_sent}x"));
    }));
    assert!(
        msg.contains("InvalidToken") && msg.contains("web identity"),
        "{msg}"
    );
    // Without its token a temporary key is unknown.
    let msg = s3_auth_error(with(&|c| c.session_token = None));
    assert!(msg.contains("InvalidAccessKeyId"), "{msg}");
    let msg = s3_auth_error(with(&|c| c.secret_access_key = "not-the-secret".into()));
    assert!(msg.contains("SignatureDoesNotMatch"), "{msg}");
    assert!(
        !msg.contains("not-the-secret") && !msg.contains(&token_sent),
        "{msg}"
    );
    let msg = s3_auth_error(with(&|c| c.access_key_id = "ASIAUNKNOWNKEY000000".into()));
    assert!(msg.contains("InvalidAccessKeyId"), "{msg}");
}

#[test]
fn a_web_identity_profile_is_exchanged_too() {
    let tmp = tempfile::tempdir().unwrap();
    let server = moto(tmp.path());
    let token = token_file(tmp.path());
    let config = tmp.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile ci]\nrole_arn = {}\n\
             web_identity_token_file = {}\nrole_session_name = sykli-profile\n",
            server.role_arn(ROLE),
            token.display()
        ),
    )
    .unwrap();
    let env: BTreeMap<String, String> = [
        ("HOME", "/nonexistent"),
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_PROFILE", "ci"),
        ("AWS_ENDPOINT_URL_STS", &server.endpoint()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    let bucket = Bucket::new(&options(&server), &env).unwrap();
    let creds = bucket.creds.clone().expect("credentials were resolved");
    assert!(
        creds.source.contains("profile ci") && creds.source.contains("web identity"),
        "{creds:?}"
    );
    assert!(creds.session_token.is_some(), "{creds:?}");
    publish_twice(
        &bucket,
        &support::committed_and_dirty(tmp.path()),
        &tmp.path().join("scratch"),
    );
}

#[test]
fn a_role_without_the_permissions_is_refused_naming_what_sykli_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = moto(tmp.path());
    let token = token_file(tmp.path());
    let env = web_identity_env(&server, &token, &server.role_arn(POWERLESS));
    // STS gives the role's credentials; S3 refuses them every action.
    let bucket = Bucket::new(&options(&server), &env).unwrap();
    let local = upload::local_tree(&support::committed_and_dirty(tmp.path()), &[]).unwrap();
    let msg = s3_auth_error(s3::publish(&bucket, &local, &tmp.path().join("scratch")));
    assert!(
        msg.contains("AccessDenied")
            && msg.contains("s3:ListBucket")
            && msg.contains("web identity"),
        "{msg}"
    );
}

#[test]
fn sts_refusals_and_a_missing_token_file_name_the_role_or_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let server = moto(tmp.path());
    let token = token_file(tmp.path());
    let new = |env: &BTreeMap<String, String>| match Bucket::new(&options(&server), env) {
        Ok(b) => panic!("expected an error, got credentials {:?}", b.creds),
        Err(e) => e,
    };

    // A role that does not exist: STS answers AccessDenied.
    let missing = server.role_arn("no-such-role");
    let err = new(&web_identity_env(&server, &token, &missing));
    assert!(
        matches!(
            err,
            Error::S3 {
                kind: "s3_auth",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&missing) && msg.contains("AccessDenied"),
        "{msg}"
    );

    // Not a role ARN: STS answers ValidationError.
    let err = new(&web_identity_env(&server, &token, "role/sykli-ci"));
    assert!(
        matches!(
            err,
            Error::S3 {
                kind: "s3_auth",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("role/sykli-ci") && msg.contains("ValidationError"),
        "{msg}"
    );

    // STS unreachable: the error names the endpoint and the role.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let mut env = web_identity_env(&server, &token, &server.role_arn(ROLE));
    env.insert("AWS_ENDPOINT_URL_STS".into(), closed.clone());
    let err = new(&env);
    assert!(
        matches!(
            err,
            Error::S3 {
                kind: "s3_auth",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&closed) && msg.contains(&server.role_arn(ROLE)),
        "{msg}"
    );

    // A token file that is not there: nothing is asked of STS.
    let before = server.requests().len();
    let gone = tmp.path().join("no-such-token");
    let err = new(&web_identity_env(&server, &gone, &server.role_arn(ROLE)));
    assert!(
        matches!(&err, Error::InvalidOption { key, .. } if key == "s3 credentials"),
        "{err:?}"
    );
    assert!(err.to_string().contains(gone.to_str().unwrap()), "{err}");
    assert_eq!(server.requests().len(), before, "{:?}", server.requests());
}
