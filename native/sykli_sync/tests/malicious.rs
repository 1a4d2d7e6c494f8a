//! The hardened extractor against a malicious corpus, each archive built byte by byte
//! with the `tar` crate's low-level header API. For each: the error names the rule and
//! the entry, and the sentinel directory next to `dest` (where an escape would land)
//! and `dest`'s parent stay exactly as they were.

mod common;

use std::path::Path;

use common::{gzip, listing};
use sykli_sync::{extract_hardened, Error, Limits, Rule};
use tar::{Builder, EntryType, Header};

struct Sandbox {
    _tmp: tempfile::TempDir,
    parent: std::path::PathBuf,
    dest: std::path::PathBuf,
    sentinel: std::path::PathBuf,
}

fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().to_path_buf();
    let dest = parent.join("dest");
    let sentinel = parent.join("sentinel");
    std::fs::create_dir(&dest).unwrap();
    std::fs::create_dir(&sentinel).unwrap();
    std::fs::write(sentinel.join("keep"), b"untouched").unwrap();
    Sandbox {
        _tmp: tmp,
        parent,
        dest,
        sentinel,
    }
}

impl Sandbox {
    fn assert_untouched(&self, case: &str) {
        assert_eq!(
            listing(&self.parent),
            ["dest", "sentinel"],
            "{case}: something was written next to dest"
        );
        assert_eq!(
            listing(&self.sentinel),
            ["keep"],
            "{case}: the sentinel directory changed"
        );
        assert_eq!(
            std::fs::read(self.sentinel.join("keep")).unwrap(),
            b"untouched",
            "{case}"
        );
        let meta = std::fs::symlink_metadata(self.sentinel.join("keep")).unwrap();
        assert!(meta.file_type().is_file(), "{case}");
    }
}

/// A GNU long-name (`L`) or long-link (`K`) entry carrying `bytes`.
fn long(b: &mut Builder<Vec<u8>>, kind: EntryType, bytes: &[u8]) {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(bytes.len() as u64 + 1);
    h.set_cksum();
    b.append(
        &h,
        bytes
            .iter()
            .copied()
            .chain([0u8])
            .collect::<Vec<_>>()
            .as_slice(),
    )
    .unwrap();
}

/// An entry whose name and link name are written as raw bytes (no validation at all).
fn raw(b: &mut Builder<Vec<u8>>, name: &[u8], kind: EntryType, data: &[u8], link: Option<&[u8]>) {
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
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn file(b: &mut Builder<Vec<u8>>, name: &[u8], data: &[u8]) {
    raw(b, name, EntryType::Regular, data, None);
}

fn symlink(b: &mut Builder<Vec<u8>>, name: &[u8], target: &[u8]) {
    raw(b, name, EntryType::Symlink, &[], Some(target));
}

/// A pax extended header (`x`) with one record.
fn pax(b: &mut Builder<Vec<u8>>, key: &str, value: &[u8]) {
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

fn archive(build: impl FnOnce(&mut Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    build(&mut b);
    gzip(&b.into_inner().unwrap())
}

/// Runs one case in a fresh sandbox; `setup` may prepare `dest` (pre-existing symlinks).
fn refused(
    case: &str,
    rule: Rule,
    entry: &str,
    limits: Limits,
    setup: impl FnOnce(&Sandbox),
    build: impl FnOnce(&mut Builder<Vec<u8>>, &Sandbox),
) {
    let s = sandbox();
    setup(&s);
    let bytes = archive(|b| build(b, &s));
    let err = extract_hardened(&bytes[..], &s.dest, limits).expect_err(case);
    assert_eq!(err.rule(), Some(rule), "{case}: {err}");
    let message = err.to_string();
    assert!(
        matches!(&err, Error::Refused { entry: e, .. } if e.contains(entry)),
        "{case}: {message}"
    );
    assert!(
        message.contains(rule.name()) && message.contains(entry),
        "{case}: {message}"
    );
    s.assert_untouched(case);
}

fn none(_: &Sandbox) {}

#[test]
fn path_rules() {
    let d = Limits::default();
    refused(
        "absolute path",
        Rule::AbsolutePath,
        "/sentinel/pwned",
        d,
        none,
        |b, s| {
            file(
                b,
                s.sentinel.join("pwned").to_str().unwrap().as_bytes(),
                b"pwned",
            )
        },
    );
    refused(
        "../ escape",
        Rule::ParentComponent,
        "../sentinel/pwned",
        d,
        none,
        |b, _| file(b, b"../sentinel/pwned", b"pwned"),
    );
    refused(
        "a/../../x",
        Rule::ParentComponent,
        "a/../../sentinel/pwned",
        d,
        none,
        |b, _| file(b, b"a/../../sentinel/pwned", b"pwned"),
    );
    refused(
        "pax path with ..",
        Rule::ParentComponent,
        "../sentinel/pwned",
        d,
        none,
        |b, _| {
            pax(b, "path", b"../sentinel/pwned");
            file(b, b"innocent", b"pwned");
        },
    );
    refused(
        "dot component",
        Rule::EmptyOrDotComponent,
        "./x",
        d,
        none,
        |b, _| file(b, b"./x", b"1"),
    );
    refused(
        "empty component",
        Rule::EmptyOrDotComponent,
        "a//x",
        d,
        none,
        |b, _| file(b, b"a//x", b"1"),
    );
    refused(
        "NUL in name",
        Rule::NulInPath,
        "ok\\0/../../sentinel/pwned",
        d,
        none,
        |b, _| {
            long(b, EntryType::GNULongName, b"ok\0/../../sentinel/pwned");
            file(b, b"ok", b"pwned");
        },
    );
    refused("not UTF-8", Rule::NotUtf8, "bad", d, none, |b, _| {
        file(b, b"bad\xff", b"1")
    });
    let huge = "abcdefgh/".repeat(500) + "x";
    refused(
        "huge name",
        Rule::PathTooLong,
        "abcdefgh/abcdefgh/",
        d,
        none,
        |b, _| file(b, huge.as_bytes(), b"1"),
    );
    let component = "c".repeat(300);
    refused(
        "huge component",
        Rule::ComponentTooLong,
        "ccccc",
        d,
        none,
        |b, _| file(b, format!("ok/{component}").as_bytes(), b"1"),
    );
}

#[test]
fn symlink_rules() {
    let d = Limits::default();
    refused(
        "symlink to .., then a write through it",
        Rule::SymlinkEscapes,
        "a",
        d,
        none,
        |b, _| {
            symlink(b, b"a", b"..");
            file(b, b"a/sentinel/pwned", b"pwned");
        },
    );
    refused(
        "symlink to an absolute path, then a write through it",
        Rule::SymlinkAbsolute,
        "a",
        d,
        none,
        |b, s| {
            symlink(b, b"a", s.sentinel.to_str().unwrap().as_bytes());
            file(b, b"a/pwned", b"pwned");
        },
    );
    refused(
        "nested symlink climbing out",
        Rule::SymlinkEscapes,
        "x/y/s",
        d,
        none,
        |b, _| {
            symlink(b, b"x/y/s", b"../../../sentinel");
        },
    );
    refused(
        "long symlink target climbing out",
        Rule::SymlinkEscapes,
        "l",
        d,
        none,
        |b, _| {
            symlink(
                b,
                b"l",
                format!("{}../../sentinel", "x/../".repeat(30)).as_bytes(),
            );
        },
    );
    // An allowed symlink is still never followed by a later entry.
    refused(
        "write through an inside symlink",
        Rule::SymlinkInPath,
        "a/pwned",
        d,
        none,
        |b, _| {
            symlink(b, b"a", b"b");
            file(b, b"a/pwned", b"pwned");
        },
    );
    // A symlink already in dest (pointing at the sentinel) is never followed either.
    refused(
        "write through a pre-existing symlink",
        Rule::SymlinkInPath,
        "a/pwned",
        d,
        |s| std::os::unix::fs::symlink(&s.sentinel, s.dest.join("a")).unwrap(),
        |b, _| file(b, b"a/pwned", b"pwned"),
    );
    refused(
        "directory entry through a pre-existing symlink",
        Rule::SymlinkInPath,
        "a/sub",
        d,
        |s| std::os::unix::fs::symlink(&s.sentinel, s.dest.join("a")).unwrap(),
        |b, _| raw(b, b"a/sub/", EntryType::Directory, &[], None),
    );
}

#[test]
fn entry_types() {
    let d = Limits::default();
    refused(
        "hardlink pointing outside",
        Rule::Hardlink,
        "h",
        d,
        none,
        |b, _| {
            raw(b, b"h", EntryType::Link, &[], Some(b"../sentinel/keep"));
        },
    );
    refused(
        "hardlink to an absolute path",
        Rule::Hardlink,
        "h2",
        d,
        none,
        |b, s| {
            raw(
                b,
                b"h2",
                EntryType::Link,
                &[],
                Some(s.sentinel.join("keep").to_str().unwrap().as_bytes()),
            );
        },
    );
    refused("character device", Rule::Device, "null", d, none, |b, _| {
        raw(b, b"null", EntryType::Char, &[], None)
    });
    refused("block device", Rule::Device, "disk", d, none, |b, _| {
        raw(b, b"disk", EntryType::Block, &[], None)
    });
    refused("FIFO", Rule::Fifo, "pipe", d, none, |b, _| {
        raw(b, b"pipe", EntryType::Fifo, &[], None)
    });
    refused(
        "contiguous file",
        Rule::UnsupportedType,
        "c",
        d,
        none,
        |b, _| raw(b, b"c", EntryType::Continuous, b"1", None),
    );
}

#[test]
fn limits() {
    let small = Limits {
        max_entries: 10,
        max_total_bytes: 1000,
    };
    refused(
        "entry over the size limit",
        Rule::TooLarge,
        "big",
        small,
        none,
        |b, _| {
            file(b, b"small", &[7u8; 600]);
            file(b, b"big", &[7u8; 600]);
        },
    );
    refused(
        "too many entries",
        Rule::TooManyEntries,
        "3",
        Limits {
            max_entries: 2,
            ..small
        },
        none,
        |b, _| {
            for name in ["1", "2", "3"] {
                file(b, name.as_bytes(), b"x");
            }
        },
    );
    refused(
        "a long name of a megabyte",
        Rule::MetadataTooLarge,
        "(the entry",
        Limits::default(),
        none,
        |b, _| {
            long(b, EntryType::GNULongName, &vec![b'a'; 1 << 20]);
            file(b, b"x", b"1");
        },
    );

    // Nothing of the refused entry was written: the check comes before the file exists.
    let s = sandbox();
    let bytes = archive(|b| {
        file(b, b"small", &[7u8; 600]);
        file(b, b"big", &[7u8; 600]);
    });
    extract_hardened(&bytes[..], &s.dest, small).unwrap_err();
    assert_eq!(listing(&s.dest), ["small"]);
}

#[test]
fn existing_files_and_symlinks_at_the_final_path_are_replaced_not_followed() {
    let s = sandbox();
    std::os::unix::fs::symlink(s.sentinel.join("keep"), s.dest.join("f")).unwrap();
    std::os::unix::fs::symlink(&s.sentinel, s.dest.join("d")).unwrap();
    std::fs::write(s.dest.join("plain"), b"old").unwrap();
    let bytes = archive(|b| {
        file(b, b"f", b"new f");
        file(b, b"d", b"new d");
        file(b, b"plain", b"new plain");
        symlink(b, b"f2", b"f");
    });
    let report = extract_hardened(&bytes[..], &s.dest, Limits::default()).unwrap();
    assert_eq!((report.files, report.symlinks), (3, 1));
    s.assert_untouched("replace");
    for (name, content) in [("f", "new f"), ("d", "new d"), ("plain", "new plain")] {
        let meta = std::fs::symlink_metadata(s.dest.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name}");
        assert_eq!(std::fs::read_to_string(s.dest.join(name)).unwrap(), content);
    }
}

#[test]
fn owners_are_ignored_and_modes_masked() {
    use std::os::unix::fs::MetadataExt;
    let s = sandbox();
    let bytes = archive(|b| {
        for (name, mode) in [("suid", 0o4777), ("plain", 0o666), ("x", 0o700)] {
            let mut h = Header::new_gnu();
            h.set_size(1);
            h.set_mode(mode);
            h.set_uid(4242);
            h.set_gid(4242);
            b.append_data(&mut h, name, &b"1"[..]).unwrap();
        }
    });
    extract_hardened(&bytes[..], &s.dest, Limits::default()).unwrap();
    let meta = |n: &str| std::fs::metadata(s.dest.join(n)).unwrap();
    assert_eq!(meta("suid").mode() & 0o7777, 0o755);
    assert_eq!(meta("plain").mode() & 0o7777, 0o644);
    assert_eq!(meta("x").mode() & 0o7777, 0o755);
    let me = unsafe { libc::geteuid() };
    assert_eq!(meta("suid").uid(), me);
    s.assert_untouched("modes");
}

#[test]
fn garbage_is_an_archive_error() {
    let s = sandbox();
    let err = extract_hardened(&b"not gzip at all"[..], &s.dest, Limits::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidArchive(_)), "{err}");
    let err = extract_hardened(&gzip(&[1u8; 1024])[..], &s.dest, Limits::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidArchive(_)), "{err}");
    s.assert_untouched("garbage");
    let _ = Path::new("");
}
