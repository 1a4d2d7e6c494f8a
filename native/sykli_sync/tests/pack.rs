//! `pack` (a task's outputs, for the sync back) and `extract_hardened`, round trip.

mod common;

use common::{archive_listing, listing, snapshot, symlink, write};
use sykli_sync::{extract_hardened, pack, Error, Limits, Rule};

fn outputs(root: &std::path::Path) {
    write(root, "dist/app", b"\x7fELF binary", true);
    write(root, "dist/lib/util.js", b"export {}\n", false);
    write(
        root,
        &format!("dist/{}/deep.txt", "long".repeat(40)),
        b"deep\n",
        false,
    );
    std::fs::create_dir_all(root.join("dist/empty")).unwrap();
    symlink(root, "dist/current", "lib/util.js");
    symlink(root, "dist/lib/up", "../app");
    write(root, "report.txt", b"42 passed\n", false);
    symlink(root, "latest", "dist/app");
}

#[test]
fn pack_then_extract_roundtrip() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    outputs(&root);
    write(&root, "not-an-output", b"stays home", false);

    let mut bytes = Vec::new();
    let packed = pack(
        &root,
        &[
            "dist".into(),
            "report.txt".into(),
            "latest".into(),
            "dist/app".into(),
        ],
        &mut bytes,
    )
    .unwrap();
    assert_eq!(
        (packed.files, packed.symlinks, packed.directories),
        (4, 3, 4)
    );
    // "dist/app" was named twice (directly and inside dist): once in the archive.
    assert_eq!(
        archive_listing(&bytes)
            .iter()
            .filter(|(p, _)| p == "dist/app")
            .count(),
        1
    );

    let dest = work.path().join("back");
    let report = extract_hardened(&bytes[..], &dest, Limits::default()).unwrap();
    assert_eq!(
        (report.files, report.symlinks, report.directories),
        (4, 3, 4)
    );
    assert_eq!(report.bytes, packed.bytes);
    std::fs::remove_file(root.join("not-an-output")).unwrap();
    assert_eq!(snapshot(&dest), snapshot(&root));

    // The sync back lands on the user's working directory: existing files are replaced.
    write(&root, "report.txt", b"old report", false);
    extract_hardened(&bytes[..], &root, Limits::default()).unwrap();
    assert_eq!(
        std::fs::read(root.join("report.txt")).unwrap(),
        b"42 passed\n"
    );

    // "." packs the whole root.
    let mut all = Vec::new();
    pack(&root, &[".".into()], &mut all).unwrap();
    let dest2 = work.path().join("all");
    extract_hardened(&all[..], &dest2, Limits::default()).unwrap();
    assert_eq!(snapshot(&dest2), snapshot(&root));
}

#[test]
fn pack_refuses_paths_that_escape_the_root() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    outputs(&root);
    write(work.path(), "outside/secret", b"secret", false);
    symlink(&root, "via", "../outside");
    let err = |paths: &[&str]| {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        pack(&root, &paths, std::io::sink()).unwrap_err()
    };
    assert_eq!(
        err(&["../outside/secret"]).rule(),
        Some(Rule::ParentComponent)
    );
    assert_eq!(
        err(&["dist/../../outside/secret"]).rule(),
        Some(Rule::ParentComponent)
    );
    assert_eq!(err(&["/etc/passwd"]).rule(), Some(Rule::AbsolutePath));
    assert_eq!(err(&["via/secret"]).rule(), Some(Rule::SymlinkInPath));
    // The symlink itself is packed as a symlink... whose target leaves the root: refused,
    // as the extractor on the other side would.
    assert_eq!(err(&["via"]).rule(), Some(Rule::SymlinkEscapes));
    assert!(matches!(err(&["missing"]), Error::Io { path, .. } if path == "missing"));

    let fifo = std::ffi::CString::new(root.join("dist/pipe").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert!(matches!(
        err(&["dist"]),
        Error::UnsupportedFile { kind: "fifo", .. }
    ));
    assert_eq!(listing(&work.path().join("outside")), ["secret"]);
}
