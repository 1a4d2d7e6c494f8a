//! AWS credentials on the laptop or CI side (never in a pod), in the standard chain's
//! order: environment variables, the shared config files' profile, then web identity
//! (a token file and a role, exchanged with STS `AssumeRoleWithWebIdentity`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they came from, for messages ("environment", "profile default", ...).
    pub source: String,
    /// When temporary credentials stop working (Unix seconds), when known: presigned URLs
    /// die with them.
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for Credentials {
    // Never the secret or the token, whatever prints this.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The environment the chain reads (the process's, or a test's).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    fn home(&self) -> Option<PathBuf>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }
}

/// What the chain found before any network call: static keys, or a web identity to
/// exchange.
#[derive(Debug, Clone)]
pub enum Found {
    Static(Credentials),
    WebIdentity {
        token_file: PathBuf,
        role_arn: String,
        session_name: String,
        source: String,
    },
}

/// The region the shared config gives the profile, if any.
pub fn profile_region(env: &dyn Env) -> Option<String> {
    let name = profile_name(env);
    let config = read_ini(&config_file(env)?);
    config
        .get(&format!("profile {name}"))
        .or_else(|| (name == "default").then(|| config.get("default")).flatten())
        .and_then(|s| s.get("region").cloned())
}

/// Walks the chain. `Err` names what is wrong and how to fix it.
pub fn find(env: &dyn Env) -> Result<Found> {
    let key = env.var("AWS_ACCESS_KEY_ID");
    let secret = env.var("AWS_SECRET_ACCESS_KEY");
    match (key, secret) {
        (Some(k), Some(s)) => {
            return Ok(Found::Static(Credentials {
                access_key_id: k,
                secret_access_key: s,
                session_token: env.var("AWS_SESSION_TOKEN"),
                source: "environment (AWS_ACCESS_KEY_ID)".into(),
                expires_at: None,
            }))
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(invalid(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together".into(),
            ))
        }
        (None, None) => {}
    }

    let name = profile_name(env);
    let explicit = env.var("AWS_PROFILE").is_some();
    let creds = credentials_file(env)
        .map(|p| read_ini(&p))
        .unwrap_or_default();
    let config = config_file(env).map(|p| read_ini(&p)).unwrap_or_default();
    let mut section: BTreeMap<String, String> = config
        .get(&format!("profile {name}"))
        .or_else(|| (name == "default").then(|| config.get("default")).flatten())
        .cloned()
        .unwrap_or_default();
    if let Some(c) = creds.get(&name) {
        section.extend(c.clone());
    }
    if let (Some(k), Some(s)) = (
        section.get("aws_access_key_id"),
        section.get("aws_secret_access_key"),
    ) {
        return Ok(Found::Static(Credentials {
            access_key_id: k.clone(),
            secret_access_key: s.clone(),
            session_token: section.get("aws_session_token").cloned(),
            source: format!("profile {name}"),
            expires_at: None,
        }));
    }
    if let (Some(file), Some(role)) = (
        section.get("web_identity_token_file"),
        section.get("role_arn"),
    ) {
        return Ok(Found::WebIdentity {
            token_file: PathBuf::from(file),
            role_arn: role.clone(),
            session_name: section
                .get("role_session_name")
                .cloned()
                .unwrap_or_else(|| "sykli".into()),
            source: format!("profile {name} (web identity)"),
        });
    }
    for unsupported in [
        "source_profile",
        "credential_process",
        "sso_session",
        "sso_start_url",
    ] {
        if section.contains_key(unsupported) {
            return Err(invalid(format!(
                "profile {name} uses {unsupported}, which sykli does not support: export \
                 static or temporary credentials (e.g. `eval \"$(aws configure export-credentials --profile {name} --format env)\"`)"
            )));
        }
    }
    if explicit && section.is_empty() {
        return Err(invalid(format!(
            "AWS_PROFILE={name}, but no such profile is in {} or {}",
            credentials_file(env)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.aws/credentials".into()),
            config_file(env)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.aws/config".into()),
        )));
    }

    if let (Some(file), Some(role)) = (
        env.var("AWS_WEB_IDENTITY_TOKEN_FILE"),
        env.var("AWS_ROLE_ARN"),
    ) {
        return Ok(Found::WebIdentity {
            token_file: PathBuf::from(file),
            role_arn: role,
            session_name: env
                .var("AWS_ROLE_SESSION_NAME")
                .unwrap_or_else(|| "sykli".into()),
            source: "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)".into(),
        });
    }

    Err(invalid(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile \
         (AWS_PROFILE, ~/.aws/credentials), or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN"
            .into(),
    ))
}

/// The STS answer to `AssumeRoleWithWebIdentity`, parsed.
pub fn parse_assume_role(xml: &str, source: &str) -> Result<Credentials> {
    let get = |tag: &str| sykli_sync::xml_tag(xml, tag).map(unescape);
    match (get("AccessKeyId"), get("SecretAccessKey")) {
        (Some(k), Some(s)) => Ok(Credentials {
            access_key_id: k,
            secret_access_key: s,
            session_token: get("SessionToken"),
            source: source.to_string(),
            expires_at: get("Expiration").and_then(|t| parse_timestamp(&t)),
        }),
        _ => Err(Error::S3 {
            kind: "s3_auth",
            message: format!(
                "STS AssumeRoleWithWebIdentity gave no credentials ({})",
                get("Message").unwrap_or_else(|| "no message".into())
            ),
        }),
    }
}

/// `2026-11-26T12:34:56Z` (fractional seconds allowed) as Unix seconds.
pub fn parse_timestamp(t: &str) -> Option<u64> {
    let t = t.trim().strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut h = time.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (H. Hinnant), the inverse of sigv4's civil_from_days.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn profile_name(env: &dyn Env) -> String {
    env.var("AWS_PROFILE")
        .or_else(|| env.var("AWS_DEFAULT_PROFILE"))
        .unwrap_or_else(|| "default".into())
}

fn credentials_file(env: &dyn Env) -> Option<PathBuf> {
    env.var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env.home().map(|h| h.join(".aws").join("credentials")))
}

fn config_file(env: &dyn Env) -> Option<PathBuf> {
    env.var("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| env.home().map(|h| h.join(".aws").join("config")))
}

/// `[section]` → key → value; comments (`#`, `;`) and unreadable files ignored.
fn read_ini(path: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return out;
    };
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

fn invalid(message: String) -> Error {
    Error::InvalidOption {
        key: "s3 credentials".into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn static_of(f: Found) -> Credentials {
        match f {
            Found::Static(c) => c,
            other => panic!("expected static credentials, got {other:?}"),
        }
    }

    #[test]
    fn environment_wins_over_profiles() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = FROMFILE\naws_secret_access_key = s\n",
        )
        .unwrap();
        let home = dir.path().to_str().unwrap();
        let c = static_of(
            find(&env(&[
                ("HOME", home),
                ("AWS_ACCESS_KEY_ID", "FROMENV"),
                ("AWS_SECRET_ACCESS_KEY", "x"),
                ("AWS_SESSION_TOKEN", "tok"),
            ]))
            .unwrap(),
        );
        assert_eq!(c.access_key_id, "FROMENV");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        let c = static_of(find(&env(&[("HOME", home)])).unwrap());
        assert_eq!(c.access_key_id, "FROMFILE");
        assert_eq!(c.source, "profile default");
    }

    #[test]
    fn named_profiles_merge_config_and_credentials_files() {
        let dir = tempfile::tempdir().unwrap();
        let (creds, config) = (dir.path().join("c"), dir.path().join("k"));
        std::fs::write(
            &creds,
            "# comment\n[ci]\naws_access_key_id=AK\naws_secret_access_key=SK\n",
        )
        .unwrap();
        std::fs::write(&config, "[profile ci]\nregion = eu-north-1\n[profile wi]\nrole_arn = arn:aws:iam::1:role/r\nweb_identity_token_file = /t\n").unwrap();
        let base = [
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ];
        let mut e = env(&base);
        e.insert("AWS_PROFILE".into(), "ci".into());
        assert_eq!(static_of(find(&e).unwrap()).secret_access_key, "SK");
        assert_eq!(profile_region(&e).as_deref(), Some("eu-north-1"));
        e.insert("AWS_PROFILE".into(), "wi".into());
        assert!(
            matches!(find(&e).unwrap(), Found::WebIdentity { role_arn, .. } if role_arn == "arn:aws:iam::1:role/r")
        );
        e.insert("AWS_PROFILE".into(), "nope".into());
        let err = find(&e).unwrap_err().to_string();
        assert!(err.contains("AWS_PROFILE=nope"), "{err}");
    }

    #[test]
    fn web_identity_from_the_environment_and_clear_errors() {
        let f = find(&env(&[
            ("HOME", "/nonexistent"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/ci"),
        ]))
        .unwrap();
        assert!(matches!(f, Found::WebIdentity { session_name, .. } if session_name == "sykli"));
        let err = find(&env(&[("HOME", "/nonexistent")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no AWS credentials"), "{err}");
        let err = find(&env(&[("AWS_ACCESS_KEY_ID", "A")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("together"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let c = Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "TOPSECRET".into(),
            session_token: Some("TOKEN".into()),
            source: "t".into(),
            expires_at: None,
        };
        let d = format!("{c:?}");
        assert!(!d.contains("TOPSECRET") && !d.contains("TOKEN"), "{d}");
    }

    #[test]
    fn sts_answers_are_parsed() {
        let xml = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
            <SessionToken>T&amp;1</SessionToken><SecretAccessKey>S</SecretAccessKey>\
            <AccessKeyId>A</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let c = parse_assume_role(xml, "wi").unwrap();
        assert_eq!(c.expires_at, None);
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_deref()),
            ("A", Some("T&1"))
        );
        assert!(parse_assume_role("<Error><Message>denied</Message></Error>", "wi").is_err());
        let with_expiry = xml.replace(
            "<AccessKeyId>",
            "<Expiration>2013-05-24T01:00:00.000Z</Expiration><AccessKeyId>",
        );
        let c = parse_assume_role(&with_expiry, "wi").unwrap();
        assert_eq!(c.expires_at, Some(1_369_357_200));
        assert_eq!(parse_timestamp("2000-02-29T12:34:56Z"), Some(951_827_696));
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
