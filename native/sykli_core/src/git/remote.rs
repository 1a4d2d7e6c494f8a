//! What the remote has, from `git ls-remote` run with the user's own git (so ssh-agent,
//! credential helpers and `insteadOf` rules apply exactly as for their `git fetch`), and the
//! answers a run needs before it creates anything: which commit a ref names, and whether a
//! commit can be fetched at all.

use git2::{Oid, Repository};

use crate::error::{Error, Result};

/// One advertised ref: `refs/heads/main`, `refs/tags/v1^{}` (a peeled tag), `HEAD`, …
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    pub name: String,
    pub sha: String,
}

/// The commit a `--git-ref` names, and the branch to fall back on when the server refuses
/// fetching by SHA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub sha: String,
    /// The full ref name it came from (`refs/tags/v1`), or `None` for a SHA.
    pub ref_name: Option<String>,
    pub branch: Option<String>,
}

/// The remote's refs from what `git ls-remote <remote>` printed (stdout and stderr
/// together), or, when it failed, an error with git's explanation minus any credentials.
///
/// The caller runs git: inside the BEAM, SIGCHLD is ignored, so a child's exit status can
/// only be collected through an Erlang port, not by waiting on it here.
pub fn refs_from_ls_remote(remote: &str, succeeded: bool, output: &str) -> Result<Vec<RemoteRef>> {
    if succeeded {
        return Ok(parse_ls_remote(output));
    }
    let why = output
        .lines()
        .filter(|l| !l.contains('\t'))
        .map(|l| super::url::strip_credentials(l.trim()).0)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let why = if why.is_empty() {
        "no explanation".to_string()
    } else {
        why
    };
    Err(Error::cluster(
        "remote_unreachable",
        format!("git ls-remote {remote} failed: {why}"),
    ))
}

fn parse_ls_remote(text: &str) -> Vec<RemoteRef> {
    text.lines()
        .filter_map(|line| {
            let (sha, name) = line.split_once('\t')?;
            is_full_sha(sha).then(|| RemoteRef {
                name: name.to_string(),
                sha: sha.to_string(),
            })
        })
        .collect()
}

fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolves `want` (a branch, a tag, a full ref name, or a SHA) the way `git rev-parse`
/// orders them: the exact ref, then `refs/tags/`, then `refs/heads/`; a SHA (or a prefix the
/// local repository knows) must be fetchable from the remote.
pub fn resolve(
    repo: &Repository,
    refs: &[RemoteRef],
    remote: &str,
    want: &str,
) -> Result<Resolved> {
    if want.is_empty()
        || want.starts_with('-')
        || want.contains("..")
        || want.contains(char::is_whitespace)
    {
        return Err(Error::InvalidOption {
            key: "git-ref".into(),
            message: format!("{want:?} is not a branch, tag or commit"),
        });
    }
    let candidates = [
        want.to_string(),
        format!("refs/{want}"),
        format!("refs/tags/{want}"),
        format!("refs/heads/{want}"),
    ];
    for name in candidates.iter().filter(|n| n.starts_with("refs/")) {
        let peeled = format!("{name}^{{}}");
        let hit = refs
            .iter()
            .find(|r| r.name == peeled)
            .or_else(|| refs.iter().find(|r| &r.name == name));
        if let Some(r) = hit {
            return Ok(Resolved {
                sha: r.sha.clone(),
                ref_name: Some(name.clone()),
                branch: name.strip_prefix("refs/heads/").map(str::to_string),
            });
        }
    }
    let looks_like_sha = want.len() >= 4 && want.bytes().all(|b| b.is_ascii_hexdigit());
    if looks_like_sha {
        let sha = if is_full_sha(want) {
            Some(want.to_ascii_lowercase())
        } else {
            repo.revparse_single(want)
                .ok()
                .and_then(|o| o.peel_to_commit().ok())
                .map(|c| c.id().to_string())
        };
        if let Some(sha) = sha {
            return match fetchable(repo, refs, &sha) {
                Some(tip) => Ok(Resolved {
                    sha,
                    ref_name: None,
                    branch: tip.strip_prefix("refs/heads/").map(str::to_string),
                }),
                None => Err(not_on_remote(&sha, remote, "--git-ref")),
            };
        }
    }
    let mut near: Vec<&str> = refs
        .iter()
        .filter(|r| !r.name.ends_with("^{}") && r.name.contains(want))
        .map(|r| r.name.as_str())
        .take(5)
        .collect();
    near.sort();
    let hint = if near.is_empty() {
        format!("git ls-remote {remote} lists what it has")
    } else {
        format!("did you mean {}?", near.join(", "))
    };
    Err(Error::cluster(
        "unknown_ref",
        format!("{want:?} is no branch, tag or commit of remote {remote} ({hint})"),
    ))
}

/// The name of a remote ref from which `sha` can be fetched: one that points at it, or whose
/// commit (known locally) has it as an ancestor.
pub fn fetchable(repo: &Repository, refs: &[RemoteRef], sha: &str) -> Option<String> {
    // Branches first (what a clone's fallback can deepen), then tags, then the rest.
    let mut ordered: Vec<&RemoteRef> = refs.iter().collect();
    ordered.sort_by_key(|r| {
        if r.name.starts_with("refs/heads/") {
            0
        } else if r.name.starts_with("refs/tags/") {
            1
        } else {
            2
        }
    });
    let name = |r: &RemoteRef| r.name.trim_end_matches("^{}").to_string();
    if let Some(r) = ordered.iter().find(|r| r.sha.eq_ignore_ascii_case(sha)) {
        return Some(name(r));
    }
    let target = Oid::from_str(sha).ok()?;
    ordered.into_iter().find_map(|r| {
        let tip = Oid::from_str(&r.sha).ok()?;
        repo.graph_descendant_of(tip, target)
            .ok()
            .filter(|yes| *yes)
            .map(|_| name(r))
    })
}

/// The error for a commit the cluster could not fetch.
pub fn not_on_remote(sha: &str, remote: &str, what: &str) -> Error {
    Error::cluster(
        "not_pushed",
        format!(
            "commit {sha} ({what}) is not on remote {remote}: no branch or tag there contains it, so a cluster cannot fetch it"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ls_remote_output_and_skips_noise() {
        let text = "0123456789abcdef0123456789abcdef01234567\tHEAD\n\
                    0123456789abcdef0123456789abcdef01234567\trefs/heads/main\n\
                    warning: something\n\
                    zz23456789abcdef0123456789abcdef01234567\trefs/heads/bad\n";
        let refs = parse_ls_remote(text);
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[1].name, "refs/heads/main");
    }
}
