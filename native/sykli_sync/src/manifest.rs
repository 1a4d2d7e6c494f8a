//! What a tree is: a sorted map of paths to files and symlinks, and its hash.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, Rule};
use crate::fs::{self, Dir, Kind};
use crate::path::{ancestors, check_path, check_symlink_target, check_tree_hash, resolve_link};

/// One file or symlink of a tree. Directories are implicit (as in git, empty ones are not
/// part of a tree). Its JSON form is flat: `{"path", "type": "file", "size", "executable",
/// "sha256"}` or `{"path", "type": "symlink", "target"}` (see `Serialize` below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, '/'-separated, normalized.
    pub path: String,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EntryKind {
    File {
        size: u64,
        executable: bool,
        /// Lowercase hex SHA-256 of the content.
        sha256: String,
    },
    Symlink {
        target: String,
    },
}

/// A tree: path → entry, in byte order of the paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: BTreeMap<String, Entry>,
}

/// How `target` differs from `base`: the paths to send (new or different in any way) and
/// the paths to delete. Both sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub changed: Vec<String>,
    pub deleted: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty()
    }
}

/// The delta that turns `base` into `target`.
pub fn diff(base: &Manifest, target: &Manifest) -> Delta {
    // Both are in path order: one merge pass, no lookups.
    let mut delta = Delta::default();
    let mut b = base.entries.values().peekable();
    for t in target.entries.values() {
        while let Some(gone) = b.next_if(|e| e.path < t.path) {
            delta.deleted.push(gone.path.clone());
        }
        match b.next_if(|e| e.path == t.path) {
            Some(same) if same == t => {}
            _ => delta.changed.push(t.path.clone()),
        }
    }
    delta.deleted.extend(b.map(|e| e.path.clone()));
    delta
}

/// The JSON form: `{"format": 1, "tree": "<hash>", "entries": [{"path", "type", ...}]}`.
#[derive(Deserialize)]
struct ManifestJson {
    #[serde(default = "format_one")]
    format: u32,
    #[serde(default)]
    tree: Option<String>,
    entries: Vec<Entry>,
}

/// The JSON form written, borrowing the entries (a manifest is written once per sync, on
/// both sides, and copying every entry to write it cost as much as writing it).
#[derive(Serialize)]
struct ManifestJsonRef<'a> {
    format: u32,
    tree: &'a str,
    entries: EntriesRef<'a>,
}

struct EntriesRef<'a>(&'a BTreeMap<String, Entry>);

impl Serialize for EntriesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.values())
    }
}

// Written by hand rather than with `#[serde(flatten)]`, which buffers every entry into an
// intermediate map before deserializing it (most of the cost of reading a manifest). The
// JSON is the same: fields in this order; unknown fields are ignored when reading.
impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match &self.kind {
            EntryKind::File {
                size,
                executable,
                sha256,
            } => {
                let mut m = s.serialize_map(Some(5))?;
                m.serialize_entry("path", &self.path)?;
                m.serialize_entry("type", "file")?;
                m.serialize_entry("size", size)?;
                m.serialize_entry("executable", executable)?;
                m.serialize_entry("sha256", sha256)?;
                m.end()
            }
            EntryKind::Symlink { target } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("path", &self.path)?;
                m.serialize_entry("type", "symlink")?;
                m.serialize_entry("target", target)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Entry, D::Error> {
        d.deserialize_map(EntryVisitor)
    }
}

enum EntryField {
    Path,
    Type,
    Size,
    Executable,
    Sha256,
    Target,
    Other,
}

impl<'de> Deserialize<'de> for EntryField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EntryField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<EntryField, E> {
                Ok(match v {
                    "path" => EntryField::Path,
                    "type" => EntryField::Type,
                    "size" => EntryField::Size,
                    "executable" => EntryField::Executable,
                    "sha256" => EntryField::Sha256,
                    "target" => EntryField::Target,
                    _ => EntryField::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

struct EntryVisitor;

impl<'de> serde::de::Visitor<'de> for EntryVisitor {
    type Value = Entry;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a manifest entry")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Entry, A::Error> {
        use serde::de::Error as _;
        fn set<T, E: serde::de::Error>(
            slot: &mut Option<T>,
            value: T,
            name: &'static str,
        ) -> std::result::Result<(), E> {
            if slot.replace(value).is_some() {
                return Err(E::duplicate_field(name));
            }
            Ok(())
        }
        let mut path: Option<String> = None;
        let mut kind: Option<String> = None;
        let mut size: Option<u64> = None;
        let mut executable: Option<bool> = None;
        let mut sha256: Option<String> = None;
        let mut target: Option<String> = None;
        while let Some(field) = map.next_key::<EntryField>()? {
            match field {
                EntryField::Path => set(&mut path, map.next_value()?, "path")?,
                EntryField::Type => set(&mut kind, map.next_value()?, "type")?,
                EntryField::Size => set(&mut size, map.next_value()?, "size")?,
                EntryField::Executable => set(&mut executable, map.next_value()?, "executable")?,
                EntryField::Sha256 => set(&mut sha256, map.next_value()?, "sha256")?,
                EntryField::Target => set(&mut target, map.next_value()?, "target")?,
                EntryField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let path = path.ok_or_else(|| A::Error::missing_field("path"))?;
        let kind = match kind.as_deref() {
            Some("file") => EntryKind::File {
                size: size.ok_or_else(|| A::Error::missing_field("size"))?,
                executable: executable.ok_or_else(|| A::Error::missing_field("executable"))?,
                sha256: sha256.ok_or_else(|| A::Error::missing_field("sha256"))?,
            },
            Some("symlink") => EntryKind::Symlink {
                target: target.ok_or_else(|| A::Error::missing_field("target"))?,
            },
            Some(other) => {
                return Err(A::Error::unknown_variant(other, &["file", "symlink"]));
            }
            None => return Err(A::Error::missing_field("type")),
        };
        Ok(Entry { path, kind })
    }
}

fn format_one() -> u32 {
    1
}

impl Manifest {
    pub fn new() -> Manifest {
        Manifest::default()
    }

    /// Adds or replaces the entry at `entry.path`; returns the previous one. Paths are not
    /// checked here: [`Manifest::validate`] does that (and `from_json`, `scan`, `from_paths`).
    pub fn insert(&mut self, entry: Entry) -> Option<Entry> {
        self.entries.insert(entry.path.clone(), entry)
    }

    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        self.entries.remove(path)
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in byte order of their paths.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The total size of the files.
    pub fn total_bytes(&self) -> u64 {
        self.entries()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => size,
                EntryKind::Symlink { .. } => 0,
            })
            .sum()
    }

    /// The tree hash: lowercase hex SHA-256 of this canonical serialization —
    ///
    /// ```text
    /// "sykli-sync tree v1\n"
    /// then for each entry, in ascending byte order of the UTF-8 path:
    ///   file:    "f " <len(path)> ":" <path> " " <mode> " " <size> " " <sha256> "\n"
    ///   symlink: "l " <len(path)> ":" <path> " " <len(target)> ":" <target> "\n"
    /// ```
    ///
    /// where `<mode>` is `644` or `755`, `<size>` is decimal, `<sha256>` is 64 lowercase hex
    /// digits, and `<len(x)>` is the decimal byte length of `x`. The length prefixes make it
    /// unambiguous whatever bytes (spaces, newlines) a path or target holds.
    pub fn tree_hash(&self) -> String {
        use std::fmt::Write as _;
        let mut h = Sha256::new();
        h.update(b"sykli-sync tree v1\n");
        // One buffer for every record (not a String each).
        let mut record = String::with_capacity(256);
        for e in self.entries.values() {
            record.clear();
            let _ = match &e.kind {
                EntryKind::File {
                    size,
                    executable,
                    sha256,
                } => writeln!(
                    record,
                    "f {}:{} {} {} {}",
                    e.path.len(),
                    e.path,
                    if *executable { "755" } else { "644" },
                    size,
                    sha256
                ),
                EntryKind::Symlink { target } => writeln!(
                    record,
                    "l {}:{} {}:{}",
                    e.path.len(),
                    e.path,
                    target.len(),
                    target
                ),
            };
            h.update(record.as_bytes());
        }
        fs::to_hex(&h.finalize())
    }

    /// Checks every path and symlink target with the extractor's rules, every hash's form,
    /// and that no entry is also the parent directory of another. Then the symlinks
    /// together, as a [`crate::LinkSet`] does: each resolved as the filesystem would,
    /// through the others, must stay inside.
    pub fn validate(&self) -> Result<()> {
        // Entries come in path order, so the files of one directory mostly follow each other:
        // its ancestors need looking up only when the directory changes.
        let mut checked_dir: Option<&str> = None;
        let mut links: Vec<(&str, &str)> = Vec::new();
        for (path, e) in &self.entries {
            if *path != e.path {
                return Err(Error::InvalidManifest(format!(
                    "entry {:?} is stored under {:?}",
                    e.path, path
                )));
            }
            check_path(path.as_bytes())?;
            match &e.kind {
                EntryKind::File { sha256, .. } => {
                    if check_tree_hash(sha256).is_err() {
                        return Err(Error::InvalidManifest(format!(
                            "{path:?}: sha256 is not 64 lowercase hex digits"
                        )));
                    }
                }
                EntryKind::Symlink { target } => {
                    check_symlink_target(path, target.as_bytes())?;
                    links.push((path, target));
                }
            }
            let dir = path.rsplit_once('/').map(|(dir, _)| dir);
            if dir.is_some() && dir != checked_dir {
                if let Some(parent) = ancestors(path).find(|a| self.entries.contains_key(*a)) {
                    return Err(Error::InvalidManifest(format!(
                        "{path:?} is inside {parent:?}, which is not a directory ({})",
                        Rule::NotADirectory.name()
                    )));
                }
                checked_dir = dir;
            }
        }
        // All entries are known (and no entry is inside another): the links' parents are
        // directories, and a path that is not a symlink entry never moves a resolution.
        let mut lookup = |p: &str| {
            Ok(match self.entries.get(p).map(|e| &e.kind) {
                Some(EntryKind::Symlink { target }) => Some(std::borrow::Cow::Borrowed(&**target)),
                _ => None,
            })
        };
        for (path, target) in links {
            resolve_link(path, target, &mut lookup, &mut |_| {})?;
        }
        Ok(())
    }

    /// The JSON form, with the tree hash: `{"format":1,"tree":"…","entries":[…]}`.
    pub fn to_json(&self) -> String {
        self.to_json_with_tree(&self.tree_hash())
    }

    /// [`Manifest::to_json`] when the caller has just computed the tree hash. Written by
    /// hand, byte for byte what `serde_json` writes for [`Serialize`]: a store writes one
    /// per sync, and most strings (hashes, ordinary paths) need no escaping, which serde's
    /// byte-by-byte escaping (generic, so built with this crate's optimisation level) does
    /// not notice.
    pub(crate) fn to_json_with_tree(&self, tree: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(96 + self.entries.len() * 160);
        out.push_str("{\"format\":1,\"tree\":");
        json_str(&mut out, tree);
        out.push_str(",\"entries\":[");
        for (i, e) in self.entries.values().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"path\":");
            json_str(&mut out, &e.path);
            match &e.kind {
                EntryKind::File {
                    size,
                    executable,
                    sha256,
                } => {
                    let _ = write!(out, ",\"type\":\"file\",\"size\":{size},\"executable\":{executable},\"sha256\":");
                    json_str(&mut out, sha256);
                }
                EntryKind::Symlink { target } => {
                    out.push_str(",\"type\":\"symlink\",\"target\":");
                    json_str(&mut out, target);
                }
            }
            out.push('}');
        }
        out.push_str("]}");
        out
    }

    fn json_ref<'a>(&'a self, tree: &'a str) -> ManifestJsonRef<'a> {
        ManifestJsonRef {
            format: 1,
            tree,
            entries: EntriesRef(&self.entries),
        }
    }

    /// A manifest of `entries`, each path at most once. Entries in path order (as
    /// [`Manifest::to_json`] writes them) are bulk-loaded instead of inserted one by one.
    fn from_entries(entries: Vec<Entry>) -> Result<Manifest> {
        if entries.windows(2).all(|w| w[0].path < w[1].path) {
            return Ok(Manifest {
                entries: entries.into_iter().map(|e| (e.path.clone(), e)).collect(),
            });
        }
        let mut m = Manifest::new();
        for e in entries {
            let path = e.path.clone();
            if m.insert(e).is_some() {
                return Err(Error::InvalidManifest(format!("{path:?} appears twice")));
            }
        }
        Ok(m)
    }

    /// Parses and validates the JSON form. When it names a `tree`, the entries must hash to it.
    pub fn from_json(json: &str) -> Result<Manifest> {
        let parsed: ManifestJson =
            serde_json::from_str(json).map_err(|e| Error::InvalidManifest(e.to_string()))?;
        if parsed.format != 1 {
            return Err(Error::InvalidManifest(format!(
                "format {} is not supported (1 is)",
                parsed.format
            )));
        }
        let m = Manifest::from_entries(parsed.entries)?;
        m.validate()?;
        if let Some(tree) = parsed.tree {
            let actual = m.tree_hash();
            if tree != actual {
                return Err(Error::InvalidManifest(format!(
                    "it names tree {tree} but its entries hash to {actual}"
                )));
            }
        }
        Ok(m)
    }

    /// The manifest of everything below `root` (symlinks are entries, never followed;
    /// empty directories are not part of a tree). Sockets, FIFOs and devices are an error.
    pub fn scan(root: &Path) -> Result<Manifest> {
        let dir = Dir::open(root).map_err(|e| Error::io_path(root, e))?;
        let mut paths = Vec::new();
        walk(&dir, None, &mut paths)?;
        Manifest::from_checked_paths(root, &dir, &paths)
    }

    /// The manifest of the given paths below `root` (for example the files git reports:
    /// tracked and untracked, not ignored). A directory stands for everything below it.
    /// Every path must be valid (see [`crate::check_path`]), exist, and be reached without
    /// a symlink in its parents. Files are hashed on a few threads.
    pub fn from_paths(root: &Path, paths: &[String]) -> Result<Manifest> {
        let dir = Dir::open(root).map_err(|e| Error::io_path(root, e))?;
        let mut all = Vec::with_capacity(paths.len());
        for p in paths {
            check_path(p.as_bytes())?;
            let Some((parent, name)) = fs::parent_of(&dir, p, false)? else {
                return Err(Error::io(p, std::io::ErrorKind::NotFound.into()));
            };
            match parent.kind(name).map_err(|e| Error::io(p, e))? {
                None => return Err(Error::io(p, std::io::ErrorKind::NotFound.into())),
                Some(Kind::Dir) => walk(&dir, Some(p), &mut all)?,
                Some(_) => all.push(p.clone()),
            }
        }
        all.sort();
        all.dedup();
        Manifest::from_checked_paths(root, &dir, &all)
    }

    fn from_checked_paths(root: &Path, dir: &Dir, paths: &[String]) -> Result<Manifest> {
        let entries = fs::parallel_map(paths, |p| read_entry(dir, p))?;
        let mut m = Manifest::new();
        for e in entries {
            m.insert(e);
        }
        m.validate().map_err(|e| match e {
            Error::InvalidManifest(msg) => {
                Error::InvalidManifest(format!("{}: {msg}", root.display()))
            }
            other => other,
        })?;
        Ok(m)
    }
}

/// Later entries replace earlier ones with the same path, as [`Manifest::insert`] does;
/// entries that come in path order are bulk-loaded rather than inserted one by one.
impl FromIterator<Entry> for Manifest {
    fn from_iter<I: IntoIterator<Item = Entry>>(entries: I) -> Manifest {
        Manifest {
            entries: entries.into_iter().map(|e| (e.path.clone(), e)).collect(),
        }
    }
}

/// Appends `s` as a JSON string, as `serde_json` writes it (it escapes `"`, `\\` and
/// control characters, nothing else).
fn json_str(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x20 || b == b'"' || b == b'\\' {
            out.push_str(&serde_json::to_string(s).expect("a string serializes"));
            return;
        }
        i += 1;
    }
    out.push('"');
    out.push_str(s);
    out.push('"');
}

impl Serialize for Manifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.json_ref(&self.tree_hash()).serialize(s)
    }
}

/// Collects the files and symlinks below `prefix` (or the root).
fn walk(root: &Dir, prefix: Option<&str>, out: &mut Vec<String>) -> Result<()> {
    let mut pending: Vec<Option<String>> = vec![prefix.map(str::to_string)];
    while let Some(dir_path) = pending.pop() {
        let opened = match &dir_path {
            None => None,
            Some(p) => {
                let (parent, name) = fs::parent_of(root, p, false)?
                    .ok_or_else(|| Error::io(p, std::io::ErrorKind::NotFound.into()))?;
                Some(parent.open_dir(name).map_err(|e| Error::io(p, e))?)
            }
        };
        let here = opened.as_ref().unwrap_or(root);
        let names = here
            .list(".")
            .map_err(|e| Error::io(dir_path.as_deref().unwrap_or("."), e))?;
        for name in names {
            let path = match &dir_path {
                None => name.clone(),
                Some(p) => format!("{p}/{name}"),
            };
            match here.kind(&name).map_err(|e| Error::io(&path, e))? {
                Some(Kind::Dir) => pending.push(Some(path)),
                Some(Kind::File { .. }) | Some(Kind::Symlink) => out.push(path),
                Some(Kind::Other(kind)) => return Err(Error::UnsupportedFile { path, kind }),
                None => {}
            }
        }
    }
    Ok(())
}

/// Reads one path's entry (hashing a file's content).
pub(crate) fn read_entry(root: &Dir, path: &str) -> Result<Entry> {
    check_path(path.as_bytes())?;
    let (parent, name) = fs::parent_of(root, path, false)?
        .ok_or_else(|| Error::io(path, std::io::ErrorKind::NotFound.into()))?;
    let kind = parent.kind(name).map_err(|e| Error::io(path, e))?;
    let kind = match kind {
        Some(Kind::File { executable, .. }) => {
            let file = parent.open_file(name).map_err(|e| Error::io(path, e))?;
            let (size, sha256) = fs::copy_hashing(file, None).map_err(|e| Error::io(path, e))?;
            EntryKind::File {
                size,
                executable,
                sha256,
            }
        }
        Some(Kind::Symlink) => {
            let target = parent.read_link(name).map_err(|e| Error::io(path, e))?;
            let target = check_symlink_target(path, &target)?;
            EntryKind::Symlink {
                target: target.to_string(),
            }
        }
        Some(Kind::Dir) => {
            return Err(Error::UnsupportedFile {
                path: path.to_string(),
                kind: "directory",
            })
        }
        Some(Kind::Other(kind)) => {
            return Err(Error::UnsupportedFile {
                path: path.to_string(),
                kind,
            })
        }
        None => return Err(Error::io(path, std::io::ErrorKind::NotFound.into())),
    };
    Ok(Entry {
        path: path.to_string(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str, executable: bool) -> Entry {
        let (size, sha256) = fs::copy_hashing(content.as_bytes(), None).unwrap();
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                size,
                executable,
                sha256,
            },
        }
    }

    #[test]
    fn nested_under_a_file_is_invalid() {
        let mut m = Manifest::new();
        m.insert(file("a", "x", false));
        m.insert(file("a/b", "y", false));
        assert!(matches!(m.validate(), Err(Error::InvalidManifest(_))));
    }
}
