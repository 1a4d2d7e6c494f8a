//! The receiver's store on the PVC:
//!
//! ```text
//! <root>/trees/<tree>/            published trees, never modified after the rename
//! <root>/manifests/<tree>.json    their manifests (written before the tree is published)
//! <root>/staging/                 applies in progress, one unique directory each
//! <root>/latest                   the tree last applied ("<hash>\n", replaced atomically)
//! ```

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::SyncHeader;
use crate::error::{Error, Result};
use crate::extract::{extract_tar, Limits};
use crate::fs::{self, Dir};
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::path::{check_path, check_tree_hash};

/// What [`Store::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub tree: String,
    /// The tree was already published (before this apply, or by a concurrent one that won
    /// the race): the archive was drained, or its staged copy discarded.
    pub existed: bool,
    /// Files (and symlinks) extracted from the archive.
    pub files_written: u64,
    /// Bytes read from the input (compressed).
    pub bytes_read: u64,
}

/// What [`Store::checkout`] copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckoutReport {
    pub tree: String,
    pub files: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// A store rooted at a directory. Opening creates nothing (a Job may mount it read-only);
/// `apply` creates the layout when needed.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Staging directories older than this are left over by an apply that was killed.
const STALE_STAGE: Duration = Duration::from_secs(24 * 3600);

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a published tree (whether or not it exists).
    pub fn tree_dir(&self, tree: &str) -> Result<PathBuf> {
        check_tree_hash(tree)?;
        Ok(self.root.join("trees").join(tree))
    }

    fn manifest_path(&self, tree: &str) -> PathBuf {
        self.root.join("manifests").join(format!("{tree}.json"))
    }

    /// Whether `tree` is published: its directory and its manifest exist.
    pub fn has_tree(&self, tree: &str) -> Result<bool> {
        let dir = self.tree_dir(tree)?;
        let is = |p: &Path, want_dir: bool| match std::fs::symlink_metadata(p) {
            Ok(m) => Ok(if want_dir { m.is_dir() } else { m.is_file() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io_path(p, e)),
        };
        Ok(is(&dir, true)? && is(&self.manifest_path(tree), false)?)
    }

    /// The manifest of a published tree, checked against its hash; `None` when absent.
    pub fn manifest(&self, tree: &str) -> Result<Option<Manifest>> {
        if !self.has_tree(tree)? {
            return Ok(None);
        }
        let path = self.manifest_path(tree);
        let json = std::fs::read_to_string(&path).map_err(|e| Error::io_path(&path, e))?;
        let m = Manifest::from_json(&json)
            .map_err(|e| Error::InvalidManifest(format!("{}: {e}", path.display())))?;
        if m.tree_hash() != tree {
            return Err(Error::InvalidManifest(format!(
                "{} does not hash to {tree}",
                path.display()
            )));
        }
        Ok(Some(m))
    }

    /// The tree last applied, if it is still published. Only a hint (the base for the
    /// next delta): an unreadable or dangling pointer is `None`, so the next sync is a full
    /// upload rather than an error.
    pub fn latest(&self) -> Result<Option<String>> {
        let path = self.root.join("latest");
        let tree = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io_path(&path, e)),
        };
        if check_tree_hash(&tree).is_err() || !self.has_tree(&tree)? {
            return Ok(None);
        }
        Ok(Some(tree))
    }

    /// Applies a sync archive (see [`crate::write_archive`]) that must produce
    /// `expected_tree`, with [`Limits::default`].
    pub fn apply(&self, expected_tree: &str, archive: impl Read) -> Result<ApplyReport> {
        self.apply_with_limits(expected_tree, archive, Limits::default())
    }

    /// Applies a sync archive. Exactly one gzip member is read: the input's end is never
    /// waited for. When `expected_tree` is published already, the archive is read through
    /// and nothing is written (but `latest` moves to it). Otherwise a unique stage
    /// directory gets the base tree but for the deleted paths (hard links to its files where
    /// possible: published trees are never written in place, see `Files::Link`), and the
    /// archive's entries through the hardened extractor. The manifest
    /// that results (base − deleted + extracted, only the extracted files hashed) must hash
    /// to `expected_tree`, or the stage is deleted and nothing is published. Then the
    /// manifest is written, the stage renamed to `trees/<tree>` and `latest` replaced.
    pub fn apply_with_limits(
        &self,
        expected_tree: &str,
        archive: impl Read,
        limits: Limits,
    ) -> Result<ApplyReport> {
        check_tree_hash(expected_tree)?;
        let mut input = CountingReader {
            inner: archive,
            count: 0,
        };
        if self.has_tree(expected_tree)? {
            drain_gzip(&mut input).map_err(|e| Error::io("the archive input", e))?;
            self.set_latest(expected_tree)?;
            return Ok(ApplyReport {
                tree: expected_tree.into(),
                existed: true,
                files_written: 0,
                bytes_read: input.count,
            });
        }
        for sub in ["trees", "manifests", "staging"] {
            let p = self.root.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| Error::io_path(&p, e))?;
        }
        self.remove_stale_stages();
        let stage = self.root.join("staging").join(unique_name(expected_tree));
        std::fs::create_dir(&stage).map_err(|e| Error::io_path(&stage, e))?;

        let result = self.stage(&stage, expected_tree, &mut input, &limits);
        let files_written = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&stage);
                return Err(e);
            }
        };
        let published = self.tree_dir(expected_tree)?;
        let existed = match std::fs::rename(&stage, &published) {
            Ok(()) => false,
            // A concurrent apply of the same tree won: same content, ours is discarded.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                let _ = std::fs::remove_dir_all(&stage);
                true
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&stage);
                return Err(Error::io_path(&published, e));
            }
        };
        self.set_latest(expected_tree)?;
        Ok(ApplyReport {
            tree: expected_tree.into(),
            existed,
            files_written,
            bytes_read: input.count,
        })
    }

    /// Builds the stage and writes the manifest; returns the number of entries extracted.
    fn stage(
        &self,
        stage: &Path,
        expected: &str,
        input: &mut impl Read,
        limits: &Limits,
    ) -> Result<u64> {
        let stage_dir = Dir::open(stage).map_err(|e| Error::io_path(stage, e))?;
        // The base is most likely the latest tree: its manifest is read (and checked) while
        // the archive's header is on its way (the laptop may still be asking `status`).
        let mut preload = Some(std::thread::spawn({
            let store = self.clone();
            move || {
                let latest = store.latest().ok().flatten()?;
                let m = store.manifest(&latest).ok().flatten()?;
                Some((latest, m))
            }
        }));
        let mut manifest = Manifest::new();
        let mut on_header = |bytes: Vec<u8>| -> Result<()> {
            let header: SyncHeader = serde_json::from_slice(&bytes).map_err(|e| {
                Error::InvalidArchive(format!("{}: {e}", crate::extract::HEADER_NAME))
            })?;
            if header.format != 1 {
                return Err(Error::InvalidArchive(format!(
                    "format {} is not supported (1 is)",
                    header.format
                )));
            }
            if header.tree != expected {
                return Err(Error::InvalidArchive(format!(
                    "the archive is for tree {}, not the expected {expected}",
                    header.tree
                )));
            }
            if let Some(base) = &header.base {
                let preloaded = preload.take().and_then(|p| p.join().ok().flatten());
                manifest = match preloaded {
                    Some((tree, m)) if tree == *base => m,
                    _ => self
                        .manifest(base)?
                        .ok_or_else(|| Error::UnknownTree(base.clone()))?,
                };
            }
            // Deleted paths are left out of the base's copy (never linked, then unlinked):
            // nothing of the stage is touched for them, so no symlink can be followed.
            for path in &header.deleted {
                check_path(path.as_bytes())?;
                manifest.remove(path);
            }
            if let Some(base) = &header.base {
                copy_tree(&self.tree_dir(base)?, &manifest, &stage_dir, Files::Link)?;
            }
            Ok(())
        };
        let gz = flate2::read::GzDecoder::new(input);
        let mut extracted = Vec::new();
        extract_tar(gz, &stage_dir, limits, false, Some(&mut on_header), |e| {
            extracted.push(e)
        })?;
        let files_written = extracted.len() as u64;
        for e in extracted {
            manifest.insert(e);
        }
        manifest.validate()?;
        let actual = manifest.tree_hash();
        if actual != expected {
            return Err(Error::TreeMismatch {
                expected: expected.into(),
                actual,
            });
        }
        let tmp = self.root.join("staging").join(unique_name("manifest"));
        write_then_rename(
            &tmp,
            &self.manifest_path(expected),
            manifest.to_json_with_tree(&actual).as_bytes(),
        )?;
        // One flush of the filesystem (the stage and the manifest) instead of an fsync per
        // file, before the rename publishes: a node crash must not leave a published tree
        // with truncated files or a torn manifest.
        let _ = stage_dir.sync_filesystem();
        Ok(files_written)
    }

    fn set_latest(&self, tree: &str) -> Result<()> {
        if self.latest().ok().flatten().as_deref() == Some(tree) {
            return Ok(());
        }
        let staging = self.root.join("staging");
        std::fs::create_dir_all(&staging).map_err(|e| Error::io_path(&staging, e))?;
        write_then_rename(
            &staging.join(unique_name("latest")),
            &self.root.join("latest"),
            format!("{tree}\n").as_bytes(),
        )
    }

    fn remove_stale_stages(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join("staging")) else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        for e in entries.flatten() {
            let name = e.file_name();
            let started = name
                .to_str()
                .and_then(|n| n.split('.').nth(1))
                .and_then(|t| t.parse::<u64>().ok());
            if started.is_some_and(|t| now.saturating_sub(t) > STALE_STAGE.as_secs()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Checks published `tree` where it is, for a Job that mounts it in place
    /// (`source_mount: :shared`, no copy to check on the way): the directory must hold
    /// exactly the tree's manifest (which hashes to `tree`): every file's size, SHA-256 and
    /// mode, every symlink, and nothing more. The first difference fails, naming the path.
    pub fn verify(&self, tree: &str) -> Result<CheckoutReport> {
        let manifest = self
            .manifest(tree)?
            .ok_or_else(|| Error::UnknownTree(tree.to_string()))?;
        let dir = self.tree_dir(tree)?;
        let found = Manifest::scan(&dir)?;
        if found.tree_hash() != tree {
            let d = crate::diff(&manifest, &found);
            let (path, how) = match (d.changed.first(), d.deleted.first()) {
                (Some(p), _) if manifest.contains(p) => (p.clone(), "it differs from"),
                (Some(p), _) => (p.clone(), "it is not in"),
                (None, Some(p)) => (p.clone(), "it is missing from"),
                (None, None) => (".".to_string(), "it differs from"),
            };
            return Err(Error::Tampered {
                path: format!("{}/{path}", dir.display()),
                detail: format!(
                    "{how} the published tree: the tree was modified on the claim (delete {} and sync again)",
                    dir.display()
                ),
            });
        }
        Ok(CheckoutReport::of(tree, &manifest))
    }

    /// Copies published `tree` into `dest` (created if missing; it must be empty): each
    /// Job gets its own copy, so nothing it does can reach the store. Every file is hashed
    /// while it is copied and checked against the manifest's size and SHA-256 (the manifest
    /// itself hashes to `tree`): a file changed on the claim fails the checkout, naming it.
    pub fn checkout(&self, tree: &str, dest: &Path) -> Result<CheckoutReport> {
        let manifest = self
            .manifest(tree)?
            .ok_or_else(|| Error::UnknownTree(tree.to_string()))?;
        std::fs::create_dir_all(dest).map_err(|e| Error::io_path(dest, e))?;
        let mut listing = std::fs::read_dir(dest).map_err(|e| Error::io_path(dest, e))?;
        if listing.next().is_some() {
            return Err(Error::DestinationNotEmpty(dest.display().to_string()));
        }
        let dest_dir = Dir::open(dest).map_err(|e| Error::io_path(dest, e))?;
        copy_tree(&self.tree_dir(tree)?, &manifest, &dest_dir, Files::Copy)?;
        Ok(CheckoutReport::of(tree, &manifest))
    }
}

impl CheckoutReport {
    /// The counts of `tree`'s `manifest`.
    fn of(tree: &str, manifest: &Manifest) -> CheckoutReport {
        let mut report = CheckoutReport {
            tree: tree.into(),
            files: 0,
            symlinks: 0,
            bytes: 0,
        };
        for e in manifest.entries() {
            match e.kind {
                EntryKind::File { size, .. } => {
                    report.files += 1;
                    report.bytes += size;
                }
                EntryKind::Symlink { .. } => report.symlinks += 1,
            }
        }
        report
    }
}

/// How `copy_tree` brings files over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Files {
    /// Regular copies: for a Job's own tree, which it may write to.
    Copy,
    /// Hard links where the file system allows, else copies: for a new tree staged from the
    /// previous one. Published trees are never written in place (Jobs copy them, or mount
    /// them read-only; staging replaces a changed file by unlinking it first), so sharing
    /// their inodes is safe, and a re-sync costs what changed, not the whole tree.
    Link,
}

/// Entries of one directory that `copy_tree` handles as one piece of work: its two
/// directories are opened once, then each entry costs one call (a link) or one copy.
const UNIT: usize = 256;

/// Copies the entries of `manifest` from `src` into `dest`: directories first (in a
/// depth-first walk, each made and opened from its parent's descriptor), then files (hard
/// links, or regular copies with the manifest's mode, sizes and content hashes checked)
/// and symlinks, a directory's run of entries at a time, on a few threads.
fn copy_tree(src: &Path, manifest: &Manifest, dest: &Dir, files: Files) -> Result<()> {
    let src_dir = Dir::open(src).map_err(|e| Error::io_path(src, e))?;
    let entries: Vec<(&str, &str, &Entry)> = manifest
        .entries()
        .map(|e| match e.path.rsplit_once('/') {
            Some((dir, name)) => (dir, name, e),
            None => ("", e.path.as_str(), e),
        })
        .collect();
    // In path order, a directory's entries mostly follow each other ("a/x", "a/y"; only a
    // sibling sorting between them, "a-b/…" or "a.d/…" before "a/…", splits a run).
    let units: Vec<&[(&str, &str, &Entry)]> = entries
        .chunk_by(|a, b| a.0 == b.0)
        .flat_map(|run| run.chunks(UNIT))
        .collect();
    make_dirs(dest, units.iter().map(|u| u[0].0))?;
    fs::parallel_map(&units, |unit| {
        let dir = unit[0].0;
        let damaged = |path: &str, detail: String| Error::Tampered {
            path: format!("{}/{path}", src.display()),
            detail,
        };
        let from = fs::open_dir_path(&src_dir, dir).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => damaged(dir, "it is missing from the published tree".into()),
            _ => fs::dir_error(unit[0].2.path.as_str(), e),
        })?;
        let to = fs::open_dir_path(dest, dir).map_err(|e| fs::dir_error(dir, e))?;
        // One buffer for the unit's copies (allocated when the first one needs it).
        let mut buf = Vec::new();
        for &(_, name, e) in *unit {
            match &e.kind {
                EntryKind::File {
                    size,
                    executable,
                    sha256,
                } => {
                    if files == Files::Link {
                        match to.link_from(&from, name, name) {
                            Ok(()) => continue,
                            // Another file system, or no hard links there: copy instead.
                            Err(err)
                                if matches!(
                                    err.raw_os_error(),
                                    Some(libc::EXDEV | libc::EPERM | libc::EMLINK | libc::ENOTSUP)
                                ) => {}
                            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                                return Err(damaged(
                                    &e.path,
                                    "it is missing from the published tree".into(),
                                ))
                            }
                            Err(err) => return Err(Error::io(&e.path, err)),
                        }
                    }
                    let mut input =
                        from.open_file(name)
                            .map_err(|err| match err.raw_os_error() {
                                Some(libc::ENOENT) => {
                                    damaged(&e.path, "it is missing from the published tree".into())
                                }
                                _ => Error::io(&e.path, err),
                            })?;
                    let mut output = to
                        .create_file(name, *executable)
                        .map_err(|err| Error::io(&e.path, err))?;
                    if buf.is_empty() {
                        buf = vec![0u8; COPY_BUF];
                    }
                    let (copied, actual) = copy_hashing(&mut input, &mut output, &mut buf)
                        .map_err(|err| Error::io(&e.path, err))?;
                    if copied != *size {
                        return Err(damaged(
                            &e.path,
                            format!("it has {copied} bytes, its manifest says {size}"),
                        ));
                    }
                    if actual != *sha256 {
                        return Err(damaged(
                            &e.path,
                            format!(
                                "its content hashes to {actual}, its manifest says {sha256}: the published tree was modified on the claim (delete {} and sync again)",
                                src.display()
                            ),
                        ));
                    }
                }
                EntryKind::Symlink { target } => {
                    to.symlink(target, name)
                        .map_err(|err| Error::io(&e.path, err))?;
                }
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// The copy buffer of one unit of `copy_tree`: large enough that a big file costs few
/// reads and writes, small enough for a few threads' units at once.
const COPY_BUF: usize = 128 * 1024;

/// Copies `from` into `to` through `buf`, hashing what passes; returns the byte count and
/// the lowercase hex SHA-256 (one read of each file: the copy and its check).
fn copy_hashing(
    from: &mut impl Read,
    to: &mut impl Write,
    buf: &mut [u8],
) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, fs::to_hex(&hasher.finalize())))
}

/// Makes `dirs` and their ancestors below `dest` (existing ones are fine): sorted by
/// components, so that the walk is depth-first and each directory's parent is the open
/// directory on top of a stack (one `mkdirat` and one `openat` per directory).
fn make_dirs<'a>(dest: &Dir, dirs: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut all: Vec<&str> = Vec::new();
    for d in dirs.filter(|d| !d.is_empty()) {
        if all.last() != Some(&d) {
            all.extend(crate::path::ancestors(d));
            all.push(d);
        }
    }
    all.sort_unstable_by(|a, b| a.split('/').cmp(b.split('/')));
    all.dedup();
    let mut open: Vec<(&str, Dir)> = Vec::new();
    for d in all {
        while let Some((top, _)) = open.last() {
            if d.len() > top.len() && d.starts_with(top) && d.as_bytes()[top.len()] == b'/' {
                break;
            }
            open.pop();
        }
        let parent = open.last().map_or(dest, |(_, dir)| dir);
        let name = d.rsplit_once('/').map_or(d, |(_, name)| name);
        match parent.mkdir(name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(d, e)),
        }
        let dir = parent.open_dir(name).map_err(|e| fs::dir_error(d, e))?;
        open.push((d, dir));
    }
    Ok(())
}

/// Reads one gzip member to its end (not the input to EOF: over an exec stream, stdin's
/// end may never be signalled). An empty input is fine.
fn drain_gzip(input: &mut impl Read) -> io::Result<()> {
    let mut input = io::BufReader::new(input);
    if io::BufRead::fill_buf(&mut input)?.is_empty() {
        return Ok(());
    }
    io::copy(&mut flate2::bufread::GzDecoder::new(input), &mut io::sink()).map(drop)
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{prefix}.{}.{}.{}.{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn write_then_rename(tmp: &Path, to: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(tmp, bytes).map_err(|e| Error::io_path(tmp, e))?;
    std::fs::rename(tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Error::io_path(to, e)
    })
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
