//! Writing the stream format: a gzip-compressed tar, deterministic (mtime 0, owner 0,
//! modes 0644/0755/0777), written with GNU long-name entries for long paths and targets.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

use crate::error::{Error, Result};
use crate::extract::{Report, HEADER_NAME};
use crate::fs::{self, Dir, Kind};
use crate::manifest::{Delta, EntryKind, Manifest};
use crate::path::{check_path, check_tree_hash, LinkSet};

/// The first entry of a sync archive, `.sykli-sync/header.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncHeader {
    /// Always 1.
    pub format: u32,
    /// The tree the receiver starts from (a copy of it), or none for an upload from scratch.
    pub base: Option<String>,
    /// The tree hash the receiver must end up with.
    pub tree: String,
    /// Paths of `base` to delete before extracting.
    pub deleted: Vec<String>,
}

/// Writes the archive that turns tree `base` into `target`: the header, then every path of
/// `delta.changed` read from `root` (regular files 0644/0755, symlinks). Every file is
/// re-hashed while it is written; one that no longer matches `target` (it changed during
/// the sync) is [`Error::Changed`] and the output must be discarded. Returns the number of
/// bytes written to `out`.
pub fn write_archive(
    root: &Path,
    base: Option<&str>,
    target: &Manifest,
    delta: &Delta,
    out: impl Write,
) -> Result<u64> {
    if let Some(base) = base {
        check_tree_hash(base)?;
    }
    target.validate()?;
    let dir = Dir::open(root).map_err(|e| Error::io_path(root, e))?;
    let header = SyncHeader {
        format: 1,
        base: base.map(str::to_string),
        tree: target.tree_hash(),
        deleted: delta.deleted.clone(),
    };
    let header = serde_json::to_vec(&header).expect("a header serializes");

    let mut builder = Builder::new(GzEncoder::new(
        Counting {
            inner: out,
            count: 0,
        },
        Compression::default(),
    ));
    let out_err = |e: io::Error| Error::io("the archive output", e);
    builder
        .append_data(
            &mut file_header(header.len() as u64, false),
            HEADER_NAME,
            &header[..],
        )
        .map_err(out_err)?;

    for path in &delta.changed {
        let entry = target.get(path).ok_or_else(|| {
            Error::InvalidManifest(format!(
                "the delta names {path:?}, which is not in the target manifest"
            ))
        })?;
        let changed = |detail: &str| Error::Changed {
            path: path.clone(),
            detail: detail.to_string(),
        };
        let Some((parent, name)) = fs::parent_of(&dir, path, false)? else {
            return Err(changed("it no longer exists"));
        };
        let now = parent.kind(name).map_err(|e| Error::io(path, e))?;
        match &entry.kind {
            EntryKind::File {
                size,
                executable,
                sha256,
            } => {
                match now {
                    Some(Kind::File { executable: x, .. }) if x == *executable => {}
                    Some(Kind::File { .. }) => return Err(changed("its executable bit changed")),
                    None => return Err(changed("it no longer exists")),
                    Some(_) => return Err(changed("it is no longer a regular file")),
                }
                let file = parent.open_file(name).map_err(|e| Error::io(path, e))?;
                let mut reader = Hashing {
                    inner: file.take(*size),
                    hasher: Sha256::new(),
                    count: 0,
                };
                builder
                    .append_data(&mut file_header(*size, *executable), path, &mut reader)
                    .map_err(out_err)?;
                if reader.count != *size {
                    return Err(changed(&format!(
                        "it has {} bytes, the manifest says {size}",
                        reader.count
                    )));
                }
                let mut file = reader.inner.into_inner();
                if file.read(&mut [0u8; 1]).map_err(|e| Error::io(path, e))? != 0 {
                    return Err(changed(&format!(
                        "it grew beyond the {size} bytes of the manifest"
                    )));
                }
                if fs::to_hex(&reader.hasher.finalize()) != *sha256 {
                    return Err(changed("its content differs from the manifest"));
                }
            }
            EntryKind::Symlink { target } => {
                if now != Some(Kind::Symlink) {
                    return Err(changed("it is no longer a symlink"));
                }
                let actual = parent.read_link(name).map_err(|e| Error::io(path, e))?;
                if actual != target.as_bytes() {
                    return Err(changed("its symlink target changed"));
                }
                append_symlink(&mut builder, path, target).map_err(out_err)?;
            }
        }
    }
    finish(builder)
}

/// Writes a gzip-compressed tar of `paths` below `root` (a task's declared outputs, for
/// the sync back): files, symlinks, and directories with everything below them (`.` is
/// the whole root, and a walk skips every `.git`). Paths are checked with the extractor's rules, none may be reached
/// through a symlink, and symlink targets must stay inside, each on its own and all the
/// packed ones together (a [`LinkSet`], checked once the walk is done: the output of a
/// refused `pack` is to be discarded): what `pack` writes, [`crate::extract_hardened`]
/// accepts.
pub fn pack(root: &Path, paths: &[String], out: impl Write) -> Result<Report> {
    let dir = Dir::open(root).map_err(|e| Error::io_path(root, e))?;
    let mut builder = Builder::new(GzEncoder::new(
        Counting {
            inner: out,
            count: 0,
        },
        Compression::default(),
    ));
    let mut packer = Packer {
        root: &dir,
        done: BTreeSet::new(),
        links: LinkSet::new(),
        report: Report::default(),
    };
    for path in paths {
        if path == "." {
            packer.dir_contents(&mut builder, None)?;
            continue;
        }
        check_path(path.as_bytes())?;
        let Some((parent, name)) = fs::parent_of(&dir, path, false)? else {
            return Err(Error::io(path, io::ErrorKind::NotFound.into()));
        };
        let kind = parent.kind(name).map_err(|e| Error::io(path, e))?;
        packer.one(&mut builder, &parent, name, path, kind)?;
    }
    // Links met later can change where earlier ones resolve: the whole set, once known.
    packer.links.check_all()?;
    finish(builder)?;
    Ok(packer.report)
}

struct Packer<'a> {
    root: &'a Dir,
    done: BTreeSet<String>,
    /// The symlinks packed so far.
    links: LinkSet,
    report: Report,
}

impl Packer<'_> {
    fn one<W: Write>(
        &mut self,
        b: &mut Builder<W>,
        parent: &Dir,
        name: &str,
        path: &str,
        kind: Option<Kind>,
    ) -> Result<()> {
        let out_err = |e: io::Error| Error::io("the archive output", e);
        match kind {
            None => return Err(Error::io(path, io::ErrorKind::NotFound.into())),
            Some(Kind::Other(kind)) => {
                return Err(Error::UnsupportedFile {
                    path: path.to_string(),
                    kind,
                })
            }
            Some(Kind::Dir) => {
                if self.done.insert(path.to_string()) {
                    let mut h = base_header(EntryType::Directory, 0o755);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), io::empty())
                        .map_err(out_err)?;
                    self.report.entries += 1;
                    self.report.directories += 1;
                }
                return self.dir_contents(b, Some(path));
            }
            Some(_) if !self.done.insert(path.to_string()) => return Ok(()),
            Some(Kind::File { executable, .. }) => {
                let file = parent.open_file(name).map_err(|e| Error::io(path, e))?;
                let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
                let mut reader = Hashing {
                    inner: file.take(size),
                    hasher: Sha256::new(),
                    count: 0,
                };
                b.append_data(&mut file_header(size, executable), path, &mut reader)
                    .map_err(out_err)?;
                if reader.count != size {
                    return Err(Error::Changed {
                        path: path.to_string(),
                        detail: "it shrank while it was packed".into(),
                    });
                }
                self.report.files += 1;
                self.report.bytes += size;
            }
            Some(Kind::Symlink) => {
                let target = parent.read_link(name).map_err(|e| Error::io(path, e))?;
                self.links.insert(path, &target)?;
                let target = self.links.get(path).expect("just inserted");
                append_symlink(b, path, target).map_err(out_err)?;
                self.report.symlinks += 1;
            }
        }
        self.report.entries += 1;
        Ok(())
    }

    fn dir_contents<W: Write>(&mut self, b: &mut Builder<W>, path: Option<&str>) -> Result<()> {
        let opened = match path {
            None => None,
            Some(p) => {
                let (parent, name) = fs::parent_of(self.root, p, false)?
                    .ok_or_else(|| Error::io(p, io::ErrorKind::NotFound.into()))?;
                Some(parent.open_dir(name).map_err(|e| Error::io(p, e))?)
            }
        };
        let here = opened.as_ref().unwrap_or(self.root);
        let mut names = here
            .list(".")
            .map_err(|e| Error::io(path.unwrap_or("."), e))?;
        names.sort();
        // A walk never takes a `.git` (in any spelling a filesystem folds to it): `.` is
        // everything but git's own files, which the laptop would refuse to write anyway.
        names.retain(|name| !crate::path::is_dot_git(name));
        for name in names {
            let child = match path {
                None => name.clone(),
                Some(p) => format!("{p}/{name}"),
            };
            check_path(child.as_bytes())?;
            let kind = here.kind(&name).map_err(|e| Error::io(&child, e))?;
            self.one(b, here, &name, &child, kind)?;
        }
        Ok(())
    }
}

fn finish<W: Write>(builder: Builder<GzEncoder<Counting<W>>>) -> Result<u64> {
    let out_err = |e: io::Error| Error::io("the archive output", e);
    let gz = builder.into_inner().map_err(out_err)?;
    let mut counting = gz.finish().map_err(out_err)?;
    counting.inner.flush().map_err(out_err)?;
    Ok(counting.count)
}

fn base_header(kind: EntryType, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn file_header(size: u64, executable: bool) -> Header {
    let mut h = base_header(EntryType::Regular, if executable { 0o755 } else { 0o644 });
    h.set_size(size);
    h
}

/// A symlink with its target written byte for byte (the `tar` crate's `append_link` would
/// normalize `a//b` or a trailing `/`, changing the tree), long targets as a GNU `K` entry.
fn append_symlink<W: Write>(b: &mut Builder<W>, path: &str, target: &str) -> io::Result<()> {
    let mut h = base_header(EntryType::Symlink, 0o777);
    h.set_size(0);
    let t = target.as_bytes();
    let field = &mut h.as_old_mut().linkname;
    if t.len() <= field.len() {
        field[..t.len()].copy_from_slice(t);
    } else {
        let n = field.len();
        field.copy_from_slice(&t[..n]);
        let mut k = base_header(EntryType::GNULongLink, 0o644);
        k.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        k.set_size(t.len() as u64 + 1);
        k.set_cksum();
        b.append(&k, t.chain(&[0u8][..]))?;
    }
    b.append_data(&mut h, path, io::empty())
}

struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}
