//! The laptop side of the PVC strategy: the working tree's manifest (what git sees, see
//! `git::fileset`), hashing only the files whose size, mtime or inode changed since the
//! last upload (a stat cache in the git directory, as git's index does it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sykli_sync::{Entry, EntryKind, Manifest};

use crate::error::{Error, Result};
use crate::git::fileset::{self, FileKind};

/// Files changed this close to the cache's own write time are hashed again: their mtime
/// cannot tell a later change within the same tick ("racy" entries).
const RACY_NS: i128 = 2_000_000_000;

#[derive(Debug, Clone)]
pub struct LocalTree {
    pub root: PathBuf,
    pub manifest: Manifest,
    pub tree: String,
    /// How many files had to be hashed (the rest came from the stat cache).
    pub hashed: usize,
}

/// The stat cache, a file in the git directory: a first line
/// `sykli upload stat cache v2 <written_ns>`, then one record per file, in path order:
/// `<sha256> <size> <mtime_ns> <ino> <path>` ended by a NUL (paths never hold one, and
/// may hold anything else). Read and written once per sync, so made to be cheap to both.
const CACHE_NAME: &str = "upload-stat-cache";
const CACHE_MAGIC: &str = "sykli upload stat cache v2 ";

struct CachedFile<'a> {
    path: &'a str,
    size: u64,
    mtime_ns: i128,
    ino: u64,
    sha256: &'a str,
}

/// The records of a cache file, in path order; empty when it is missing or unreadable
/// (that only costs hashing). Returns the time it was written too.
fn parse_cache(text: &str) -> (i128, Vec<CachedFile<'_>>) {
    let parsed = (|| {
        let (first, body) = text.split_once('\n')?;
        let written_ns: i128 = first.strip_prefix(CACHE_MAGIC)?.parse().ok()?;
        // Written whole then renamed, but a torn file (or a stranger's) is not trusted.
        if !body.is_empty() && !body.ends_with('\0') {
            return None;
        }
        let mut files = Vec::new();
        for record in body.split_terminator('\0') {
            let mut f = record.splitn(5, ' ');
            files.push(CachedFile {
                sha256: f.next()?,
                size: f.next()?.parse().ok()?,
                mtime_ns: f.next()?.parse().ok()?,
                ino: f.next()?.parse().ok()?,
                path: f.next()?,
            });
        }
        if !files.is_sorted_by(|a, b| a.path < b.path) {
            return None;
        }
        Some((written_ns, files))
    })();
    parsed.unwrap_or_default()
}

/// The manifest of the working tree containing `path`, minus `excludes` (git pathspecs).
///
/// Reading the stat cache runs beside git's walk of the working tree, and writing the new
/// one beside checking the manifest and hashing the tree: a re-sync's local cost is mostly
/// the walk.
pub fn local_tree(path: &Path, excludes: &[String]) -> Result<LocalTree> {
    let repo = crate::git::open(path)?;
    let root = repo
        .workdir()
        .ok_or_else(|| Error::Git("a bare repository has no working tree to upload".into()))?
        .to_path_buf();
    let sykli_dir = repo.path().join("sykli");
    drop(repo);
    let cache_file = sykli_dir.join(CACHE_NAME);
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);

    let (old_text, files) = std::thread::scope(|s| {
        let old = s.spawn(|| {
            std::fs::read(&cache_file)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
        });
        let files = fileset::working_tree_files(&root, excludes);
        let old = old.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (old.unwrap_or_default(), files)
    });
    let files = files?;
    let (old_written_ns, old) = parse_cache(&old_text);

    let mut entries = Vec::with_capacity(files.len());
    let mut cache = String::with_capacity(64 + files.len() * 120);
    let _ = writeln!(cache, "{CACHE_MAGIC}{now_ns}");
    let mut hashed = 0;
    // Both in path order: a merge, no lookups.
    let mut old = old.into_iter().peekable();
    for f in files {
        let kind = match f.kind {
            FileKind::Symlink { target } => EntryKind::Symlink { target },
            FileKind::File {
                size,
                executable,
                mtime_ns,
                ino,
            } => {
                while old.next_if(|c| c.path < f.path.as_str()).is_some() {}
                let cached = old.next_if(|c| c.path == f.path).filter(|c| {
                    c.size == size
                        && c.mtime_ns == mtime_ns
                        && c.ino == ino
                        && mtime_ns + RACY_NS < old_written_ns
                });
                let sha256 = match cached {
                    Some(c) => c.sha256.to_string(),
                    None => {
                        hashed += 1;
                        hash_file(&root.join(&f.path))?
                    }
                };
                let _ = write!(cache, "{sha256} {size} {mtime_ns} {ino} {}\0", f.path);
                EntryKind::File {
                    size,
                    executable,
                    sha256,
                }
            }
        };
        entries.push(Entry { path: f.path, kind });
    }
    let manifest: Manifest = entries.into_iter().collect();
    let (checked, tree) = std::thread::scope(|s| {
        // Best effort: a cache that cannot be written only costs hashing next time.
        s.spawn(|| save_cache(&sykli_dir, cache.as_bytes()));
        let tree = s.spawn(|| manifest.tree_hash());
        let checked = manifest.validate();
        (
            checked,
            tree.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
        )
    });
    checked.map_err(|e| Error::InvalidOption {
        key: "source".into(),
        message: format!("the working tree cannot be uploaded: {e}"),
    })?;
    Ok(LocalTree {
        root,
        manifest,
        tree,
        hashed,
    })
}

/// The tree of a directory holding only `sykli.bundle` (`source_sync: :git`). The
/// directory is made fresh for each upload (private, with a random name: `bundle_dir` of
/// `SykliK8s.Target`), so one that is not this user's own private directory, or a bundle
/// that is not a regular file in it, is refused: what a shared /tmp lets others plant is
/// never uploaded.
pub fn bundle_tree(dir: &Path) -> Result<LocalTree> {
    check_private(dir)?;
    let manifest = Manifest::from_paths(dir, &["sykli.bundle".to_string()]).map_err(|e| {
        Error::InvalidOption {
            key: "source_sync".into(),
            message: format!("the git bundle cannot be uploaded: {e}"),
        }
    })?;
    let tree = manifest.tree_hash();
    Ok(LocalTree {
        root: dir.to_path_buf(),
        hashed: manifest.len(),
        manifest,
        tree,
    })
}

/// `dir` is a directory (not a link to one) of this user, closed to everyone else, and its
/// `sykli.bundle` a regular file.
fn check_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| {
        Error::InvalidOption {
        key: "source_sync".into(),
        message: format!(
            "the git bundle's directory {} {why}: it must be the private directory made for this upload",
            dir.display()
        ),
    }
    };
    let io = |path: &Path, e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io(dir, e))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_dir() {
        return Err(refuse("is not a directory (a symlink?)".into()));
    }
    if meta.uid() != me {
        return Err(refuse(format!("belongs to uid {}", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "is open to others (mode {:o})",
            meta.mode() & 0o777
        )));
    }
    let bundle = dir.join("sykli.bundle");
    let meta = std::fs::symlink_metadata(&bundle).map_err(|e| io(&bundle, e))?;
    if !meta.file_type().is_file() || meta.uid() != me {
        return Err(refuse(
            "holds a sykli.bundle that is not a regular file of this user".into(),
        ));
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<String> {
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    Ok(sykli_sync::sha256_of(f).map_err(io)?.1)
}

fn save_cache(dir: &Path, bytes: &[u8]) {
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Unique per call: two uploads in one process (the NIF) may write at the same time.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{CACHE_NAME}.{}.{call}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(CACHE_NAME));
    }
    // The JSON cache of earlier versions.
    let _ = std::fs::remove_file(dir.join("upload-stat-cache.json"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir_with_bundle(mode: u32) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("sykli.bundle"), "# v2 git bundle\n").unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        tmp
    }

    #[test]
    fn a_bundle_is_uploaded_only_from_a_private_directory() {
        let private = dir_with_bundle(0o700);
        assert_eq!(bundle_tree(private.path()).unwrap().manifest.len(), 1);

        let shared = dir_with_bundle(0o755);
        let err = bundle_tree(shared.path()).unwrap_err().to_string();
        assert!(err.contains("open to others (mode 755)"), "{err}");

        // A link to a private directory, as someone could plant in /tmp.
        let parent = tempfile::tempdir().unwrap();
        let link = parent.path().join("sykli-bundle");
        std::os::unix::fs::symlink(private.path(), &link).unwrap();
        let err = bundle_tree(&link).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");

        // The bundle itself a link (to a file of the user's, say).
        let linked = tempfile::tempdir().unwrap();
        std::fs::set_permissions(linked.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(
            private.path().join("sykli.bundle"),
            linked.path().join("sykli.bundle"),
        )
        .unwrap();
        let err = bundle_tree(linked.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
