//! Fixtures file: the cluster objects a pod may reference.
//!
//! ```json
//! {"secrets": {"name": {"key": "<base64>"}},
//!  "configMaps": {"name": {"key": "<text>"}},
//!  "pvcs": {"claim": "/host/dir"},
//!  "serviceAccountTokens": {"kube-api-access-x7k2p/token": "<token>"}}
//! ```
//!
//! A service-account token is keyed by the projected volume's name and the
//! `serviceAccountToken` source's `path` (the API server mints one per pod; here the caller
//! gives it).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::RunnerError;

/// Secrets, config maps, claims and service-account tokens for [`super::RunOptions`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fixtures {
    pub secrets: HashMap<String, HashMap<String, Vec<u8>>>,
    pub config_maps: HashMap<String, HashMap<String, Vec<u8>>>,
    pub pvcs: HashMap<String, PathBuf>,
    /// `VOLUME/PATH` → token.
    pub service_account_tokens: HashMap<String, String>,
}

/// Names only: secret values and tokens stay out of logs.
impl fmt::Debug for Fixtures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secrets: Vec<&String> = self.secrets.keys().collect();
        secrets.sort();
        let mut tokens: Vec<&String> = self.service_account_tokens.keys().collect();
        tokens.sort();
        f.debug_struct("Fixtures")
            .field("secrets", &secrets)
            .field("config_maps", &self.config_maps.keys().collect::<Vec<_>>())
            .field("pvcs", &self.pvcs)
            .field("service_account_tokens", &tokens)
            .finish()
    }
}

fn invalid(m: String) -> RunnerError {
    RunnerError::InvalidFixtures(m)
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, RunnerError> {
    v.as_object()
        .ok_or_else(|| invalid(format!("{what} must be a JSON object")))
}

fn string<'a>(v: &'a Value, what: &str) -> Result<&'a str, RunnerError> {
    v.as_str()
        .ok_or_else(|| invalid(format!("{what} must be a string")))
}

impl Fixtures {
    /// Parses the fixtures JSON. Secret values are base64 (as in a Secret's `data`); config map
    /// values are text; unknown top-level keys are refused so typos do not go unnoticed.
    pub fn from_json(v: &Value) -> Result<Fixtures, RunnerError> {
        let mut f = Fixtures::default();
        for (key, value) in object(v, "the fixtures")? {
            match key.as_str() {
                "secrets" => {
                    for (name, data) in object(value, "secrets")? {
                        let mut entries = HashMap::new();
                        for (k, b64) in object(data, &format!("secret {name:?}"))? {
                            let what = format!("secret {name:?} key {k:?}");
                            let text = string(b64, &what)?;
                            let bytes =
                                decode_base64(text).map_err(|e| invalid(format!("{what}: {e}")))?;
                            entries.insert(k.clone(), bytes);
                        }
                        f.secrets.insert(name.clone(), entries);
                    }
                }
                "configMaps" => {
                    for (name, data) in object(value, "configMaps")? {
                        let mut entries = HashMap::new();
                        for (k, text) in object(data, &format!("configMap {name:?}"))? {
                            let what = format!("configMap {name:?} key {k:?}");
                            entries.insert(k.clone(), string(text, &what)?.as_bytes().to_vec());
                        }
                        f.config_maps.insert(name.clone(), entries);
                    }
                }
                "pvcs" => {
                    for (claim, dir) in object(value, "pvcs")? {
                        let dir = string(dir, &format!("pvc {claim:?}"))?;
                        f.pvcs.insert(claim.clone(), PathBuf::from(dir));
                    }
                }
                "serviceAccountTokens" => {
                    for (key, token) in object(value, "serviceAccountTokens")? {
                        let valid = key
                            .split_once('/')
                            .is_some_and(|(volume, path)| !volume.is_empty() && !path.is_empty());
                        if !valid {
                            return Err(invalid(format!(
                                "serviceAccountTokens key {key:?} is not VOLUME/PATH (the \
                                 projected volume's name, then the serviceAccountToken source's \
                                 path, e.g. \"kube-api-access-x7k2p/token\")"
                            )));
                        }
                        let token = string(token, &format!("serviceAccountTokens {key:?}"))?;
                        f.service_account_tokens
                            .insert(key.clone(), token.to_string());
                    }
                }
                other => {
                    return Err(invalid(format!(
                        "unknown key {other:?} (expected secrets, configMaps, pvcs, \
                         serviceAccountTokens)"
                    )))
                }
            }
        }
        Ok(f)
    }
}

/// Standard base64 (RFC 4648, `+/`), padding optional, whitespace ignored.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let body_len = bytes.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let padding = bytes.len() - body_len;
    if padding > 2 || (padding > 0 && !bytes.len().is_multiple_of(4)) {
        return Err("invalid base64 padding".into());
    }
    let body = &bytes[..body_len];
    if body.len() % 4 == 1 {
        return Err("invalid base64 length".into());
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut acc: u32 = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = value(c).ok_or_else(|| format!("invalid base64 character {:?}", c as char))?;
            acc |= v << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_round_trips() {
        assert_eq!(decode_base64("").expect("empty"), b"");
        assert_eq!(decode_base64("Zg==").expect("f"), b"f");
        assert_eq!(decode_base64("Zm8=").expect("fo"), b"fo");
        assert_eq!(decode_base64("Zm9v").expect("foo"), b"foo");
        assert_eq!(decode_base64("Zm9vYg").expect("unpadded"), b"foob");
        assert_eq!(decode_base64("c2Vj\ncmV0").expect("wrapped"), b"secret");
        assert_eq!(decode_base64("AP8=").expect("binary"), [0u8, 255]);
        assert!(decode_base64("Zm9v!").is_err());
        assert!(decode_base64("Z").is_err());
        assert!(decode_base64("Zm9v===").is_err());
        assert!(decode_base64("Zg=").is_err());
    }

    #[test]
    fn parses_fixtures() {
        let f = Fixtures::from_json(&json!({
            "secrets": {"git": {"token": "czNjcmV0"}},
            "configMaps": {"cfg": {"a.txt": "hello"}},
            "pvcs": {"cache": "/tmp/cache"}
        }))
        .expect("fixtures");
        assert_eq!(f.secrets["git"]["token"], b"s3cret");
        assert_eq!(f.config_maps["cfg"]["a.txt"], b"hello");
        assert_eq!(f.pvcs["cache"], PathBuf::from("/tmp/cache"));
        assert!(Fixtures::from_json(&json!({"secret": {}})).is_err());
        assert!(Fixtures::from_json(&json!({"secrets": {"s": {"k": "%%"}}})).is_err());
        assert!(Fixtures::from_json(&json!({"secrets": {"s": {"k": 1}}})).is_err());
    }

    #[test]
    fn parses_service_account_tokens_keyed_by_volume_and_path() {
        let f = Fixtures::from_json(&json!({"serviceAccountTokens": {
            "kube-api-access-x7k2p/token": "eyJhbGciOi.tok",
            "vault/nested/token": "other"
        }}))
        .expect("fixtures");
        assert_eq!(
            f.service_account_tokens["kube-api-access-x7k2p/token"],
            "eyJhbGciOi.tok"
        );
        // The path may itself contain '/': the volume name is what precedes the first one.
        assert_eq!(f.service_account_tokens["vault/nested/token"], "other");
        // Tokens are secrets: Debug names the keys only.
        let debug = format!("{f:?}");
        assert!(debug.contains("kube-api-access-x7k2p/token"), "{debug}");
        assert!(!debug.contains("eyJhbGciOi"), "{debug}");
        for bad in [
            json!({"serviceAccountTokens": {"token": "t"}}),
            json!({"serviceAccountTokens": {"/token": "t"}}),
            json!({"serviceAccountTokens": {"vol/": "t"}}),
            json!({"serviceAccountTokens": {"vol/token": 1}}),
            json!({"serviceAccountTokens": ["vol/token"]}),
        ] {
            let err = Fixtures::from_json(&bad).expect_err("invalid");
            assert!(
                matches!(&err, RunnerError::InvalidFixtures(m) if m.contains("serviceAccountTokens")),
                "{bad}: {err}"
            );
        }
        let err = Fixtures::from_json(&json!({"serviceAccountTokens": {"token": "t"}}))
            .expect_err("no volume");
        assert!(err.to_string().contains("VOLUME/PATH"), "{err}");
    }
}
