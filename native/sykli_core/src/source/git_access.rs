//! How the clone reaches a private or big repository: credentials from Secrets, host keys,
//! a CA bundle, a proxy, submodules, LFS and sparse checkout.
//!
//! Secrets only ever reach the init container as files of volumes it alone mounts, each key
//! projected to a constant file name (so no user-chosen name reaches a shell); the clone
//! script finds them by those names. Nothing secret is put into env, the URL, the workspace
//! or the task container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EnvVar, KeyToPath, SecretVolumeSource, Volume, VolumeMount,
};
use serde::Deserialize;

use super::git_clone::Depth;
use crate::error::{Error, Result};
use crate::manifest::names;

/// Where the access volumes are mounted in the init container.
pub const ACCESS_DIR: &str = "/sykli/git";

/// The key of a `kubernetes.io/ssh-auth` Secret.
pub const DEFAULT_SSH_KEY: &str = "ssh-privatekey";
pub const DEFAULT_KNOWN_HOSTS_KEY: &str = "known_hosts";
pub const DEFAULT_TOKEN_KEY: &str = "token";
pub const DEFAULT_CREDENTIALS_KEY: &str = ".git-credentials";
pub const DEFAULT_CA_KEY: &str = "ca.crt";
/// The user name sent with a token when the Secret names none (GitHub's convention; GitLab
/// and Gitea accept any non-empty name with a token).
pub const DEFAULT_TOKEN_USERNAME: &str = "x-access-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ConfigMap,
    Secret,
}

/// A key of a ConfigMap or Secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectKey {
    #[serde(default = "config_map")]
    pub kind: Kind,
    pub name: String,
    #[serde(default)]
    pub key: Option<String>,
}

fn config_map() -> Kind {
    Kind::ConfigMap
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshAccess {
    pub secret: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub known_hosts: Option<ObjectKey>,
    /// Trust whatever host key the server presents the first time (opt-in; a man in the
    /// middle would get the deploy key's session).
    #[serde(default)]
    pub accept_new: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenAccess {
    pub secret: String,
    #[serde(default)]
    pub key: Option<String>,
    /// The Secret's key holding the user name; without it, `username` or the default.
    #[serde(default)]
    pub username_key: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsAccess {
    pub secret: String,
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub https: Option<String>,
    #[serde(default)]
    pub no_proxy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Submodules {
    #[default]
    Off,
    On,
    Recursive,
}

impl Submodules {
    fn env_value(self) -> &'static str {
        match self {
            Submodules::Off => "off",
            Submodules::On => "on",
            Submodules::Recursive => "recursive",
        }
    }
}

/// Everything beyond an anonymous fetch of one commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    #[serde(default)]
    pub ssh: Option<SshAccess>,
    #[serde(default)]
    pub token: Option<TokenAccess>,
    #[serde(default)]
    pub credentials: Option<CredentialsAccess>,
    #[serde(default)]
    pub ca_bundle: Option<ObjectKey>,
    #[serde(default)]
    pub proxy: Option<Proxy>,
    #[serde(default)]
    pub submodules: Submodules,
    /// History depth of submodules (default: 1, like the parent's default).
    #[serde(default)]
    pub submodule_depth: Option<Depth>,
    #[serde(default)]
    pub lfs: bool,
    /// Without `lfs`, still fail the clone on an LFS pointer left in the checkout: LFS was
    /// decided by detection (`lfs: :auto`), which cannot see a submodule the laptop has not
    /// checked out.
    #[serde(default)]
    pub lfs_check: bool,
    /// Cone-mode sparse checkout of these directories, with a blob-filtered partial clone.
    #[serde(default)]
    pub sparse: Vec<String>,
}

/// One file the init container reads from a ConfigMap or Secret.
struct Projected {
    volume: &'static str,
    dir: &'static str,
    kind: Kind,
    object: String,
    files: Vec<(String, &'static str)>,
    secret: bool,
}

impl Access {
    /// Checks every name, key, path and URL; all problems at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let object = |what: &str, name: &str, problems: &mut Vec<String>| {
            if !names::is_dns_subdomain(name) {
                problems.push(format!("{what} {name:?} is not a valid object name"));
            }
        };
        let key = |what: &str, key: &Option<String>, problems: &mut Vec<String>| {
            if let Some(k) = key {
                if !is_config_key(k) {
                    problems.push(format!(
                        "{what} {k:?} is not a valid key (letters, digits, '-', '_', '.')"
                    ));
                }
            }
        };
        if let Some(s) = &self.ssh {
            object("git_ssh_secret", &s.secret, &mut problems);
            key("git_ssh_key", &s.key, &mut problems);
            match &s.known_hosts {
                Some(kh) => {
                    object("git_known_hosts", &kh.name, &mut problems);
                    key("git_known_hosts key", &kh.key, &mut problems);
                }
                None if s.accept_new => {}
                None => problems.push(
                    "git_ssh_secret needs git_known_hosts (a ConfigMap or Secret with the server's host keys, as ssh-keyscan prints them, checked by you), or git_ssh_accept_new: true to trust whatever key the server shows first".into(),
                ),
            }
        }
        if let Some(t) = &self.token {
            object("git_token_secret", &t.secret, &mut problems);
            key("git_token_key", &t.key, &mut problems);
            key("git_token_username_key", &t.username_key, &mut problems);
            if let Some(u) = &t.username {
                if u.is_empty() || u.chars().any(|c| c.is_control() || c == ':') {
                    problems.push(format!("git_token_username {u:?} is not a valid user name"));
                }
            }
        }
        if let Some(c) = &self.credentials {
            object("git_credentials_secret", &c.secret, &mut problems);
            key("git_credentials_key", &c.key, &mut problems);
        }
        if let Some(ca) = &self.ca_bundle {
            object("git_ca_bundle", &ca.name, &mut problems);
            key("git_ca_bundle key", &ca.key, &mut problems);
        }
        if let Some(p) = &self.proxy {
            for (what, url) in [("git_http_proxy", &p.http), ("git_https_proxy", &p.https)] {
                if let Some(u) = url {
                    if let Err(why) = check_proxy(u) {
                        problems.push(format!("{what} {u:?} {why}"));
                    }
                }
            }
            if let Some(n) = &p.no_proxy {
                if n.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    problems.push(format!(
                        "git_no_proxy {n:?} must be a comma-separated list of hosts"
                    ));
                }
            }
        }
        for path in &self.sparse {
            if let Err(why) = check_sparse_path(path) {
                problems.push(format!("sparse path {path:?} {why}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidOption {
                key: "git clone settings".into(),
                message: problems.join("; "),
            })
        }
    }

    fn projected(&self) -> Vec<Projected> {
        let mut out = Vec::new();
        let or = |k: &Option<String>, d: &str| k.clone().unwrap_or_else(|| d.to_string());
        if let Some(s) = &self.ssh {
            out.push(Projected {
                volume: "sykli-git-ssh",
                dir: "ssh",
                kind: Kind::Secret,
                object: s.secret.clone(),
                files: vec![(or(&s.key, DEFAULT_SSH_KEY), "ssh-key")],
                secret: true,
            });
            if let Some(kh) = &s.known_hosts {
                out.push(Projected {
                    volume: "sykli-git-known-hosts",
                    dir: "known-hosts",
                    kind: kh.kind,
                    object: kh.name.clone(),
                    files: vec![(or(&kh.key, DEFAULT_KNOWN_HOSTS_KEY), "known_hosts")],
                    secret: false,
                });
            }
        }
        if let Some(t) = &self.token {
            let mut files = vec![(or(&t.key, DEFAULT_TOKEN_KEY), "token")];
            if let Some(u) = &t.username_key {
                files.push((u.clone(), "username"));
            }
            out.push(Projected {
                volume: "sykli-git-token",
                dir: "token",
                kind: Kind::Secret,
                object: t.secret.clone(),
                files,
                secret: true,
            });
        }
        if let Some(c) = &self.credentials {
            out.push(Projected {
                volume: "sykli-git-credentials",
                dir: "credentials",
                kind: Kind::Secret,
                object: c.secret.clone(),
                files: vec![(or(&c.key, DEFAULT_CREDENTIALS_KEY), "git-credentials")],
                secret: true,
            });
        }
        if let Some(ca) = &self.ca_bundle {
            out.push(Projected {
                volume: "sykli-git-ca",
                dir: "ca",
                kind: ca.kind,
                object: ca.name.clone(),
                files: vec![(or(&ca.key, DEFAULT_CA_KEY), "ca.crt")],
                secret: false,
            });
        }
        out
    }

    /// The volumes of the init container's access files.
    pub fn volumes(&self) -> Vec<Volume> {
        self.projected()
            .into_iter()
            .map(|p| {
                let items: Vec<KeyToPath> = p
                    .files
                    .iter()
                    .map(|(key, path)| KeyToPath {
                        key: key.clone(),
                        path: path.to_string(),
                        ..Default::default()
                    })
                    .collect();
                // Private keys: readable by their owner (and, through the pod's fsGroup, by
                // the clone's group) only. Public material: the default 0644.
                let mode = p.secret.then_some(0o400);
                let mut v = Volume {
                    name: p.volume.into(),
                    ..Default::default()
                };
                match p.kind {
                    Kind::Secret => {
                        v.secret = Some(SecretVolumeSource {
                            secret_name: Some(p.object),
                            items: Some(items),
                            default_mode: mode,
                            optional: Some(false),
                            ..Default::default()
                        })
                    }
                    Kind::ConfigMap => {
                        v.config_map = Some(ConfigMapVolumeSource {
                            name: p.object,
                            items: Some(items),
                            default_mode: mode,
                            optional: Some(false),
                            ..Default::default()
                        })
                    }
                }
                v
            })
            .collect()
    }

    /// The init container's mounts of those volumes, read-only.
    pub fn volume_mounts(&self) -> Vec<VolumeMount> {
        self.projected()
            .into_iter()
            .map(|p| VolumeMount {
                name: p.volume.into(),
                mount_path: format!("{ACCESS_DIR}/{}", p.dir),
                read_only: Some(true),
                ..Default::default()
            })
            .collect()
    }

    /// Whether a 0400 Secret file must be made readable to the clone's group (fsGroup).
    pub fn needs_fs_group(&self) -> bool {
        self.projected().iter().any(|p| p.secret)
    }

    /// What the clone script is told: flags and values, never a secret. The sparse
    /// directories are each Job's own (`GitClonePlan::init_container`).
    pub fn env(&self) -> Vec<EnvVar> {
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: &str| {
            env.insert(k.to_string(), v.to_string());
        };
        set("SYKLI_GIT_ACCESS", ACCESS_DIR);
        if let Some(s) = &self.ssh {
            set("SYKLI_GIT_SSH", "1");
            if s.known_hosts.is_some() {
                set("SYKLI_GIT_KNOWN_HOSTS", "1");
            } else if s.accept_new {
                set("SYKLI_GIT_SSH_ACCEPT_NEW", "1");
            }
        }
        if let Some(t) = &self.token {
            set("SYKLI_GIT_TOKEN", "1");
            if t.username_key.is_none() {
                set(
                    "SYKLI_GIT_TOKEN_USERNAME",
                    t.username.as_deref().unwrap_or(DEFAULT_TOKEN_USERNAME),
                );
            }
        }
        if self.credentials.is_some() {
            set("SYKLI_GIT_CREDENTIALS", "1");
        }
        if self.ca_bundle.is_some() {
            set("GIT_SSL_CAINFO", &format!("{ACCESS_DIR}/ca/ca.crt"));
        }
        if let Some(p) = &self.proxy {
            // curl reads only the lower-case http_proxy (a CGI could set HTTP_PROXY).
            if let Some(u) = &p.http {
                set("http_proxy", u);
            }
            if let Some(u) = &p.https {
                set("https_proxy", u);
                set("HTTPS_PROXY", u);
            }
            if let Some(n) = &p.no_proxy {
                set("no_proxy", n);
                set("NO_PROXY", n);
            }
        }
        set("SYKLI_GIT_SUBMODULES", self.submodules.env_value());
        if self.submodules != Submodules::Off {
            let depth = match self.submodule_depth.unwrap_or_default() {
                Depth::One => "1".to_string(),
                Depth::Commits(n) => n.to_string(),
                Depth::Full => "full".to_string(),
            };
            set("SYKLI_GIT_SUBMODULE_DEPTH", &depth);
        }
        if self.lfs {
            set("SYKLI_GIT_LFS", "1");
        } else if self.lfs_check {
            set("SYKLI_GIT_LFS_CHECK", "1");
        }
        env.into_iter()
            .map(|(name, value)| EnvVar {
                name,
                value: Some(value),
                value_from: None,
            })
            .collect()
    }

    /// Whether the clone may keep an ssh URL (it has a key to use).
    pub fn has_ssh(&self) -> bool {
        self.ssh.is_some()
    }
}

/// A ConfigMap/Secret key: `[-._a-zA-Z0-9]+`, as the API server checks.
fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_proxy(url: &str) -> std::result::Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .or_else(|| url.strip_prefix("socks5://"))
        .ok_or("must start with http://, https:// or socks5://")?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err("embeds credentials, which would end up in the Job; use a proxy that does not need them");
    }
    if authority.is_empty() || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("is not a proxy URL");
    }
    Ok(())
}

/// A cone-mode sparse directory: relative, no `..`, no leading `-` or `!`, one line.
fn check_sparse_path(p: &str) -> std::result::Result<(), &'static str> {
    let trimmed = p.trim_matches('/');
    if trimmed.is_empty() {
        return Err("is empty (the whole tree is the default)");
    }
    if p.starts_with('/') {
        return Err("must be relative to the repository root");
    }
    if trimmed
        .split('/')
        .any(|c| c == ".." || c == "." || c.is_empty())
    {
        return Err("must not contain '.', '..' or empty components");
    }
    if p.starts_with('-') || p.starts_with('!') || p.starts_with('#') {
        return Err("must not start with '-', '!' or '#'");
    }
    if p.chars()
        .any(|c| c.is_control() || matches!(c, '*' | '?' | '[' | '\\'))
    {
        return Err("must be a directory path (no wildcards or control characters)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(known_hosts: bool, accept_new: bool) -> Access {
        Access {
            ssh: Some(SshAccess {
                secret: "deploy-key".into(),
                key: None,
                known_hosts: known_hosts.then(|| ObjectKey {
                    kind: Kind::ConfigMap,
                    name: "hosts".into(),
                    key: None,
                }),
                accept_new,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ssh_without_known_hosts_needs_an_explicit_accept_new() {
        let e = ssh(false, false).validate().unwrap_err().to_string();
        assert!(e.contains("git_ssh_secret needs git_known_hosts"), "{e}");
        assert!(ssh(false, true).validate().is_ok());
        assert!(ssh(true, false).validate().is_ok());
    }

    #[test]
    fn bad_names_keys_paths_and_proxies_are_all_reported() {
        let a = Access {
            token: Some(TokenAccess {
                secret: "Bad Name".into(),
                key: Some("a/b".into()),
                username_key: None,
                username: None,
            }),
            proxy: Some(Proxy {
                http: Some("http://user:pw@proxy:3128".into()),
                https: Some("ftp://x".into()),
                no_proxy: None,
            }),
            sparse: vec!["../up".into(), "-x".into(), "/abs".into(), "ok/dir".into()],
            ..Default::default()
        };
        let e = a.validate().unwrap_err().to_string();
        for part in [
            "git_token_secret \"Bad Name\"",
            "git_token_key \"a/b\"",
            "embeds credentials",
            "must start with http://",
            "sparse path \"../up\"",
            "sparse path \"-x\"",
            "sparse path \"/abs\"",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        assert!(!e.contains("ok/dir"));
    }

    #[test]
    fn keys_reach_constant_file_names_and_no_secret_reaches_env() {
        let mut a = ssh(true, false);
        a.token = Some(TokenAccess {
            secret: "tok".into(),
            key: Some("pat".into()),
            username_key: Some("user".into()),
            username: None,
        });
        let vols = a.volumes();
        let ssh = vols.iter().find(|v| v.name == "sykli-git-ssh").unwrap();
        let s = ssh.secret.as_ref().unwrap();
        assert_eq!(s.default_mode, Some(0o400));
        assert_eq!(s.items.as_ref().unwrap()[0].key, "ssh-privatekey");
        assert_eq!(s.items.as_ref().unwrap()[0].path, "ssh-key");
        let tok = vols.iter().find(|v| v.name == "sykli-git-token").unwrap();
        let paths: Vec<_> = tok
            .secret
            .as_ref()
            .unwrap()
            .items
            .as_ref()
            .unwrap()
            .iter()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect();
        assert_eq!(paths, [("pat", "token"), ("user", "username")]);
        assert!(a.needs_fs_group());
        assert!(a.env().iter().all(|e| e.value_from.is_none()));
        assert!(a.volume_mounts().iter().all(|m| m.read_only == Some(true)));
    }
}
