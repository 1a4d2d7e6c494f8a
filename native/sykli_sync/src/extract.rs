//! The hardened extractor: this code, not the `tar` crate, decides what reaches the disk.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;

use serde::Serialize;
use tar::EntryType;

use crate::error::{display_name, Error, Result, Rule};
use crate::fs::{self, Dir, Kind};
use crate::manifest::{Entry, EntryKind};
use crate::path::{check_path_rule, check_symlink_target_rule, resolve_link, LinkSet};

/// How much an archive may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries (files, symlinks, directories), not counting the sync header.
    pub max_entries: u64,
    /// The sum of the entries' sizes, checked before anything of an entry is written.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    /// One million entries, 32 GiB.
    fn default() -> Limits {
        Limits {
            max_entries: 1_000_000,
            max_total_bytes: 32 << 30,
        }
    }
}

/// What an extraction wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub entries: u64,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Extracts a gzip-compressed tar into `dest` (created if missing), enforcing the rules of
/// [`Rule`]: relative normalized UTF-8 paths within the length limits; only regular files,
/// directories and symlinks; symlink targets relative and inside `dest`; no symlink ever
/// followed in a parent component (and files opened `O_NOFOLLOW`, an existing file or
/// symlink at the final path unlinked first); owners ignored; modes 0644/0755; the entry
/// and byte limits. The first violation stops the extraction with [`Error::Refused`]
/// naming the entry and the rule; entries before it stay written. Nothing is ever written
/// outside `dest`. The gzip stream is read to its end, so a truncated or corrupted archive
/// is an error.
///
/// Symlink targets are checked on their own (lexically, [`crate::check_symlink_target`]),
/// then as a tree ([`crate::LinkSet`]): resolved as the filesystem would, through the
/// archive's other symlinks and those already in `dest` (read, never followed), they must
/// stay inside `dest`. This is checked before each entry is written, so the tree on disk
/// is sound after every entry: a symlink that resolves outside is refused, and so is a
/// later entry (a symlink, or a file or directory replacing one) that would make an
/// earlier symlink of the archive resolve outside (the refusal names both). Symlinks that
/// were in `dest` before are not checked themselves: one that a new symlink would send
/// elsewhere is not noticed (that would take reading all of `dest`).
pub fn extract_hardened(archive: impl Read, dest: &Path, limits: Limits) -> Result<Report> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io_path(dest, e))?;
    let dir = Dir::open(dest).map_err(|e| Error::io_path(dest, e))?;
    let gz = flate2::read::GzDecoder::new(archive);
    extract_tar(gz, &dir, &limits, true, None, |_| {})
}

/// Where the long-name and pax metadata of one entry must fit (the `tar` crate buffers it).
const METADATA_BUDGET: u64 = 64 << 10;
/// The largest sync header (`Store::apply`): its list of deleted paths.
pub(crate) const HEADER_MAX: u64 = 256 << 20;
pub(crate) const HEADER_NAME: &str = ".sykli-sync/header.json";

/// A reader that fails once it has given more bytes than its allowance, which is reset for
/// every entry to the entry's (padded) size plus [`METADATA_BUDGET`]: so a GNU long name or
/// pax header of gigabytes never reaches memory.
struct Budget<R> {
    inner: R,
    left: Rc<Cell<u64>>,
    exhausted: Rc<Cell<bool>>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 && !buf.is_empty() {
            self.exhausted.set(true);
            return Err(io::Error::other("archive metadata larger than the limit"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

/// The extraction loop shared by [`extract_hardened`] and `Store::apply`. With `header`,
/// the first entry must be the sync header, whose bytes go to the callback before anything
/// else is extracted. `on_entry` receives every file (with its hash) and symlink written.
pub(crate) fn extract_tar<R: Read>(
    stream: R,
    dest: &Dir,
    limits: &Limits,
    allow_directories: bool,
    mut header: Option<&mut dyn FnMut(Vec<u8>) -> Result<()>>,
    mut on_entry: impl FnMut(Entry),
) -> Result<Report> {
    let left = Rc::new(Cell::new(METADATA_BUDGET));
    let exhausted = Rc::new(Cell::new(false));
    let mut archive = tar::Archive::new(Budget {
        inner: stream,
        left: left.clone(),
        exhausted: exhausted.clone(),
    });
    let mut report = Report::default();
    let mut links = Links::default();
    let mut last = String::from("(the start of the archive)");
    let mut expect_header = header.is_some();
    {
        let entries = archive
            .entries()
            .map_err(|e| Error::InvalidArchive(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| stream_error(&exhausted, &last, e))?;
            let size = entry.size();
            left.set(size.saturating_add(511) / 512 * 512 + METADATA_BUDGET);
            let raw_path = entry.path_bytes().into_owned();
            last = format!("after {:?}", display_name(&raw_path));

            if expect_header {
                expect_header = false;
                if raw_path != HEADER_NAME.as_bytes()
                    || entry.header().entry_type() != EntryType::Regular
                {
                    return Err(Error::InvalidArchive(format!(
                        "the first entry is {:?}, not {HEADER_NAME}",
                        display_name(&raw_path)
                    )));
                }
                if size > HEADER_MAX {
                    return Err(Error::InvalidArchive(format!(
                        "{HEADER_NAME} is larger than {HEADER_MAX} bytes"
                    )));
                }
                let mut bytes = Vec::with_capacity(size as usize);
                entry
                    .read_to_end(&mut bytes)
                    .map_err(|e| stream_error(&exhausted, &last, e))?;
                if let Some(handler) = header.as_mut() {
                    handler(bytes)?;
                }
                continue;
            }

            let refuse = |rule: Rule| Error::refused(&raw_path, rule);
            report.entries += 1;
            if report.entries > limits.max_entries {
                return Err(refuse(Rule::TooManyEntries));
            }
            let entry_type = entry.header().entry_type();
            let path_bytes = if entry_type == EntryType::Directory {
                trim_trailing_slashes(&raw_path)
            } else {
                &raw_path[..]
            };
            let path = check_path_rule(path_bytes).map_err(refuse)?.to_string();
            match entry_type {
                EntryType::Regular | EntryType::Directory | EntryType::Symlink => {}
                EntryType::Link => return Err(refuse(Rule::Hardlink)),
                EntryType::Char | EntryType::Block => return Err(refuse(Rule::Device)),
                EntryType::Fifo => return Err(refuse(Rule::Fifo)),
                _ => return Err(refuse(Rule::UnsupportedType)),
            }
            if report.bytes.saturating_add(size) > limits.max_total_bytes {
                return Err(refuse(Rule::TooLarge));
            }

            match entry_type {
                EntryType::Regular => {
                    links.replace(dest, &path)?;
                    let executable = entry
                        .header()
                        .mode()
                        .map(|m| m & 0o111 != 0)
                        .unwrap_or(false);
                    let (parent, name) = fs::parent_of(dest, &path, true)?.expect("created");
                    fs::clear_name(&parent, name, &path)?;
                    let mut file = parent
                        .create_file(name, executable)
                        .map_err(|e| Error::io(&path, e))?;
                    let (written, sha256) = fs::copy_hashing(&mut entry, Some(&mut file))
                        .map_err(|e| stream_error(&exhausted, &last, e))?;
                    if written != size {
                        return Err(Error::InvalidArchive(format!("{path:?} is truncated")));
                    }
                    report.files += 1;
                    report.bytes += written;
                    on_entry(Entry {
                        path,
                        kind: EntryKind::File {
                            size,
                            executable,
                            sha256,
                        },
                    });
                }
                EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let target = check_symlink_target_rule(&path, &target)
                        .map_err(refuse)?
                        .to_string();
                    links.add(dest, &path, &target)?;
                    let (parent, name) = fs::parent_of(dest, &path, true)?.expect("created");
                    fs::clear_name(&parent, name, &path)?;
                    parent
                        .symlink(&target, name)
                        .map_err(|e| Error::io(&path, e))?;
                    report.symlinks += 1;
                    report.bytes += size;
                    on_entry(Entry {
                        path,
                        kind: EntryKind::Symlink { target },
                    });
                }
                _ => {
                    if !allow_directories {
                        return Err(refuse(Rule::DirectoryNotAllowed));
                    }
                    links.replace(dest, &path)?;
                    let (parent, name) = fs::parent_of(dest, &path, true)?.expect("created");
                    match parent.kind(name).map_err(|e| Error::io(&path, e))? {
                        Some(Kind::Dir) => {}
                        existing => {
                            if existing.is_some() {
                                parent.unlink(name).map_err(|e| Error::io(&path, e))?;
                            }
                            parent.mkdir(name).map_err(|e| Error::io(&path, e))?;
                        }
                    }
                    report.directories += 1;
                    report.bytes += size;
                }
            }
        }
    }
    if expect_header {
        return Err(Error::InvalidArchive(format!(
            "the archive is empty: no {HEADER_NAME}"
        )));
    }
    // The end-of-archive blocks and the gzip trailer: reading to the end checks the CRC, so
    // an archive cut short at an entry boundary is an error, not a silently smaller tree.
    left.set(METADATA_BUDGET);
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())
        .map_err(|e| stream_error(&exhausted, "at the end of the archive", e))?;
    Ok(report)
}

/// The symlinks of an extraction, checked as a tree before each entry is written (see
/// [`extract_hardened`]). A symlink's resolution depends on the paths it looked up: when an
/// entry changes whether one of them is a symlink (or where it points), the symlinks that
/// looked it up are resolved again.
#[derive(Default)]
struct Links {
    /// The archive's symlinks as they are now on disk.
    set: LinkSet,
    /// What `dest` held before the archive, read when a resolution first looks a path up:
    /// its target when it is a symlink. Forgotten for a path once an entry is written there.
    disk: HashMap<String, Option<String>>,
    /// A path looked up → the symlinks of `set` whose resolution looked it up.
    dependents: HashMap<String, Vec<String>>,
}

impl Links {
    /// Before the symlink `path` → `target` (per-link checks passed) is written.
    fn add(&mut self, dest: &Dir, path: &str, target: &str) -> Result<()> {
        self.disk.remove(path);
        let same = self.set.insert_checked(path, target).as_deref() == Some(target);
        self.check(dest, path, None)?;
        if !same {
            self.recheck(dest, path, None)?;
        }
        Ok(())
    }

    /// Before a file or a directory is written at `path`, replacing what is there.
    fn replace(&mut self, dest: &Dir, path: &str) -> Result<()> {
        let was_ours = self.set.remove(path).is_some();
        if !self.dependents.contains_key(path) {
            self.disk.remove(path);
            return Ok(());
        }
        let was_link = was_ours || on_disk(&mut self.disk, dest, path)?.is_some();
        self.disk.remove(path);
        if was_link {
            // Not yet written: `path` is taken for what it will be, and nothing below it.
            self.recheck(dest, path, Some(path))?;
        }
        Ok(())
    }

    /// Resolves the symlink `link` of the set (nothing to do for a path that is not one),
    /// recording what it looked up. `masked` (and what is below it) is not a symlink.
    fn check(&mut self, dest: &Dir, link: &str, masked: Option<&str>) -> Result<()> {
        let Links {
            set,
            disk,
            dependents,
        } = self;
        let Some(target) = set.get(link) else {
            return Ok(());
        };
        let set = &*set;
        let mut lookup = |p: &str| -> Result<Option<Cow<'_, str>>> {
            if let Some(m) = masked {
                if p == m || p.strip_prefix(m).is_some_and(|r| r.starts_with('/')) {
                    return Ok(None);
                }
            }
            if let Some(t) = set.get(p) {
                return Ok(Some(Cow::Borrowed(t)));
            }
            Ok(on_disk(disk, dest, p)?.map(Cow::Owned))
        };
        let mut visit = |p: &str| match dependents.get_mut(p) {
            Some(links) => {
                if links.last().map(String::as_str) != Some(link) {
                    links.push(link.to_string());
                }
            }
            None => {
                dependents.insert(p.to_string(), vec![link.to_string()]);
            }
        };
        resolve_link(link, target, &mut lookup, &mut visit)
    }

    /// Resolves again the symlinks that looked `changed` up; a refusal names `changed`.
    fn recheck(&mut self, dest: &Dir, changed: &str, masked: Option<&str>) -> Result<()> {
        let Some(mut links) = self.dependents.remove(changed) else {
            return Ok(());
        };
        links.sort_unstable();
        links.dedup();
        for link in links {
            self.check(dest, &link, masked).map_err(|e| match e {
                Error::Refused { rule, .. } => Error::Refused {
                    entry: format!(
                        "{} (the symlink {} resolves through it)",
                        display_name(changed.as_bytes()),
                        display_name(link.as_bytes())
                    ),
                    rule,
                },
                other => other,
            })?;
        }
        Ok(())
    }
}

/// What `dest` holds at `path`, never following a symlink: the target when it is one.
fn on_disk(
    known: &mut HashMap<String, Option<String>>,
    dest: &Dir,
    path: &str,
) -> Result<Option<String>> {
    if let Some(found) = known.get(path) {
        return Ok(found.clone());
    }
    let found = match fs::parent_of(dest, path, false) {
        Ok(Some((parent, name))) => match parent.kind(name).map_err(|e| Error::io(path, e))? {
            Some(Kind::Symlink) => {
                let target = parent.read_link(name).map_err(|e| Error::io(path, e))?;
                let target = String::from_utf8(target)
                    .map_err(|_| Error::refused(path, Rule::SymlinkTargetInvalid))?;
                Some(target)
            }
            _ => None,
        },
        Ok(None) => None,
        // Below a file: nothing is there.
        Err(Error::Refused {
            rule: Rule::NotADirectory,
            ..
        }) => None,
        Err(e) => return Err(e),
    };
    known.insert(path.to_string(), found.clone());
    Ok(found)
}

fn stream_error(exhausted: &Cell<bool>, last: &str, e: io::Error) -> Error {
    if exhausted.get() {
        Error::Refused {
            entry: format!("(the entry {last})"),
            rule: Rule::MetadataTooLarge,
        }
    } else {
        Error::InvalidArchive(format!("{last}: {e}"))
    }
}

fn trim_trailing_slashes(p: &[u8]) -> &[u8] {
    let mut end = p.len();
    while end > 1 && p[end - 1] == b'/' {
        end -= 1;
    }
    &p[..end]
}
