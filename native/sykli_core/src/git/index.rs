//! A reader for git's index file (versions 2, 3 and 4) and its cache-tree extension.
//!
//! We read the index ourselves rather than through libgit2 because status needs two things
//! libgit2 does not expose: the stat data in a form threads can share, and the cache-tree,
//! which tells us which directories are unchanged since HEAD without reading their trees.
//! Indexes we do not understand (split index, sparse index, SHA-256) return `None`, and the
//! caller falls back to libgit2's status.

use std::path::Path;

pub const MODE_GITLINK: u32 = 0o160000;
pub const MODE_SYMLINK: u32 = 0o120000;
const OID_LEN: usize = 20;

#[derive(Debug, Clone)]
pub struct Entry {
    pub ctime: (u32, u32),
    pub mtime: (u32, u32),
    pub dev: u32,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u32,
    pub oid: [u8; OID_LEN],
    pub stage: u8,
    pub assume_valid: bool,
    pub skip_worktree: bool,
    pub intent_to_add: bool,
    pub path: Vec<u8>,
}

/// One node of the cache-tree: a directory whose tree object id is known when `oid` is set.
#[derive(Debug, Clone, Default)]
pub struct CacheTree {
    pub name: Vec<u8>,
    pub oid: Option<[u8; OID_LEN]>,
    pub children: Vec<CacheTree>,
}

impl CacheTree {
    pub fn child(&self, name: &[u8]) -> Option<&CacheTree> {
        self.children.iter().find(|c| c.name == name)
    }
}

#[derive(Debug)]
pub struct Index {
    /// Sorted as git sorts them: by path bytes, then stage.
    pub entries: Vec<Entry>,
    pub cache_tree: Option<CacheTree>,
    /// The index file's own mtime, for git's racy-clean rule.
    pub mtime: (i64, i64),
}

impl Index {
    /// Reads the index at `path`. `Ok(None)` when the index does not exist (a fresh repo) or
    /// uses a feature we do not read (the caller then uses libgit2).
    pub fn read(path: &Path) -> std::io::Result<Option<Index>> {
        use std::os::unix::fs::MetadataExt;
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Some(Index {
                    entries: Vec::new(),
                    cache_tree: None,
                    mtime: (0, 0),
                }))
            }
            Err(e) => return Err(e),
        };
        let meta = std::fs::metadata(path)?;
        Ok(parse(&data).map(|(entries, cache_tree)| Index {
            entries,
            cache_tree,
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }))
    }

    /// The range of entries whose path is `dir/...` (`dir` without a trailing slash; empty
    /// for the whole index).
    pub fn dir_range(&self, dir: &[u8]) -> std::ops::Range<usize> {
        if dir.is_empty() {
            return 0..self.entries.len();
        }
        let mut prefix = dir.to_vec();
        prefix.push(b'/');
        let start = self
            .entries
            .partition_point(|e| e.path.as_slice() < prefix.as_slice());
        let len = self.entries[start..]
            .iter()
            .take_while(|e| e.path.starts_with(&prefix))
            .count();
        start..start + len
    }

    /// The first entry with exactly this path.
    pub fn find(&self, path: &[u8]) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.path.as_slice() < path);
        (i < self.entries.len() && self.entries[i].path == path).then_some(i)
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    /// git's offset varint (index v4 path prefix lengths).
    fn varint(&mut self) -> Option<usize> {
        let mut c = *self.take(1)?.first()?;
        let mut val = (c & 0x7f) as usize;
        while c & 0x80 != 0 {
            c = *self.take(1)?.first()?;
            val = val.checked_add(1)?.checked_mul(128)? + (c & 0x7f) as usize;
        }
        Some(val)
    }
}

fn parse(data: &[u8]) -> Option<(Vec<Entry>, Option<CacheTree>)> {
    if data.len() < 12 + OID_LEN {
        return None;
    }
    let body = &data[..data.len() - OID_LEN];
    let mut r = Reader { data: body, pos: 0 };
    if r.take(4)? != b"DIRC" {
        return None;
    }
    let version = r.u32()?;
    if !(2..=4).contains(&version) {
        return None;
    }
    let count = r.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(body.len() / 62));
    let mut prev_path: Vec<u8> = Vec::new();
    for _ in 0..count {
        let start = r.pos;
        let ctime = (r.u32()?, r.u32()?);
        let mtime = (r.u32()?, r.u32()?);
        let (dev, ino, mode, uid, gid, size) =
            (r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let oid: [u8; OID_LEN] = r.take(OID_LEN)?.try_into().ok()?;
        let flags = r.u16()?;
        let extended = if version >= 3 && flags & 0x4000 != 0 {
            r.u16()?
        } else {
            0
        };
        let path = if version == 4 {
            let strip = r.varint()?;
            let keep = prev_path.len().checked_sub(strip)?;
            let rest = &r.data[r.pos..];
            let nul = rest.iter().position(|&b| b == 0)?;
            let mut path = prev_path[..keep].to_vec();
            path.extend_from_slice(&rest[..nul]);
            r.pos += nul + 1;
            path
        } else {
            let rest = &r.data[r.pos..];
            let nul = rest.iter().position(|&b| b == 0)?;
            let path = rest[..nul].to_vec();
            // Entries are NUL-padded to a multiple of 8 bytes (at least one NUL).
            let len = r.pos - start + nul;
            r.pos = start + (len + 8) / 8 * 8;
            path
        };
        if mode & 0o170000 == 0o040000 {
            return None; // a sparse-directory entry: sparse index
        }
        entries.push(Entry {
            ctime,
            mtime,
            dev,
            ino,
            mode,
            uid,
            gid,
            size,
            oid,
            stage: ((flags >> 12) & 3) as u8,
            assume_valid: flags & 0x8000 != 0,
            skip_worktree: extended & 0x4000 != 0,
            intent_to_add: extended & 0x2000 != 0,
            path: path.clone(),
        });
        if version == 4 {
            prev_path = path;
        }
    }
    let mut cache_tree = None;
    while r.pos + 8 <= body.len() {
        let sig: [u8; 4] = r.take(4)?.try_into().ok()?;
        let len = r.u32()? as usize;
        let ext = r.take(len)?;
        match &sig {
            b"TREE" => cache_tree = parse_cache_tree(ext),
            b"link" | b"sdir" => return None, // split or sparse index
            // Other extensions (REUC, UNTR, FSMN, EOIE, IEOT, …) are optional for readers
            // when they start with an upper-case letter.
            s if s[0].is_ascii_uppercase() => {}
            _ => return None,
        }
    }
    Some((entries, cache_tree))
}

fn parse_cache_tree(data: &[u8]) -> Option<CacheTree> {
    let mut r = Reader { data, pos: 0 };
    let tree = read_cache_tree_node(&mut r, 0)?;
    Some(tree)
}

fn read_cache_tree_node(r: &mut Reader<'_>, depth: usize) -> Option<CacheTree> {
    if depth > 4096 {
        return None;
    }
    let rest = &r.data[r.pos..];
    let nul = rest.iter().position(|&b| b == 0)?;
    let name = rest[..nul].to_vec();
    r.pos += nul + 1;
    let rest = &r.data[r.pos..];
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&rest[..nl]).ok()?;
    r.pos += nl + 1;
    let (entry_count, subtrees) = header.split_once(' ')?;
    let entry_count: i64 = entry_count.parse().ok()?;
    let subtrees: usize = subtrees.parse().ok()?;
    let oid = if entry_count >= 0 {
        Some(r.take(OID_LEN)?.try_into().ok()?)
    } else {
        None
    };
    let mut children = Vec::with_capacity(subtrees.min(1024));
    for _ in 0..subtrees {
        children.push(read_cache_tree_node(r, depth + 1)?);
    }
    Some(CacheTree {
        name,
        oid,
        children,
    })
}
