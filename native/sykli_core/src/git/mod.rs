//! Git context: what a cluster needs to put the exact source at a task's mount path.

pub mod fileset;
pub mod index;
pub mod remote;
pub mod status;
pub mod url;

use std::path::{Path, PathBuf};

use git2::{ErrorCode, Repository};

use crate::error::{Error, Result};
pub use status::Change;

/// The CI variables that name the branch when a CI system checks out a detached HEAD, in
/// the order they are consulted (`GITHUB_HEAD_REF` is only set, and only right, for pull
/// requests; `GITHUB_REF_NAME` is then `123/merge`).
pub const CI_BRANCH_VARS: &[&str] = &[
    "GITHUB_HEAD_REF",
    "GITHUB_REF_NAME",
    "CI_COMMIT_REF_NAME",
    "BUILDKITE_BRANCH",
    "GIT_BRANCH",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Yes,
    No,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct GitContext {
    /// The working tree's root (the repository itself when bare).
    pub root: PathBuf,
    pub remote: Option<String>,
    /// The remote's URL with any credentials removed.
    pub url: Option<String>,
    pub branch: Option<String>,
    /// Where `branch` came from: `HEAD`, or the CI variable that named it.
    pub branch_source: Option<String>,
    pub sha: String,
    pub dirty: bool,
    pub changes: Vec<Change>,
    pub pushed: Pushed,
    pub submodules: Vec<String>,
    pub lfs: bool,
    pub shallow: bool,
    pub worktree: bool,
    pub warnings: Vec<String>,
}

/// Detects the git context of the repository containing `path`. `env` looks up CI
/// variables (the caller decides where they come from, so tests control them).
pub fn detect(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<GitContext> {
    let repo = open(path)?;
    let mut warnings = Vec::new();
    let head = match repo.head() {
        Ok(head) => head,
        Err(e) if e.code() == ErrorCode::UnbornBranch || e.code() == ErrorCode::NotFound => {
            return Err(Error::NoCommits {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let sha = head.peel_to_commit()?.id();
    let local_branch = if head.is_branch() {
        head.shorthand().ok().map(str::to_string)
    } else {
        None
    };
    let remotes: Vec<String> = repo
        .remotes()?
        .iter()
        .filter_map(|r| r.ok().flatten().map(str::to_string))
        .collect();
    let (branch, branch_source) = match &local_branch {
        Some(b) => (Some(b.clone()), Some("HEAD".to_string())),
        None => match ci_branch(env, &remotes) {
            Some((b, var)) => (Some(b), Some(var.to_string())),
            None => (None, None),
        },
    };

    let config = repo.config()?;
    let upstream_remote = local_branch
        .as_ref()
        .and_then(|b| config.get_string(&format!("branch.{b}.remote")).ok())
        .filter(|r| remotes.contains(r));
    let remote = upstream_remote
        .or_else(|| remotes.iter().find(|r| *r == "origin").cloned())
        .or_else(|| (remotes.len() == 1).then(|| remotes[0].clone()));
    if remote.is_none() && remotes.len() > 1 {
        warnings.push(format!(
            "several remotes ({}) and none is the branch's upstream or origin: set an upstream (git branch -u REMOTE/BRANCH)",
            remotes.join(", ")
        ));
    } else if remotes.is_empty() {
        warnings.push(
            "no remote: a cluster has nowhere to clone from (git remote add origin URL)".into(),
        );
    }
    let url = match &remote {
        Some(name) => {
            let raw = repo.find_remote(name)?.url().ok().map(str::to_string);
            raw.map(|raw| {
                let (clean, had_credentials) = url::strip_credentials(&raw);
                if had_credentials {
                    warnings.push(format!(
                        "the URL of remote '{name}' embeds credentials; they were removed and are never used or shown (give the cluster a git_token_secret instead)"
                    ));
                }
                if let Err(Error::LocalRemote { .. }) = url::RemoteUrl::parse(&clean) {
                    warnings.push(format!(
                        "remote '{name}' is a local path ({clean}): a cluster cannot clone it"
                    ));
                }
                clean
            })
        }
        None => None,
    };

    let index_path = repo.path().join("index");
    let index = if repo.is_bare() {
        None
    } else {
        index::Index::read(&index_path).map_err(|source| Error::Io {
            path: index_path,
            source,
        })?
    };
    let changes = match &index {
        Some(index) => status::status_of(&repo, index)?,
        None => status::status(&repo)?,
    };
    let submodules: Vec<String> = match &index {
        Some(index) => gitlinks(index),
        None => repo
            .submodules()?
            .iter()
            .map(|s| s.path().to_string_lossy().into_owned())
            .collect(),
    };
    let lfs = uses_lfs(&repo, index.as_ref(), &submodules, SUBMODULE_DEPTH);
    let shallow = repo.is_shallow();
    let pushed = pushed(&repo, sha, shallow);
    let root = repo.workdir().unwrap_or_else(|| repo.path()).to_path_buf();

    Ok(GitContext {
        root,
        remote,
        url,
        branch,
        branch_source,
        sha: sha.to_string(),
        dirty: !changes.is_empty(),
        changes,
        pushed,
        submodules,
        lfs,
        shallow,
        worktree: repo.is_worktree(),
        warnings,
    })
}

/// Opens the repository containing `path`, from any subdirectory, worktree or `.git` file.
/// (`Repository::discover` would reopen the git directory and guess the working tree as its
/// parent, which is wrong for `.git` files; `open_ext` keeps the one it found.)
pub fn open(path: &Path) -> Result<Repository> {
    if !path.exists() {
        return Err(Error::PathNotFound {
            path: path.to_path_buf(),
        });
    }
    let no_ceilings: [&std::ffi::OsStr; 0] = [];
    Repository::open_ext(path, git2::RepositoryOpenFlags::empty(), no_ceilings).map_err(|e| match e
        .code()
    {
        ErrorCode::NotFound => Error::NotAGitRepo {
            path: path.to_path_buf(),
        },
        ErrorCode::Owner => Error::UnsafeRepository {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        },
        _ => e.into(),
    })
}

fn ci_branch(
    env: &dyn Fn(&str) -> Option<String>,
    remotes: &[String],
) -> Option<(String, &'static str)> {
    CI_BRANCH_VARS.iter().find_map(|var| {
        let value = env(var)?;
        let mut name = value.trim();
        name = name.strip_prefix("refs/heads/").unwrap_or(name);
        // Jenkins says `origin/main`.
        if let Some((first, rest)) = name.split_once('/') {
            if remotes.iter().any(|r| r == first) {
                name = rest;
            }
        }
        (!name.is_empty()).then(|| (name.to_string(), *var))
    })
}

/// The paths of the submodules an index records.
fn gitlinks(index: &index::Index) -> Vec<String> {
    index
        .entries
        .iter()
        .filter(|e| e.mode == index::MODE_GITLINK && e.stage == 0)
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect()
}

/// How deep nested submodules are looked into for LFS attributes.
const SUBMODULE_DEPTH: usize = 8;

/// Whether any committed `.gitattributes` routes files through git-lfs, in the repository
/// or in a submodule checked out here (at `submodules`, nested ones `depth` levels down):
/// `lfs: :auto` must fetch a submodule's LFS content too. A submodule that is not checked
/// out here cannot be read; its pointers would reach the task only with LFS off.
fn uses_lfs(
    repo: &Repository,
    index: Option<&index::Index>,
    submodules: &[String],
    depth: usize,
) -> bool {
    if attributes_use_lfs(repo, index) {
        return true;
    }
    let Some(workdir) = repo.workdir() else {
        return false;
    };
    depth > 0
        && submodules.iter().any(|path| {
            let Ok(sub) = Repository::open(workdir.join(path)) else {
                return false;
            };
            let index = index::Index::read(&sub.path().join("index")).ok().flatten();
            let nested = index.as_ref().map(gitlinks).unwrap_or_default();
            uses_lfs(&sub, index.as_ref(), &nested, depth - 1)
        })
}

/// Whether a committed `.gitattributes` of `repo` itself routes files through git-lfs.
fn attributes_use_lfs(repo: &Repository, index: Option<&index::Index>) -> bool {
    let blobs: Vec<git2::Oid> = match index {
        Some(index) => index
            .entries
            .iter()
            .filter(|e| {
                e.stage == 0
                    && (e.path == b".gitattributes" || e.path.ends_with(b"/.gitattributes"))
            })
            .filter_map(|e| git2::Oid::from_bytes(&e.oid).ok())
            .collect(),
        None => repo
            .head()
            .and_then(|h| h.peel_to_tree())
            .and_then(|t| {
                t.get_path(Path::new(".gitattributes"))
                    .map(|e| vec![e.id()])
            })
            .unwrap_or_default(),
    };
    blobs.into_iter().any(|oid| {
        repo.find_blob(oid).is_ok_and(|blob| {
            String::from_utf8_lossy(blob.content()).lines().any(|line| {
                let line = line.trim();
                !line.starts_with('#') && line.split_whitespace().any(|attr| attr == "filter=lfs")
            })
        })
    })
}

/// Whether HEAD is reachable from a remote-tracking ref. Unknown when there are none (never
/// fetched) or when a shallow history cannot tell.
fn pushed(repo: &Repository, head: git2::Oid, shallow: bool) -> Pushed {
    let Ok(refs) = repo.references_glob("refs/remotes/*") else {
        return Pushed::Unknown;
    };
    let mut tips: Vec<git2::Oid> = refs.flatten().filter_map(|r| r.target()).collect();
    if tips.is_empty() {
        return Pushed::Unknown;
    }
    tips.sort();
    tips.dedup();
    let reachable = tips
        .iter()
        .any(|&tip| tip == head || repo.graph_descendant_of(tip, head).unwrap_or(false));
    match (reachable, shallow) {
        (true, _) => Pushed::Yes,
        (false, true) => Pushed::Unknown,
        (false, false) => Pushed::No,
    }
}
