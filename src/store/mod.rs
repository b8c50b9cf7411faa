//! The machine store: build2's buildos layout on a volume, below both the
//! machine resource (which converges it) and the platforms (which run tests on
//! working snapshots of it).
//!
//! ```text
//! <volume>/<m>/<m>-<rev>        read-only revision (btrfs subvolume or directory)
//! <volume>/<m>/<m>              symlink to the current revision, switched atomically
//! <volume>/<m>/<m>-<tc>         read-only bootstrapped snapshot per toolchain
//! <volume>/<m>/<m>-<tc>-<id>    writable working snapshots (tests, `reconcile exec`)
//! <volume>/<m>/.reconcile/      sidecar receipts (a read-only rootfs cannot carry one)
//! ```
//!
//! A disk machine keeps the same layout with one image file per entry: the
//! revision holds `disk.img` (raw) or `disk.qcow2`; toolchain and working
//! snapshots hold a qcow2 overlay backed by the entry they were made from
//! ([`disk`]).

pub mod disk;
pub mod send;
pub mod working;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{self, VolumeBackend};
use crate::config::model::Volume;
use crate::error::{Error, Result};
use crate::fsops::{self, beneath::Kind, Beneath};

/// Largest sidecar receipt read.
const MAX_RECEIPT: u64 = 1 << 20;

/// Sidecar receipts live here inside the machine directory.
pub const META_DIR: &str = ".reconcile";

/// What an entry of a machine directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Revision,
    Toolchain,
    Working,
}

/// What reconcile knows about one entry of a machine directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryReceipt {
    pub kind: EntryKind,
    pub machine: String,
    /// The revision it is (or was built on).
    pub revision: u32,
    pub source_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_sha256: Option<String>,
    /// btrfs subvolume id or root inode of the volume it describes.
    pub id: u64,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<crate::process::identity::Owner>,
    /// A working snapshot kept on purpose (`spawn --keep`): never pruned, and
    /// what it was made from is kept with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
    /// btrfs: the subvolume's UUID, and the UUID of the send stream it was
    /// received from (what an incremental stream against it must name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_uuid: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    /// Our receipt, when it describes the volume that is there now.
    pub receipt: Option<EntryReceipt>,
}

/// What observe found in a machine directory.
#[derive(Debug, Clone)]
pub struct MachineState {
    pub backend: &'static str,
    /// Name the `<m>` link points at.
    pub link: Option<String>,
    pub entries: BTreeMap<String, Entry>,
}

/// One machine's directory in a volume.
#[derive(Debug, Clone)]
pub struct MachineDir {
    pub volume: Volume,
    pub name: String,
}

impl MachineDir {
    pub fn new(volume: &Volume, name: &str) -> MachineDir {
        MachineDir {
            volume: volume.clone(),
            name: name.to_string(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        Path::new(&self.volume.path).join(&self.name)
    }
    pub fn entry_path(&self, entry: &str) -> PathBuf {
        self.dir().join(entry)
    }
    pub fn sidecar(&self, entry: &str) -> PathBuf {
        self.dir().join(META_DIR).join(format!("{entry}.json"))
    }
    pub fn rev_name(&self, rev: u32) -> String {
        format!("{}-{rev}", self.name)
    }
    pub fn tc_name(&self, tc: &str) -> String {
        format!("{}-{tc}", self.name)
    }
    /// The `<m>` link.
    pub fn link(&self) -> PathBuf {
        self.entry_path(&self.name)
    }
    pub fn backend(&self) -> Result<Box<dyn VolumeBackend>> {
        backend::for_volume(Path::new(&self.volume.path), self.volume.backend)
    }

    /// The volume, opened (created when missing).
    pub fn open_volume(&self) -> Result<Beneath> {
        let path = Path::new(&self.volume.path);
        fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        Beneath::open(path).map_err(|e| Error::io(path, e))
    }

    /// The machine directory, opened beneath its volume (created when missing).
    /// A symlink in its place is refused: reconcile never follows one in a volume.
    pub fn open(&self) -> Result<Beneath> {
        let volume = self.open_volume()?;
        let name = Path::new(&self.name);
        match volume.try_stat(name).map_err(|e| Error::io(self.dir(), e))? {
            None => volume
                .create_dir(name, 0o755)
                .map_err(|e| Error::io(self.dir(), e))?,
            Some(s) if s.kind == Kind::Dir => {}
            Some(s) => {
                return Err(Error::Resource {
                    address: format!("machine.{}", self.name),
                    reason: format!(
                        "{} is a {}, not a machine directory; reconcile never follows one in a volume — move it away",
                        self.dir().display(),
                        fsops::beneath::kind_name(s.kind)
                    ),
                })
            }
        }
        volume.open_dir(name).map_err(|e| Error::io(self.dir(), e))
    }

    /// The machine directory when it exists (and is a real directory), without creating anything.
    pub fn existing(&self) -> Result<Option<Beneath>> {
        let Ok(volume) = Beneath::open(Path::new(&self.volume.path)) else {
            return Ok(None);
        };
        match volume.try_stat(Path::new(&self.name)) {
            Ok(Some(s)) if s.kind == Kind::Dir => volume
                .open_dir(Path::new(&self.name))
                .map(Some)
                .map_err(|e| Error::io(self.dir(), e)),
            Ok(Some(_)) => Err(Error::Resource {
                address: format!("machine.{}", self.name),
                reason: format!(
                    "{} is not a directory; reconcile never follows a symlink in a volume — move it away",
                    self.dir().display()
                ),
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::io(self.dir(), e)),
        }
    }

    pub fn observe(&self, backend_name: &'static str) -> Result<MachineState> {
        match self.existing()? {
            Some(dir) => observe_dir(&dir, &self.name, backend_name),
            None => Ok(MachineState {
                backend: backend_name,
                link: None,
                entries: BTreeMap::new(),
            }),
        }
    }
}

/// The sidecar receipt of `entry` in the opened machine directory, as written
/// (not checked against the volume).
pub fn read_receipt(dir: &Beneath, entry: &str) -> Option<EntryReceipt> {
    dir.read(&sidecar_rel(entry), MAX_RECEIPT)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// `.reconcile/<entry>.json`, relative to the machine directory.
pub fn sidecar_rel(entry: &str) -> PathBuf {
    Path::new(META_DIR).join(format!("{entry}.json"))
}

/// Write the sidecar receipt of `entry` atomically.
pub fn write_receipt(dir: &Beneath, entry: &str, r: &EntryReceipt) -> std::io::Result<()> {
    dir.create_dir_all(Path::new(META_DIR), 0o755)?;
    let bytes = serde_json::to_vec_pretty(r).expect("receipt serialises");
    dir.write_atomic(&sidecar_rel(entry), &bytes, 0o644)
}

/// `linux-gcc-3` → 3 for machine `linux-gcc`.
pub fn revision_of(machine: &str, entry: &str) -> Option<u32> {
    entry.strip_prefix(machine)?.strip_prefix('-')?.parse().ok()
}

/// Observe an opened machine directory: entries, which of them carry a
/// receipt that still describes them (same volume id), and the current link.
pub fn observe_dir(
    dir: &Beneath,
    machine: &str,
    backend_name: &'static str,
) -> Result<MachineState> {
    let mut st = MachineState {
        backend: backend_name,
        link: None,
        entries: BTreeMap::new(),
    };
    for (name, kind) in dir.entries().map_err(|e| Error::io(dir.path(), e))? {
        let name = name.to_string_lossy().into_owned();
        if name == META_DIR || fsops::is_staging_name(&name) {
            continue;
        }
        if name == machine {
            if kind == Kind::Symlink {
                st.link = dir
                    .read_link(Path::new(&name))
                    .ok()
                    .map(|t| t.to_string_lossy().into_owned());
            }
            continue;
        }
        let receipt = read_receipt(dir, &name)
            // a receipt describes the volume only while the ids match (a working
            // snapshot's receipt is written before the snapshot exists)
            .filter(|r| {
                r.kind == EntryKind::Working
                    || backend::volume_id(dir, Path::new(&name)).ok() == Some(r.id)
            });
        st.entries.insert(name.clone(), Entry { name, receipt });
    }
    Ok(st)
}
