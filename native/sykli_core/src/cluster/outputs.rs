//! What a sync back may write into the user's repository: the task's declared outputs and
//! nothing else, never a `.git` path. The archive comes from a pod, so it is checked whole
//! before the first byte is written: a refusal leaves the repository as it was.

use crate::error::{Error, Result};

/// Whether a path component is, or is taken by some filesystem for, `.git`: any case;
/// with trailing dots or spaces and NTFS stream suffixes (`.git.`, `.git::$INDEX_ALLOCATION`);
/// the 8.3 short name `git~1`; and with the code points HFS+ ignores (`.g\u{200c}it`).
/// What git itself refuses in a tree (`verify_dotfile`), for the same reason.
pub fn is_dot_git(component: &str) -> bool {
    let visible: String = component
        .chars()
        .filter(|c| !hfs_ignorable(*c))
        .flat_map(char::to_lowercase)
        .collect();
    let name = visible.split(':').next().unwrap_or("");
    let name = name.trim_end_matches(['.', ' ']);
    name == ".git" || name == "git~1"
}

fn hfs_ignorable(c: char) -> bool {
    matches!(c as u32, 0x200c..=0x200f | 0x202a..=0x202e | 0x206a..=0x206f | 0xfeff)
}

/// Whether `path` (relative, '/'-separated) has a `.git` component.
pub fn has_dot_git(path: &str) -> bool {
    path.split('/').any(is_dot_git)
}

/// Checks every entry of the gzip tar `archive` (what `sykli-sync pack` sent for `outputs`)
/// before anything of it is written: each path is one of `outputs`, below one, or a
/// directory above one (`.` is everything); none has a `.git` component, and no symlink
/// points into one. The first violation is an error naming the entry and the rule. A
/// malformed archive stops the check where it breaks: the extractor refuses it there.
pub fn check_archive(archive: &[u8], outputs: &[String], job: &str) -> Result<()> {
    let refused = |path: &str, why: &str| {
        Error::cluster(
            "sync_failed",
            format!(
                "the outputs of {job}: refused {path:?}: {why}; nothing was written (the receiver \
                 sent what the task did not declare, or its pod is not sykli's)"
            ),
        )
    };
    let everything = outputs.iter().any(|o| o == ".");
    let below: Vec<String> = outputs.iter().map(|o| format!("{o}/")).collect();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let Ok(entries) = tar.entries() else {
        return Ok(());
    };
    for entry in entries {
        // A malformed archive is the extractor's to refuse, by its rule, at that entry.
        let Ok(mut entry) = entry else { break };
        let raw = entry.path_bytes();
        let path = String::from_utf8_lossy(&raw);
        let path = path.trim_end_matches('/');
        if has_dot_git(path) {
            return Err(refused(path, "a .git path is never written"));
        }
        if let Some(target) = entry.link_name_bytes() {
            if has_dot_git(&String::from_utf8_lossy(&target)) {
                return Err(refused(
                    path,
                    "a link into a .git directory is never written",
                ));
            }
        }
        let is_dir = entry.header().entry_type().is_dir();
        let declared = everything
            || outputs.iter().zip(&below).any(|(o, o_below)| {
                path == o
                    || path.starts_with(o_below.as_str())
                    || (is_dir && o.strip_prefix(path).is_some_and(|r| r.starts_with('/')))
            });
        if !declared {
            return Err(refused(
                path,
                &format!("not one of the declared outputs ({})", outputs.join(", ")),
            ));
        }
        // Entries are read one after another: skip this one's data.
        if std::io::copy(&mut entry, &mut std::io::sink()).is_err() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_dot_git_is_one() {
        for name in [
            ".git",
            ".GIT",
            ".Git",
            ".git.",
            ".git ",
            ".git. . ",
            ".git::$INDEX_ALLOCATION",
            "git~1",
            "GIT~1",
            ".g\u{200c}it",
            "\u{feff}.git",
            ".gi\u{206f}T",
        ] {
            assert!(is_dot_git(name), "{name:?}");
        }
        for name in [
            ".gitignore",
            ".github",
            "git",
            ".git2",
            "a.git",
            ".gitmodules",
            "git~2",
        ] {
            assert!(!is_dot_git(name), "{name:?}");
        }
        assert!(has_dot_git("sub/.GIT/config"));
        assert!(!has_dot_git("dist/app.git.tar"));
    }
}
