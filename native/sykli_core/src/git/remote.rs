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

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub(crate) fn is_full_sha(s: &str) -> bool {
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
    let near = near_misses(refs, want);
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

/// How many near misses an unknown ref's error names.
const NEAR_MISSES: usize = 3;

/// The remote's branches and tags (as one types them: `main`, `v1.0.0`; other refs by their
/// full name) closest to `want`, closest first: within a few edits (a third of its length,
/// at least 2) or containing it. At equal distance, a name that extends `want` comes first
/// (`v1.0` → `v1.0.0` before `v1`), then one it extends, then the rest by name.
pub fn near_misses(refs: &[RemoteRef], want: &str) -> Vec<String> {
    let want_l = want.to_lowercase();
    let limit = (want.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, u8, String)> = Vec::new();
    for r in refs
        .iter()
        .filter(|r| !r.name.ends_with("^{}") && r.name != "HEAD")
    {
        let short = r
            .name
            .strip_prefix("refs/heads/")
            .or_else(|| r.name.strip_prefix("refs/tags/"))
            .unwrap_or(&r.name);
        if scored.iter().any(|(_, _, n)| n == short) {
            continue;
        }
        let short_l = short.to_lowercase();
        let distance = edit_distance(&want_l, &short_l);
        let contains = want_l.chars().count() >= 3 && short_l.contains(&want_l);
        if distance > limit && !contains {
            continue;
        }
        let kind = if short_l.starts_with(&want_l) {
            0
        } else if want_l.starts_with(&short_l) {
            1
        } else {
            2
        };
        scored.push((distance, kind, short.to_string()));
    }
    scored.sort();
    scored
        .into_iter()
        .take(NEAR_MISSES)
        .map(|(_, _, n)| n)
        .collect()
}

/// Edits (insertions, deletions, substitutions, swaps of neighbours) from `a` to `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the optimal-string-alignment table.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
        }
        before = std::mem::replace(&mut prev, std::mem::take(&mut cur));
        cur = vec![0; b.len() + 1];
    }
    prev[b.len()]
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

    fn refs(names: &[&str]) -> Vec<RemoteRef> {
        names
            .iter()
            .map(|n| RemoteRef {
                name: n.to_string(),
                sha: "0".repeat(40),
            })
            .collect()
    }

    #[test]
    fn near_misses_are_the_closest_names_as_one_types_them() {
        let remote = refs(&[
            "HEAD",
            "refs/heads/main",
            "refs/heads/maint",
            "refs/heads/feature",
            "refs/heads/release-2",
            "refs/tags/v1",
            "refs/tags/v1.0.0",
            "refs/tags/v1.0.0^{}",
            "refs/tags/v2.0.0",
            "refs/pull/7/head",
        ]);
        let near = |want: &str| near_misses(&remote, want);
        assert_eq!(near("mainn"), ["main", "maint"]);
        assert_eq!(near("v1.0"), ["v1.0.0", "v1"]);
        assert_eq!(near("featur"), ["feature"]);
        assert_eq!(near("Feature"), ["feature"]);
        assert_eq!(near("faeture"), ["feature"], "a swap is one edit");
        assert_eq!(near("release"), ["release-2"]);
        assert_eq!(near("pull/7"), ["refs/pull/7/head"]);
        assert!(near("zzzzzz").is_empty());
        let many = refs(&[
            "refs/heads/a1",
            "refs/heads/a2",
            "refs/heads/a3",
            "refs/heads/a4",
        ]);
        assert_eq!(near_misses(&many, "a"), ["a1", "a2", "a3"], "a few at most");
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_substitutions_and_swaps() {
        for (a, b, d) in [
            ("", "", 0),
            ("main", "main", 0),
            ("mainn", "main", 1),
            ("mian", "main", 1),
            ("v1.0", "v1.0.0", 2),
            ("", "abc", 3),
            ("kitten", "sitting", 3),
        ] {
            assert_eq!(edit_distance(a, b), d, "{a} → {b}");
            assert_eq!(edit_distance(b, a), d, "{b} → {a}");
        }
    }

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
