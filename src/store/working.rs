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
//!
//! Each snapshot also has a lock file (`.reconcile/<name>.lock`), held shared
//! by reconcile and handed to the processes that run in the snapshot: while
//! any of them lives — even a test's grandchild after reconcile was killed —
//! `apply` finds the lock held and leaves the snapshot alone.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

use super::disk;
use super::{
    read_receipt, sidecar_rel, write_receipt, EntryKind, EntryReceipt, MachineDir, MachineState,
};
use crate::backend::{self, VolumeBackend};
use crate::config::model::{MachineKind, Volume};
use crate::error::{Error, Result};
use crate::fsops::Beneath;
use crate::process::identity::Owner;
use crate::state::{lock, now_rfc3339, StateDir};

/// `.reconcile/<name>.lock`, relative to the machine directory.
fn lock_rel(name: &str) -> PathBuf {
    Path::new(super::META_DIR).join(format!("{name}.lock"))
}

/// Does some process still hold the lock of working snapshot `name`?
pub fn lock_held(dir: &Beneath, name: &str) -> bool {
    let Ok(f) = dir.open_file(&lock_rel(name)) else {
        return false;
    };
    matches!(
        Flock::lock(f, FlockArg::LockExclusiveNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

/// Working snapshots in use (owner alive, lock held by a process still
/// running in it, or kept on purpose) → the entry each was made from.
pub fn live_bases(dir: Option<&Beneath>, st: &MachineState) -> BTreeMap<String, String> {
    st.entries
        .values()
        .filter_map(|e| {
            let r = e.receipt.as_ref()?;
            let in_use = r.kept
                || r.owner.as_ref().is_some_and(Owner::alive)
                || dir.is_some_and(|d| lock_held(d, &e.name));
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

/// Snapshots this process made and has not deleted yet, as (machine
/// directory, entry name), for the signal handler.
static LIVE: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());
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
            for (dir, name) in LIVE.lock().unwrap().drain(..) {
                if let Ok(dir) = Beneath::open(&dir) {
                    let _ = backend::remove_in(&dir, std::path::Path::new(&name));
                    let _ = dir.remove_file(&sidecar_rel(&name));
                    let _ = dir.remove_file(&lock_rel(&name));
                }
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
    /// The machine directory it lives in.
    dir: Beneath,
    /// Held shared while the snapshot is in use; handed to the processes run in it.
    lock: Option<Flock<fs::File>>,
    backend: Box<dyn VolumeBackend>,
    deleted: bool,
}

impl WorkingSnapshot {
    /// A fresh writable snapshot of `<m>-<toolchain>`, of revision `revision`
    /// (a candidate under test), or of the current revision.
    /// Made under the apply lock of `state` (waiting up to 10 minutes): apply
    /// deletes stale snapshots and old revisions under it, so it never sees one half made.
    pub fn create(
        state: &StateDir,
        volume: &Volume,
        machine: &str,
        kind: MachineKind,
        toolchain: Option<&str>,
        revision: Option<u32>,
    ) -> Result<WorkingSnapshot> {
        let _lock = lock::acquire(
            state,
            "working snapshot",
            Some(std::time::Duration::from_secs(600)),
        )?;
        let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        let layout = MachineDir::new(volume, machine);
        let be = layout.backend()?;
        let dir = layout.open()?;
        let base = match (toolchain, revision) {
            (Some(tc), _) => layout.tc_name(tc),
            // a candidate, tested before it becomes current
            (None, Some(rev)) => layout.rev_name(rev),
            (None, None) => dir
                .read_link(Path::new(machine))
                .map_err(|_| Error::Resource {
                    address: format!("machine.{machine}"),
                    reason: "has no current revision yet; run `reconcile apply` first".into(),
                })?
                .to_string_lossy()
                .into_owned(),
        };
        if super::revision_of(machine, &base).is_none() && toolchain.is_none() {
            return Err(Error::Resource {
                address: format!("machine.{machine}"),
                reason: format!("its link points at {base:?}, which is not one of its revisions"),
            });
        }
        if dir.try_stat(Path::new(&base)).ok().flatten().is_none() {
            return Err(Error::Resource {
                address: format!("machine.{machine}"),
                reason: format!("{base} does not exist; run `reconcile apply` first"),
            });
        }
        let base_receipt = read_receipt(&dir, &base);
        let revision = base_receipt
            .as_ref()
            .map(|r| r.revision)
            .or_else(|| super::revision_of(machine, &base))
            .unwrap_or(0);
        let id = unique_id();
        let name = format!("{base}-{id}");
        let path = layout.entry_path(&name);
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
            uuid: None,
            received_uuid: None,
        };
        // the receipt (with its owner) first: a crash after it leaves a snapshot `apply` knows to delete
        let write = |r: &EntryReceipt| {
            write_receipt(&dir, &name, r).map_err(|e| Error::io(layout.sidecar(&name), e))
        };
        write(&receipt)?;
        LIVE.lock().unwrap().push((layout.dir(), name.clone()));
        let lock = dir
            .open_rw(&lock_rel(&name), false, 0o600)
            .map_err(|e| Error::io(layout.dir().join(lock_rel(&name)), e))
            .and_then(|f| {
                Flock::lock(f, FlockArg::LockSharedNonblock)
                    .map_err(|(_, e)| Error::io(layout.dir().join(lock_rel(&name)), e.into()))
            })?;
        let entry = Path::new(&name);
        let made = match kind {
            MachineKind::Rootfs => be
                .snapshot(&dir, Path::new(&base), entry, false)
                .map(|()| None),
            MachineKind::Disk => be.create(&dir, entry).and_then(|()| {
                let (image, format) = disk::image_in(&layout.entry_path(&base))?;
                disk::create_overlay(&path, &image, format).map(Some)
            }),
        };
        let disk = match made {
            Ok(d) => d,
            Err(e) => {
                LIVE.lock().unwrap().retain(|(_, n)| *n != name);
                let _ = backend::remove_in(&dir, entry);
                let _ = dir.remove_file(&sidecar_rel(&name));
                let _ = dir.remove_file(&lock_rel(&name));
                return Err(Error::io(&path, e));
            }
        };
        receipt.id = be.id(&dir, entry).map_err(|e| Error::io(&path, e))?;
        write(&receipt)?;
        Ok(WorkingSnapshot {
            path,
            name,
            machine: machine.to_string(),
            disk,
            dir,
            lock: Some(lock),
            backend: be,
            deleted: false,
        })
    }

    /// The lock's descriptor, for a process run in the snapshot to inherit.
    pub fn lock_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.lock.as_ref().map(|l| l.as_raw_fd())
    }

    /// Delete the snapshot and its receipt.
    pub fn delete(mut self) -> Result<()> {
        self.remove()
    }

    /// Keep the snapshot after this process ends: its receipt says so, and
    /// `apply` neither prunes it nor what it was made from.
    pub fn keep(mut self) -> Result<PathBuf> {
        let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        let sidecar = sidecar_rel(&self.name);
        let mut r = read_receipt(&self.dir, &self.name).ok_or_else(|| Error::State {
            path: self.dir.shown(&sidecar),
            reason: "the working snapshot's receipt is gone".into(),
        })?;
        r.kept = true;
        r.owner = None;
        write_receipt(&self.dir, &self.name, &r)
            .map_err(|e| Error::io(self.dir.shown(&sidecar), e))?;
        LIVE.lock().unwrap().retain(|(_, n)| *n != self.name);
        self.deleted = true;
        Ok(self.path.clone())
    }

    fn remove(&mut self) -> Result<()> {
        let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        LIVE.lock().unwrap().retain(|(_, n)| *n != self.name);
        let entry = std::path::Path::new(&self.name);
        self.backend
            .delete(&self.dir, entry)
            .map_err(|e| Error::io(&self.path, e))?;
        let _ = self.dir.remove_file(&sidecar_rel(&self.name));
        self.lock.take();
        let _ = self.dir.remove_file(&lock_rel(&self.name));
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
