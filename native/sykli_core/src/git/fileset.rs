//! The files a working-tree upload sends: what git would see — tracked files as they are on
//! disk (uncommitted changes included, deleted ones left out) plus untracked files that are
//! not ignored — minus configured excludes. Symlinks are kept when they stay inside the
//! tree and refused when they do not; submodules are not part of it.

use std::path::{Component, Path};

use git2::{Pathspec, PathspecFlags, Status, StatusOptions, StatusShow};

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
///
/// Two walks of the tree make it up, run side by side: git's status (libgit2, for the
/// untracked files; its own repository handle on another thread) and the `lstat` of every
/// tracked file here (a directory's files through its descriptor, on a few threads).
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

    let mut tracked: Vec<String> = Vec::new();
    let index = repo.index()?;
    for entry in index.iter() {
        // Stage 0 only (a conflicted path is taken once), no gitlinks (submodules).
        let stage = (entry.flags >> 12) & 0x3;
        if stage != 0 || entry.mode == 0o160000 {
            continue;
        }
        tracked.push(utf8(&entry.path)?);
    }
    drop(index);
    drop(repo);
    tracked.retain(|p| !excluded(p));
    if !tracked.is_sorted() {
        tracked.sort();
    }

    let (tracked, untracked) = std::thread::scope(|s| {
        let untracked = s.spawn(|| untracked_files(&workdir));
        let tracked = stat_all(&workdir, &tracked);
        let untracked = untracked
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        (tracked, untracked)
    });
    let mut untracked = untracked?;
    untracked.retain(|p| !excluded(p));
    untracked.sort();
    let untracked = stat_all(&workdir, &untracked)?;
    let tracked = tracked?;

    // Both sorted: merge them (a path is in one or the other, or once in both).
    let mut files = Vec::with_capacity(tracked.len() + untracked.len());
    let mut u = untracked.into_iter().peekable();
    for t in tracked {
        while let Some(x) = u.next_if(|x| x.path < t.path) {
            files.push(x);
        }
        if u.peek().is_some_and(|x| x.path == t.path) {
            u.next();
        }
        files.push(t);
    }
    files.extend(u);
    Ok(files)
}

/// The paths git's status calls new in the working tree (untracked, not ignored).
fn untracked_files(workdir: &Path) -> Result<Vec<String>> {
    let repo = super::open(workdir)?;
    let mut opts = StatusOptions::new();
    // The working tree against the index only: HEAD's tree does not matter here.
    opts.show(StatusShow::Workdir)
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .exclude_submodules(true);
    let mut paths = Vec::new();
    for s in repo.statuses(Some(&mut opts))?.iter() {
        if s.status().contains(Status::WT_NEW) {
            paths.push(utf8(s.path_bytes())?);
        }
    }
    Ok(paths)
}

/// How many files one thread of `stat_all` takes at a time (all from one directory).
const STAT_UNIT: usize = 512;

/// The `FileInfo` of each of `paths` (sorted) that exists and has content to send, in
/// order: each run of a directory's files is `fstatat`-ed through the directory's
/// descriptor (no path walk per file), the runs shared among a few threads. Errors are the
/// first in path order.
fn stat_all(workdir: &Path, paths: &[String]) -> Result<Vec<FileInfo>> {
    let split = |p: &String| match p.rsplit_once('/') {
        Some((dir, _)) => dir.len(),
        None => 0,
    };
    let units: Vec<&[String]> = paths
        .chunk_by(|a, b| a[..split(a)] == b[..split(b)])
        .flat_map(|run| run.chunks(STAT_UNIT))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(units.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(unit) = units.get(i) else { break };
            done.push((i, stat_dir_run(workdir, unit)));
        }
        done
    };
    let mut results: Vec<(usize, Result<Vec<FileInfo>>)> = if threads == 1 {
        work()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    };
    results.sort_unstable_by_key(|(i, _)| *i);
    let mut files = Vec::with_capacity(paths.len());
    for (_, r) in results {
        files.extend(r?);
    }
    Ok(files)
}

/// The files of one directory's run (see `stat_all`). The directory is opened as a path
/// (symlinks followed, as `lstat` of the whole path would); a missing directory means its
/// files were deleted.
fn stat_dir_run(workdir: &Path, paths: &[String]) -> Result<Vec<FileInfo>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let dir_name = paths[0].rsplit_once('/').map_or("", |(dir, _)| dir);
    let dir_path = workdir.join(dir_name);
    let io_err = |path: &str, e: std::io::Error| Error::Io {
        path: workdir.join(path),
        source: e,
    };
    let c = CString::new(dir_path.as_os_str().as_bytes())
        .map_err(|_| io_err(&paths[0], std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: a NUL-terminated path; the descriptor is owned (closed) below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(Vec::new());
        }
        return Err(io_err(&paths[0], e));
    }
    let dir = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let dir_fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .rsplit_once('/')
            .map_or(path.as_str(), |(_, name)| name);
        let cname = CString::new(name)
            .map_err(|_| io_err(path, std::io::ErrorKind::InvalidInput.into()))?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid directory descriptor, a NUL-terminated name, a stat buffer we own.
        let rc =
            unsafe { libc::fstatat(dir_fd, cname.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // Deleted in the working tree: not part of what is uploaded.
            if e.kind() == std::io::ErrorKind::NotFound {
                continue;
            }
            return Err(io_err(path, e));
        }
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                let full = workdir.join(path);
                let target = std::fs::read_link(&full).map_err(|e| Error::Io {
                    path: full.clone(),
                    source: e,
                })?;
                let target = target.to_string_lossy().into_owned();
                if !stays_inside(path, &target) {
                    return Err(Error::InvalidOption {
                        key: "source".into(),
                        message: format!(
                            "the symlink {path} points outside the repository ({target}): a cluster could not follow it; remove it or exclude it (source_exclude)"
                        ),
                    });
                }
                FileKind::Symlink { target }
            }
            libc::S_IFREG => FileKind::File {
                size: st.st_size as u64,
                executable: st.st_mode & 0o111 != 0,
                mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
                ino: st.st_ino,
            },
            // A directory where the index has a file (a type change), a socket, a FIFO: no
            // content to send.
            _ => continue,
        };
        files.push(FileInfo {
            path: path.clone(),
            kind,
        });
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
