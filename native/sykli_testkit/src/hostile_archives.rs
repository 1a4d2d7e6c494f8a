//! A corpus of malicious archives (gzip-compressed tar), each built byte by byte with the
//! `tar` crate's low-level header API: what a hostile receiver pod (or anything else able to
//! answer the sync back) could send to the laptop. Shared by the hardened extractor's tests
//! (`sykli_sync/tests/malicious.rs`) and by `sykli-hostile-sync`, the stand-in for the sync
//! image that answers the product's sync back with them, end to end.
//!
//! The layout the cases aim at: the destination `dest` and, next to it, a directory named
//! `sentinel` holding one file `keep` (contents `untouched`). The relative escapes aim at
//! `../sentinel/…`; the absolute ones at the sentinel's absolute path, given to [`corpus`].
//! Every archive puts a legitimate file [`BEFORE`] before its malicious entries and another,
//! [`AFTER`], after them: the extractor documents that the first violation stops the
//! extraction and that entries before it stay written.
//!
//! Some cases are symlinks that each stay inside on their own (lexically) but not together:
//! resolved as a filesystem would, through each other (`l` → `.`, `e` → `l/l/l/../x`) or
//! through a symlink the destination already holds, they climb out of it. [`Case::symlinks`]
//! gives them as a tree, for consumers that build it on disk (`pack`, `copy`) rather than
//! extract the archive.

use std::io::Write;
use std::path::Path;

use tar::{Builder, EntryType, Header};

/// The legitimate file before the malicious entries (written before the refusal).
pub const BEFORE: &str = "before.txt";
/// Its contents.
pub const BEFORE_CONTENT: &[u8] = b"written before the refusal\n";
/// The legitimate file after them (never reached).
pub const AFTER: &str = "after.txt";

/// One malicious archive and what its refusal must say.
pub struct Case {
    /// Short and unique; a valid file name (how the hostile receiver is asked for it).
    pub name: &'static str,
    /// The rule the refusal names (`sykli_sync::Rule::name`).
    pub rule: &'static str,
    /// (Part of) the refused entry as the error shows it (NULs and the like escaped).
    pub entry: String,
    /// A symlink `dest/<name>` → the sentinel directory to plant before extracting (what a
    /// destination may already hold; the extractor must never follow it).
    pub planted_symlink: Option<&'static str>,
    /// The malicious entries, as tar blocks without the end-of-archive marker.
    entries: Vec<u8>,
}

impl Case {
    /// The symlinks among the malicious entries, path → target, in archive order.
    pub fn symlinks(&self) -> Vec<(String, Vec<u8>)> {
        let mut tar = self.entries.clone();
        tar.extend_from_slice(&[0u8; 1024]);
        let mut archive = tar::Archive::new(&tar[..]);
        let mut links = Vec::new();
        for entry in archive.entries().expect("an archive in memory") {
            // Some cases are malformed on purpose: their symlinks come before that.
            let Ok(entry) = entry else { break };
            if entry.header().entry_type() == EntryType::Symlink {
                links.push((
                    String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                    entry.link_name_bytes().unwrap_or_default().into_owned(),
                ));
            }
        }
        links
    }

    /// The whole archive: [`BEFORE`], the malicious entries, [`AFTER`], gzip-compressed.
    pub fn archive(&self) -> Vec<u8> {
        let mut tar = Builder::new(Vec::new());
        file(&mut tar, BEFORE.as_bytes(), BEFORE_CONTENT);
        tar.get_mut().extend_from_slice(&self.entries);
        file(&mut tar, AFTER.as_bytes(), b"never written\n");
        gzip(&tar.into_inner().expect("an archive in memory"))
    }
}

fn case(
    name: &'static str,
    rule: &'static str,
    entry: impl Into<String>,
    build: impl FnOnce(&mut Builder<Vec<u8>>),
) -> Case {
    let mut b = Builder::new(Vec::new());
    build(&mut b);
    Case {
        name,
        rule,
        entry: entry.into(),
        planted_symlink: None,
        // `get_ref`: the entries without the two zero blocks `into_inner` would add.
        entries: b.get_ref().clone(),
    }
}

/// The corpus; `sentinel` is the absolute path of the sentinel directory.
pub fn corpus(sentinel: &Path) -> Vec<Case> {
    let sentinel_str = sentinel
        .to_str()
        .expect("a UTF-8 sentinel path")
        .to_string();
    let pwned = format!("{sentinel_str}/pwned");
    let keep = format!("{sentinel_str}/keep");
    let huge = "abcdefgh/".repeat(500) + "x";
    let component = "c".repeat(300);
    let planted = |mut c: Case| {
        c.planted_symlink = Some("a");
        c
    };
    vec![
        // Paths.
        case("absolute-path", "absolute-path", pwned.clone(), |b| {
            file(b, pwned.as_bytes(), b"pwned")
        }),
        case("dotdot", "parent-component", "../sentinel/pwned", |b| {
            file(b, b"../sentinel/pwned", b"pwned")
        }),
        case(
            "inner-dotdot",
            "parent-component",
            "a/../../sentinel/pwned",
            |b| file(b, b"a/../../sentinel/pwned", b"pwned"),
        ),
        case("pax-dotdot", "parent-component", "../sentinel/pwned", |b| {
            pax(b, "path", b"../sentinel/pwned");
            file(b, b"innocent", b"pwned");
        }),
        case("dot-component", "empty-or-dot-component", "./x", |b| {
            file(b, b"./x", b"1")
        }),
        case("empty-component", "empty-or-dot-component", "a//x", |b| {
            file(b, b"a//x", b"1")
        }),
        case(
            "nul-in-name",
            "nul-in-path",
            "ok\\0/../../sentinel/pwned",
            |b| {
                long(b, EntryType::GNULongName, b"ok\0/../../sentinel/pwned");
                file(b, b"ok", b"pwned");
            },
        ),
        case("not-utf8", "not-utf8", "bad", |b| file(b, b"bad\xff", b"1")),
        case("huge-name", "path-too-long", "abcdefgh/abcdefgh/", |b| {
            file(b, huge.as_bytes(), b"1")
        }),
        case("huge-component", "component-too-long", "ccccc", |b| {
            file(b, format!("ok/{component}").as_bytes(), b"1")
        }),
        case(
            "megabyte-long-name",
            "metadata-too-large",
            "(the entry",
            |b| {
                long(b, EntryType::GNULongName, &vec![b'a'; 1 << 20]);
                file(b, b"x", b"1");
            },
        ),
        // Symlinks, then writes through them.
        case("symlink-dotdot-then-write", "symlink-escapes", "a", |b| {
            symlink(b, b"a", b"..");
            file(b, b"a/sentinel/pwned", b"pwned");
        }),
        case(
            "symlink-absolute-then-write",
            "symlink-absolute",
            "a",
            |b| {
                symlink(b, b"a", sentinel_str.as_bytes());
                file(b, b"a/pwned", b"pwned");
            },
        ),
        case("nested-symlink-out", "symlink-escapes", "x/y/s", |b| {
            symlink(b, b"x/y/s", b"../../../sentinel")
        }),
        case("long-symlink-out", "symlink-escapes", "l", |b| {
            symlink(
                b,
                b"l",
                format!("{}../../sentinel", "x/../".repeat(30)).as_bytes(),
            )
        }),
        // Symlinks inside one by one, not together.
        case("symlink-chain-out", "symlink-escapes", "e", |b| {
            symlink(b, b"l", b".");
            symlink(b, b"e", b"l/l/l/../sentinel/keep");
        }),
        case(
            "symlink-chain-out-reversed",
            "symlink-escapes",
            "l (the symlink e resolves through it)",
            |b| {
                symlink(b, b"e", b"l/l/l/../sentinel/keep");
                symlink(b, b"l", b".");
            },
        ),
        case("symlink-dot-chain-to-etc", "symlink-escapes", "e", |b| {
            symlink(b, b"l", b".");
            let e = format!("{}{}etc/passwd", "l/".repeat(10), "../".repeat(10));
            symlink(b, b"e", e.as_bytes());
        }),
        case(
            "symlink-through-parent-link",
            "symlink-escapes",
            "d/x",
            |b| {
                symlink(b, b"d/up", b"..");
                symlink(b, b"d/x", b"up/../sentinel/keep");
            },
        ),
        case("symlink-loop", "symlink-loop", "b", |b| {
            symlink(b, b"a", b"b");
            symlink(b, b"b", b"a");
        }),
        planted(case(
            "symlink-through-planted-symlink",
            "symlink-escapes",
            "x",
            |b| symlink(b, b"x", b"a/keep"),
        )),
        case(
            "write-through-inside-symlink",
            "symlink-in-path",
            "a/pwned",
            |b| {
                symlink(b, b"a", b"b");
                file(b, b"a/pwned", b"pwned");
            },
        ),
        planted(case(
            "write-through-planted-symlink",
            "symlink-in-path",
            "a/pwned",
            |b| file(b, b"a/pwned", b"pwned"),
        )),
        planted(case(
            "directory-through-planted-symlink",
            "symlink-in-path",
            "a/sub",
            |b| raw(b, b"a/sub/", EntryType::Directory, &[], None),
        )),
        // Entry types.
        case("hardlink-out", "hardlink", "h", |b| {
            raw(b, b"h", EntryType::Link, &[], Some(b"../sentinel/keep"))
        }),
        case("hardlink-absolute", "hardlink", "h2", |b| {
            raw(b, b"h2", EntryType::Link, &[], Some(keep.as_bytes()))
        }),
        case("char-device", "device", "null", |b| {
            raw(b, b"null", EntryType::Char, &[], None)
        }),
        case("block-device", "device", "disk", |b| {
            raw(b, b"disk", EntryType::Block, &[], None)
        }),
        case("fifo", "fifo", "pipe", |b| {
            raw(b, b"pipe", EntryType::Fifo, &[], None)
        }),
        case("contiguous-file", "unsupported-type", "c", |b| {
            raw(b, b"c", EntryType::Continuous, b"1", None)
        }),
        // Limits (the defaults): a header claiming 33 GiB, refused before any byte of it.
        case("claims-33-gib", "too-large", "big", |b| {
            let mut h = Header::new_gnu();
            h.as_old_mut().name[..3].copy_from_slice(b"big");
            h.set_entry_type(EntryType::Regular);
            h.set_size(33 << 30);
            h.set_mode(0o644);
            h.set_cksum();
            b.get_mut().extend_from_slice(h.as_bytes());
        }),
    ]
}

/// A well-formed archive of outputs, for the case that must work: a directory, files (one
/// executable), and a symlink that stays inside. Returns it with its file count and bytes.
pub fn benign() -> (Vec<u8>, u64, u64) {
    let mut b = Builder::new(Vec::new());
    raw(&mut b, b"out/", EntryType::Directory, &[], None);
    let files: [(&str, &[u8], u32); 2] = [
        ("out/report.txt", b"all good\n", 0o644),
        ("out/bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
    ];
    for (name, data, mode) in files {
        let mut h = Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        b.append_data(&mut h, name, data).expect("in memory");
    }
    symlink(&mut b, b"out/latest", b"report.txt");
    let bytes = files.iter().map(|(_, d, _)| d.len() as u64).sum();
    (
        gzip(&b.into_inner().expect("an archive in memory")),
        files.len() as u64,
        bytes,
    )
}

/// Gzip-compresses `tar`.
pub fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(tar).expect("in memory");
    gz.finish().expect("in memory")
}

/// A GNU long-name (`L`) or long-link (`K`) entry carrying `bytes`.
pub fn long(b: &mut Builder<Vec<u8>>, kind: EntryType, bytes: &[u8]) {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(bytes.len() as u64 + 1);
    h.set_cksum();
    let mut data = bytes.to_vec();
    data.push(0);
    b.append(&h, data.as_slice()).expect("in memory");
}

/// An entry whose name and link name are written as raw bytes (no validation at all).
pub fn raw(
    b: &mut Builder<Vec<u8>>,
    name: &[u8],
    kind: EntryType,
    data: &[u8],
    link: Option<&[u8]>,
) {
    if name.len() > 100 {
        long(b, EntryType::GNULongName, name);
    }
    if let Some(l) = link.filter(|l| l.len() > 100) {
        long(b, EntryType::GNULongLink, l);
    }
    let mut h = Header::new_gnu();
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    if let Some(l) = link {
        let n = l.len().min(100);
        h.as_old_mut().linkname[..n].copy_from_slice(&l[..n]);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    if matches!(kind, EntryType::Char | EntryType::Block) {
        h.set_device_major(1).expect("a GNU header");
        h.set_device_minor(3).expect("a GNU header");
    }
    h.set_cksum();
    b.append(&h, data).expect("in memory");
}

/// A regular file entry.
pub fn file(b: &mut Builder<Vec<u8>>, name: &[u8], data: &[u8]) {
    raw(b, name, EntryType::Regular, data, None);
}

/// A symlink entry.
pub fn symlink(b: &mut Builder<Vec<u8>>, name: &[u8], target: &[u8]) {
    raw(b, name, EntryType::Symlink, &[], Some(target));
}

/// A pax extended header (`x`) with one record.
pub fn pax(b: &mut Builder<Vec<u8>>, key: &str, value: &[u8]) {
    let body_len = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body_len + 2;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    raw(b, b"PaxHeaders/x", EntryType::XHeader, &record, None);
}
