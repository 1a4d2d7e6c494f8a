//! What the remote has: `git ls-remote` with the user's own git (so ssh-agent, credential
//! helpers and `insteadOf` rules apply exactly as for their `git fetch`), and the answers a
//! run needs before it creates anything — which commit a ref names, and whether a commit can
//! be fetched at all.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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

/// Lists the remote's refs. `remote` is a remote name (preferred: it carries the user's
/// URL, credentials and rewrite rules) or a URL. Never prompts; gives up after `timeout`.
pub fn ls_remote(repo_dir: &Path, remote: &str, timeout: Duration) -> Result<Vec<RemoteRef>> {
    if remote.starts_with('-') {
        return Err(Error::InvalidOption {
            key: "remote".into(),
            message: format!("{remote:?} is not a remote name or URL"),
        });
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(repo_dir)
        .args(["ls-remote", "--quiet", "--", remote])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GCM_INTERACTIVE", "never")
        .env("GIT_ASKPASS", "")
        .env("SSH_ASKPASS", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Git(format!("cannot run git ls-remote: {e}")))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let err_reader = std::thread::spawn(move || {
            let _ = stderr.read_to_end(&mut err);
            err
        });
        let _ = stdout.read_to_end(&mut out);
        let err = err_reader.join().unwrap_or_default();
        let status = child.wait();
        let _ = tx.send((status, out, err));
    });
    let (status, out, err) = match rx.recv_timeout(timeout) {
        Ok(done) => done,
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return Err(Error::cluster(
                "remote_unreachable",
                format!(
                    "git ls-remote {remote} did not answer within {}s: check the network and your credentials (git ls-remote {remote})",
                    timeout.as_secs()
                ),
            ));
        }
    };
    let ok = status.map(|s| s.success()).unwrap_or(false);
    if !ok {
        let why = String::from_utf8_lossy(&err);
        let why = why
            .lines()
            .map(|l| super::url::strip_credentials(l.trim()).0)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::cluster(
            "remote_unreachable",
            format!("git ls-remote {remote} failed: {why}"),
        ));
    }
    Ok(parse_ls_remote(&String::from_utf8_lossy(&out)))
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

/// How long a remote may take to list its refs.
pub const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Resolves `want` against `remote` of the repository at `repo_dir` (see [`resolve`]).
pub fn resolve_ref(repo_dir: &Path, remote: &str, want: &str) -> Result<Resolved> {
    let repo = super::open(repo_dir)?;
    let refs = ls_remote(repo_dir, remote, LS_REMOTE_TIMEOUT)?;
    resolve(&repo, &refs, remote, want)
}

/// The remote ref `sha` can be fetched from, asking the remote itself (for when the
/// remote-tracking refs cannot tell); a `not_pushed` error when there is none.
pub fn confirm_pushed(repo_dir: &Path, remote: &str, sha: &str) -> Result<String> {
    let repo = super::open(repo_dir)?;
    let refs = ls_remote(repo_dir, remote, LS_REMOTE_TIMEOUT)?;
    fetchable(&repo, &refs, sha).ok_or_else(|| not_on_remote(sha, remote, "HEAD"))
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
