//! Working snapshots `<m>-<tc>-<id>`: writable snapshots of a toolchain (or of
//! the current revision) for one test or command. The receipt records the
//! owner (pid and process start time, so a reused pid is not mistaken for it);
//! the snapshot is deleted on drop and on SIGINT/SIGTERM/SIGHUP, `apply`
//! deletes ones whose owner is gone, and nothing a live one was made from is
//! ever deleted.
//!
//! A disk machine's working snapshot is a fresh volume holding one qcow2
//! overlay backed by the base's image: O(1) whatever the image's size, on
//! every backend.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::disk;
use super::{EntryKind, EntryReceipt, MachineDir, MachineState};
use crate::backend::{self, VolumeBackend};
use crate::config::model::{MachineKind, Volume};
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

/// Working snapshots in use (owner alive, or kept on purpose) → the entry each
/// was made from.
pub fn live_bases(st: &MachineState) -> BTreeMap<String, String> {
    st.entries
        .values()
        .filter_map(|e| {
            let r = e.receipt.as_ref()?;
            let in_use = r.kept || r.owner.as_ref().is_some_and(Owner::alive);
            if r.kind != EntryKind::Working || !in_use {
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
    /// The overlay QEMU boots, for a disk machine.
    pub disk: Option<PathBuf>,
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
        kind: MachineKind,
        toolchain: Option<&str>,
    ) -> Result<WorkingSnapshot> {
        let _lock = lock::acquire(
            state,
            "working snapshot",
            Some(std::time::Duration::from_secs(600)),
        )?;
        let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        let layout = MachineDir::new(volume, machine);
        let be = layout.backend()?;
        let base = match toolchain {
            Some(tc) => layout.tc_name(tc),
            None => fs::read_link(layout.link())
                .map_err(|_| Error::Resource {
                    address: format!("machine.{machine}"),
                    reason: "has no current revision yet; run `reconcile apply` first".into(),
                })?
                .to_string_lossy()
                .into_owned(),
        };
        let base_path = layout.entry_path(&base);
        if !base_path.exists() {
            return Err(Error::Resource {
                address: format!("machine.{machine}"),
                reason: format!("{base} does not exist; run `reconcile apply` first"),
            });
        }
        let base_receipt = layout.read_receipt(&base);
        let revision = base_receipt
            .as_ref()
            .map(|r| r.revision)
            .or_else(|| super::revision_of(machine, &base))
            .unwrap_or(0);
        let id = unique_id();
        let name = format!("{base}-{id}");
        let path = layout.entry_path(&name);
        let sidecar = layout.sidecar(&name);
        let mut receipt = EntryReceipt {
            kind: EntryKind::Working,
            machine: machine.to_string(),
            revision,
            source_sha256: base_receipt.map(|r| r.source_sha256).unwrap_or_default(),
            toolchain: toolchain.map(str::to_string),
            bootstrap_sha256: None,
            id: 0,
            created: now_rfc3339(),
            owner: Some(Owner::me()),
            kept: false,
        };
        // the receipt (with its owner) first: a crash after it leaves a snapshot `apply` knows to delete
        fs::create_dir_all(layout.dir().join(super::META_DIR))
            .map_err(|e| Error::io(layout.dir(), e))?;
        let write = |r: &EntryReceipt| {
            fsops::write_atomic(&sidecar, &serde_json::to_vec_pretty(r).expect("receipt"))
                .map_err(|e| Error::io(&sidecar, e))
        };
        write(&receipt)?;
        LIVE.lock().unwrap().push((path.clone(), sidecar.clone()));
        let made = match kind {
            MachineKind::Rootfs => be.snapshot(&base_path, &path, false).map(|()| None),
            MachineKind::Disk => be.create(&path).and_then(|()| {
                let (image, format) = disk::image_in(&base_path)?;
                disk::create_overlay(&path, &image, format).map(Some)
            }),
        };
        let disk = match made {
            Ok(d) => d,
            Err(e) => {
                LIVE.lock().unwrap().retain(|(p, _)| *p != path);
                let _ = backend::remove_any(&path);
                let _ = fs::remove_file(&sidecar);
                return Err(Error::io(&path, e));
            }
        };
        receipt.id = be.id(&path).map_err(|e| Error::io(&path, e))?;
        write(&receipt)?;
        Ok(WorkingSnapshot {
            path,
            name,
            machine: machine.to_string(),
            disk,
            sidecar,
            backend: be,
            deleted: false,
        })
    }

    /// Delete the snapshot and its receipt.
    pub fn delete(mut self) -> Result<()> {
        self.remove()
    }

    /// Keep the snapshot after this process ends: its receipt says so, and
    /// `apply` neither prunes it nor what it was made from.
    pub fn keep(mut self) -> Result<PathBuf> {
        let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = fs::read(&self.sidecar).map_err(|e| Error::io(&self.sidecar, e))?;
        let mut r: EntryReceipt = serde_json::from_slice(&bytes).map_err(|e| Error::State {
            path: self.sidecar.clone(),
            reason: e.to_string(),
        })?;
        r.kept = true;
        r.owner = None;
        fsops::write_atomic(
            &self.sidecar,
            &serde_json::to_vec_pretty(&r).expect("receipt"),
        )
        .map_err(|e| Error::io(&self.sidecar, e))?;
        LIVE.lock().unwrap().retain(|(p, _)| *p != self.path);
        self.deleted = true;
        Ok(self.path.clone())
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

/// A short id unique among this host's concurrent snapshots.
fn unique_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:08x}",
        nanos ^ std::process::id().rotate_left(16) ^ seq.rotate_left(24)
    )
}
