//! Recovery of the filesystem transactions every resource kind makes
//! ([`Op`]: publish a staged directory, remove one, publish a volume): the
//! `fs` kind of the generic journal. It inspects the filesystem, then removes
//! the retired copy (forward) or staging, restoring the old copy (back).
//!
//! A journal is not trusted to say where to act: each record may only name a
//! target inside a root the desired state declares (or reconcile recorded),
//! and staging and retired names that are exactly the ones its transaction
//! would use; anything else stops recovery with an error naming the record.
//! Recovery then acts through handles on those roots, never through a symlink.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::receipt::RECEIPT_NAME;
use crate::backend::{remove_in, volume_id};
use crate::error::{Error, Result};
use crate::fsops::{self, Beneath};
use crate::state::journal::{Journal, Open, Recover, Txn};

/// What a transaction does to the filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Stage a directory at `staging` and publish it at `target`.
    Publish {
        target: PathBuf,
        staging: PathBuf,
        retired: PathBuf,
    },
    /// Retire `target` (rename it to `retired`) and delete it.
    Remove { target: PathBuf, retired: PathBuf },
    /// Build a volume (btrfs subvolume or directory) at `staging` and publish it
    /// at `target`. Volumes cannot carry a receipt inside (they become read-only
    /// root filesystems), so the `commit` step records the staged volume's id and
    /// the sidecar receipt to write; recovery compares ids to decide.
    Volume {
        target: PathBuf,
        staging: PathBuf,
        retired: PathBuf,
        sidecar: PathBuf,
    },
}

/// What the `commit` step of a [`Op::Volume`] records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeCommit {
    pub id: u64,
    pub receipt: serde_json::Value,
}

/// The kind of the filesystem transactions ([`Op`]) and its record version.
pub const FS_KIND: &str = crate::state::journal::LEGACY_KIND;
const FS_VERSION: u32 = 1;

/// Record the start of a filesystem transaction with everything recovery
/// needs; `op` receives the new transaction id (staging names carry it).
pub fn begin_fs(journal: &mut Journal, address: &str, op: impl FnOnce(&str) -> Op) -> Result<Txn> {
    journal.begin_kind(address, FS_KIND, FS_VERSION, |id| {
        serde_json::to_value(op(id)).expect("an op serialises")
    })
}

/// Recovery of filesystem transactions ([`Op`]): only inside `roots`, the
/// directories the desired state declares or reconcile recorded.
pub struct FsRecover {
    pub roots: Vec<PathBuf>,
}

impl FsRecover {
    fn op(open: &Open) -> std::result::Result<Op, String> {
        if open.version != FS_VERSION {
            return Err(format!(
                "has a filesystem record of version {}",
                open.version
            ));
        }
        serde_json::from_value(open.intent.clone())
            .map_err(|e| format!("has a filesystem record reconcile never writes ({e})"))
    }
}

impl Recover for FsRecover {
    fn kind(&self) -> &'static str {
        FS_KIND
    }

    fn check(&self, open: &Open) -> std::result::Result<(), String> {
        check(&Self::op(open)?, &open.txn, &self.roots).map(|_| ())
    }

    fn recover(&self, open: &Open) -> Result<&'static str> {
        let op = Self::op(open).map_err(|why| Error::State {
            path: PathBuf::from(crate::state::JOURNAL),
            reason: why,
        })?;
        let place = check(&op, &open.txn, &self.roots).map_err(|why| Error::State {
            path: PathBuf::from(crate::state::JOURNAL),
            reason: why,
        })?;
        let commit = open
            .data
            .get("commit")
            .and_then(|d| serde_json::from_value::<VolumeCommit>(d.clone()).ok());
        undo_or_finish(&open.txn, &op, &place, commit.as_ref())
            .map_err(|e| Error::io(place.root.join(&place.rel), e))
    }
}

/// Where a checked record acts: the root it is under, and its target relative to it.
struct Place {
    root: PathBuf,
    rel: PathBuf,
}

/// Does the record only name what its transaction would? Then where it acts.
fn check(op: &Op, txn: &str, roots: &[PathBuf]) -> std::result::Result<Place, String> {
    let well_formed = {
        let parts: Vec<&str> = txn.split('-').collect();
        parts.len() == 3
            && parts[0].bytes().all(|b| b.is_ascii_hexdigit())
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if !well_formed {
        return Err(format!(
            "has a transaction id {txn:?} reconcile never makes"
        ));
    }
    let (target, staging, retired, sidecar) = match op {
        Op::Publish {
            target,
            staging,
            retired,
        } => (target, Some(staging), retired, None),
        Op::Remove { target, retired } => (target, None, retired, None),
        Op::Volume {
            target,
            staging,
            retired,
            sidecar,
        } => (target, Some(staging), retired, Some(sidecar)),
    };
    // a managed path: no staging name in it, but for a candidate's own last name
    let last = target.components().count().saturating_sub(1);
    let plain = target.is_absolute()
        && target.components().enumerate().skip(1).all(|(i, c)| {
            matches!(c, Component::Normal(n) if {
                let n = n.to_string_lossy();
                !fsops::is_staging_name(&n) || (i == last && fsops::is_candidate_name(&n))
            })
        });
    let root = roots
        .iter()
        .filter(|r| plain && target.starts_with(r) && target != *r)
        .max_by_key(|r| r.components().count())
        .ok_or_else(|| {
            format!(
                "names {}, which is inside no managed root",
                target.display()
            )
        })?;
    if staging.is_some_and(|s| *s != fsops::staging_path(target, txn))
        || *retired != fsops::retired_path(target, txn)
    {
        return Err(format!(
            "names staging or retired paths that are not {}'s for this transaction",
            target.display()
        ));
    }
    let rel = target.strip_prefix(root).expect("checked").to_path_buf();
    if let Some(sidecar) = sidecar {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let want = target
            .with_file_name(crate::store::META_DIR)
            .join(format!("{name}.json"));
        if *sidecar != want || rel.components().count() != 2 {
            return Err(format!(
                "names a receipt {} that is not {}'s",
                sidecar.display(),
                target.display()
            ));
        }
    }
    Ok(Place {
        root: root.clone(),
        rel,
    })
}

/// Which transaction published the directory `name` in `dir` (from its receipt).
fn published_by(dir: &Beneath, name: &Path) -> Option<String> {
    #[derive(Deserialize)]
    struct TxnOnly {
        txn: String,
    }
    let bytes = dir
        .open_dir(name)
        .ok()?
        .read(Path::new(RECEIPT_NAME), 16 << 20)
        .ok()?;
    serde_json::from_slice::<TxnOnly>(&bytes)
        .ok()
        .map(|t| t.txn)
}

fn undo_or_finish(
    txn: &str,
    op: &Op,
    place: &Place,
    commit: Option<&VolumeCommit>,
) -> std::io::Result<&'static str> {
    let root = Beneath::open(&place.root)?;
    let name = Path::new(place.rel.file_name().unwrap_or_default());
    let up = place.rel.parent().unwrap_or(Path::new(""));
    let dir = match root.open_dir(up) {
        Ok(d) => d,
        // nothing was ever staged below a parent that is not there
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok("rolled back"),
        Err(e) => return Err(e),
    };
    let staging = fsops::staging_name(name, txn);
    let retired = fsops::retired_name(name, txn);
    let exists = |n: &Path| dir.try_stat(n).map(|s| s.is_some());
    match op {
        Op::Volume { .. } => match commit {
            Some(c) if volume_id(&dir, name).ok() == Some(c.id) => {
                // committed: make sure the receipt is there, then drop the old copy
                let bytes = serde_json::to_vec_pretty(&c.receipt).map_err(std::io::Error::other)?;
                let sidecar =
                    Path::new(crate::store::META_DIR).join(format!("{}.json", name.display()));
                dir.create_dir_all(Path::new(crate::store::META_DIR), 0o755)?;
                dir.write_atomic(&sidecar, &bytes, 0o644)?;
                remove_in(&dir, &staging)?;
                remove_in(&dir, &retired)?;
                Ok("rolled forward")
            }
            _ => {
                if !exists(name)? && exists(&retired)? {
                    dir.rename(&retired, name)?;
                }
                remove_in(&dir, &staging)?;
                Ok("rolled back")
            }
        },
        Op::Publish { .. } => {
            if published_by(&dir, name).as_deref() == Some(txn) {
                // committed: what sits at the staging or retired name is the old copy
                remove_in(&dir, &staging)?;
                remove_in(&dir, &retired)?;
                Ok("rolled forward")
            } else {
                if !exists(name)? && exists(&retired)? {
                    // killed inside the two-rename fallback: put the old copy back
                    dir.rename(&retired, name)?;
                }
                remove_in(&dir, &staging)?;
                Ok("rolled back")
            }
        }
        Op::Remove { .. } => {
            if exists(&retired)? {
                remove_in(&dir, &retired)?;
                Ok("rolled forward")
            } else {
                Ok("rolled back")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;
    use std::fs;

    fn receipt(dir: &Path, txn: &str) {
        fs::write(dir.join(RECEIPT_NAME), format!("{{\"txn\":\"{txn}\"}}")).unwrap();
    }

    fn publish_op(target: &Path) -> impl FnOnce(&str) -> Op + '_ {
        move |id| Op::Publish {
            target: target.to_path_buf(),
            staging: fsops::staging_path(target, id),
            retired: fsops::retired_path(target, id),
        }
    }

    fn setup() -> (tempfile::TempDir, StateDir, PathBuf, Vec<PathBuf>) {
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::create(&d.path().join("state")).unwrap();
        let target = d.path().join("plugins/p");
        fs::create_dir_all(&target).unwrap();
        receipt(&target, "old");
        let roots = vec![d.path().join("plugins")];
        (d, state, target, roots)
    }

    fn published(target: &Path) -> Option<String> {
        let dir = Beneath::open(target.parent().unwrap()).unwrap();
        published_by(&dir, Path::new(target.file_name().unwrap()))
    }

    #[test]
    fn uncommitted_publish_is_rolled_back() {
        let (_d, state, target, roots) = setup();
        let (mut j, _) = Journal::open_and_recover(
            &state,
            &[&FsRecover {
                roots: roots.clone(),
            }],
        )
        .unwrap();
        let txn = begin_fs(&mut j, "plugin.p", publish_op(&target)).unwrap();
        let staging = fsops::staging_path(&target, &txn.id);
        fs::create_dir(&staging).unwrap();
        receipt(&staging, &txn.id);
        drop(j);
        let (_, rec) = Journal::open_and_recover(
            &state,
            &[&FsRecover {
                roots: roots.clone(),
            }],
        )
        .unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].outcome, "rolled back");
        assert!(!staging.exists());
        assert_eq!(published(&target).as_deref(), Some("old"));
    }

    #[test]
    fn committed_publish_is_rolled_forward() {
        let (_d, state, target, roots) = setup();
        let (mut j, _) = Journal::open_and_recover(
            &state,
            &[&FsRecover {
                roots: roots.clone(),
            }],
        )
        .unwrap();
        let txn = begin_fs(&mut j, "plugin.p", publish_op(&target)).unwrap();
        let staging = fsops::staging_path(&target, &txn.id);
        fs::create_dir(&staging).unwrap();
        receipt(&staging, &txn.id);
        let dir = Beneath::open(target.parent().unwrap()).unwrap();
        let name = Path::new("p");
        fsops::publish(
            &dir,
            &fsops::staging_name(name, &txn.id),
            name,
            &fsops::retired_name(name, &txn.id),
        )
        .unwrap();
        drop(j);
        let (_, rec) = Journal::open_and_recover(
            &state,
            &[&FsRecover {
                roots: roots.clone(),
            }],
        )
        .unwrap();
        assert_eq!(rec[0].outcome, "rolled forward");
        assert!(!staging.exists() && !fsops::retired_path(&target, &txn.id).exists());
        assert_eq!(published(&target), Some(txn.id));
    }

    #[test]
    fn fallback_window_restores_old_copy() {
        let (_d, state, target, roots) = setup();
        let (mut j, _) = Journal::open_and_recover(
            &state,
            &[&FsRecover {
                roots: roots.clone(),
            }],
        )
        .unwrap();
        let txn = begin_fs(&mut j, "plugin.p", publish_op(&target)).unwrap();
        let retired = fsops::retired_path(&target, &txn.id);
        fs::rename(&target, &retired).unwrap();
        fs::create_dir(fsops::staging_path(&target, &txn.id)).unwrap();
        drop(j);
        Journal::open_and_recover(
            &state,
            &[&FsRecover {
                roots: roots.clone(),
            }],
        )
        .unwrap();
        assert_eq!(published(&target).as_deref(), Some("old"));
        assert!(!fsops::staging_path(&target, &txn.id).exists());
    }

    /// Write a journal line by hand, as someone tampering with it would.
    fn tamper(state: &StateDir, op: serde_json::Value) {
        let rec = serde_json::json!({"txn": "1a2b-3-0", "address": "plugin.p", "step": "begin", "kind": "fs", "v": 1, "intent": op});
        fs::write(state.journal_path(), format!("{rec}\n")).unwrap();
    }

    #[test]
    fn a_tampered_journal_stops_recovery_and_touches_nothing() {
        let (d, state, target, roots) = setup();
        let victim = d.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("precious"), "x").unwrap();
        // a target outside every managed root
        tamper(
            &state,
            serde_json::json!({"op": "remove", "target": victim, "retired": victim}),
        );
        let e = Journal::open_and_recover(
            &state,
            &[&FsRecover {
                roots: roots.clone(),
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 1") && e.contains("inside no managed root"),
            "{e}"
        );
        // a managed target with a retired path that is not its own
        tamper(
            &state,
            serde_json::json!({"op": "remove", "target": target, "retired": victim}),
        );
        let e = Journal::open_and_recover(
            &state,
            &[&FsRecover {
                roots: roots.clone(),
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not") && e.contains("for this transaction"),
            "{e}"
        );
        // `..` to climb out of a root
        let climbing = d.path().join("plugins/../victim");
        tamper(
            &state,
            serde_json::json!({"op": "remove", "target": climbing, "retired": fsops::retired_path(&climbing, "1a2b-3-0")}),
        );
        assert!(Journal::open_and_recover(
            &state,
            &[&FsRecover {
                roots: roots.clone()
            }]
        )
        .is_err());
        assert!(victim.join("precious").exists());
        assert_eq!(published(&target).as_deref(), Some("old"));
    }
}
