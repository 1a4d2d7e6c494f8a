//! `sykli_sync`: upload a working tree into a Kubernetes PersistentVolumeClaim
//! incrementally and content-addressed, through exec streams only (see README.md).
//!
//! Used on both sides: on the laptop ([`Manifest::from_paths`], [`diff`],
//! [`write_archive`], and [`extract_hardened`] for the sync back), and inside the cluster
//! by the `sykli-sync` binary ([`Store`]).

mod archive;
mod error;
mod extract;
pub mod fetch;
mod fs;
mod manifest;
mod path;
mod store;

pub use archive::{pack, write_archive, SyncHeader};
pub use error::{Error, Result, Rule};
pub use extract::{extract_hardened, Limits, Report};
pub use fetch::{
    download, extract_tree, hash_file, redact, sha256_of, xml_tag, Download, DownloadReport,
};
pub use manifest::{diff, Delta, Entry, EntryKind, Manifest};
pub use path::{
    check_path, check_symlink_target, check_tree_hash, has_dot_git, is_dot_git, LinkSet,
    MAX_COMPONENT_BYTES, MAX_PATH_BYTES, MAX_SYMLINK_HOPS,
};
pub use store::{ApplyReport, CheckoutReport, Store};
