//! AWS credentials on the laptop or CI side (never in a pod): the AWS SDK's standard chain,
//! in its order — environment variables, the shared config and credentials files' profile
//! (static keys, `role_arn` with `source_profile`, SSO, `credential_process`, a web
//! identity), a web identity from the environment, ECS/EKS container credentials, EC2
//! instance metadata (IMDSv2). sykli resolves them once per bucket client (once per Job
//! for its URL) and keeps what it needs for messages and warnings: where they came from
//! and when they expire.
//!
//! The chain reads the environment given to it, not necessarily the process's: the BEAM
//! keeps its own copy of the environment (`System.put_env/2` does not reach `getenv(3)`),
//! so the NIF passes the VM's AWS variables and HOME. The SDK takes a custom environment
//! only through `ConfigLoader::env` (aws-config's `test-util` feature).

use std::collections::{BTreeMap, HashMap};
use std::time::UNIX_EPOCH;

use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityError;
use aws_types::SdkConfig;

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they came from, for messages ("environment (AWS_ACCESS_KEY_ID)", "profile ci
    /// (assume role)", ...).
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

/// The environment the chain reads (the process's, or the one the caller gives).
pub trait Env {
    /// The variables, without empty ones (an empty variable counts as unset).
    fn vars(&self) -> HashMap<String, String>;
}

/// The process's environment: HOME and the AWS variables.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn vars(&self) -> HashMap<String, String> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, v)| !v.is_empty() && (k == "HOME" || k.starts_with("AWS_")))
            .collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn vars(&self) -> HashMap<String, String> {
        self.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The variables of the chain worth naming when it fails: none is a secret (no secret key,
/// session token or container authorization token is ever shown).
const SETTINGS: &[&str] = &[
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_DISABLED",
];

/// Resolves the credentials with the chain `sdk` was loaded with.
pub(crate) async fn resolve(
    sdk: &SdkConfig,
    vars: &HashMap<String, String>,
) -> Result<Credentials> {
    let provider = sdk
        .credentials_provider()
        .ok_or_else(|| Error::InvalidOption {
            key: "s3 credentials".into(),
            message: "no credential provider was configured".into(),
        })?;
    let creds = provider
        .provide_credentials()
        .await
        .map_err(|e| chain_error(&e, vars))?;
    Ok(Credentials {
        access_key_id: creds.access_key_id().to_string(),
        secret_access_key: creds.secret_access_key().to_string(),
        session_token: creds.session_token().map(str::to_string),
        source: source(&creds, vars).await,
        expires_at: creds
            .expiry()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
    })
}

/// Which link of the chain answered, from the features the SDK's providers record on the
/// credentials they give, and for a profile, from the profile the SDK selected.
async fn source(
    creds: &aws_credential_types::Credentials,
    vars: &HashMap<String, String>,
) -> String {
    let features = creds
        .get_property::<Vec<AwsCredentialFeature>>()
        .cloned()
        .unwrap_or_default();
    let has = |f: AwsCredentialFeature| features.contains(&f);
    let var = |name: &str| vars.contains_key(name);
    if has(AwsCredentialFeature::CredentialsProfile) {
        let env = aws_types::os_shim_internal::Env::from(vars.clone());
        #[allow(deprecated)]
        let files = aws_config::profile::profile_file::ProfileFiles::default();
        let profiles =
            aws_config::profile::load(&aws_types::os_shim_internal::Fs::real(), &env, &files, None)
                .await
                .ok();
        let name = profiles.as_ref().map_or_else(
            || {
                vars.get("AWS_PROFILE")
                    .cloned()
                    .unwrap_or_else(|| "default".into())
            },
            |p| p.selected_profile().to_string(),
        );
        let key = |k: &str| {
            profiles
                .as_ref()
                .and_then(|p| p.get_profile(&name))
                .and_then(|p| p.get(k))
                .is_some()
        };
        // The profile chain of the SDK records no feature for an assume role.
        let how = if has(AwsCredentialFeature::CredentialsSso) {
            " (SSO)"
        } else if has(AwsCredentialFeature::CredentialsProcess) {
            " (credential_process)"
        } else if key("role_arn") && (key("source_profile") || key("credential_source")) {
            " (assume role)"
        } else if has(AwsCredentialFeature::CredentialsProfileStsWebIdToken) {
            " (web identity)"
        } else {
            ""
        };
        format!("profile {name}{how}")
    } else if has(AwsCredentialFeature::CredentialsEnvVars) {
        "environment (AWS_ACCESS_KEY_ID)".into()
    } else if has(AwsCredentialFeature::CredentialsProfileStsWebIdToken) {
        "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)".into()
    } else if has(AwsCredentialFeature::CredentialsHttp) {
        if var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            "container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI)".into()
        } else {
            "container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI)".into()
        }
    } else if has(AwsCredentialFeature::CredentialsImds) {
        "EC2 instance metadata (IMDSv2)".into()
    } else {
        "the AWS SDK's default chain".into()
    }
}

/// One line: what failed, the SDK's reason, and the chain's settings that were set.
fn chain_error(e: &CredentialsError, vars: &HashMap<String, String>) -> Error {
    let settings: Vec<String> = SETTINGS
        .iter()
        .filter_map(|k| vars.get(*k).map(|v| format!("{k}={v}")))
        .collect();
    let settings = if settings.is_empty() {
        String::new()
    } else {
        format!(" [{}]", settings.join(", "))
    };
    let reason = reasons(e);
    let invalid = |message: String| Error::InvalidOption {
        key: "s3 credentials".into(),
        message,
    };
    match e {
        CredentialsError::CredentialsNotLoaded(_) => invalid(format!(
            "no AWS credentials: the standard chain (environment, shared config and credentials \
             files, web identity, container credentials, EC2 instance metadata) found none \
             ({reason}){settings}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile \
             (AWS_PROFILE, ~/.aws/config), or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN"
        )),
        CredentialsError::InvalidConfiguration(_) => invalid(format!(
            "the AWS credential settings are invalid: {reason}{settings}"
        )),
        // A file of the chain (a web identity token) that cannot be read: nothing was asked.
        CredentialsError::ProviderError(_)
            if std::error::Error::source(e)
                .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()) =>
        {
            invalid(format!(
                "a file of the AWS credential chain cannot be read: {reason}{settings}"
            ))
        }
        _ => Error::S3 {
            kind: "s3_auth",
            message: format!("the AWS credential chain failed: {reason}{settings}"),
        },
    }
}

/// `e` and its sources, each as it displays itself, once: never a Debug dump, which would
/// show raw responses. An STS refusal is spelled out with its status, code and message.
pub(crate) fn reasons(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = sts_refusal(err).unwrap_or_else(|| err.to_string());
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

fn sts_refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    fn refusal<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Option<String> {
        let SdkError::ServiceError(ctx) = e else {
            return None;
        };
        let raw = ctx.raw();
        // Parsed by the SDK, or read from the error document when its content type threw
        // the parser off.
        let body = raw
            .body()
            .bytes()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let code = ctx
            .err()
            .code()
            .map(str::to_string)
            .or_else(|| sykli_sync::xml_tag(&body, "Code").map(str::to_string));
        let message = ctx
            .err()
            .message()
            .map(str::to_string)
            .or_else(|| sykli_sync::xml_tag(&body, "Message").map(str::to_string));
        let status = raw.status().as_u16();
        Some(match (code, message) {
            (Some(c), Some(m)) => format!("STS answered {status} {c}: {m}"),
            (Some(c), None) => format!("STS answered {status} {c}"),
            _ => format!("STS answered HTTP {status}"),
        })
    }
    if let Some(e) = e.downcast_ref::<SdkError<AssumeRoleError, HttpResponse>>() {
        return refusal(e);
    }
    if let Some(e) = e.downcast_ref::<SdkError<AssumeRoleWithWebIdentityError, HttpResponse>>() {
        return refusal(e);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn failures_name_the_settings_but_never_a_secret() {
        let vars: HashMap<String, String> = [
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/ci"),
            ("AWS_SECRET_ACCESS_KEY", "TOPSECRET"),
            ("AWS_SESSION_TOKEN", "TOKEN"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "BEARER"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let e = chain_error(&CredentialsError::provider_error("refused"), &vars);
        let msg = e.to_string();
        assert_eq!(e.kind(), "s3_auth");
        assert!(msg.contains("AWS_ROLE_ARN=arn:aws:iam::1:role/ci"), "{msg}");
        for secret in ["TOPSECRET", "TOKEN", "BEARER"] {
            assert!(!msg.contains(secret), "{msg}");
        }
        let e = chain_error(&CredentialsError::not_loaded("nothing"), &HashMap::new());
        assert!(e.to_string().contains("no AWS credentials"), "{e}");
        let e = chain_error(
            &CredentialsError::provider_error(std::io::Error::other("gone")),
            &HashMap::new(),
        );
        assert!(
            matches!(&e, Error::InvalidOption { key, .. } if key == "s3 credentials"),
            "{e:?}"
        );
    }
}
