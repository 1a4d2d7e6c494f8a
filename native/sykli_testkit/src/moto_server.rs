//! A real STS and S3 server on 127.0.0.1 for tests: moto's server (PyPI `moto`
//! [`MOTO_VERSION`], installed into the test venv with its server extra's dependencies by
//! scripts/setup), with its IAM authentication and authorization enforced.
//!
//! Why moto: it is the one server at hand that implements STS. Its
//! `AssumeRoleWithWebIdentity` hands out temporary credentials (an `ASIA...` access key, a
//! secret and a session token) that its own S3 then accepts, and, once IAM auth is
//! enforced (what `INITIAL_NO_AUTH_ACTION_COUNT=0` does; here after [`Setup`] is applied),
//! its S3 checks every request against them:
//!
//! * the SigV4 `Authorization` header is recomputed with the secret the credentials
//!   belong to (a wrong secret: `403 SignatureDoesNotMatch`);
//! * a temporary key must come with exactly the session token STS gave it (another token:
//!   `400 InvalidToken`; no `X-Amz-Security-Token` at all: `403 InvalidAccessKeyId`, as the
//!   key is then looked up among IAM users' keys); an unknown key is
//!   `403 InvalidAccessKeyId`;
//! * the role's policies ([`Setup::role`]) must allow the action on the resource (else
//!   `403 AccessDenied`). moto names S3 actions as AWS does for those sykli uses
//!   (`s3:PutObject` for PUT, `s3:GetObject` for GET and HEAD, `s3:ListBucket` for
//!   ListObjectsV2).
//!
//! What it does not check: the web identity token (any string is exchanged, even an empty
//! one: no issuer, audience, signature or expiry is verified) and the role's trust policy; the
//! credentials' expiry; the region of the credential scope; the clock (`X-Amz-Date` skew);
//! `x-amz-content-sha256` against the body (it is signed, but a body that does not match
//! it is stored). Presigned URLs cannot be tested at all: moto reads signatures from the
//! `Authorization` header only and answers any presigned request with a 500 (use
//! [`crate::s3_server`] for those).
//!
//! Two changes to moto, made by the launcher below (both what AWS does):
//!
//! * `AssumeRoleWithWebIdentity` and `AssumeRoleWithSAML` are unsigned calls: moto, once
//!   auth is enforced, demands an `Authorization` header on them too (and fails with a 500
//!   without one). The launcher exempts them when unsigned.
//! * moto assumes any role ARN, even one that does not exist (and its S3 then fails with a
//!   500 for the resulting credentials). The launcher refuses, as STS does, a `RoleArn` that
//!   is not an IAM role ARN (`400 ValidationError`, "Request ARN is invalid") and a role that
//!   does not exist (`AccessDenied`, "Not authorized to perform
//!   sts:AssumeRoleWithWebIdentity"; with status 400 where AWS says 403, as moto's
//!   serializer knows no STS error shape `AccessDenied`).
//!
//! * Endpoint: [`MotoServer::endpoint`], `http://127.0.0.1:PORT`, for both STS (an
//!   unsigned `POST /` form, or any request signed for service `sts`) and S3 (path-style
//!   only, `http://127.0.0.1:PORT/<bucket>/<key>`).
//! * Account [`ACCOUNT`] (roles are `arn:aws:iam::123456789012:role/<name>`,
//!   [`MotoServer::role_arn`]), region [`REGION`].
//! * State lives in memory and is lost with the process; [`Setup`] creates buckets, roles
//!   and users (with an access key each, [`MotoServer::user_keys`]) before auth is enforced (through boto3 against the server itself), as there are no
//!   credentials to create them with afterwards.
//! * Request log (werkzeug's access log, one line per request) and Python errors:
//!   `<dir>/moto.log` ([`MotoServer::log_path`]); [`MotoServer::requests`] lists the
//!   requests served since auth was enforced, to assert which calls a client made.
//!
//! The server runs until the handle is dropped, or until the test process dies: it stops
//! when its standard input, a pipe from this process, closes.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::launch;
use crate::validate::venv_bin;

/// How long [`MotoServer::start`] waits for the server to listen with its [`Setup`] applied.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The moto release scripts/setup installs (and [`MotoServer::start`] insists on).
pub const MOTO_VERSION: &str = "5.2.5";

/// moto's default account, the one roles are created in.
pub const ACCOUNT: &str = "123456789012";

/// The region clients should sign for (moto's default; it does not check it).
pub const REGION: &str = "us-east-1";

/// Serves moto's app on 127.0.0.1:0 with auth off, applies `SYKLI_MOTO_SETUP` through
/// boto3, enforces auth, prints `{"port": N}` and serves until standard input reaches EOF.
const LAUNCHER: &str = r#"
import json, os, re, sys, threading

import moto
from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam.models import iam_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
from moto.sts.exceptions import STSClientError, STSValidationError
from moto.sts.responses import TokenResponse
from werkzeug.serving import make_server

want = os.environ["SYKLI_MOTO_VERSION"]
if moto.__version__ != want:
    sys.exit(f"moto is {moto.__version__}, not {want}: run scripts/setup")

# STS calls that AWS accepts unsigned stay unsigned once auth is enforced.
UNSIGNED = {"AssumeRoleWithWebIdentity", "AssumeRoleWithSAML"}
authorize = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action

def authorize_signed(self, resource="*"):
    if self._get_action() in UNSIGNED and "Authorization" not in self.headers:
        return
    return authorize(self, resource)

ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = authorize_signed

# STS assumes only roles that exist.
ROLE_ARN = re.compile(r"arn:(aws[a-z-]*):iam::([0-9]{12}):role/.+")
assume = TokenResponse.assume_role_with_web_identity

def assume_existing_role(self):
    arn = self._get_param("RoleArn") or ""
    m = ROLE_ARN.fullmatch(arn)
    if not m:
        raise STSValidationError("Request ARN is invalid")
    try:
        iam_backends[m.group(2)][m.group(1)].get_role_by_arn(arn)
    except Exception:
        raise STSClientError(
            "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
    return assume(self)

TokenResponse.assume_role_with_web_identity = assume_existing_role

settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
app = DomainDispatcherApplication(create_backend_app)
server = make_server(
    "127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
port = server.server_port
os.environ["MOTO_PORT"] = str(port)
threading.Thread(target=server.serve_forever, daemon=True).start()

import boto3
setup = json.loads(os.environ["SYKLI_MOTO_SETUP"])
client = lambda service: boto3.client(
    service, endpoint_url=f"http://127.0.0.1:{port}", region_name=os.environ["AWS_REGION"],
    aws_access_key_id="setup", aws_secret_access_key="setup")
s3, iam = client("s3"), client("iam")
for bucket in setup["buckets"]:
    s3.create_bucket(Bucket=bucket)
for role in setup["roles"]:
    iam.create_role(
        RoleName=role["name"], AssumeRolePolicyDocument=json.dumps(role["trust"]))
    if role["policy"] is not None:
        iam.put_role_policy(
            RoleName=role["name"], PolicyName="sykli-test",
            PolicyDocument=json.dumps(role["policy"]))
users = {}
for user in setup["users"]:
    iam.create_user(UserName=user["name"])
    iam.put_user_policy(
        UserName=user["name"], PolicyName="sykli-test",
        PolicyDocument=json.dumps(user["policy"]))
    key = iam.create_access_key(UserName=user["name"])["AccessKey"]
    users[user["name"]] = {
        "access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"]}
with open(os.environ["SYKLI_MOTO_USERS"], "w") as f:
    json.dump(users, f)

settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
ActionAuthenticatorMixin.request_count = 0
print(os.environ["SYKLI_MOTO_READY"], file=sys.stderr, flush=True)

def watch_stdin():
    try:
        sys.stdin.buffer.read()
    finally:
        os._exit(0)

threading.Thread(target=watch_stdin, daemon=True).start()
print(json.dumps({"port": port}), flush=True)
# Whatever moto prints later goes to the log, not to a pipe nobody reads.
os.dup2(2, 1)
threading.Event().wait()
"#;

/// What exists on the server before auth is enforced: buckets, and IAM roles with their
/// inline policies.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    buckets: Vec<String>,
    roles: Vec<Value>,
    users: Vec<Value>,
}

impl Setup {
    pub fn new() -> Setup {
        Setup::default()
    }

    /// A bucket (CreateBucket; the name must be a valid S3 bucket name).
    pub fn bucket(mut self, name: &str) -> Setup {
        self.buckets.push(name.to_string());
        self
    }

    /// A role `name` whose trust policy lets a web identity assume it (moto does not check
    /// trust policies), with the inline identity policy `policy` (an IAM policy document),
    /// or none: then every S3 request with its credentials is `AccessDenied`.
    pub fn role(mut self, name: &str, policy: Option<Value>) -> Setup {
        self.roles.push(json!({
            "name": name,
            "trust": {
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Federated": format!("arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.example.com")},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                }],
            },
            "policy": policy,
        }));
        self
    }

    /// Lets user `user` assume role `role` (a role added before): a statement of its trust
    /// policy, which moto checks for `AssumeRole` (not for a web identity).
    pub fn trust_user(mut self, role: &str, user: &str) -> Setup {
        if let Some(r) = self.roles.iter_mut().find(|r| r["name"] == role) {
            if let Some(statements) = r["trust"]["Statement"].as_array_mut() {
                statements.push(json!({
                    "Effect": "Allow",
                    "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/{user}")},
                    "Action": "sts:AssumeRole",
                }));
            }
        }
        self
    }

    /// An IAM user `name` with an access key ([`MotoServer::user_keys`]) and the inline
    /// identity policy `policy`.
    pub fn user(mut self, name: &str, policy: Value) -> Setup {
        self.users.push(json!({"name": name, "policy": policy}));
        self
    }

    /// A user allowed only `sts:AssumeRole` (of any role): the `source_profile` of an
    /// assume-role profile.
    pub fn assuming_user(self, name: &str) -> Setup {
        self.user(
            name,
            json!({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
            }),
        )
    }

    /// A role allowed exactly what sykli documents it needs on `bucket`: `s3:GetObject`
    /// and `s3:PutObject` on its objects, `s3:ListBucket` on the bucket.
    pub fn s3_role(self, name: &str, bucket: &str) -> Setup {
        self.role(
            name,
            Some(json!({
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["s3:GetObject", "s3:PutObject"],
                        "Resource": format!("arn:aws:s3:::{bucket}/*"),
                    },
                    {
                        "Effect": "Allow",
                        "Action": "s3:ListBucket",
                        "Resource": format!("arn:aws:s3:::{bucket}"),
                    },
                ],
            })),
        )
    }
}

/// The line the launcher logs once [`Setup`] is applied and auth enforced.
const READY: &str = "sykli: setup applied, IAM auth enforced";

/// A moto server process, killed on drop.
pub struct MotoServer {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    log: PathBuf,
    /// The users' access keys, written by the launcher before it reports its port.
    users: PathBuf,
}

impl MotoServer {
    /// Starts moto on a free port of 127.0.0.1 (its log goes to `dir/moto.log`), creates
    /// what `setup` lists, enforces IAM auth, and returns once the port accepts connections.
    ///
    /// Panics, like [`venv_bin`], when the venv is missing (run scripts/setup); a venv
    /// without moto [`MOTO_VERSION`] is a startup error whose message carries the reason.
    pub fn start(dir: &Path, setup: &Setup) -> io::Result<MotoServer> {
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let log = dir.join("moto.log");
        let setup_json =
            json!({"buckets": setup.buckets, "roles": setup.roles, "users": setup.users});
        let users = dir.join("users.json");
        let mut cmd = Command::new(venv_bin("python"));
        // -I: isolated mode (no PYTHON* variables, no user site, no cwd on sys.path). No
        // AWS variables or files of the machine reach boto3 or moto.
        cmd.args(["-I", "-c", LAUNCHER])
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C.UTF-8")
            .env("HOME", &dir)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_REGION", REGION)
            .env("SYKLI_MOTO_VERSION", MOTO_VERSION)
            .env("SYKLI_MOTO_SETUP", setup_json.to_string())
            .env("SYKLI_MOTO_READY", READY)
            .env("SYKLI_MOTO_USERS", &users)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?);
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let deadline = Instant::now() + START_TIMEOUT;
        let mut server = MotoServer {
            child,
            stdin,
            port: 0,
            log,
            users,
        };
        let port = match launch::reported_port(stdout, START_TIMEOUT) {
            Ok(port) => port,
            Err(e) => return Err(server.startup_error(&e)),
        };
        server.port = port;
        match launch::answers(port, deadline) {
            Ok(()) => Ok(server),
            Err(e) => Err(server.startup_error(&e)),
        }
    }

    /// `http://127.0.0.1:PORT`: the STS endpoint (`AWS_ENDPOINT_URL_STS`) and the S3
    /// endpoint (path-style requests, `/<bucket>/<key>`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// [`REGION`].
    pub fn region(&self) -> &'static str {
        REGION
    }

    /// The ARN of role `name` of [`ACCOUNT`]: `arn:aws:iam::123456789012:role/<name>`.
    pub fn role_arn(&self, name: &str) -> String {
        format!("arn:aws:iam::{ACCOUNT}:role/{name}")
    }

    /// The access key and secret of [`Setup::user`] `name`.
    pub fn user_keys(&self, name: &str) -> Option<(String, String)> {
        let users: Value = serde_json::from_slice(&fs::read(&self.users).ok()?).ok()?;
        let user = &users[name];
        Some((
            user["access_key"].as_str()?.to_string(),
            user["secret_key"].as_str()?.to_string(),
        ))
    }

    /// The process id of the server (python).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log file (one line per request, and Python errors).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The requests served since auth was enforced (those of [`Setup`] left out), in
    /// order, as `"METHOD PATH STATUS"` (`PATH` with its query), e.g. `"POST / 200"` for
    /// an STS call, `"PUT /builds/key 200"`.
    pub fn requests(&self) -> Vec<String> {
        let log = self.log();
        let since = log.find(READY).map(|at| at + READY.len()).unwrap_or(0);
        log[since..].lines().filter_map(access_line).collect()
    }

    fn startup_error(&mut self, what: &str) -> io::Error {
        self.stop();
        io::Error::other(format!(
            "moto failed to start: {what} (is moto {MOTO_VERSION} in the venv? run \
             scripts/setup)\n{}",
            self.log().trim_end()
        ))
    }

    fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `METHOD PATH STATUS` of one line of werkzeug's access log,
/// `127.0.0.1 - - [date] "PUT /b/k HTTP/1.1" 200 -` (the request part may be wrapped in
/// ANSI colour codes).
fn access_line(line: &str) -> Option<String> {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let (_, rest) = plain.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut request = request.split(' ');
    let (method, path) = (request.next()?, request.next()?);
    let status = rest.split(' ').next()?;
    status.parse::<u16>().ok()?;
    Some(format!("{method} {path} {status}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn access_log_lines_are_parsed() {
        assert_eq!(
            super::access_line("127.0.0.1 - - [26/Nov/2026 11:33:18] \"POST / HTTP/1.1\" 200 -")
                .as_deref(),
            Some("POST / 200")
        );
        assert_eq!(
            super::access_line(
                "127.0.0.1 - - [26/Nov/2026 11:33:18] \"\u{1b}[31m\u{1b}[1mGET /b/k?list-type=2 HTTP/1.1\u{1b}[0m\" 403 -"
            )
            .as_deref(),
            Some("GET /b/k?list-type=2 403")
        );
        assert_eq!(
            super::access_line("Traceback (most recent call last):"),
            None
        );
    }
}
