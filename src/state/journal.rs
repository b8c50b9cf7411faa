//! Write-ahead journal. Each transition of a managed path is recorded (and
//! fsynced) before it happens. Every mutating command first recovers: it reads
//! the journal and, for each transaction without `done`, inspects the
//! filesystem to decide whether the commit happened, then rolls forward
//! (removes the retired copy) or back (removes staging, restores the old copy).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use super::{fault, StateDir};
use crate::error::{Error, Result};
use crate::fsops;

/// Name of the receipt every published directory carries; its `txn` tells recovery
/// which transaction published it.
pub const RECEIPT_NAME: &str = ".reconcile-receipt.json";

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

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    txn: String,
    address: String,
    step: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    op: Option<Op>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
}

pub struct Journal {
    path: PathBuf,
    file: File,
}

/// One open transaction.
pub struct Txn {
    pub id: String,
    pub address: String,
}

/// What recovery did with an interrupted transaction.
#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    pub address: String,
    pub txn: String,
    /// `rolled forward` or `rolled back`.
    pub outcome: &'static str,
    pub last_step: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn new_txn_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{}-{}",
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Journal {
    /// Open the journal of `state`, recovering interrupted transactions first.
    pub fn open_and_recover(state: &StateDir) -> Result<(Journal, Vec<Recovered>)> {
        let path = state.journal_path();
        let recovered = recover(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if !recovered.is_empty() || file.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            file.set_len(0).map_err(|e| Error::io(&path, e))?;
            file.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        Ok((Journal { path, file }, recovered))
    }

    fn write(&mut self, rec: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(rec).expect("journal record serialises");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Record the start of a transaction with everything recovery needs; `op`
    /// receives the new transaction id (staging names carry it).
    pub fn begin(&mut self, address: &str, op: impl FnOnce(&str) -> Op) -> Result<Txn> {
        let txn = Txn {
            id: new_txn_id(),
            address: address.to_string(),
        };
        let op = op(&txn.id);
        self.write(&Record {
            txn: txn.id.clone(),
            address: address.into(),
            step: "begin".into(),
            op: Some(op),
            data: None,
        })?;
        fault::point(address, "begin");
        Ok(txn)
    }

    /// Record that `step` is about to happen.
    pub fn step(&mut self, txn: &Txn, step: &str) -> Result<()> {
        self.step_with(txn, step, None)
    }

    /// Record a step together with what recovery needs to finish it.
    pub fn step_with(
        &mut self,
        txn: &Txn,
        step: &str,
        data: Option<serde_json::Value>,
    ) -> Result<()> {
        self.write(&Record {
            txn: txn.id.clone(),
            address: txn.address.clone(),
            step: step.into(),
            op: None,
            data,
        })?;
        fault::point(&txn.address, step);
        Ok(())
    }

    pub fn done(&mut self, txn: Txn) -> Result<()> {
        self.step(&txn, "done")
    }

    /// Empty the journal once every transaction in it is done.
    pub fn clear(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

/// Finish or undo every transaction the journal at `path` left open.
pub fn recover(path: &Path) -> Result<Vec<Recovered>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    // A torn last line (killed mid-write) does not parse and is ignored: its step never happened.
    let records: Vec<Record> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut out = Vec::new();
    let mut open: Vec<(String, String, Op, String, Option<serde_json::Value>)> = Vec::new();
    for r in records {
        match (r.op, r.step.as_str()) {
            (Some(op), "begin") => open.push((r.txn, r.address, op, "begin".into(), None)),
            (_, "done") => open.retain(|(t, ..)| *t != r.txn),
            (_, step) => {
                if let Some(o) = open.iter_mut().find(|(t, ..)| *t == r.txn) {
                    o.3 = step.to_string();
                    if r.data.is_some() {
                        o.4 = r.data;
                    }
                }
            }
        }
    }
    for (txn, address, op, last_step, data) in open {
        let commit = data.and_then(|d| serde_json::from_value::<VolumeCommit>(d).ok());
        let outcome = undo_or_finish(&txn, &op, commit.as_ref()).map_err(|e| Error::State {
            path: path.to_path_buf(),
            reason: format!("recovering {address} (transaction {txn}): {e}"),
        })?;
        out.push(Recovered {
            address,
            txn,
            outcome,
            last_step,
        });
    }
    Ok(out)
}

fn published_by(target: &Path) -> Option<String> {
    #[derive(Deserialize)]
    struct TxnOnly {
        txn: String,
    }
    let bytes = std::fs::read(target.join(RECEIPT_NAME)).ok()?;
    serde_json::from_slice::<TxnOnly>(&bytes)
        .ok()
        .map(|t| t.txn)
}

fn undo_or_finish(
    txn: &str,
    op: &Op,
    commit: Option<&VolumeCommit>,
) -> std::io::Result<&'static str> {
    match op {
        Op::Volume {
            target,
            staging,
            retired,
            sidecar,
        } => {
            let at_target = crate::backend::volume_id(target).ok();
            match commit {
                Some(c) if at_target == Some(c.id) => {
                    // committed: make sure the receipt is there, then drop the old copy
                    let bytes =
                        serde_json::to_vec_pretty(&c.receipt).map_err(std::io::Error::other)?;
                    if let Some(dir) = sidecar.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    fsops::write_atomic(sidecar, &bytes)?;
                    crate::backend::remove_any(staging)?;
                    crate::backend::remove_any(retired)?;
                    Ok("rolled forward")
                }
                _ => {
                    if std::fs::symlink_metadata(target).is_err()
                        && std::fs::symlink_metadata(retired).is_ok()
                    {
                        std::fs::rename(retired, target)?;
                    }
                    crate::backend::remove_any(staging)?;
                    Ok("rolled back")
                }
            }
        }
        Op::Publish {
            target,
            staging,
            retired,
        } => {
            if published_by(target).as_deref() == Some(txn) {
                // committed: what sits at the staging or retired name is the old copy
                fsops::remove_any(staging)?;
                fsops::remove_any(retired)?;
                Ok("rolled forward")
            } else {
                if std::fs::symlink_metadata(target).is_err()
                    && std::fs::symlink_metadata(retired).is_ok()
                {
                    // killed inside the two-rename fallback: put the old copy back
                    std::fs::rename(retired, target)?;
                }
                fsops::remove_any(staging)?;
                Ok("rolled back")
            }
        }
        Op::Remove { target, retired } => {
            if std::fs::symlink_metadata(retired).is_ok() {
                crate::backend::remove_any(retired)?;
                Ok("rolled forward")
            } else {
                let _ = target;
                Ok("rolled back")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn receipt(dir: &Path, txn: &str) {
        fs::write(dir.join(RECEIPT_NAME), format!("{{\"txn\":\"{txn}\"}}")).unwrap();
    }

    #[test]
    fn uncommitted_publish_is_rolled_back() {
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::create(&d.path().join("state")).unwrap();
        let target = d.path().join("p");
        fs::create_dir(&target).unwrap();
        receipt(&target, "old");
        let (mut j, _) = Journal::open_and_recover(&state).unwrap();
        let staging = fsops::staging_path(&target, "x");
        let txn = j
            .begin("plugin.p", |_| Op::Publish {
                target: target.clone(),
                staging: staging.clone(),
                retired: fsops::retired_path(&target, "x"),
            })
            .unwrap();
        fs::create_dir(&staging).unwrap();
        receipt(&staging, &txn.id);
        drop(j);
        let (_, rec) = Journal::open_and_recover(&state).unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].outcome, "rolled back");
        assert!(!staging.exists());
        assert_eq!(published_by(&target).as_deref(), Some("old"));
    }

    #[test]
    fn committed_publish_is_rolled_forward() {
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::create(&d.path().join("state")).unwrap();
        let target = d.path().join("p");
        fs::create_dir(&target).unwrap();
        receipt(&target, "old");
        let (mut j, _) = Journal::open_and_recover(&state).unwrap();
        let staging = fsops::staging_path(&target, "x");
        let retired = fsops::retired_path(&target, "x");
        let txn = j
            .begin("plugin.p", |_| Op::Publish {
                target: target.clone(),
                staging: staging.clone(),
                retired: retired.clone(),
            })
            .unwrap();
        fs::create_dir(&staging).unwrap();
        receipt(&staging, &txn.id);
        fsops::publish(&staging, &target, &retired).unwrap();
        drop(j);
        let (_, rec) = Journal::open_and_recover(&state).unwrap();
        assert_eq!(rec[0].outcome, "rolled forward");
        assert!(!staging.exists() && !retired.exists());
        assert_eq!(published_by(&target), Some(txn.id));
    }

    #[test]
    fn fallback_window_restores_old_copy() {
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::create(&d.path().join("state")).unwrap();
        let target = d.path().join("p");
        let staging = fsops::staging_path(&target, "x");
        let retired = fsops::retired_path(&target, "x");
        fs::create_dir(&retired).unwrap();
        receipt(&retired, "old");
        fs::create_dir(&staging).unwrap();
        let (mut j, _) = Journal::open_and_recover(&state).unwrap();
        j.begin("plugin.p", |_| Op::Publish {
            target: target.clone(),
            staging: staging.clone(),
            retired,
        })
        .unwrap();
        drop(j);
        Journal::open_and_recover(&state).unwrap();
        assert_eq!(published_by(&target).as_deref(), Some("old"));
        assert!(!staging.exists());
    }
}
