//! One error type for the crate. Refusals name the entry and the [`Rule`] it broke.

use std::fmt;
use std::io;
use std::path::Path;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A safety rule of the hardened extractor (and of manifests and `pack`, which apply the
/// same rules so a problem is found on the laptop before anything is uploaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The path is empty.
    EmptyPath,
    /// The path starts with `/`.
    AbsolutePath,
    /// The path has a `..` component.
    ParentComponent,
    /// The path has an empty (`a//b`, trailing `/`) or `.` component.
    EmptyOrDotComponent,
    /// The path contains a NUL byte.
    NulInPath,
    /// The path is not UTF-8.
    NotUtf8,
    /// The path is longer than [`crate::MAX_PATH_BYTES`].
    PathTooLong,
    /// A path component is longer than [`crate::MAX_COMPONENT_BYTES`].
    ComponentTooLong,
    /// A hard link entry (never extracted: it could alias any file).
    Hardlink,
    /// A character or block device entry.
    Device,
    /// A FIFO entry.
    Fifo,
    /// Any other entry type (sparse, contiguous, pax global header, socket...).
    UnsupportedType,
    /// A directory entry where only files and symlinks are expected (`Store::apply`).
    DirectoryNotAllowed,
    /// A symlink target starting with `/`.
    SymlinkAbsolute,
    /// A symlink target that leaves the destination: resolved lexically on its own, or
    /// resolved as the filesystem would, through the other symlinks of the tree.
    SymlinkEscapes,
    /// A symlink that does not resolve within [`crate::MAX_SYMLINK_HOPS`] links (a loop).
    SymlinkLoop,
    /// A symlink target that is empty, has a NUL byte, is too long or is not UTF-8.
    SymlinkTargetInvalid,
    /// A parent component of the path is an existing symlink (never followed).
    SymlinkInPath,
    /// A parent component of the path is an existing non-directory.
    NotADirectory,
    /// A file or symlink would replace a non-empty directory.
    DirectoryInTheWay,
    /// More entries than [`crate::Limits::max_entries`].
    TooManyEntries,
    /// More content than [`crate::Limits::max_total_bytes`].
    TooLarge,
    /// Long-name or pax metadata larger than the extractor buffers.
    MetadataTooLarge,
}

impl Rule {
    /// A stable, kebab-case name of the rule (shown in messages, good for matching).
    pub fn name(self) -> &'static str {
        match self {
            Rule::EmptyPath => "empty-path",
            Rule::AbsolutePath => "absolute-path",
            Rule::ParentComponent => "parent-component",
            Rule::EmptyOrDotComponent => "empty-or-dot-component",
            Rule::NulInPath => "nul-in-path",
            Rule::NotUtf8 => "not-utf8",
            Rule::PathTooLong => "path-too-long",
            Rule::ComponentTooLong => "component-too-long",
            Rule::Hardlink => "hardlink",
            Rule::Device => "device",
            Rule::Fifo => "fifo",
            Rule::UnsupportedType => "unsupported-type",
            Rule::DirectoryNotAllowed => "directory-not-allowed",
            Rule::SymlinkAbsolute => "symlink-absolute",
            Rule::SymlinkEscapes => "symlink-escapes",
            Rule::SymlinkLoop => "symlink-loop",
            Rule::SymlinkTargetInvalid => "symlink-target-invalid",
            Rule::SymlinkInPath => "symlink-in-path",
            Rule::NotADirectory => "not-a-directory",
            Rule::DirectoryInTheWay => "directory-in-the-way",
            Rule::TooManyEntries => "too-many-entries",
            Rule::TooLarge => "too-large",
            Rule::MetadataTooLarge => "metadata-too-large",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Rule::EmptyPath => "the path is empty",
            Rule::AbsolutePath => "absolute paths are refused",
            Rule::ParentComponent => "`..` components are refused",
            Rule::EmptyOrDotComponent => "empty and `.` path components are refused",
            Rule::NulInPath => "the path contains a NUL byte",
            Rule::NotUtf8 => "the path is not UTF-8",
            Rule::PathTooLong => "the path is longer than 4096 bytes",
            Rule::ComponentTooLong => "a path component is longer than 255 bytes",
            Rule::Hardlink => "hard links are refused",
            Rule::Device => "device files are refused",
            Rule::Fifo => "FIFOs are refused",
            Rule::UnsupportedType => "only regular files, directories and symlinks are accepted",
            Rule::DirectoryNotAllowed => "directory entries are not part of a tree",
            Rule::SymlinkAbsolute => "symlinks with an absolute target are refused",
            Rule::SymlinkEscapes => "the symlink target leaves the destination",
            Rule::SymlinkLoop => "the symlink does not resolve within 40 links (a loop)",
            Rule::SymlinkTargetInvalid => {
                "the symlink target is empty, too long, not UTF-8 or contains NUL"
            }
            Rule::SymlinkInPath => "a parent component is a symlink, which is never followed",
            Rule::NotADirectory => "a parent component is not a directory",
            Rule::DirectoryInTheWay => "a non-empty directory is in the way",
            Rule::TooManyEntries => "more entries than the limit",
            Rule::TooLarge => "more content than the size limit",
            Rule::MetadataTooLarge => "long-name or pax metadata larger than 64 KiB",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (rule {})", self.description(), self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An entry (of an archive, a manifest or a `pack` list) broke a safety rule.
    #[error("refused \"{entry}\": {rule}")]
    Refused { entry: String, rule: Rule },

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },

    /// A file differs from the manifest while it is archived or copied.
    #[error("{path} changed during the sync: {detail}")]
    Changed { path: String, detail: String },

    /// A published tree on the claim is not what was published (written in place by
    /// something else that mounts the claim).
    #[error("{path}: {detail}")]
    Tampered { path: String, detail: String },

    #[error("{path}: unsupported file type ({kind}); only regular files and symlinks are synced")]
    UnsupportedFile { path: String, kind: &'static str },

    #[error("invalid manifest: {0}")]
    InvalidManifest(String),

    #[error("invalid archive: {0}")]
    InvalidArchive(String),

    #[error("invalid tree hash {0:?}: expected 64 lowercase hex digits")]
    InvalidTreeHash(String),

    /// The content of an archive does not produce the tree it claims: nothing was published.
    #[error(
        "the archive produces tree {actual}, not the expected {expected}; nothing was published"
    )]
    TreeMismatch { expected: String, actual: String },

    #[error("tree {0} is not in the store")]
    UnknownTree(String),

    #[error("destination {0} exists and is not an empty directory")]
    DestinationNotEmpty(String),

    /// A download failed (the message names the host and path, never the URL's query).
    #[error("download failed: {0}")]
    Download(String),

    /// Downloaded bytes are not the ones that were uploaded.
    #[error("verification failed: {0}")]
    Integrity(String),
}

impl Error {
    /// A short, stable kind for callers that map errors (the NIF's atoms, the CLI's stderr).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Refused { .. } => "refused",
            Error::Io { .. } => "io",
            Error::Changed { .. } => "changed",
            Error::Tampered { .. } => "tampered",
            Error::UnsupportedFile { .. } => "unsupported_file",
            Error::InvalidManifest(_) => "invalid_manifest",
            Error::InvalidArchive(_) => "invalid_archive",
            Error::InvalidTreeHash(_) => "invalid_tree_hash",
            Error::TreeMismatch { .. } => "tree_mismatch",
            Error::UnknownTree(_) => "unknown_tree",
            Error::DestinationNotEmpty(_) => "destination_not_empty",
            Error::Download(_) => "download",
            Error::Integrity(_) => "integrity",
        }
    }

    /// The rule, when this is a refusal.
    pub fn rule(&self) -> Option<Rule> {
        match self {
            Error::Refused { rule, .. } => Some(*rule),
            _ => None,
        }
    }

    pub(crate) fn refused(entry: impl AsRef<[u8]>, rule: Rule) -> Error {
        Error::Refused {
            entry: display_name(entry.as_ref()),
            rule,
        }
    }

    pub(crate) fn io(path: impl fmt::Display, source: io::Error) -> Error {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn io_path(path: &Path, source: io::Error) -> Error {
        Error::io(path.display(), source)
    }
}

/// An entry name for messages: lossy UTF-8, control characters and quotes escaped (NUL as
/// `\0`), long names shortened.
pub(crate) fn display_name(bytes: &[u8]) -> String {
    const SHOWN: usize = 120;
    let shown = &bytes[..bytes.len().min(SHOWN)];
    let mut s = String::from_utf8_lossy(shown).escape_debug().to_string();
    if bytes.len() > SHOWN {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}
