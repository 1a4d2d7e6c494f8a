//! The git-clone strategy: an init container fetches exactly the commit into the workspace
//! volume, with a constant script; every value reaches it as an environment variable.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, SeccompProfile, SecurityContext, VolumeMount,
};
use serde::{Deserialize, Deserializer};

use super::git_access::Access;
use crate::error::{Error, Result};
use crate::git::url::{strip_credentials, RemoteUrl, Scheme};

/// The init container's script (POSIX sh; runs under dash and busybox ash).
pub const CLONE_SCRIPT: &str = include_str!("clone.sh");

/// The default init image: git, git-lfs and openssh on Alpine, pinned to a release (set
/// `git_image` to pin a digest).
pub const DEFAULT_GIT_IMAGE: &str = "docker.io/alpine/git:v2.54.0";

/// The uid/gid our own containers run as: `nobody`, which (unlike 65532) has a passwd entry
/// in Alpine images, so ssh does not refuse to run.
pub const NONROOT: i64 = 65534;

/// Where the workspace volume is mounted in the init container.
pub const WORKSPACE_PATH: &str = "/workspace";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Depth {
    Commits(u32),
    #[default]
    One,
    Full,
}

impl Depth {
    fn env_value(self) -> String {
        match self {
            Depth::One => "1".into(),
            Depth::Commits(n) => n.to_string(),
            Depth::Full => "full".into(),
        }
    }
}

impl<'de> Deserialize<'de> for Depth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(0) => Err(serde::de::Error::custom(
                "clone depth must be at least 1, or \"full\"",
            )),
            Raw::N(1) => Ok(Depth::One),
            Raw::N(n) => u32::try_from(n)
                .map(Depth::Commits)
                .map_err(|_| serde::de::Error::custom("clone depth is too large; use \"full\"")),
            Raw::S(s) if s == "full" => Ok(Depth::Full),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "clone depth must be a positive number or \"full\", not {s:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneOptions {
    #[serde(default)]
    pub depth: Depth,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Seconds before the first retry; doubled each time, with jitter.
    #[serde(default = "default_backoff")]
    pub backoff_seconds: u32,
    /// Credentials, host keys, CA, proxy, submodules, LFS, sparse.
    #[serde(default)]
    pub access: Access,
}

impl Default for CloneOptions {
    fn default() -> Self {
        CloneOptions {
            depth: Depth::default(),
            image: None,
            attempts: default_attempts(),
            backoff_seconds: default_backoff(),
            access: Access::default(),
        }
    }
}

fn default_attempts() -> u32 {
    5
}
fn default_backoff() -> u32 {
    2
}

#[derive(Debug, Clone)]
pub struct GitClonePlan {
    pub url: String,
    pub sha: String,
    pub branch: Option<String>,
    pub depth: Depth,
    pub image: String,
    pub attempts: u32,
    pub backoff_seconds: u32,
    pub access: Access,
}

impl GitClonePlan {
    /// Validates every value before anything is built: a SHA of 40 (or 64) hex digits, a
    /// URL with an allowed scheme and no credentials, a branch name git would accept.
    pub fn new(
        url: &str,
        sha: &str,
        branch: Option<&str>,
        opts: &CloneOptions,
    ) -> Result<GitClonePlan> {
        let invalid = |key: &str, message: String| Error::InvalidOption {
            key: key.to_string(),
            message,
        };
        if !(sha.len() == 40 || sha.len() == 64)
            || !sha
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid(
                "sha",
                format!("{sha:?} is not a full commit id (40 lower-case hex digits)"),
            ));
        }
        let (_, had_credentials) = strip_credentials(url);
        if had_credentials {
            return Err(invalid(
                "url",
                "the clone URL embeds credentials, which would end up in the Job: use a URL without them and a git_token_secret".into(),
            ));
        }
        let parsed = RemoteUrl::parse(url)?;
        opts.access.validate()?;
        // Without SSH credentials for the cluster, an ssh remote is cloned over https: that
        // works for public repositories (or with a token), and fails with a clear "refused
        // access" otherwise.
        let url = if parsed.scheme == Scheme::Ssh && !opts.access.has_ssh() {
            parsed.to_https()
        } else {
            url.to_string()
        };
        // Git answers a 401 with whatever the credential helper gives: over http that is the
        // secret in clear text for anyone on the path. The clone helper never answers http;
        // refusing here says why before any Job exists.
        if url.starts_with("http://")
            && (opts.access.token.is_some() || opts.access.credentials.is_some())
        {
            let key = if opts.access.token.is_some() {
                "git_token_secret"
            } else {
                "git_credentials_secret"
            };
            return Err(invalid(
                key,
                format!(
                    "{url} is plain http: the credentials would cross the network in clear text. \
                     Clone over https (or ssh with git_ssh_secret)"
                ),
            ));
        }
        if let Some(b) = branch {
            check_branch(b).map_err(|why| invalid("branch", format!("{b:?} {why}")))?;
        }
        let image = opts
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_GIT_IMAGE.to_string());
        check_image(&image).map_err(|why| invalid("git_image", format!("{image:?} {why}")))?;
        if opts.attempts == 0 || opts.attempts > 20 {
            return Err(invalid(
                "clone_attempts",
                format!("{} is not between 1 and 20", opts.attempts),
            ));
        }
        if opts.backoff_seconds > 60 {
            return Err(invalid(
                "clone_backoff",
                format!("{}s is more than 60s", opts.backoff_seconds),
            ));
        }
        Ok(GitClonePlan {
            url,
            sha: sha.to_string(),
            branch: branch.map(str::to_string),
            depth: opts.depth,
            image,
            attempts: opts.attempts,
            backoff_seconds: opts.backoff_seconds,
            access: opts.access.clone(),
        })
    }

    /// The init container that fills the workspace volume `volume` (with `/tmp` on `tmp`).
    pub fn init_container(&self, volume: &str, tmp: &str) -> Container {
        let env = |name: &str, value: &str| EnvVar {
            name: name.to_string(),
            value: Some(value.to_string()),
            value_from: None,
        };
        let mut mounts = vec![
            VolumeMount {
                name: volume.to_string(),
                mount_path: WORKSPACE_PATH.into(),
                ..Default::default()
            },
            VolumeMount {
                name: tmp.to_string(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
        ];
        mounts.extend(self.access.volume_mounts());
        Container {
            name: "sykli-clone".into(),
            image: Some(self.image.clone()),
            command: Some(vec!["sh".into(), "-c".into(), CLONE_SCRIPT.into()]),
            env: Some(
                [
                    env("SYKLI_GIT_URL", &self.url),
                    env("SYKLI_GIT_SHA", &self.sha),
                    env("SYKLI_GIT_REF", self.branch.as_deref().unwrap_or("")),
                    env("SYKLI_GIT_DEPTH", &self.depth.env_value()),
                    env("SYKLI_WORKSPACE", WORKSPACE_PATH),
                    env("SYKLI_CLONE_ATTEMPTS", &self.attempts.to_string()),
                    env("SYKLI_CLONE_BACKOFF", &self.backoff_seconds.to_string()),
                    env("HOME", "/tmp"),
                    env("TMPDIR", "/tmp"),
                    env("GIT_TERMINAL_PROMPT", "0"),
                    // Only network transports: never file://, ext:: or others, whatever the URL.
                    env("GIT_ALLOW_PROTOCOL", "https:http:ssh:git"),
                    // The volume is owned by root; we are not: trust exactly this directory.
                    env("GIT_CONFIG_COUNT", "1"),
                    env("GIT_CONFIG_KEY_0", "safe.directory"),
                    env("GIT_CONFIG_VALUE_0", WORKSPACE_PATH),
                ]
                .into_iter()
                .chain(self.access.env())
                .collect(),
            ),
            volume_mounts: Some(mounts),
            security_context: Some(restricted_security_context()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        }
    }
}

/// Pod Security Standards "restricted", for the containers sykli itself adds.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT),
        run_as_group: Some(NONROOT),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// git check-ref-format's rules for a branch name.
fn check_branch(b: &str) -> std::result::Result<(), &'static str> {
    if b.is_empty() {
        return Err("is empty");
    }
    if b.chars()
        .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return Err("contains a character git does not allow in branch names");
    }
    if b.starts_with('-')
        || b.starts_with('/')
        || b.ends_with('/')
        || b.ends_with('.')
        || b.ends_with(".lock")
    {
        return Err("is not a valid branch name");
    }
    if b.contains("..")
        || b.contains("@{")
        || b.contains("//")
        || b.split('/').any(|c| c.starts_with('.'))
    {
        return Err("is not a valid branch name");
    }
    if b.len() > 255 {
        return Err("is longer than 255 characters");
    }
    Ok(())
}

pub(crate) fn check_image(image: &str) -> std::result::Result<(), &'static str> {
    if image.trim().is_empty() {
        return Err("is empty");
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters");
    }
    if image.starts_with('-') {
        return Err("starts with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(url: &str, sha: &str, branch: Option<&str>) -> Result<GitClonePlan> {
        GitClonePlan::new(url, sha, branch, &CloneOptions::default())
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn validates_values_before_building() {
        assert!(plan("https://h/r.git", SHA, Some("main")).is_ok());
        assert!(plan("https://h/r.git", &SHA.to_uppercase(), None).is_err());
        assert!(plan("https://h/r.git", "abc123", None).is_err());
        assert!(plan("https://u:tok@h/r.git", SHA, None)
            .unwrap_err()
            .to_string()
            .contains("embeds credentials"));
        assert!(matches!(
            plan("/srv/r.git", SHA, None),
            Err(Error::LocalRemote { .. })
        ));
        assert!(matches!(
            plan("ext::sh -c x", SHA, None),
            Err(Error::InvalidUrl { .. })
        ));
        for b in [
            "-x",
            "a..b",
            "a b",
            "a\nb",
            "x.lock",
            "a:b",
            "a;b c",
            "a~1",
            "x/.hidden",
        ] {
            assert!(plan("https://h/r.git", SHA, Some(b)).is_err(), "{b:?}");
        }
    }

    #[test]
    fn ssh_remotes_are_cloned_over_https_without_ssh_credentials() {
        assert_eq!(
            plan("git@github.com:acme/shop.git", SHA, None).unwrap().url,
            "https://github.com/acme/shop.git"
        );
        assert_eq!(
            plan("ssh://git@h:2222/a/b.git", SHA, None).unwrap().url,
            "https://h/a/b.git"
        );
        assert_eq!(
            plan("git://h/a.git", SHA, None).unwrap().url,
            "git://h/a.git"
        );
    }

    #[test]
    fn the_init_container_is_restricted_and_carries_values_only_in_env() {
        let p = plan("https://h/r.git", SHA, Some("feature/x")).unwrap();
        let c = p.init_container("workspace", "tmp");
        assert_eq!(c.command.as_ref().unwrap()[2], CLONE_SCRIPT);
        assert!(!CLONE_SCRIPT.contains(SHA) && !CLONE_SCRIPT.contains("feature/x"));
        let sc = c.security_context.unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert!(!c.image.unwrap().ends_with(":latest"));
    }
}
