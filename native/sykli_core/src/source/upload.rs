//! The laptop side of the PVC strategy: the working tree's manifest (what git sees, see
//! `git::fileset`), hashing only the files whose size, mtime or inode changed since the
//! last upload (a stat cache in the git directory, as git's index does it).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct StatCache {
    written_ns: i128,
    /// path → (size, mtime_ns, ino, sha256)
    files: BTreeMap<String, (u64, i128, u64, String)>,
}

/// The manifest of the working tree containing `path`, minus `excludes` (git pathspecs).
pub fn local_tree(path: &Path, excludes: &[String]) -> Result<LocalTree> {
    let repo = crate::git::open(path)?;
    let root = repo
        .workdir()
        .ok_or_else(|| Error::Git("a bare repository has no working tree to upload".into()))?
        .to_path_buf();
    let cache_file = repo.path().join("sykli").join("upload-stat-cache.json");
    let old: StatCache = std::fs::read(&cache_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);

    let mut manifest = Manifest::new();
    let mut cache = StatCache {
        written_ns: now_ns,
        files: BTreeMap::new(),
    };
    let mut hashed = 0;
    for f in fileset::working_tree_files(&root, excludes)? {
        let kind = match f.kind {
            FileKind::Symlink { target } => EntryKind::Symlink { target },
            FileKind::File {
                size,
                executable,
                mtime_ns,
                ino,
            } => {
                let cached = old.files.get(&f.path).filter(|(s, m, i, _)| {
                    *s == size && *m == mtime_ns && *i == ino && mtime_ns + RACY_NS < old.written_ns
                });
                let sha256 = match cached {
                    Some((_, _, _, h)) => h.clone(),
                    None => {
                        hashed += 1;
                        hash_file(&root.join(&f.path))?
                    }
                };
                cache
                    .files
                    .insert(f.path.clone(), (size, mtime_ns, ino, sha256.clone()));
                EntryKind::File {
                    size,
                    executable,
                    sha256,
                }
            }
        };
        manifest.insert(Entry { path: f.path, kind });
    }
    manifest.validate().map_err(|e| Error::InvalidOption {
        key: "source".into(),
        message: format!("the working tree cannot be uploaded: {e}"),
    })?;
    save_cache(&cache_file, &cache);
    let tree = manifest.tree_hash();
    Ok(LocalTree {
        root,
        manifest,
        tree,
        hashed,
    })
}

/// The tree of a directory holding only `sykli.bundle` (`source_sync: :git`).
pub fn bundle_tree(dir: &Path) -> Result<LocalTree> {
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

fn hash_file(path: &Path) -> Result<String> {
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

// Best effort: a cache that cannot be written only costs hashing next time.
fn save_cache(file: &Path, cache: &StatCache) {
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(".upload-stat-cache.{}", std::process::id()));
    if let Ok(bytes) = serde_json::to_vec(cache) {
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, file);
        }
    }
}
