//! A fleet of hosts fed from one repository: the desired-state file pulled
//! from git (`git`), applied only on fast-forward moves and, when asked,
//! only when signed by a trusted key; and host selection (`hosts`).
//!
//! Only a commit that passed every check is ever read, and it is read with
//! its checkout as the root of every file it names (see `config::confine`).
//! A new commit is first read from an export of its own; the work tree moves
//! to it only when its file is valid. Commits that are only looked at (`plan
//! --git`, `status --git`) are read from exports and never move the work tree.

pub mod git;

use std::path::{Path, PathBuf};

use crate::config::{self, Desired, Diagnostic, LoadOptions};
use crate::error::{Error, Result};

/// A commit that was not taken, and why (with the file's diagnostics when it was invalid).
#[derive(Debug, Clone)]
pub struct NotTaken {
    pub commit: Option<String>,
    pub why: String,
    pub diagnostics: Vec<Diagnostic>,
    /// The remote could not be reached (a watch retries later).
    pub unreachable: bool,
}

/// The desired state in force after a pull, and what was not taken.
pub struct InForce {
    pub desired: Desired,
    pub commit: String,
    pub not_taken: Option<NotTaken>,
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
    /// Nothing new: the applied commit stays in force (its work tree as committed).
    Same { commit: String },
    /// A commit not taken: the applied commit (`commit`) stays in force.
    Kept { commit: String, not_taken: NotTaken },
}

/// The work tree's desired state (the applied commit): read with the work
/// tree as its root, a relative state dir beside it, and refused when files
/// it reads are not part of the commit (added by hand).
pub fn load_work_tree(remote: &git::Remote) -> Result<Desired> {
    let repo = remote.repo();
    let mut desired = config::load_with(
        &remote.file(),
        LoadOptions {
            confine: Some(repo.clone()),
            hostname: remote.hostname.clone(),
            ..Default::default()
        },
    )?;
    rebase_state_dir(&mut desired, &repo, &remote.dir);
    let edits = hand_edits(remote, &desired)?;
    if !edits.is_empty() {
        return Err(Error::Usage(format!(
            "the checkout holds files that are not part of the commit where the desired state reads ({}): \
             reconcile reads only what was committed; remove them",
            shown(&edits)
        )));
    }
    Ok(desired)
}

/// Files where the desired state reads that are not as the commit has them
/// (relative to the work tree).
pub fn hand_edits(remote: &git::Remote, desired: &Desired) -> Result<Vec<PathBuf>> {
    let repo = remote.repo();
    let within: Vec<PathBuf> = desired
        .inputs()
        .into_iter()
        .filter_map(|p| p.strip_prefix(&repo).ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    remote.hand_edits(&within)
}

/// The work tree put back as the applied commit has it: tracked files
/// restored; what is left (files added by hand where the desired state reads).
pub fn revert_hand_edits(remote: &git::Remote, desired: &Desired) -> Result<Vec<PathBuf>> {
    remote.restore()?;
    hand_edits(remote, desired)
}

fn shown(paths: &[PathBuf]) -> String {
    let mut s: Vec<String> = paths
        .iter()
        .take(5)
        .map(|p| crate::output::escape(&p.display().to_string()).into_owned())
        .collect();
    if paths.len() > 5 {
        s.push(format!("and {} more", paths.len() - 5));
    }
    s.join(", ")
}

/// A commit's desired state read from an export of it (the work tree does
/// not move), with the roots it names inside the checkout where the work
/// tree has them: the plan of a preview is the plan of applying it. The
/// export stays while the returned tree lives (sources are read from it).
pub fn load_commit(remote: &git::Remote, commit: &str) -> Result<(Desired, git::Tree)> {
    let tree = remote.export(commit)?;
    let desired = load_export(remote, &tree, remote.hostname.clone())?;
    Ok((desired, tree))
}

/// The desired state of an export, as `hostname` (default: this host) takes it.
pub fn load_export(
    remote: &git::Remote,
    tree: &git::Tree,
    hostname: Option<String>,
) -> Result<Desired> {
    let mut desired = config::load_with(
        &tree.path().join(&remote.path),
        LoadOptions {
            confine: Some(tree.path().to_path_buf()),
            // diagnostics name the commit's files as git does: `<commit>:farm.toml`
            shown_as: Some((
                tree.path().to_path_buf(),
                format!("{}:", git::short(tree.commit())),
            )),
            hostname,
            ..Default::default()
        },
    )?;
    rebase_roots(&mut desired, tree.path(), &remote.repo(), &remote.dir);
    Ok(desired)
}

/// A state dir that would resolve inside the work tree (relative, or the
/// default) resolves beside it instead, so no fetch or checkout can ever
/// touch the journal.
fn rebase_state_dir(desired: &mut Desired, repo: &Path, dir: &Path) {
    if let Ok(rel) = desired.state_dir.strip_prefix(repo) {
        desired.state_dir = dir.join(rel);
    }
}

/// Roots under the export `from` moved to where the work tree `work` has
/// them (the state dir beside it, in `dir`); sources stay in the export.
fn rebase_roots(desired: &mut Desired, from: &Path, work: &Path, dir: &Path) {
    let moved = |p: &Path, to: &Path| p.strip_prefix(from).ok().map(|rel| to.join(rel));
    let move_str = |s: &mut String| {
        if let Some(p) = moved(Path::new(s.as_str()), work) {
            *s = p.to_string_lossy().into_owned();
        }
    };
    if let Some(p) = moved(&desired.state_dir, dir) {
        desired.state_dir = p;
    }
    let m = &mut desired.model;
    m.volume.values_mut().for_each(|v| move_str(&mut v.path));
    m.image.values_mut().for_each(|i| move_str(&mut i.root));
    for p in m.plugin.values_mut() {
        if let Some(d) = p.dir.as_mut() {
            move_str(d);
        }
    }
    if let Some(p) = moved(&desired.path, work) {
        desired.path = p;
    }
    for f in desired.files.iter_mut() {
        if let Some(p) = moved(f, work) {
            *f = p;
        }
    }
}

/// Fetch and decide: a new commit whose file is valid, or the applied one
/// (the last good state) and why. `Err` only when there is no last good
/// state to keep (the first fetch failed or was refused).
pub fn pull(remote: &git::Remote) -> Result<Pulled> {
    use git::{Fetched, Role};
    let applied = || remote.record().applied;
    let kept = |not_taken: NotTaken, first: Error| match applied() {
        Some(commit) => Ok(Pulled::Kept { commit, not_taken }),
        None => Err(first),
    };
    match remote.fetch(Role::Apply) {
        Ok(Fetched::Unchanged(commit)) => {
            // the work tree may have been changed by hand: put it back
            remote.checkout(&commit)?;
            Ok(Pulled::Same { commit })
        }
        Ok(Fetched::New { commit, from }) => {
            // read first from an export: the work tree moves only to a valid file
            let loaded = load_commit(remote, &commit).and_then(|_| {
                remote.checkout(&commit)?;
                load_work_tree(remote).inspect_err(|_| {
                    let _ = remote.restore();
                })
            });
            match loaded {
                Ok(d) => Ok(Pulled::New {
                    desired: Box::new(d),
                    commit,
                    from,
                }),
                Err(e) => {
                    let why = format!(
                        "commit {} not applied: {}",
                        git::short(&commit),
                        unusable(&e)
                    );
                    remote.note_refused(&commit, &why);
                    let diagnostics = match &e {
                        Error::Invalid(d) => d.clone(),
                        _ => Vec::new(),
                    };
                    let nt = NotTaken {
                        commit: Some(commit),
                        why,
                        diagnostics,
                        unreachable: false,
                    };
                    kept(nt, e)
                }
            }
        }
        Ok(Fetched::Refused { commit, why }) => {
            let nt = NotTaken {
                commit: Some(commit),
                why: why.clone(),
                diagnostics: Vec::new(),
                unreachable: false,
            };
            kept(nt, Error::Usage(why))
        }
        Err(e) => {
            let nt = NotTaken {
                commit: None,
                why: e.to_string(),
                diagnostics: Vec::new(),
                unreachable: true,
            };
            kept(nt, e)
        }
    }
}

/// Why a commit's file cannot be used, in words.
fn unusable(e: &Error) -> String {
    match e {
        Error::Invalid(d) => format!(
            "it has an invalid desired-state file ({} problem(s))",
            d.len()
        ),
        other => format!("its desired-state file cannot be used: {other}"),
    }
}

/// [`pull`], then the desired state in force: the new commit's, or the
/// applied one's (its work tree put back as committed first).
pub fn pull_and_load(remote: &git::Remote) -> Result<InForce> {
    match pull(remote)? {
        Pulled::New {
            desired, commit, ..
        } => Ok(InForce {
            desired: *desired,
            commit,
            not_taken: None,
        }),
        Pulled::Same { commit } => Ok(InForce {
            desired: load_work_tree(remote)?,
            commit,
            not_taken: None,
        }),
        Pulled::Kept { commit, not_taken } => {
            remote.checkout(&commit)?;
            Ok(InForce {
                desired: load_work_tree(remote)?,
                commit,
                not_taken: Some(not_taken),
            })
        }
    }
}

/// What `plan --git` looks at: the newest commit that may be applied, read
/// from an export (nothing moves, nothing is recorded), or the applied one
/// when the newest is not taken.
pub struct Preview {
    pub desired: Desired,
    pub commit: String,
    pub not_taken: Option<NotTaken>,
    /// The export the desired state reads its sources from.
    pub tree: git::Tree,
}

pub fn preview(remote: &git::Remote) -> Result<Preview> {
    use git::{Fetched, Role};
    let applied = remote.record().applied;
    let last_good = |not_taken: NotTaken, first: Error| -> Result<Preview> {
        let Some(commit) = applied.clone() else {
            return Err(first);
        };
        let (desired, tree) = load_commit(remote, &commit)?;
        Ok(Preview {
            desired,
            commit,
            not_taken: Some(not_taken),
            tree,
        })
    };
    match remote.fetch(Role::Preview) {
        Ok(Fetched::Unchanged(commit)) | Ok(Fetched::New { commit, .. }) => {
            match load_commit(remote, &commit) {
                Ok((desired, tree)) => Ok(Preview {
                    desired,
                    commit,
                    not_taken: None,
                    tree,
                }),
                Err(e) if Some(&commit) != applied.as_ref() => {
                    let nt = NotTaken {
                        why: format!(
                            "commit {} would not be applied: {}",
                            git::short(&commit),
                            unusable(&e)
                        ),
                        diagnostics: match &e {
                            Error::Invalid(d) => d.clone(),
                            _ => Vec::new(),
                        },
                        commit: Some(commit),
                        unreachable: false,
                    };
                    last_good(nt, e)
                }
                Err(e) => Err(e),
            }
        }
        Ok(Fetched::Refused { commit, why }) => last_good(
            NotTaken {
                commit: Some(commit),
                why: why.replacen("not applied", "would not be applied", 1),
                diagnostics: Vec::new(),
                unreachable: false,
            },
            Error::Usage(why),
        ),
        Err(e) => last_good(
            NotTaken {
                commit: None,
                why: e.to_string(),
                diagnostics: Vec::new(),
                unreachable: true,
            },
            e,
        ),
    }
}
