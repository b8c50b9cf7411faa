//! A fleet of hosts fed from one repository: the desired-state file pulled
//! from git (`git`), applied only on fast-forward moves and, when asked,
//! only when signed by a trusted key.

pub mod git;
pub mod hosts;

use std::path::Path;

use crate::config::{self, Desired};
use crate::error::{Error, Result};

/// Load the file of a checkout: a `state_dir` that would resolve inside the
/// work tree (relative, or the default) resolves beside it instead, so no
/// fetch or checkout can ever touch the journal.
pub fn load_checkout(remote: &git::Remote) -> Result<Desired> {
    let mut desired = config::load(&remote.file())?;
    rebase_state_dir(&mut desired, &remote.repo(), &remote.dir);
    Ok(desired)
}

fn rebase_state_dir(desired: &mut Desired, repo: &Path, dir: &Path) {
    if let Ok(rel) = desired.state_dir.strip_prefix(repo) {
        desired.state_dir = dir.join(rel);
    }
}

/// What one fetch means for the desired state in force.
pub enum Pulled {
    /// A new commit that may be applied, with its (valid) desired state; the
    /// work tree is at it. `from`: the commit in force before.
    New {
        desired: Box<Desired>,
        commit: String,
        from: Option<String>,
    },
    /// Nothing new: the applied commit stays in force.
    Same { commit: String },
    /// Something happened that keeps the applied commit in force: a refused
    /// commit (rewound, unsigned), an invalid file (its `diagnostics`), an
    /// unreachable remote (`unreachable`). The work tree is at `commit`.
    Kept {
        commit: String,
        why: String,
        diagnostics: Vec<crate::config::Diagnostic>,
        unreachable: bool,
    },
}

/// Fetch and decide: a new commit whose file is valid, or the applied one
/// (the last good state) and why. `Err` only when there is no last good
/// state to keep (the first fetch failed or was refused).
pub fn pull(remote: &git::Remote) -> Result<Pulled> {
    use git::Fetched;
    let applied = || remote.record().applied;
    let kept = |why: String, diagnostics, unreachable, first: Error| match applied() {
        Some(commit) => Ok(Pulled::Kept {
            commit,
            why,
            diagnostics,
            unreachable,
        }),
        None => Err(first),
    };
    match remote.fetch() {
        Ok(Fetched::Unchanged(commit)) => Ok(Pulled::Same { commit }),
        Ok(Fetched::New { commit, from }) => match load_checkout(remote) {
            Ok(d) => Ok(Pulled::New {
                desired: Box::new(d),
                commit,
                from,
            }),
            Err(e) => {
                let why = format!(
                    "commit {} has an invalid desired-state file: {e}",
                    git::short(&commit)
                );
                remote.note_error(&why);
                remote.restore()?;
                let diagnostics = match &e {
                    Error::Invalid(d) => d.clone(),
                    _ => Vec::new(),
                };
                kept(why, diagnostics, false, e)
            }
        },
        Ok(Fetched::Refused { commit, why }) => {
            let why = format!("commit {} not applied: {why}", git::short(&commit));
            kept(why.clone(), Vec::new(), false, Error::Usage(why))
        }
        Err(e) => kept(e.to_string(), Vec::new(), true, e),
    }
}

/// [`pull`], then the desired state in force and its commit (loaded from the
/// work tree unless the pull brought it), and what to say about a commit not taken.
pub fn pull_and_load(remote: &git::Remote) -> Result<(Desired, String, Option<String>)> {
    match pull(remote)? {
        Pulled::New {
            desired, commit, ..
        } => Ok((*desired, commit, None)),
        Pulled::Same { commit } => Ok((load_checkout(remote)?, commit, None)),
        Pulled::Kept { commit, why, .. } => Ok((load_checkout(remote)?, commit, Some(why))),
    }
}
