//! What a sync back may write into the user's repository: the task's declared outputs and
//! nothing else, never a `.git` path. The archive comes from a pod, so it is checked whole
//! before the first byte is written: a refusal leaves the repository as it was.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::error::{Error, Result};

pub use sykli_sync::{has_dot_git, is_dot_git};

/// Checks every entry of the gzip tar `archive` (what `sykli-sync pack` sent for `outputs`)
/// before anything of it is written: each path is one of `outputs`, below one, or a
/// directory above one (`.` is everything); none has a `.git` component, and no symlink
/// points into one. The first violation is an error naming the entry and the rule. A
/// malformed archive stops the check where it breaks: the extractor refuses it there.
///
/// The archive is read as a stream, with the extractor's budget: an entry's (padded) data
/// plus [`METADATA_BUDGET`] for what precedes the next entry, so a GNU long name or pax
/// header of gigabytes (which the `tar` crate buffers) never reaches memory here either;
/// past it the check stops, and the extractor refuses the entry by its own rule.
pub fn check_archive(archive: impl Read, outputs: &[String], job: &str) -> Result<()> {
    let refused = |path: &str, why: &str| {
        Error::cluster(
            "sync_failed",
            format!(
                "the outputs of {job}: refused {path:?}: {why}; nothing was written (the receiver \
                 sent what the task did not declare, or its pod is not sykli's)"
            ),
        )
    };
    let everything = outputs.iter().any(|o| o == ".");
    let below: Vec<String> = outputs.iter().map(|o| format!("{o}/")).collect();
    let left = Rc::new(Cell::new(METADATA_BUDGET));
    let mut tar = tar::Archive::new(Budget {
        inner: flate2::read::GzDecoder::new(archive),
        left: left.clone(),
    });
    let Ok(entries) = tar.entries() else {
        return Ok(());
    };
    for entry in entries {
        // A malformed archive is the extractor's to refuse, by its rule, at that entry.
        let Ok(mut entry) = entry else { break };
        left.set(entry.size().saturating_add(511) / 512 * 512 + METADATA_BUDGET);
        let raw = entry.path_bytes();
        let path = String::from_utf8_lossy(&raw);
        let path = path.trim_end_matches('/');
        if has_dot_git(path) {
            return Err(refused(path, "a .git path is never written"));
        }
        if let Some(target) = entry.link_name_bytes() {
            if has_dot_git(&String::from_utf8_lossy(&target)) {
                return Err(refused(
                    path,
                    "a link into a .git directory is never written",
                ));
            }
        }
        let is_dir = entry.header().entry_type().is_dir();
        let declared = everything
            || outputs.iter().zip(&below).any(|(o, o_below)| {
                path == o
                    || path.starts_with(o_below.as_str())
                    || (is_dir && o.strip_prefix(path).is_some_and(|r| r.starts_with('/')))
            });
        if !declared {
            return Err(refused(
                path,
                &format!("not one of the declared outputs ({})", outputs.join(", ")),
            ));
        }
        // Entries are read one after another: skip this one's data.
        if std::io::copy(&mut entry, &mut std::io::sink()).is_err() {
            break;
        }
    }
    Ok(())
}

/// What the long-name and pax metadata before an entry may take: the extractor's budget
/// (`sykli_sync`'s `METADATA_BUDGET`), so both read an archive alike.
pub const METADATA_BUDGET: u64 = 64 << 10;

/// A reader that fails once it has given more than its allowance, which the check resets
/// for every entry (as the extractor's own `Budget` does).
struct Budget<R> {
    inner: R,
    left: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other("archive metadata larger than the limit"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what is read of the (compressed) archive.
    struct Counting<'a>(&'a [u8], Rc<Cell<usize>>);

    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.set(self.1.get() + n);
            Ok(n)
        }
    }

    #[test]
    fn a_huge_long_name_is_read_no_further_than_the_metadata_budget() {
        // A GNU long name of 16 MiB of random letters (a gzip stream of over 8 MiB), then a file.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let name: Vec<u8> = (0..16 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 26) as u8
            })
            .collect();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(name.len() as u64);
        h.set_cksum();
        b.append(&h, &name[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_path("ok.txt").unwrap();
        h.set_size(3);
        h.set_cksum();
        b.append(&h, &b"ok\n"[..]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
        let archive = gz.finish().unwrap();
        assert!(archive.len() > 8 << 20, "{} bytes", archive.len());

        let read = Rc::new(Cell::new(0));
        let outputs = vec![".".to_string()];
        check_archive(Counting(&archive, read.clone()), &outputs, "j").unwrap();
        assert!(read.get() < 1 << 20, "read {} bytes", read.get());
    }

    #[test]
    fn every_spelling_of_dot_git_is_one() {
        for name in [
            ".git",
            ".GIT",
            ".Git",
            ".git.",
            ".git ",
            ".git. . ",
            ".git::$INDEX_ALLOCATION",
            "git~1",
            "GIT~1",
            ".g\u{200c}it",
            "\u{feff}.git",
            ".gi\u{206f}T",
        ] {
            assert!(is_dot_git(name), "{name:?}");
        }
        for name in [
            ".gitignore",
            ".github",
            "git",
            ".git2",
            "a.git",
            ".gitmodules",
            "git~2",
        ] {
            assert!(!is_dot_git(name), "{name:?}");
        }
        assert!(has_dot_git("sub/.GIT/config"));
        assert!(!has_dot_git("dist/app.git.tar"));
    }
}
