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

    /// The checkout of a Job whose task mounts nothing narrower: the config's.
    pub fn checkout(&self) -> Checkout {
        Checkout::from_config(&self.access.sparse)
    }

    /// The init container that fills the workspace volume `volume` (with `/tmp` on `tmp`)
    /// with `checkout` of the commit.
    pub fn init_container(&self, volume: &str, tmp: &str, checkout: &Checkout) -> Container {
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
                .chain(self.checkout_env(checkout))
                .collect(),
            ),
            volume_mounts: Some(mounts),
            security_context: Some(restricted_security_context()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        }
    }

    /// `SYKLI_GIT_SPARSE`, and when the task's mounts narrowed it, `SYKLI_GIT_SPARSE_WIDE`:
    /// what to check out instead when a mount is reached through a symbolic link of the
    /// commit (the config's directories, or `.` for every file), as without the narrowing.
    fn checkout_env(&self, checkout: &Checkout) -> Vec<EnvVar> {
        let env = |name: &str, value: String| EnvVar {
            name: name.to_string(),
            value: Some(value),
            value_from: None,
        };
        let mut out = Vec::new();
        if let Some(dirs) = checkout.env_value() {
            out.push(env("SYKLI_GIT_SPARSE", dirs));
            let wide = self.checkout();
            if *checkout != wide {
                out.push(env(
                    "SYKLI_GIT_SPARSE_WIDE",
                    wide.env_value().unwrap_or_else(|| ".".into()),
                ));
            }
        }
        out
    }
}

/// What a Job's clone checks out of the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkout {
    /// Every file.
    Full,
    /// A cone-mode sparse checkout of these directories (with every file at the top and
    /// directly in their parents), over a blob-filtered partial clone.
    Sparse(Vec<String>),
}

impl Checkout {
    /// What the config's `sparse` directories alone ask for.
    pub fn from_config(sparse: &[String]) -> Checkout {
        let dirs: Vec<String> = sparse
            .iter()
            .map(|d| d.trim_matches('/').to_string())
            .collect();
        if dirs.is_empty() {
            Checkout::Full
        } else {
            Checkout::Sparse(outermost(dirs))
        }
    }

    /// The `sykli.io/fetch` annotation: `full`, or `sparse: DIR, DIR`.
    pub fn describe(&self) -> String {
        match self {
            Checkout::Full => "full".into(),
            Checkout::Sparse(dirs) => format!("sparse: {}", dirs.join(", ")),
        }
    }

    /// The clone script's value: the directories, one per line (none for a full checkout).
    fn env_value(&self) -> Option<String> {
        match self {
            Checkout::Full => None,
            Checkout::Sparse(dirs) => Some(dirs.join("\n")),
        }
    }
}

/// The checkout a Job needs: the directories its task mounts (`mounts`: normalized
/// resource paths, `""` for the whole repository) and the other paths of the workspace the
/// Job reads (`reads`: the outputs it collects), within the config's `sparse` directories
/// when there are any. A task never sees more than its mounts, so nothing else is fetched.
///
/// A path may name a file: as a cone directory it brings the files directly in its parent,
/// that file among them. A name the clone could not pass to git's cone unchanged (see
/// [`cone_safe`]) counts as the whole repository. The error lists the mounts outside the
/// config's directories: their tasks would see nothing of them.
pub fn job_checkout(
    mounts: &[String],
    reads: &[String],
    sparse: &[String],
) -> std::result::Result<Checkout, Vec<String>> {
    let config = Checkout::from_config(sparse);
    let within = |a: &str, b: &str| {
        b.is_empty() || a == b || (a.starts_with(b) && a.as_bytes().get(b.len()) == Some(&b'/'))
    };
    let reads: Vec<&String> = reads
        .iter()
        .filter(|r| !mounts.iter().any(|m| within(r, m)))
        .collect();
    let wanted = mounts.iter().chain(reads.iter().copied());
    let Checkout::Sparse(config) = config else {
        if wanted.clone().any(|d| !cone_safe(d)) {
            return Ok(Checkout::Full);
        }
        return Ok(Checkout::Sparse(outermost(wanted.cloned().collect())));
    };
    let mut outside = Vec::new();
    let mut dirs = Vec::new();
    for (i, d) in wanted.enumerate() {
        let mut met = false;
        for c in &config {
            if within(d, c) {
                met = true;
                // A name the cone cannot take is replaced by the config's directory.
                dirs.push(if cone_safe(d) { d.clone() } else { c.clone() });
            } else if within(c, d) {
                met = true;
                dirs.push(c.clone());
            }
        }
        if !met && i < mounts.len() {
            outside.push(d.clone());
        }
    }
    if !outside.is_empty() {
        return Err(outside);
    }
    if dirs.is_empty() {
        // Only reads outside the config's directories, which a checkout of them lacks too.
        return Ok(Checkout::Sparse(config));
    }
    Ok(Checkout::Sparse(outermost(dirs)))
}

/// Whether `dir` reaches git's cone as itself: `git sparse-checkout set --stdin` trims
/// whitespace at the ends of a line and unquotes one that starts with `"`, and a backslash
/// would escape what follows it in the cone's patterns.
pub fn cone_safe(dir: &str) -> bool {
    !dir.is_empty()
        && !dir.starts_with('"')
        && !dir.contains('\\')
        && dir
            .split('/')
            .all(|c| !c.is_empty() && c.trim() == c && !c.chars().any(char::is_control))
}

/// The directories not inside another of them, sorted, each once.
fn outermost(mut dirs: Vec<String>) -> Vec<String> {
    dirs.sort();
    dirs.dedup();
    let mut out: Vec<String> = Vec::new();
    for d in dirs {
        if !out
            .iter()
            .any(|p| d.starts_with(p.as_str()) && d.as_bytes().get(p.len()) == Some(&b'/'))
        {
            out.push(d);
        }
    }
    out
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
    use std::collections::BTreeMap;

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
        let c = p.init_container("workspace", "tmp", &Checkout::Full);
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

    fn v(dirs: &[&str]) -> Vec<String> {
        dirs.iter().map(|d| d.to_string()).collect()
    }

    fn sparse(dirs: &[&str]) -> Checkout {
        Checkout::Sparse(v(dirs))
    }

    #[test]
    fn a_mount_of_the_whole_repository_checks_out_every_file_or_the_configs_cone() {
        let root = v(&["", "services/api"]);
        assert_eq!(job_checkout(&root, &[], &[]), Ok(Checkout::Full));
        assert_eq!(
            job_checkout(&root, &[], &v(&["libs/", "services/api"])),
            Ok(sparse(&["libs", "services/api"]))
        );
        // A name git's cone would change counts as the whole repository.
        for odd in [" api", "api ", "a/ b/c", "\"q\"", "back\\slash"] {
            assert_eq!(
                job_checkout(&v(&["services/web", odd]), &[], &[]),
                Ok(Checkout::Full),
                "{odd:?}"
            );
        }
        assert_eq!(
            job_checkout(&v(&["libs/ x"]), &[], &v(&["libs"])),
            Ok(sparse(&["libs"]))
        );
        // Wildcard characters are only characters to the cone (git escapes them).
        assert_eq!(
            job_checkout(&v(&["w*x/[y]", "#h", "!b"]), &[], &[]),
            Ok(sparse(&["!b", "#h", "w*x/[y]"]))
        );
    }

    #[test]
    fn sub_directory_mounts_are_the_cone_nested_ones_collapse() {
        assert_eq!(
            job_checkout(&v(&["services/api"]), &[], &[]),
            Ok(sparse(&["services/api"]))
        );
        assert_eq!(
            job_checkout(
                &v(&[
                    "services/api/src",
                    "libs/common",
                    "services/api",
                    "services/api-v2",
                    "services/api",
                    "libs/common/x/y",
                ]),
                &[],
                &[]
            ),
            Ok(sparse(&["libs/common", "services/api", "services/api-v2"]))
        );
        // A path that names a file: a cone directory all the same (its parent's files come).
        assert_eq!(
            job_checkout(&v(&["config/app.toml"]), &[], &[]),
            Ok(sparse(&["config/app.toml"]))
        );
    }

    #[test]
    fn collected_outputs_outside_the_mounts_join_the_cone() {
        let reads = v(&["services/api/target/app", "dist", "VERSION"]);
        assert_eq!(
            job_checkout(&v(&["services/api"]), &reads, &[]),
            Ok(sparse(&["VERSION", "dist", "services/api"]))
        );
        assert_eq!(
            job_checkout(&v(&["services/api"]), &v(&[""]), &[]),
            Ok(Checkout::Full)
        );
        // Outside the config's directories they are not there either way: no error.
        assert_eq!(
            job_checkout(&v(&["services/api"]), &reads, &v(&["services"])),
            Ok(sparse(&["services/api"]))
        );
    }

    #[test]
    fn the_configs_sparse_directories_and_the_mounts_intersect() {
        let config = v(&["services", "libs/common/", "tools/lint"]);
        // A mount inside a config directory stays; a config directory inside a mount stays.
        assert_eq!(
            job_checkout(&v(&["services/api", "libs", "tools/lint"]), &[], &config),
            Ok(sparse(&["libs/common", "services/api", "tools/lint"]))
        );
        // Disjoint config directories drop; a prefix that is not a parent is disjoint.
        assert_eq!(
            job_checkout(&v(&["services-old", "services"]), &[], &config),
            Err(v(&["services-old"]))
        );
        assert_eq!(
            job_checkout(&v(&["libs/common/x"]), &[], &config),
            Ok(sparse(&["libs/common/x"]))
        );
    }

    #[test]
    fn a_mount_outside_the_configs_sparse_directories_is_an_error_naming_it() {
        let config = v(&["services/api"]);
        assert_eq!(
            job_checkout(&v(&["services/web", "docs", "services/api"]), &[], &config),
            Err(v(&["services/web", "docs"]))
        );
        assert_eq!(
            job_checkout(&v(&["services/apix"]), &[], &config),
            Err(v(&["services/apix"]))
        );
    }

    #[test]
    fn the_clone_is_told_the_jobs_cone_and_what_widens_it() {
        let env_of = |p: &GitClonePlan, c: &Checkout| -> BTreeMap<String, String> {
            p.init_container("workspace", "tmp", c)
                .env
                .unwrap()
                .into_iter()
                .map(|e| (e.name, e.value.unwrap_or_default()))
                .collect()
        };
        let mut opts = CloneOptions::default();
        let p = GitClonePlan::new("https://h/r.git", SHA, None, &opts).unwrap();
        let env = env_of(&p, &Checkout::Full);
        assert!(
            !env.contains_key("SYKLI_GIT_SPARSE") && !env.contains_key("SYKLI_GIT_SPARSE_WIDE")
        );
        let env = env_of(&p, &sparse(&["a", "b/c"]));
        assert_eq!(env["SYKLI_GIT_SPARSE"], "a\nb/c");
        assert_eq!(env["SYKLI_GIT_SPARSE_WIDE"], ".");

        opts.access.sparse = v(&["b/", "a"]);
        let p = GitClonePlan::new("https://h/r.git", SHA, None, &opts).unwrap();
        assert_eq!(p.checkout(), sparse(&["a", "b"]));
        let env = env_of(&p, &p.checkout());
        assert_eq!(env["SYKLI_GIT_SPARSE"], "a\nb");
        assert!(!env.contains_key("SYKLI_GIT_SPARSE_WIDE"));
        let env = env_of(&p, &sparse(&["b/c"]));
        assert_eq!(env["SYKLI_GIT_SPARSE"], "b/c");
        assert_eq!(env["SYKLI_GIT_SPARSE_WIDE"], "a\nb");
        assert_eq!(sparse(&["a", "b/c"]).describe(), "sparse: a, b/c");
        assert_eq!(Checkout::Full.describe(), "full");
    }
}
