//! The files a working-tree upload sends: what git would see — tracked files as they are on
//! disk (uncommitted changes included, deleted ones left out) plus untracked files that are
//! not ignored — minus configured excludes. Symlinks are kept when they stay inside the
//! tree and refused when they do not; submodules are not part of it.

use std::path::{Component, Path};

use git2::{Pathspec, PathspecFlags, Status, StatusOptions};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    File {
        size: u64,
        executable: bool,
        /// Modification time in nanoseconds and inode, to tell when content must be re-hashed.
        mtime_ns: i128,
        ino: u64,
    },
    Symlink {
        target: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Relative to the working tree's root, `/`-separated.
    pub path: String,
    pub kind: FileKind,
}

/// The working tree's files (see the module documentation), sorted by path. `excludes` are
/// git pathspecs (`build/`, `*.log`, `:(glob)docs/**/*.pdf`).
pub fn working_tree_files(root: &Path, excludes: &[String]) -> Result<Vec<FileInfo>> {
    let repo = super::open(root)?;
    let workdir = repo
        .workdir()
        .ok_or_else(|| Error::Git("a bare repository has no working tree to upload".into()))?
        .to_path_buf();
    let exclude = if excludes.is_empty() {
        None
    } else {
        Some(
            Pathspec::new(excludes.iter()).map_err(|e| Error::InvalidOption {
                key: "source_exclude".into(),
                message: e.message().to_string(),
            })?,
        )
    };
    let excluded = |path: &str| {
        exclude
            .as_ref()
            .is_some_and(|ps| ps.matches_path(Path::new(path), PathspecFlags::DEFAULT))
    };

    let mut paths: Vec<String> = Vec::new();
    let index = repo.index()?;
    for entry in index.iter() {
        // Stage 0 only (a conflicted path is taken once), no gitlinks (submodules).
        let stage = (entry.flags >> 12) & 0x3;
        if stage != 0 || entry.mode == 0o160000 {
            continue;
        }
        paths.push(utf8(&entry.path)?);
    }
    let mut opts = StatusOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .exclude_submodules(true);
    for s in repo.statuses(Some(&mut opts))?.iter() {
        if s.status().contains(Status::WT_NEW) {
            paths.push(utf8(s.path_bytes())?);
        }
    }
    paths.sort();
    paths.dedup();

    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        if excluded(&path) {
            continue;
        }
        let full = workdir.join(&path);
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            // Deleted in the working tree: not part of what is uploaded.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::Io {
                    path: full,
                    source: e,
                })
            }
        };
        let kind = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).map_err(|e| Error::Io {
                path: full.clone(),
                source: e,
            })?;
            let target = target.to_string_lossy().into_owned();
            if !stays_inside(&path, &target) {
                return Err(Error::InvalidOption {
                    key: "source".into(),
                    message: format!(
                        "the symlink {path} points outside the repository ({target}): a cluster could not follow it; remove it or exclude it (source_exclude)"
                    ),
                });
            }
            FileKind::Symlink { target }
        } else if meta.is_file() {
            use std::os::unix::fs::MetadataExt;
            FileKind::File {
                size: meta.len(),
                executable: meta.mode() & 0o111 != 0,
                mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
                ino: meta.ino(),
            }
        } else {
            // A directory where the index has a file (a type change), a socket, a FIFO: no
            // content to send.
            continue;
        };
        files.push(FileInfo { path, kind });
    }
    Ok(files)
}

fn utf8(path: &[u8]) -> Result<String> {
    String::from_utf8(path.to_vec()).map_err(|_| Error::InvalidOption {
        key: "source".into(),
        message: format!(
            "the path {:?} is not UTF-8, which the upload cannot carry: rename it or exclude it (source_exclude)",
            String::from_utf8_lossy(path)
        ),
    })
}

/// Whether the symlink at `path` (relative to the root), pointing at `target`, resolves to
/// somewhere inside the tree, lexically.
pub fn stays_inside(path: &str, target: &str) -> bool {
    if target.is_empty() || Path::new(target).is_absolute() {
        return false;
    }
    let mut at: Vec<&std::ffi::OsStr> = Path::new(path)
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str()).collect())
        .unwrap_or_default();
    for c in Path::new(target).components() {
        match c {
            Component::Normal(n) => at.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if at.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    !at.is_empty()
}

#[cfg(test)]
mod tests {
    use super::stays_inside;

    #[test]
    fn symlinks_inside_and_out() {
        assert!(stays_inside("a/link", "b"));
        assert!(stays_inside("a/link", "../c/d"));
        assert!(stays_inside("link", "dir/file"));
        assert!(!stays_inside("link", "../outside"));
        assert!(!stays_inside("a/link", "../../x"));
        assert!(!stays_inside("a/link", "/etc/passwd"));
        assert!(!stays_inside("link", "."));
        assert!(!stays_inside("link", ""));
    }
}
