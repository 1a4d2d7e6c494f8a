//! Source strategies: how the exact source gets to a task's mount paths.

pub mod git_access;
pub mod git_clone;
pub mod pvc;
pub mod s3;
pub mod upload;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    GitClone,
    Pvc,
    S3,
}

/// What the caller knows about the source: the git context and the user's choices.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceOptions {
    #[serde(default)]
    pub strategy: Strategy,
    /// The remote URL to clone (credential-free).
    pub url: Option<String>,
    /// The exact commit.
    pub sha: Option<String>,
    pub branch: Option<String>,
    #[serde(default)]
    pub dirty: bool,
    /// A one-line summary of the changes, for the dirty-tree error.
    #[serde(default)]
    pub dirty_summary: Option<String>,
    #[serde(default)]
    pub allow_dirty: bool,
    #[serde(default)]
    pub clone: git_clone::CloneOptions,
    /// The PVC strategy: the claim and the tree the upload published.
    #[serde(default)]
    pub pvc: Option<pvc::PvcOptions>,
    /// The S3 strategy: the published archive and its presigned URL.
    #[serde(default)]
    pub s3: Option<s3::S3SourceOptions>,
}

/// The source, ready to be put into a Job.
#[derive(Debug, Clone)]
pub enum SourcePlan {
    GitClone(Box<git_clone::GitClonePlan>),
    Pvc(pvc::PvcPlan),
    S3(s3::S3Plan),
}

impl SourcePlan {
    pub fn from_options(opts: &SourceOptions) -> Result<SourcePlan> {
        match opts.strategy {
            Strategy::GitClone => {
                let sha = opts.sha.as_deref().ok_or_else(|| Error::InvalidOption {
                    key: "sha".into(),
                    message: "the git-clone strategy needs the commit to clone".into(),
                })?;
                if opts.dirty && !opts.allow_dirty {
                    return Err(Error::DirtyWorkdir {
                        summary: opts
                            .dirty_summary
                            .clone()
                            .unwrap_or_else(|| "uncommitted changes".into()),
                        sha: sha.to_string(),
                    });
                }
                let url = opts.url.as_deref().ok_or_else(|| Error::InvalidOption {
                    key: "url".into(),
                    message: "the repository has no remote to clone from: add one (git remote add origin URL) or give a clone URL".into(),
                })?;
                Ok(SourcePlan::GitClone(Box::new(
                    git_clone::GitClonePlan::new(url, sha, opts.branch.as_deref(), &opts.clone)?,
                )))
            }
            Strategy::Pvc => {
                let p = opts.pvc.as_ref().ok_or_else(|| Error::InvalidOption {
                    key: "source_pvc".into(),
                    message: "the pvc strategy needs a claim (source_pvc) and an uploaded tree"
                        .into(),
                })?;
                Ok(SourcePlan::Pvc(pvc::PvcPlan::new(p)?))
            }
            Strategy::S3 => {
                let o = opts.s3.as_ref().ok_or_else(|| Error::InvalidOption {
                    key: "s3".into(),
                    message:
                        "the s3 strategy needs a published archive (bucket settings under s3:)"
                            .into(),
                })?;
                Ok(SourcePlan::S3(s3::S3Plan::new(o)?))
            }
        }
    }

    /// Annotations recording what the Job runs.
    pub fn annotations(&self) -> Vec<(String, String)> {
        match self {
            SourcePlan::GitClone(p) => {
                let mut a = vec![
                    ("sykli.io/git-sha".to_string(), p.sha.clone()),
                    ("sykli.io/git-url".to_string(), p.url.clone()),
                ];
                if let Some(b) = &p.branch {
                    a.push(("sykli.io/git-branch".to_string(), b.clone()));
                }
                a
            }
            SourcePlan::Pvc(p) => vec![
                ("sykli.io/source-tree".to_string(), p.tree.clone()),
                ("sykli.io/source-pvc".to_string(), p.claim.clone()),
            ],
            SourcePlan::S3(p) => {
                let mut a = vec![
                    ("sykli.io/source-tree".to_string(), p.tree.clone()),
                    ("sykli.io/source-sha256".to_string(), p.sha256.clone()),
                ];
                if let Some(k) = &p.key {
                    a.push(("sykli.io/source-object".to_string(), k.clone()));
                }
                a
            }
        }
    }
}
