//! Working snapshots `<m>-<tc>-<id>`: writable snapshots of a toolchain (or of
//! the current revision) for one test or command. The receipt records the
//! owner (pid and process start time, so a reused pid is not mistaken for it);
//! the snapshot is deleted on drop and on SIGINT/SIGTERM/SIGHUP, `apply`
//! deletes ones whose owner is gone, and nothing a live one was made from is
//! ever deleted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{EntryReceipt, MachineState, META_DIR};
use crate::backend::{self, VolumeBackend};
use crate::config::model::Volume;
use crate::error::{Error, Result};
use crate::fsops;
use crate::state::{lock, now_rfc3339, StateDir};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (/proc/PID/stat field 22).
    pub start_time: u64,
}

impl Owner {
    pub fn me() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_time: start_time(pid).unwrap_or(0),
        }
    }

    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Live working snapshots → the entry each was made from.
pub fn live_bases(st: &MachineState) -> BTreeMap<String, String> {
    st.entries
        .values()
        .filter_map(|e| {
            let r = e.receipt.as_ref()?;
            if r.kind != "working" || !r.owner.as_ref().is_some_and(Owner::alive) {
                return None;
            }
            let base = match &r.toolchain {
                Some(tc) => format!("{}-{tc}", r.machine),
                None => format!("{}-{}", r.machine, r.revision),
            };
            Some((e.name.clone(), base))
        })
        .collect()
}

/// Snapshots this process made and has not deleted yet (for the signal handler).
static LIVE: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
/// Held while a snapshot is being created or deleted, so the signal handler
/// never cleans up halfway through either.
static BUSY: Mutex<()> = Mutex::new(());

/// Delete this process's working snapshots when it is interrupted, then exit
/// (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).
pub fn cleanup_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
            for (path, sidecar) in LIVE.lock().unwrap().drain(..) {
                let _ = backend::remove_any(&path);
                let _ = fs::remove_file(sidecar);
            }
            std::process::exit(128 + sig);
        }
    });
}

pub struct WorkingSnapshot {
    pub path: PathBuf,
    pub name: String,
    pub machine: String,
    sidecar: PathBuf,
    backend: Box<dyn VolumeBackend>,
    deleted: bool,
}

impl WorkingSnapshot {
    /// A fresh writable snapshot of `<m>-<toolchain>`, or of the current revision.
    /// Made under the apply lock of `state` (waiting up to 10 minutes): apply
    /// deletes stale snapshots and old revisions under it, so it never sees one half made.
    pub fn create(
        state: &StateDir,
        volume: &Volume,
        machine: &str,
        toolchain: Option<&str>,
    ) -> Result<WorkingSnapshot> {
        let _lock = lock::acquire(
            state,
            "working snapshot",
            Some(std::time::Duration::from_secs(600)),
        )?;
        let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        let dir = Path::new(&volume.path).join(machine);
        let be = backend::for_volume(Path::new(&volume.path), volume.backend)?;
        let base = match toolchain {
            Some(tc) => format!("{machine}-{tc}"),
            None => fs::read_link(dir.join(machine))
                .map_err(|_| Error::Resource {
                    address: format!("machine.{machine}"),
                    reason: "has no current revision yet; run `reconcile apply` first".into(),
                })?
                .to_string_lossy()
                .into_owned(),
        };
        let base_path = dir.join(&base);
        if !base_path.exists() {
            return Err(Error::Resource {
                address: format!("machine.{machine}"),
                reason: format!("{base} does not exist; run `reconcile apply` first"),
            });
        }
        let base_receipt: Option<EntryReceipt> =
            fs::read(dir.join(META_DIR).join(format!("{base}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        let revision = base_receipt
            .as_ref()
            .map(|r| r.revision)
            .or_else(|| super::revision_of(machine, &base))
            .unwrap_or(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!("{:08x}", nanos ^ std::process::id().rotate_left(16));
        let name = format!("{base}-{id}");
        let path = dir.join(&name);
        let sidecar = dir.join(META_DIR).join(format!("{name}.json"));
        let mut receipt = EntryReceipt {
            kind: "working".into(),
            machine: machine.to_string(),
            revision,
            source_sha256: base_receipt.map(|r| r.source_sha256).unwrap_or_default(),
            toolchain: toolchain.map(str::to_string),
            bootstrap_sha256: None,
            id: 0,
            created: now_rfc3339(),
            owner: Some(Owner::me()),
        };
        // the receipt (with its owner) first: a crash after it leaves a snapshot `apply` knows to delete
        fs::create_dir_all(dir.join(META_DIR)).map_err(|e| Error::io(&dir, e))?;
        let write = |r: &EntryReceipt| {
            fsops::write_atomic(&sidecar, &serde_json::to_vec_pretty(r).expect("receipt"))
                .map_err(|e| Error::io(&sidecar, e))
        };
        write(&receipt)?;
        LIVE.lock().unwrap().push((path.clone(), sidecar.clone()));
        if let Err(e) = be.snapshot(&base_path, &path, false) {
            LIVE.lock().unwrap().retain(|(p, _)| *p != path);
            let _ = fs::remove_file(&sidecar);
            return Err(Error::io(&path, e));
        }
        receipt.id = be.id(&path).map_err(|e| Error::io(&path, e))?;
        write(&receipt)?;
        Ok(WorkingSnapshot {
            path,
            name,
            machine: machine.to_string(),
            sidecar,
            backend: be,
            deleted: false,
        })
    }

    /// Delete the snapshot and its receipt.
    pub fn delete(mut self) -> Result<()> {
        self.remove()
    }

    fn remove(&mut self) -> Result<()> {
        let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        LIVE.lock().unwrap().retain(|(p, _)| *p != self.path);
        self.backend
            .delete(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        let _ = fs::remove_file(&self.sidecar);
        Ok(())
    }
}

impl Drop for WorkingSnapshot {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}
