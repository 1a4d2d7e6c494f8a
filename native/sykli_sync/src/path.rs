//! The path rules shared by manifests, the extractor and `pack`.

use crate::error::{Error, Result, Rule};

/// The longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// The longest path component accepted, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Checks that `bytes` is a relative, normalized, '/'-separated path: not empty, no leading
/// `/`, no empty, `.` or `..` components, no NUL, UTF-8, within the length limits.
/// Returns it as `&str`.
pub fn check_path(bytes: &[u8]) -> Result<&str> {
    check_path_rule(bytes).map_err(|rule| Error::refused(bytes, rule))
}

pub(crate) fn check_path_rule(bytes: &[u8]) -> Result<&str, Rule> {
    if bytes.contains(&0) {
        return Err(Rule::NulInPath);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| Rule::NotUtf8)?;
    if s.len() > MAX_PATH_BYTES {
        return Err(Rule::PathTooLong);
    }
    if s.is_empty() {
        return Err(Rule::EmptyPath);
    }
    if s.starts_with('/') {
        return Err(Rule::AbsolutePath);
    }
    // One pass over the components (this runs for every entry of every manifest read).
    // `..` is reported before other component problems: it is the one that matters.
    let b = s.as_bytes();
    let mut first_problem = None;
    let (mut start, mut i) = (0, 0);
    while i <= b.len() {
        if i == b.len() || b[i] == b'/' {
            let c = &b[start..i];
            if c == b".." {
                return Err(Rule::ParentComponent);
            }
            if first_problem.is_none() {
                if c.is_empty() || c == b"." {
                    first_problem = Some(Rule::EmptyOrDotComponent);
                } else if c.len() > MAX_COMPONENT_BYTES {
                    first_problem = Some(Rule::ComponentTooLong);
                }
            }
            start = i + 1;
        }
        i += 1;
    }
    match first_problem {
        Some(rule) => Err(rule),
        None => Ok(s),
    }
}

/// Checks the target of the symlink at `link_path` (already a valid path): not empty, no NUL,
/// UTF-8, at most [`MAX_PATH_BYTES`], relative, and, resolved lexically from the link's
/// directory, never above the root. Symlinks are never followed while extracting, so the
/// lexical check is about what later readers of the tree will see.
pub fn check_symlink_target<'a>(link_path: &str, target: &'a [u8]) -> Result<&'a str> {
    check_symlink_target_rule(link_path, target).map_err(|rule| Error::refused(link_path, rule))
}

pub(crate) fn check_symlink_target_rule<'a>(
    link_path: &str,
    target: &'a [u8],
) -> Result<&'a str, Rule> {
    if target.is_empty() || target.contains(&0) || target.len() > MAX_PATH_BYTES {
        return Err(Rule::SymlinkTargetInvalid);
    }
    let t = std::str::from_utf8(target).map_err(|_| Rule::SymlinkTargetInvalid)?;
    if t.starts_with('/') {
        return Err(Rule::SymlinkAbsolute);
    }
    let mut depth: Vec<&str> = link_path.split('/').collect();
    depth.pop();
    for c in t.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return Err(Rule::SymlinkEscapes);
                }
            }
            other => depth.push(other),
        }
    }
    Ok(t)
}

/// Checks a tree hash: 64 lowercase hex digits (it names directories in the store).
pub fn check_tree_hash(hash: &str) -> Result<()> {
    let b = hash.as_bytes();
    let mut ok = b.len() == 64;
    let mut i = 0;
    while ok && i < b.len() {
        ok = matches!(b[i], b'0'..=b'9' | b'a'..=b'f');
        i += 1;
    }
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidTreeHash(crate::error::display_name(
            hash.as_bytes(),
        )))
    }
}

/// The parent directories of a path, shortest first: `a/b/c` → `a`, `a/b`.
pub(crate) fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(check_path(b"a/b.txt").unwrap(), "a/b.txt");
        for (p, rule) in [
            (&b""[..], Rule::EmptyPath),
            (b"/etc/passwd", Rule::AbsolutePath),
            (b"../x", Rule::ParentComponent),
            (b"a/../../x", Rule::ParentComponent),
            (b"a//b", Rule::EmptyOrDotComponent),
            (b"./a", Rule::EmptyOrDotComponent),
            (b"a/", Rule::EmptyOrDotComponent),
            (b"a\0b", Rule::NulInPath),
            (b"\xff", Rule::NotUtf8),
        ] {
            assert_eq!(check_path(p).unwrap_err().rule(), Some(rule), "{p:?}");
        }
        assert_eq!(
            check_path(&[b'a'; 256]).unwrap_err().rule(),
            Some(Rule::ComponentTooLong)
        );
        let long = "abc/".repeat(1025);
        assert_eq!(
            check_path(long.as_bytes()).unwrap_err().rule(),
            Some(Rule::PathTooLong)
        );
    }

    #[test]
    fn symlink_targets() {
        assert!(check_symlink_target("a/l", b"../b").is_ok());
        assert!(check_symlink_target("a/b/l", b"../../c/./d/").is_ok());
        assert!(check_symlink_target("l", b".").is_ok());
        assert_eq!(
            check_symlink_target("l", b"..").unwrap_err().rule(),
            Some(Rule::SymlinkEscapes)
        );
        assert_eq!(
            check_symlink_target("a/l", b"x/../../..")
                .unwrap_err()
                .rule(),
            Some(Rule::SymlinkEscapes)
        );
        assert_eq!(
            check_symlink_target("l", b"/etc").unwrap_err().rule(),
            Some(Rule::SymlinkAbsolute)
        );
        assert_eq!(
            check_symlink_target("l", b"").unwrap_err().rule(),
            Some(Rule::SymlinkTargetInvalid)
        );
    }

    #[test]
    fn tree_hashes() {
        assert!(check_tree_hash(&"0".repeat(64)).is_ok());
        assert!(check_tree_hash("../../etc").is_err());
        assert!(check_tree_hash(&"A".repeat(64)).is_err());
    }
}
