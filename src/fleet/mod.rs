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

/// Fetch, then load the file of the commit to use: the new one when it may be
/// applied and is valid, else the applied one (the last good state). Returns
/// the desired state, its commit, and what to say about a commit not taken.
pub fn pull(remote: &git::Remote) -> Result<(Desired, String, Option<String>)> {
    use git::Fetched;
    let fetched = remote.fetch();
    let (commit, note) = match fetched {
        Ok(Fetched::Unchanged(c)) => (c, None),
        Ok(Fetched::New { commit, .. }) => match load_checkout(remote) {
            Ok(d) => return Ok((d, commit, None)),
            Err(e) => {
                let why = format!(
                    "commit {} has an invalid desired-state file: {e}",
                    git::short(&commit)
                );
                remote.note_error(&why);
                remote.restore()?;
                match remote.record().applied {
                    Some(applied) => (applied, Some(why)),
                    None => return Err(e),
                }
            }
        },
        Ok(Fetched::Refused { commit, why }) => {
            let note = format!("commit {} not applied: {why}", git::short(&commit));
            let applied = remote
                .record()
                .applied
                .ok_or_else(|| Error::Usage(note.clone()))?;
            (applied, Some(note))
        }
        Err(e) => {
            // unreachable: the last good state stays in force, when there is one
            match remote.record().applied {
                Some(applied) => (applied, Some(e.to_string())),
                None => return Err(e),
            }
        }
    };
    let desired = load_checkout(remote)?;
    Ok((desired, commit, note))
}
