//! The hardened extractor against the malicious corpus (`sykli_testkit::hostile_archives`,
//! shared with the end-to-end test where a hostile receiver pod answers the product's sync
//! back with it), and cases of its own: limits of the test's choosing, what an entry
//! replaces, owners and modes, garbage. For each refusal: the error names the rule and the
//! entry, and the sentinel directory next to `dest` (where an escape would land) and
//! `dest`'s parent stay exactly as they were.

mod common;

use common::{gzip, listing};
use sykli_sync::{extract_hardened, Error, Limits, Rule};
use sykli_testkit::hostile_archives::{self as corpus, file, symlink, AFTER, BEFORE};
use tar::{Builder, Header};

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
fn the_corpus_is_refused_by_rule_and_entry_and_nothing_lands_outside() {
    let mut seen = Vec::new();
    for case in corpus::corpus(&sandbox().sentinel) {
        // A sandbox per case, and the case rebuilt for its sentinel's absolute path.
        let s = sandbox();
        let case = corpus::corpus(&s.sentinel)
            .into_iter()
            .find(|c| c.name == case.name)
            .unwrap();
        if let Some(name) = case.planted_symlink {
            std::os::unix::fs::symlink(&s.sentinel, s.dest.join(name)).unwrap();
        }
        let err =
            extract_hardened(&case.archive()[..], &s.dest, Limits::default()).expect_err(case.name);
        assert_eq!(
            err.rule().map(Rule::name),
            Some(case.rule),
            "{}: {err}",
            case.name
        );
        let message = err.to_string();
        assert!(
            matches!(&err, Error::Refused { entry, .. } if entry.contains(&case.entry)),
            "{}: {message}",
            case.name
        );
        assert!(message.contains(case.rule), "{}: {message}", case.name);
        s.assert_untouched(case.name);
        // The documented partial result: what came before the refusal stays written,
        // nothing after it is.
        assert_eq!(
            std::fs::read(s.dest.join(BEFORE)).unwrap(),
            corpus::BEFORE_CONTENT,
            "{}",
            case.name
        );
        assert!(!s.dest.join(AFTER).exists(), "{}", case.name);
        seen.push(case.rule);
    }
    // The corpus covers every rule an archive from outside can break.
    for rule in [
        Rule::AbsolutePath,
        Rule::ParentComponent,
        Rule::EmptyOrDotComponent,
        Rule::NulInPath,
        Rule::NotUtf8,
        Rule::PathTooLong,
        Rule::ComponentTooLong,
        Rule::MetadataTooLarge,
        Rule::SymlinkEscapes,
        Rule::SymlinkLoop,
        Rule::SymlinkAbsolute,
        Rule::SymlinkInPath,
        Rule::Hardlink,
        Rule::Device,
        Rule::Fifo,
        Rule::UnsupportedType,
        Rule::TooLarge,
    ] {
        assert!(seen.contains(&rule.name()), "no case for {rule:?}");
    }
}

#[test]
fn symlinks_are_checked_together_as_they_arrive() {
    // A file replacing a symlink that another one resolves through: with `p` a symlink,
    // `x` stays inside; with `p` a plain name, `l/p/../..` is above `dest`.
    refused(
        "a file replacing a symlink another resolves through",
        Rule::SymlinkEscapes,
        "p (the symlink x resolves through it)",
        Limits::default(),
        none,
        |b, _| {
            symlink(b, b"l", b".");
            symlink(b, b"p", b"a/b");
            symlink(b, b"x", b"l/p/../../sentinel/keep");
            file(b, b"p", b"now a file");
        },
    );
    // The same with a directory entry, and with a symlink retargeted.
    refused(
        "a directory replacing a symlink another resolves through",
        Rule::SymlinkEscapes,
        "p (the symlink x resolves through it)",
        Limits::default(),
        none,
        |b, _| {
            symlink(b, b"l", b".");
            symlink(b, b"p", b"a/b");
            symlink(b, b"x", b"l/p/../../sentinel/keep");
            corpus::raw(b, b"p/", tar::EntryType::Directory, &[], None);
        },
    );
    refused(
        "a symlink retargeted under another",
        Rule::SymlinkEscapes,
        "d/up (the symlink d/x resolves through it)",
        Limits::default(),
        none,
        |b, _| {
            symlink(b, b"d/up", b"sub");
            symlink(b, b"d/x", b"up/../../sentinel/keep");
            symlink(b, b"d/up", b"..");
        },
    );
    // Through a symlink the destination already holds (inside, so it is not planted as
    // the corpus plants one): `dest/l` → `.`.
    refused(
        "through an existing symlink of dest",
        Rule::SymlinkEscapes,
        "e",
        Limits::default(),
        |s| std::os::unix::fs::symlink(".", s.dest.join("l")).unwrap(),
        |b, _| symlink(b, b"e", b"l/../sentinel/keep"),
    );
}

#[test]
fn symlinks_through_symlinks_that_stay_inside_are_extracted() {
    let s = sandbox();
    std::fs::create_dir(s.dest.join("existing")).unwrap();
    std::os::unix::fs::symlink("existing", s.dest.join("old")).unwrap();
    let bytes = archive(|b| {
        // Links to links, some written before what they point at, some through a link
        // the destination already holds.
        symlink(b, b"lib/libfoo.so", b"libfoo.so.1");
        symlink(b, b"lib/libfoo.so.1", b"libfoo.so.1.2");
        file(b, b"lib/libfoo.so.1.2", b"ELF");
        symlink(b, b"node_modules/.bin/tool", b"../pkg/bin/tool");
        file(b, b"node_modules/pkg/bin/tool", b"#!/bin/sh\n");
        symlink(b, b"usr/lib", b"../lib");
        symlink(b, b"usr/local/lib", b"../lib/libfoo.so");
        symlink(b, b"here", b".");
        symlink(b, b"deep", b"here/here/usr/local/lib");
        symlink(b, b"via-old", b"old/../lib");
        symlink(b, b"dangling", b"nowhere/../lib");
        // Replaced by a file: nothing resolved through it.
        symlink(b, b"tmp", b"lib");
        file(b, b"tmp", b"a file now");
    });
    let report = extract_hardened(&bytes[..], &s.dest, Limits::default()).unwrap();
    assert_eq!((report.files, report.symlinks), (3, 10));
    assert_eq!(std::fs::read(s.dest.join("deep")).unwrap(), b"ELF");
    s.assert_untouched("inside");
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
}
