//! One error type for everything the core does. Each variant maps to the atom kind that
//! reaches Elixir as `{:error, {kind, message}}`; the message names the object and the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} is not inside a git repository (run sykli from your repository, or pass its path)", .path.display())]
    NotAGitRepo { path: PathBuf },

    #[error("{} does not exist", .path.display())]
    PathNotFound { path: PathBuf },

    #[error("the repository at {} has no commits yet: commit something first", .path.display())]
    NoCommits { path: PathBuf },

    #[error("git refuses the repository at {}: {message} (if you trust it: git config --global --add safe.directory {})", .path.display(), .path.display())]
    UnsafeRepository { path: PathBuf, message: String },

    #[error("the remote URL {url:?} is a local path: a cluster cannot clone it; push to a server and add it as a remote")]
    LocalRemote { url: String },

    #[error("invalid remote URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("git: {0}")]
    Git(String),

    /// The pipeline (or one task of it) cannot run as given; every problem is listed.
    #[error("{}", .problems.join("\n"))]
    InvalidPipeline { problems: Vec<String> },

    /// A task cannot become a Job as given; every problem is listed.
    #[error("task {task:?}: {}", .problems.join("; "))]
    InvalidTask { task: String, problems: Vec<String> },

    /// An option has a value Kubernetes (or sykli) would refuse.
    #[error("{key}: {message}")]
    InvalidOption { key: String, message: String },

    #[error("the working tree has uncommitted changes ({summary}); the cluster would build {sha} without them. Commit and push them, or allow a dirty tree (--allow-dirty, allow_dirty: true) to build HEAD as committed")]
    DirtyWorkdir { summary: String, sha: String },

    #[error("{0} is not supported yet")]
    Unsupported(String),

    /// Talking to the cluster failed, or a task on it did; `kind` is the atom Elixir sees
    /// (`not_found`, `forbidden`, `unauthorized`, `conflict`, `invalid`, `unreachable`,
    /// `config`, `api`, `image_pull`, `config_error`, `unschedulable`, `pod_rejected`, `clone_failed`,
    /// `oom_killed`, `deadline_exceeded`, `timeout`, `task_failed`, `cancelled`).
    #[error("{message}")]
    Cluster { kind: &'static str, message: String },

    /// Object storage (the S3 strategy) refused or failed; `kind` is `s3_auth` (credentials
    /// refused), `s3_not_found` (no such bucket), or `s3` (anything else).
    #[error("{message}")]
    S3 { kind: &'static str, message: String },

    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The atom kind Elixir matches on.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotAGitRepo { .. } => "not_a_git_repo",
            Error::PathNotFound { .. } => "not_found",
            Error::NoCommits { .. } => "no_commits",
            Error::UnsafeRepository { .. } => "unsafe_repository",
            Error::LocalRemote { .. } => "local_remote",
            Error::InvalidUrl { .. } => "invalid_url",
            Error::Git(_) => "git",
            Error::InvalidPipeline { .. } => "invalid_pipeline",
            Error::InvalidOption { .. } => "invalid_option",
            Error::InvalidTask { .. } => "invalid_task",
            Error::DirtyWorkdir { .. } => "dirty_workdir",
            Error::Unsupported(_) => "unsupported",
            Error::Cluster { kind, .. } => kind,
            Error::S3 { kind, .. } => kind,
            Error::Io { .. } => "io",
        }
    }
}

impl From<git2::Error> for Error {
    fn from(e: git2::Error) -> Self {
        Error::Git(e.message().to_string())
    }
}

impl Error {
    pub fn cluster(kind: &'static str, message: impl Into<String>) -> Error {
        Error::Cluster {
            kind,
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
