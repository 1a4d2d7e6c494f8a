//! The path rules shared by manifests, the extractor and `pack`.

use std::borrow::Cow;
use std::collections::BTreeMap;

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
/// directory, never above the root.
///
/// This is the check of one link on its own, and it is not enough for a tree: with `l` → `.`,
/// `e` → `l/../x` stays inside lexically but resolves to `../x`. A tree's links are checked
/// together with a [`LinkSet`], which runs this check first for each of them.
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

/// The most symlinks followed while resolving one link (the link itself included): Linux's
/// limit for one path lookup (`ELOOP`). Past it, the link is refused as a loop.
pub const MAX_SYMLINK_HOPS: usize = 40;

/// The symlinks of one tree, path → target, checked together: what the links resolve to
/// once they are all there, as a filesystem resolves them.
///
/// [`LinkSet::insert`] runs the per-link rules of [`check_symlink_target`] (not empty, no
/// NUL, UTF-8, relative, not too long, lexically inside). [`LinkSet::check`] then resolves
/// a link's target component by component from the link's directory, as the kernel would:
/// a component that is a link of the set is followed (intermediate or last, its target
/// read from its own directory), `..` is applied to the location reached that way, not to
/// the text, and the link is refused ([`Rule::SymlinkEscapes`]) when that ever climbs above
/// the root, or ([`Rule::SymlinkLoop`]) when it follows more than [`MAX_SYMLINK_HOPS`]
/// links. A component that is not a link of the set is taken as a directory (or a file, or
/// nothing: what is not a link never moves the resolution elsewhere), so dangling links are
/// fine as long as they stay inside. The parents of a link must not be links of the set
/// ([`Rule::SymlinkInPath`]): a tree has no entry inside a symlink.
///
/// Only the links of the set are known: a link met on disk but not inserted is not followed.
/// A set is complete for a manifest or for what `pack` writes; the extractor also reads the
/// links that already exist in the destination (see [`crate::extract_hardened`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkSet {
    links: BTreeMap<String, String>,
}

impl LinkSet {
    pub fn new() -> LinkSet {
        LinkSet::default()
    }

    /// Adds the symlink at `path` (checked with [`check_path`]) pointing at `target`,
    /// after the per-link checks of [`check_symlink_target`]; returns the target it
    /// replaces. Nothing is added when a check fails.
    pub fn insert(&mut self, path: &str, target: &[u8]) -> Result<Option<String>> {
        check_path(path.as_bytes())?;
        let target = check_symlink_target(path, target)?;
        Ok(self.insert_checked(path, target))
    }

    /// [`LinkSet::insert`] for a path and target that passed the per-link checks.
    pub(crate) fn insert_checked(&mut self, path: &str, target: &str) -> Option<String> {
        self.links.insert(path.to_string(), target.to_string())
    }

    /// Removes the link at `path` (it was replaced by something else); returns its target.
    pub fn remove(&mut self, path: &str) -> Option<String> {
        self.links.remove(path)
    }

    /// The target of the link at `path`.
    pub fn get(&self, path: &str) -> Option<&str> {
        self.links.get(path).map(String::as_str)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.links.contains_key(path)
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The links, path → target, in byte order of the paths.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.links.iter().map(|(p, t)| (p.as_str(), t.as_str()))
    }

    /// Checks the link at `path` against the whole set (see [`LinkSet`]): refused, naming
    /// `path`, when it resolves above the root or through too many links. A path that is
    /// not a link of the set has nothing to check.
    pub fn check(&self, path: &str) -> Result<()> {
        let Some(target) = self.links.get(path) else {
            return Ok(());
        };
        if ancestors(path).any(|a| self.links.contains_key(a)) {
            return Err(Error::refused(path, Rule::SymlinkInPath));
        }
        resolve_link(
            path,
            target,
            &mut |p| Ok(self.get(p).map(Cow::Borrowed)),
            &mut |_| {},
        )
    }

    /// Checks every link of the set, in path order; the first refused one is the error.
    pub fn check_all(&self) -> Result<()> {
        for path in self.links.keys() {
            self.check(path)?;
        }
        Ok(())
    }
}

/// Where [`resolve_link`] looks links up: the target of the symlink at a path, or `None`
/// when the path is anything else (or nothing).
pub(crate) type LinkLookup<'l, 't> = dyn FnMut(&str) -> Result<Option<Cow<'t, str>>> + 'l;

/// Resolves the target of the symlink at `link` (a checked path whose parents are
/// directories) as the filesystem would, following the links `lookup` knows (see
/// [`LinkSet`] for the rules), and refuses it, naming `link`, when that leaves the root or
/// follows more than [`MAX_SYMLINK_HOPS`] links. `visit` is told every path looked up
/// (what the result depends on). Errors of `lookup` are returned as they are.
pub(crate) fn resolve_link<'t>(
    link: &str,
    target: &'t str,
    lookup: &mut LinkLookup<'_, 't>,
    visit: &mut dyn FnMut(&str),
) -> Result<()> {
    let refuse = |rule| Err(Error::refused(link, rule));
    // The physical location reached, as a path of the root, and where each of its
    // components starts (to pop one on `..`).
    let mut at = String::with_capacity(link.len() + target.len());
    let mut starts: Vec<usize> = Vec::new();
    fn push(at: &mut String, starts: &mut Vec<usize>, name: &str) {
        starts.push(at.len());
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(name);
    }
    if let Some((dir, _)) = link.rsplit_once('/') {
        for c in dir.split('/') {
            push(&mut at, &mut starts, c);
        }
    }
    // The targets being read, innermost last, each with the offset of its next component
    // (past its end once it is read to the end), as the kernel nests symlink lookups.
    let mut pending: Vec<(Cow<'t, str>, usize)> = vec![(Cow::Borrowed(target), 0)];
    let mut followed = 1;
    while let Some((text, offset)) = pending.last_mut() {
        if *offset > text.len() {
            pending.pop();
            continue;
        }
        let rest = &text[*offset..];
        let len = rest.find('/').unwrap_or(rest.len());
        let component = &rest[..len];
        *offset += len + 1;
        match component {
            "" | "." => continue,
            ".." => {
                let Some(start) = starts.pop() else {
                    return refuse(Rule::SymlinkEscapes);
                };
                at.truncate(start);
                continue;
            }
            name => push(&mut at, &mut starts, name),
        }
        visit(&at);
        let Some(next) = lookup(&at)? else {
            continue;
        };
        followed += 1;
        if followed > MAX_SYMLINK_HOPS {
            return refuse(Rule::SymlinkLoop);
        }
        if next.starts_with('/') {
            // Only the links of a destination that were not written by this crate can be
            // absolute: whatever they point at is not the root's.
            return refuse(Rule::SymlinkEscapes);
        }
        // The link's target is read from its directory.
        at.truncate(starts.pop().expect("a component was just pushed"));
        pending.push((next, 0));
    }
    Ok(())
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

/// Whether a path component is, or is taken by some filesystem for, `.git`: any case;
/// with trailing dots or spaces and NTFS stream suffixes (`.git.`, `.git::$INDEX_ALLOCATION`);
/// the 8.3 short name `git~1`; and with the code points HFS+ ignores (`.g\u{200c}it`).
/// What git itself refuses in a tree (`verify_dotfile`), for the same reason.
pub fn is_dot_git(component: &str) -> bool {
    let visible: String = component
        .chars()
        .filter(|c| !hfs_ignorable(*c))
        .flat_map(char::to_lowercase)
        .collect();
    let name = visible.split(':').next().unwrap_or("");
    let name = name.trim_end_matches(['.', ' ']);
    name == ".git" || name == "git~1"
}

fn hfs_ignorable(c: char) -> bool {
    matches!(c as u32, 0x200c..=0x200f | 0x202a..=0x202e | 0x206a..=0x206f | 0xfeff)
}

/// Whether `path` (relative, '/'-separated) has a `.git` component.
pub fn has_dot_git(path: &str) -> bool {
    path.split('/').any(is_dot_git)
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

    fn links(pairs: &[(&str, &str)]) -> LinkSet {
        let mut set = LinkSet::new();
        for (path, target) in pairs {
            set.insert(path, target.as_bytes())
                .unwrap_or_else(|e| panic!("{path} -> {target}: {e}"));
        }
        set
    }

    fn rule_of(set: &LinkSet, path: &str) -> Option<Rule> {
        set.check(path).err().map(|e| {
            assert!(e.to_string().contains(path), "{e}");
            e.rule().expect("a refusal")
        })
    }

    #[test]
    fn linkset_dot_link_chain_climbs_out_though_lexically_inside() {
        let e = format!("{}{}etc/passwd", "l/".repeat(10), "../".repeat(10));
        // On its own, `e` stays inside: the lexical check cannot see it.
        assert!(check_symlink_target("e", e.as_bytes()).is_ok());
        let set = links(&[("l", "."), ("e", &e)]);
        assert_eq!(rule_of(&set, "l"), None);
        assert_eq!(rule_of(&set, "e"), Some(Rule::SymlinkEscapes));
        assert_eq!(
            set.check_all().unwrap_err().rule(),
            Some(Rule::SymlinkEscapes)
        );
        // Without `l`, `e` is a dangling link that stays inside.
        assert!(links(&[("e", &e)]).check_all().is_ok());
    }

    #[test]
    fn linkset_chain_through_a_link_to_a_parent_climbs_out() {
        // `l` → `sub/..` is the root (`sub` a directory); `up` → `l/../SECRET` is `SECRET`
        // lexically, but its `..` applies to where `l` leads: the root's parent.
        assert!(check_symlink_target("up", b"l/../SECRET").is_ok());
        let set = links(&[("l", "sub/.."), ("up", "l/../SECRET")]);
        assert_eq!(rule_of(&set, "l"), None);
        assert_eq!(rule_of(&set, "up"), Some(Rule::SymlinkEscapes));
        // With `sub` → `.`, `l` itself is the root's parent.
        let set = links(&[("sub", "."), ("l", "sub/.."), ("up", "l/../SECRET")]);
        assert_eq!(rule_of(&set, "sub"), None);
        assert_eq!(rule_of(&set, "l"), Some(Rule::SymlinkEscapes));
        assert_eq!(rule_of(&set, "up"), Some(Rule::SymlinkEscapes));
        // Without `l`, `up` is a dangling link inside.
        assert!(links(&[("up", "l/../SECRET")]).check_all().is_ok());
    }

    #[test]
    fn linkset_link_through_a_link_to_dotdot() {
        // At the root, `b` → `..` is refused on its own.
        let mut set = LinkSet::new();
        let err = set.insert("b", b"..").unwrap_err();
        assert_eq!(err.rule(), Some(Rule::SymlinkEscapes));
        assert!(set.is_empty());
        // In a directory, `d/b` → `..` is the root: `d/a` → `b/c` is `c`, inside, but
        // `d/x` → `b/../c` (`d/c` lexically) is `../c`.
        let set = links(&[("d/b", ".."), ("d/a", "b/c"), ("d/x", "b/../c")]);
        assert_eq!(rule_of(&set, "d/b"), None);
        assert_eq!(rule_of(&set, "d/a"), None);
        assert_eq!(rule_of(&set, "d/x"), Some(Rule::SymlinkEscapes));
        // The last component is followed too: `d/y` → `b` is the root, `d/z` → `y/..` climbs
        // out of it.
        let set = links(&[("d/b", ".."), ("d/y", "b"), ("d/z", "y/..")]);
        assert_eq!(rule_of(&set, "d/y"), None);
        assert_eq!(rule_of(&set, "d/z"), Some(Rule::SymlinkEscapes));
    }

    #[test]
    fn linkset_loops_are_refused() {
        let set = links(&[("a", "b"), ("b", "a")]);
        assert_eq!(rule_of(&set, "a"), Some(Rule::SymlinkLoop));
        assert_eq!(rule_of(&set, "b"), Some(Rule::SymlinkLoop));
        assert_eq!(set.check_all().unwrap_err().rule(), Some(Rule::SymlinkLoop));
        assert_eq!(rule_of(&links(&[("s", "s")]), "s"), Some(Rule::SymlinkLoop));
        assert_eq!(
            rule_of(&links(&[("d/s", "../d/s/x")]), "d/s"),
            Some(Rule::SymlinkLoop)
        );
    }

    #[test]
    fn linkset_hops_are_bounded_like_the_kernel() {
        // A chain c0 → c1 → … → c(n-1) → file: opening c0 follows n links.
        let chain = |n: usize| {
            let mut set = LinkSet::new();
            for i in 0..n {
                let next = if i + 1 == n {
                    "file".to_string()
                } else {
                    format!("c{}", i + 1)
                };
                set.insert(&format!("c{i}"), next.as_bytes()).unwrap();
            }
            set
        };
        assert_eq!(rule_of(&chain(MAX_SYMLINK_HOPS), "c0"), None);
        assert_eq!(
            rule_of(&chain(MAX_SYMLINK_HOPS + 1), "c0"),
            Some(Rule::SymlinkLoop)
        );
    }

    #[test]
    fn linkset_legitimate_links_stay_inside() {
        let set = links(&[
            // `lib` → `../lib64` in a directory, and links through it.
            ("usr/lib", "../lib64"),
            ("usr/local/lib", "../lib"),
            ("usr/local/libc.so", "lib/libc.so.6"),
            ("lib64/libc.so.6", "libc-2.39.so"),
            ("current", "releases/v2/"),
            ("releases/v2/up", "../v1/./bin/../share"),
            ("bin/tool", "../current/up/tool"),
            ("here", "."),
            ("again", "here/here/here/usr"),
        ]);
        set.check_all().unwrap();
        for (path, _) in set.iter() {
            set.check(path).unwrap();
        }
    }

    #[test]
    fn linkset_dangling_links_inside_are_fine() {
        let set = links(&[
            ("d/missing", "../nowhere/file"),
            ("d/gone", "gone-dir/../../x"),
            ("d/through", "missing/deeper"),
        ]);
        set.check_all().unwrap();
        // A path that is not a link has nothing to check.
        assert!(set.check("nowhere/file").is_ok());
    }

    #[test]
    fn linkset_keeps_the_per_link_rules_and_no_link_inside_a_link() {
        let mut set = LinkSet::new();
        for (target, rule) in [
            (&b""[..], Rule::SymlinkTargetInvalid),
            (b"a\0b", Rule::SymlinkTargetInvalid),
            (b"\xff", Rule::SymlinkTargetInvalid),
            (b"/etc/passwd", Rule::SymlinkAbsolute),
            (b"x/../..", Rule::SymlinkEscapes),
        ] {
            let err = set.insert("l", target).unwrap_err();
            assert_eq!(err.rule(), Some(rule), "{target:?}");
        }
        assert_eq!(
            set.insert("../l", b"x").unwrap_err().rule(),
            Some(Rule::ParentComponent)
        );
        assert!(set.is_empty());
        assert_eq!(set.insert("l", b"a").unwrap(), None);
        assert_eq!(set.insert("l", b"b").unwrap().as_deref(), Some("a"));
        assert_eq!(set.get("l"), Some("b"));
        let set = links(&[("a", "b"), ("a/x", "y")]);
        assert_eq!(rule_of(&set, "a/x"), Some(Rule::SymlinkInPath));
    }

    #[test]
    fn tree_hashes() {
        assert!(check_tree_hash(&"0".repeat(64)).is_ok());
        assert!(check_tree_hash("../../etc").is_err());
        assert!(check_tree_hash(&"A".repeat(64)).is_err());
    }
}
