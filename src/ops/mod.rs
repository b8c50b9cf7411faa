//! One entry point per command, each returning typed results: the only
//! floor the command line calls, and the only place converging (`apply`)
//! meets the test harness. Nothing here prints; `render` turns what these
//! return (and the events they emit) into text, JSON or Markdown.

pub mod apply;
pub mod checks;
pub mod exec;
pub mod export;
pub mod lock;
pub mod monitor;
pub mod plan;
pub mod promote;
pub mod spawn;
pub mod status;
pub mod systemd;
pub mod test;
pub mod validate;
pub mod watch;

use std::path::Path;

pub use crate::fleet::git::{short as short_commit, Remote, Tree};
pub use crate::fleet::NotTaken;

use crate::config::{self, Desired, LoadOptions};
use crate::error::{Error, Result};

/// The desired state a command works on: from a file, or (with a git remote)
/// pulled — the newest commit that may be applied (checked out for an apply,
/// read from an export of it for a preview), or the last good one and why
/// the newest was not taken.
pub struct Loaded {
    pub desired: Desired,
    /// The remote and the commit in force.
    pub git: Option<(Remote, String)>,
    pub not_taken: Option<NotTaken>,
    /// A preview's export, which its sources are read from.
    pub export: Option<Tree>,
}

/// Load from `file`, or pull from `git` (a preview when `preview`).
pub fn load(file: &Path, git: Option<Remote>, opts: LoadOptions, preview: bool) -> Result<Loaded> {
    let Some(remote) = git else {
        return Ok(Loaded {
            desired: config::load_with(file, opts)?,
            git: None,
            not_taken: None,
            export: None,
        });
    };
    let (desired, commit, not_taken, export) = if preview {
        let pv = crate::fleet::preview(&remote)?;
        (pv.desired, pv.commit, pv.not_taken, Some(pv.tree))
    } else {
        let f = crate::fleet::pull_and_load(&remote)?;
        (f.desired, f.commit, f.not_taken, None)
    };
    Ok(Loaded {
        desired,
        git: Some((remote, commit)),
        not_taken,
        export,
    })
}

/// Resource address patterns (`--target`).
pub fn targets(t: &[String]) -> Result<Vec<glob::Pattern>> {
    t.iter()
        .map(|p| {
            glob::Pattern::new(p)
                .map_err(|e| Error::BadArgument(format!("invalid --target pattern `{p}`: {e}")))
        })
        .collect()
}
