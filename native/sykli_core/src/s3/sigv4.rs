//! AWS Signature Version 4 for S3: signed request headers and presigned URLs.
//! (Spec: "Authenticating Requests: Using the Authorization Header / Query Parameters".)

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::credentials::Credentials;

pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// SigV4 refuses presigned URLs valid for longer than seven days.
pub const MAX_PRESIGN_SECONDS: u64 = 7 * 24 * 3600;

/// A request to sign: `path` is already URI-encoded (see [`encode_key`]); `query` pairs are
/// raw and encoded here.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Vec<(String, String)>,
    /// Extra headers to sign (lowercase names), besides host, x-amz-date,
    /// x-amz-content-sha256 and x-amz-security-token.
    pub headers: Vec<(String, String)>,
    /// Hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub payload_sha256: &'a str,
}

/// The UTC time of a signature: `20130524T000000Z` and `20130524`.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub amz_date: String,
    pub date: String,
}

impl Stamp {
    pub fn from_unix(secs: u64) -> Stamp {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let date = format!("{y:04}{m:02}{d:02}");
        Stamp {
            amz_date: format!(
                "{date}T{:02}{:02}{:02}Z",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            ),
            date,
        }
    }

    pub fn now() -> Stamp {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Stamp::from_unix(secs)
    }
}

/// The headers to send with the request: `x-amz-date`, `x-amz-content-sha256`, the
/// session token when there is one, and `authorization`.
pub fn sign_headers(
    req: &Request,
    creds: &Credentials,
    region: &str,
    stamp: &Stamp,
) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.push(("host".into(), req.host.to_string()));
    headers.push(("x-amz-date".into(), stamp.amz_date.clone()));
    headers.push((
        "x-amz-content-sha256".into(),
        req.payload_sha256.to_string(),
    ));
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token".into(), token.clone()));
    }
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        canonical_query(&req.query),
        canonical_headers,
        signed,
        req.payload_sha256
    );
    let scope = scope(stamp, region);
    let signature = signature(creds, region, stamp, &scope, &canonical);
    let mut out: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(k, _)| k != "host" && !req.headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(k)))
        .collect();
    out.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    out
}

/// The query string (without `?`) of a presigned URL for `req` (whose payload is
/// unsigned and whose only signed header is `host`), valid `expires` seconds from `stamp`.
pub fn presign_query(
    req: &Request,
    creds: &Credentials,
    region: &str,
    stamp: &Stamp,
    expires: u64,
) -> String {
    let scope = scope(stamp, region);
    let mut query = req.query.clone();
    query.push(("X-Amz-Algorithm".into(), "AWS4-HMAC-SHA256".into()));
    query.push((
        "X-Amz-Credential".into(),
        format!("{}/{scope}", creds.access_key_id),
    ));
    query.push(("X-Amz-Date".into(), stamp.amz_date.clone()));
    query.push(("X-Amz-Expires".into(), expires.to_string()));
    if let Some(token) = &creds.session_token {
        query.push(("X-Amz-Security-Token".into(), token.clone()));
    }
    query.push(("X-Amz-SignedHeaders".into(), "host".into()));
    let canonical_query = canonical_query(&query);
    let canonical = format!(
        "{}\n{}\n{}\nhost:{}\n\nhost\n{UNSIGNED_PAYLOAD}",
        req.method, req.path, canonical_query, req.host
    );
    let signature = signature(creds, region, stamp, &scope, &canonical);
    format!("{canonical_query}&X-Amz-Signature={signature}")
}

/// An object key as a URI path: every byte but unreserved characters and `/` encoded.
pub fn encode_key(key: &str) -> String {
    key.split('/').map(uri_encode).collect::<Vec<_>>().join("/")
}

pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn canonical_query(query: &[(String, String)]) -> String {
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    q.sort();
    q.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn scope(stamp: &Stamp, region: &str) -> String {
    format!("{}/{region}/s3/aws4_request", stamp.date)
}

fn signature(
    creds: &Credentials,
    region: &str,
    stamp: &Stamp,
    scope: &str,
    canonical: &str,
) -> String {
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        stamp.amz_date,
        sha256_hex(canonical.as_bytes())
    );
    let k_date = hmac(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        stamp.date.as_bytes(),
    );
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, b"s3");
    let k_signing = hmac(&k_service, b"aws4_request");
    hex(&hmac(&k_signing, string_to_sign.as_bytes()))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example credentials and requests of the AWS S3 SigV4 documentation.
    fn example() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            source: "test".into(),
            expires_at: None,
        }
    }

    fn may_24_2013() -> Stamp {
        Stamp::from_unix(1_369_353_600)
    }

    #[test]
    fn the_stamp_is_utc() {
        let s = may_24_2013();
        assert_eq!(s.amz_date, "20130524T000000Z");
        assert_eq!(Stamp::from_unix(951_827_696).amz_date, "20000229T123456Z");
    }

    #[test]
    fn header_signature_matches_the_documented_get_object_example() {
        let req = Request {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: vec![],
            headers: vec![("range".into(), "bytes=0-9".into())],
            payload_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        };
        let h = sign_headers(&req, &example(), "us-east-1", &may_24_2013());
        let auth = &h.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn presigned_url_matches_the_documented_example() {
        let req = Request {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: vec![],
            headers: vec![],
            payload_sha256: UNSIGNED_PAYLOAD,
        };
        let q = presign_query(&req, &example(), "us-east-1", &may_24_2013(), 86_400);
        assert!(
            q.ends_with(
                "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{q}"
        );
        assert!(q.contains(
            "X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        ));
    }

    #[test]
    fn keys_are_encoded_per_segment() {
        assert_eq!(encode_key("a b/c+d/ü"), "a%20b/c%2Bd/%C3%BC");
    }
}
