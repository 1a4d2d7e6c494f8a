//! The two credential endpoints the AWS SDKs reach over plain HTTP, on 127.0.0.1 for
//! tests, each handing out one set of credentials (typically those of a local S3 server)
//! and logging what it was asked:
//!
//! * [`ContainerCredentials`]: what ECS tasks and EKS Pod Identity pods get at
//!   `AWS_CONTAINER_CREDENTIALS_FULL_URI` (the SDKs allow a full URI on a loopback
//!   address over http). With an authorization token (EKS Pod Identity's
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`), a request whose `Authorization` header is
//!   not exactly it is `401`. `GET <path>` answers `{"AccessKeyId", "SecretAccessKey",
//!   "Token", "Expiration"}`.
//! * [`Imds`]: EC2 instance metadata, IMDSv2 only (`AWS_EC2_METADATA_SERVICE_ENDPOINT`):
//!   `PUT /latest/api/token` with `x-aws-ec2-metadata-token-ttl-seconds` gives a session
//!   token (echoing the TTL header, as EC2 does); every `GET` must carry it in
//!   `x-aws-ec2-metadata-token` (else `401`, as EC2 answers an IMDSv1 request when v2 is
//!   required). `GET /latest/meta-data/iam/security-credentials/` names the role,
//!   `.../<role>` answers its credentials (`Code: Success`, `Type: AWS-HMAC`), and
//!   `/latest/meta-data/placement/region` the region. Anything else is `404`.
//!
//! One request per connection (answered with `Connection: close`). The log lines are
//! `METHOD PATH STATUS` with, for the container endpoint, ` auth=ok|missing|wrong`, and
//! for IMDS GETs ` token=ok|missing|wrong`. Stopped on drop.

use std::io::{self, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::http::{self, Limits};
use crate::server::{linger, lock, Conn, Conns, Listener};

/// The credentials an endpoint hands out.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// How long after each answer they expire.
    pub lifetime: Duration,
}

impl Issued {
    fn json(&self) -> serde_json::Value {
        json!({
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": rfc3339(SystemTime::now() + self.lifetime),
        })
    }
}

/// A request's answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Appended to the log line.
    note: String,
}

impl Answer {
    fn new(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.into(),
            note: String::new(),
        }
    }
}

type Handler = dyn Fn(&http::Head) -> Answer + Send + Sync;

struct Live(TcpStream);

impl Conn for Live {
    fn new(stream: TcpStream) -> Live {
        Live(stream)
    }
    fn end(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// A listener answering each request with `handler`, logging it.
struct Endpoint {
    listener: Listener<Live>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Endpoint {
    fn start(name: &str, handler: Arc<Handler>) -> io::Result<Endpoint> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let conns = Conns::new();
        let serving = Arc::clone(&log);
        let listener = Listener::start(name, &conns, move |stream, _id| {
            serve(stream, &*handler, &serving)
        })?;
        Ok(Endpoint { listener, log })
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.listener.addr().port())
    }

    fn requests(&self) -> Vec<String> {
        lock(&self.log).clone()
    }
}

fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(stream);
    let head = match http::read_request_head(&mut input, false, |t| t.starts_with('/')) {
        Ok(Some(head)) => head,
        _ => return,
    };
    let framed = head.body().and_then(|body| {
        http::copy_body(
            &mut input,
            body,
            &mut io::sink(),
            http::Framing::Decode,
            Limits {
                bytes: 1 << 20,
                chunks: 1024,
            },
        )
        .map_err(|_| ())
    });
    let answer = match framed {
        Ok(()) => handler(&head),
        Err(()) => Answer::new(400, "bad request body"),
    };
    lock(log).push(format!(
        "{} {} {}{}",
        head.method, head.target, answer.status, answer.note
    ));
    let mut text = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        answer.status,
        reason(answer.status),
        answer.body.len()
    );
    for (k, v) in &answer.headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(&answer.body);
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
    {
        linger(&mut input, &out);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

/// ECS/EKS container credentials at a full URI on 127.0.0.1.
pub struct ContainerCredentials {
    endpoint: Endpoint,
}

/// The path [`ContainerCredentials::full_uri`] points at (EKS Pod Identity's).
pub const CONTAINER_PATH: &str = "/v1/credentials";

impl ContainerCredentials {
    /// Serves `issued` at [`CONTAINER_PATH`]; with `token`, only to requests whose
    /// `Authorization` header is exactly it.
    pub fn start(issued: Issued, token: Option<&str>) -> io::Result<ContainerCredentials> {
        let token = token.map(str::to_string);
        let handler = move |head: &http::Head| {
            let auth = match (&token, head.header("authorization")) {
                (None, _) => "",
                (Some(_), None) => " auth=missing",
                (Some(t), Some(sent)) if sent == t => " auth=ok",
                (Some(_), Some(_)) => " auth=wrong",
            };
            let mut answer = if head.method != "GET" {
                Answer::new(405, "")
            } else if head.target != CONTAINER_PATH {
                Answer::new(404, "")
            } else if auth == " auth=missing" || auth == " auth=wrong" {
                Answer::new(
                    401,
                    json!({"Code": "AccessDenied", "Message": "bad token"}).to_string(),
                )
            } else {
                Answer::new(200, issued.json().to_string())
            };
            answer.note = auth.to_string();
            answer
        };
        Ok(ContainerCredentials {
            endpoint: Endpoint::start("aws-container-credentials", Arc::new(handler))?,
        })
    }

    /// `http://127.0.0.1:PORT/v1/credentials`: `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub fn full_uri(&self) -> String {
        format!("{}{CONTAINER_PATH}", self.endpoint.base())
    }

    /// The requests so far, as `METHOD PATH STATUS[ auth=ok|missing|wrong]`.
    pub fn requests(&self) -> Vec<String> {
        self.endpoint.requests()
    }
}

/// EC2 instance metadata (IMDSv2) on 127.0.0.1.
pub struct Imds {
    endpoint: Endpoint,
}

const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";

impl Imds {
    /// An instance whose profile has role `role`, giving `issued`, in `region`.
    pub fn start(role: &str, issued: Issued, region: &str) -> io::Result<Imds> {
        let token = random_hex(16)?;
        let (role, region) = (role.to_string(), region.to_string());
        let handler = move |head: &http::Head| {
            if head.method == "PUT" {
                return match (head.target.as_str(), head.header(TOKEN_TTL_HEADER)) {
                    ("/latest/api/token", Some(ttl)) if ttl.parse::<u32>().is_ok() => {
                        let mut a = Answer::new(200, token.clone());
                        a.headers.push((TOKEN_TTL_HEADER.into(), ttl.to_string()));
                        a
                    }
                    ("/latest/api/token", _) => Answer::new(400, ""),
                    _ => Answer::new(405, ""),
                };
            }
            if head.method != "GET" {
                return Answer::new(405, "");
            }
            let note = match head.header(TOKEN_HEADER) {
                None => " token=missing",
                Some(t) if t == token => " token=ok",
                Some(_) => " token=wrong",
            };
            let mut answer = if note != " token=ok" {
                Answer::new(401, "")
            } else if head.target == CREDENTIALS_PATH {
                Answer::new(200, role.clone())
            } else if head.target == format!("{CREDENTIALS_PATH}{role}") {
                let mut body = issued.json();
                body["Code"] = json!("Success");
                body["Type"] = json!("AWS-HMAC");
                body["LastUpdated"] = json!(rfc3339(SystemTime::now()));
                Answer::new(200, body.to_string())
            } else if head.target == "/latest/meta-data/placement/region" {
                Answer::new(200, region.clone())
            } else {
                Answer::new(404, "")
            };
            answer.note = note.to_string();
            answer
        };
        Ok(Imds {
            endpoint: Endpoint::start("aws-imds", Arc::new(handler))?,
        })
    }

    /// `http://127.0.0.1:PORT`: `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        self.endpoint.base()
    }

    /// The requests so far, as `METHOD PATH STATUS[ token=ok|missing|wrong]`.
    pub fn requests(&self) -> Vec<String> {
        self.endpoint.requests()
    }
}

/// `2026-11-26T12:34:56Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn random_hex(bytes: usize) -> io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_827_696)),
            "2000-02-29T12:34:56Z"
        );
    }
}
