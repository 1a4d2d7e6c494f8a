use std::collections::HashMap;
use std::path::Path;

use rustler::{Atom, NifMap, NifStruct};
use sykli_core::git::{self, status::Counts, url::RemoteUrl, Pushed};

use super::NifError;

mod atoms {
    rustler::atoms! { unknown }
}

#[derive(NifStruct)]
#[module = "Sykli.GitContext"]
struct GitContext {
    root: String,
    remote: Option<String>,
    url: Option<String>,
    branch: Option<String>,
    branch_source: Option<String>,
    sha: String,
    dirty: bool,
    changes: Changes,
    /// `true`, `false` or `:unknown`.
    pushed: Atom,
    submodules: Vec<String>,
    lfs: bool,
    shallow: bool,
    worktree: bool,
    warnings: Vec<String>,
}

#[derive(NifMap)]
struct Changes {
    total: usize,
    staged: usize,
    modified: usize,
    deleted: usize,
    untracked: usize,
    conflicted: usize,
    paths: Vec<ChangedPath>,
}

#[derive(NifMap)]
struct ChangedPath {
    path: String,
    status: String,
}

#[derive(NifMap)]
struct ParsedUrl {
    scheme: String,
    user: Option<String>,
    host: String,
    port: Option<u16>,
    path: String,
    owner: String,
    repo: String,
    https_url: String,
}

/// Detects the git context of `path`. `ci_env` holds the CI variables the caller wants
/// consulted for a detached HEAD; `max_paths` bounds the list of changed paths returned.
#[rustler::nif(schedule = "DirtyIo")]
fn git_detect(
    path: String,
    ci_env: HashMap<String, String>,
    max_paths: usize,
) -> Result<GitContext, NifError> {
    let ctx = git::detect(Path::new(&path), &|var| ci_env.get(var).cloned())?;
    let counts = Counts::of(&ctx.changes);
    Ok(GitContext {
        root: ctx.root.to_string_lossy().trim_end_matches('/').to_string(),
        remote: ctx.remote,
        url: ctx.url,
        branch: ctx.branch,
        branch_source: ctx.branch_source,
        sha: ctx.sha,
        dirty: ctx.dirty,
        changes: Changes {
            total: ctx.changes.len(),
            staged: counts.staged,
            modified: counts.modified,
            deleted: counts.deleted,
            untracked: counts.untracked,
            conflicted: counts.conflicted,
            paths: ctx
                .changes
                .into_iter()
                .take(max_paths)
                .map(|c| ChangedPath {
                    path: c.path,
                    status: c.code,
                })
                .collect(),
        },
        pushed: match ctx.pushed {
            Pushed::Yes => rustler::types::atom::true_(),
            Pushed::No => rustler::types::atom::false_(),
            Pushed::Unknown => atoms::unknown(),
        },
        submodules: ctx.submodules,
        lfs: ctx.lfs,
        shallow: ctx.shallow,
        worktree: ctx.worktree,
        warnings: ctx.warnings,
    })
}

#[rustler::nif]
fn git_parse_remote_url(url: String) -> Result<ParsedUrl, NifError> {
    let (clean, _) = git::url::strip_credentials(&url);
    let u = RemoteUrl::parse(&clean)?;
    Ok(ParsedUrl {
        scheme: u.scheme.as_str().to_string(),
        user: u.user.clone(),
        host: u.host.clone(),
        port: u.port,
        owner: u.owner().to_string(),
        repo: u.repo_name().to_string(),
        https_url: u.to_https(),
        path: u.path,
    })
}

#[derive(NifMap)]
struct ResolvedRef {
    sha: String,
    ref_name: Option<String>,
    branch: Option<String>,
}

/// Resolves a branch, tag or commit against a remote of the repository at `path`, given
/// what `git ls-remote <remote>` printed and whether it succeeded (the caller runs git).
#[rustler::nif(schedule = "DirtyIo")]
fn git_resolve_ref(
    path: String,
    remote: String,
    listed: bool,
    listing: String,
    want: String,
) -> Result<ResolvedRef, NifError> {
    let refs = git::remote::refs_from_ls_remote(&remote, listed, &listing)?;
    let repo = git::open(Path::new(&path))?;
    let r = git::remote::resolve(&repo, &refs, &remote, &want)?;
    Ok(ResolvedRef {
        sha: r.sha,
        ref_name: r.ref_name,
        branch: r.branch,
    })
}

/// The remote ref a commit can be fetched from, from the remote's own listing.
#[rustler::nif(schedule = "DirtyIo")]
fn git_confirm_pushed(
    path: String,
    remote: String,
    listed: bool,
    listing: String,
    sha: String,
) -> Result<String, NifError> {
    let refs = git::remote::refs_from_ls_remote(&remote, listed, &listing)?;
    let repo = git::open(Path::new(&path))?;
    git::remote::fetchable(&repo, &refs, &sha)
        .ok_or_else(|| git::remote::not_on_remote(&sha, &remote, "HEAD").into())
}
