//! What every directory-shaped resource shares: observing a published
//! directory against its receipt, and the journaled stage → exchange → cleanup
//! and retire → delete transitions.

use std::fs;
use std::path::Path;

use super::receipt::{check_tree, Drift, Receipt};
use super::recover::{begin_fs, Op};
use super::Context;
use crate::backend::remove_in;
use crate::error::{Error, Result};
use crate::fsops::{self, digest::sha256_bytes, Beneath, Previous};
use crate::state::journal::{Journal, Txn};

/// What is at a managed directory's path.
pub enum DirState {
    Absent,
    /// Something reconcile did not make (no receipt of this kind).
    Foreign,
    Installed {
        receipt: Box<Receipt>,
        drift: Vec<Drift>,
    },
}

/// Observe the directory `rel` beneath `root`: absent, foreign, or installed
/// with its drift from the receipt. Returns the state and a fingerprint
/// (saved plans compare it).
pub fn observe_dir(
    cx: &Context,
    root: &Path,
    rel: &Path,
    kind: &str,
) -> Result<(DirState, String)> {
    let target = root.join(rel);
    let foreign = |mtime: Option<i128>| {
        let fp = format!("foreign:{mtime:?}");
        Ok((DirState::Foreign, sha256_bytes(fp.as_bytes())))
    };
    // looked at beneath its root (opened once for the run), never through a symlink
    let (dir, dir_stat) = match cx.dirs.dir_at(root, rel) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok((DirState::Absent, "absent".into())),
        Err(_) => {
            // a symlink or a file where the directory belongs
            let meta = fs::symlink_metadata(&target).map_err(|e| Error::io(&target, e))?;
            let mtime = meta.modified().ok().and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_nanos() as i128)
            });
            return foreign(mtime);
        }
    };
    let index = cx.fetcher.index;
    match Receipt::read_indexed(&dir, &dir_stat, index, cx.verify).filter(|(r, _)| r.kind == kind) {
        None => foreign(Some(dir_stat.mtime_ns)),
        Some((receipt, receipt_sha256)) => {
            let drift = check_tree(&dir, &dir_stat, &receipt, index, cx.verify)?;
            let mut fp = receipt_sha256.into_bytes();
            for d in &drift {
                fp.extend_from_slice(d.to_string().as_bytes());
            }
            Ok((
                DirState::Installed {
                    receipt: Box::new(receipt),
                    drift,
                },
                sha256_bytes(&fp),
            ))
        }
    }
}

/// Observe a published directory and summarise it for `status`: `absent`
/// when it is not there, `installed(receipt)` when it is ours (plus the first drift).
pub fn observe(
    cx: &Context,
    root: &Path,
    rel: &Path,
    kind: &str,
    absent: &str,
    installed: impl Fn(&Receipt) -> String,
) -> Result<super::Observed> {
    let (state, fingerprint) = observe_dir(cx, root, rel, kind)?;
    let summary = match &state {
        DirState::Absent => absent.to_string(),
        DirState::Foreign => "not made by reconcile".to_string(),
        DirState::Installed { receipt, drift } => match drift.first() {
            None => installed(receipt),
            Some(d) => format!("{}, drifted: {d}", installed(receipt)),
        },
    };
    Ok(super::Observed {
        fingerprint,
        summary,
        detail: super::Detail::Dir(state),
    })
}

/// The state [`observe`] recorded.
pub fn state(o: &super::Observed) -> &DirState {
    match &o.detail {
        super::Detail::Dir(d) => d,
        _ => unreachable!("a directory resource observes a directory"),
    }
}

/// The change for an object that is no longer declared: delete it if it is ours.
pub fn orphan_changes(state: &DirState) -> Vec<super::Change> {
    match state {
        DirState::Installed { .. } => vec![super::Change::new(
            super::Action::Delete,
            "not declared any more (owned)".into(),
        )],
        _ => vec![],
    }
}

/// A one-line reason for drift: the first difference, and how many more.
pub fn drift_reason(drift: &[Drift]) -> Option<String> {
    let first = drift.first()?;
    let more = if drift.len() > 1 {
        format!(" (and {} more)", drift.len() - 1)
    } else {
        String::new()
    };
    Some(format!("file {first}{more}"))
}

/// The opened parent of `rel` (beneath `root`, never through a symlink) and `rel`'s name.
fn parent_of<'r>(root: &Beneath, rel: &'r Path) -> Result<(Beneath, &'r Path)> {
    let name = rel
        .file_name()
        .map(Path::new)
        .ok_or_else(|| Error::io(root.shown(rel), std::io::Error::other("no name")))?;
    let up = rel.parent().unwrap_or(Path::new(""));
    let parent = root
        .open_dir(up)
        .map_err(|e| Error::io(root.shown(up), e))?;
    Ok((parent, name))
}

/// Replace (or create) the directory `rel` beneath `root` atomically. `build`
/// fills the empty staging directory it is given (as a handle: everything it
/// writes stays beneath it) and must write a receipt carrying the transaction
/// id it is given (recovery reads it). On any error the staging directory is
/// removed and the target is untouched.
pub fn replace_dir(
    journal: &mut Journal,
    address: &str,
    root: &Beneath,
    rel: &Path,
    build: impl FnOnce(&Beneath, &str) -> Result<()>,
) -> Result<()> {
    let p = begin_publish(journal, address, root, rel)?;
    let io = |e: std::io::Error| Error::io(p.parent.shown(&p.staging), e);
    let staged = p
        .parent
        .create_dir(&p.staging, 0o755)
        .and_then(|()| p.parent.open_dir(&p.staging))
        .map_err(io)
        .and_then(|dir| {
            build(&dir, &p.txn.id)?;
            fsops::sync_tree(&dir).map_err(io)
        });
    if let Err(e) = staged {
        let _ = remove_in(&p.parent, &p.staging);
        journal.done(p.txn)?;
        return Err(e);
    }
    exchange_in(journal, p, None)
}

/// Exchange the candidate directory `candidate` (beside `rel`, published
/// there earlier by `replace_dir`) in as `rel`, journaled like any publish:
/// the candidate is first renamed to this transaction's staging name and
/// its receipt made to carry the transaction (so recovery tells a done
/// exchange from one that never happened), then one RENAME_EXCHANGE, then
/// the old tree goes. A kill before the exchange (fault point `switch`)
/// leaves the old tree, and recovery removes the staged candidate; after it
/// (`switched`), the new one.
pub fn switch_in(
    journal: &mut Journal,
    address: &str,
    root: &Beneath,
    rel: &Path,
    candidate: &Path,
) -> Result<()> {
    let cand = candidate
        .file_name()
        .map(Path::new)
        .ok_or_else(|| Error::io(root.shown(candidate), std::io::Error::other("no name")))?;
    let p = begin_publish(journal, address, root, rel)?;
    let io = |at: &Path, e: std::io::Error| Error::io(p.parent.shown(at), e);
    p.parent.rename(cand, &p.staging).map_err(|e| io(cand, e))?;
    let staged = p
        .parent
        .open_dir(&p.staging)
        .map_err(|e| io(&p.staging, e))?;
    let (mut receipt, _) = Receipt::read_in(&staged).ok_or_else(|| Error::Resource {
        address: address.to_string(),
        reason: format!(
            "the candidate at {} has no receipt",
            p.parent.shown(cand).display()
        ),
    })?;
    receipt.txn = p.txn.id.clone();
    let bytes = serde_json::to_vec_pretty(&receipt).expect("receipt serialises");
    let name_of = Path::new(super::receipt::RECEIPT_NAME);
    staged
        .write_atomic(name_of, &bytes, 0o644)
        .map_err(|e| Error::io(staged.shown(name_of), e))?;
    crate::fault::point(address, "switch");
    exchange_in(journal, p, Some("switched"))
}

/// A publish transaction begun: the target's parent, its name there, and
/// the staging and retired names that carry the transaction id (so
/// recovery can tell them apart). The caller fills the staging name.
struct Publishing {
    txn: Txn,
    target: std::path::PathBuf,
    parent: Beneath,
    name: std::path::PathBuf,
    staging: std::path::PathBuf,
    retired: std::path::PathBuf,
}

fn begin_publish(
    journal: &mut Journal,
    address: &str,
    root: &Beneath,
    rel: &Path,
) -> Result<Publishing> {
    let target = root.shown(rel);
    let (parent, name) = parent_of(root, rel)?;
    let txn = begin_fs(journal, address, |id| Op::Publish {
        target: target.clone(),
        staging: fsops::staging_path(&target, id),
        retired: fsops::retired_path(&target, id),
    })?;
    let staging = fsops::staging_name(name, &txn.id);
    let retired = fsops::retired_name(name, &txn.id);
    let name = name.to_path_buf();
    journal.step(&txn, "stage")?;
    Ok(Publishing {
        txn,
        target,
        parent,
        name,
        staging,
        retired,
    })
}

/// What is staged goes in as the target (RENAME_EXCHANGE, or two renames
/// where the filesystem refuses it), then the old copy goes; `exchanged`
/// names a fault point right after the exchange.
fn exchange_in(journal: &mut Journal, p: Publishing, exchanged: Option<&str>) -> Result<()> {
    journal.step(&p.txn, "exchange")?;
    let previous = fsops::publish(&p.parent, &p.staging, &p.name, &p.retired).map_err(|e| {
        let _ = remove_in(&p.parent, &p.staging);
        Error::io(&p.target, e)
    })?;
    if let Some(point) = exchanged {
        crate::fault::point(&p.txn.address, point);
    }
    journal.step(&p.txn, "cleanup")?;
    if let Previous::At(old) = previous {
        remove_in(&p.parent, &old).map_err(|e| Error::io(p.parent.shown(&old), e))?;
    }
    journal.done(p.txn)
}

/// Delete the directory (or btrfs subvolume) `rel` beneath `root`: renamed
/// aside in one step (journaled), then removed — never through a symlink.
pub fn remove_dir(journal: &mut Journal, address: &str, root: &Beneath, rel: &Path) -> Result<()> {
    let target = root.shown(rel);
    let (parent, name) = parent_of(root, rel)?;
    let txn = begin_fs(journal, address, |id| Op::Remove {
        target: target.clone(),
        retired: fsops::retired_path(&target, id),
    })?;
    let retired = fsops::retired_name(name, &txn.id);
    journal.step(&txn, "retire")?;
    parent
        .rename(name, &retired)
        .and_then(|()| parent.sync())
        .map_err(|e| Error::io(&target, e))?;
    journal.step(&txn, "cleanup")?;
    remove_in(&parent, &retired).map_err(|e| Error::io(parent.shown(&retired), e))?;
    journal.done(txn)
}
