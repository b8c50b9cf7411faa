//! Storage backends of machine volumes: btrfs subvolumes and snapshots, or
//! plain directories with reflink copies. Both give the buildos layout; only
//! btrfs makes a snapshot O(1) and read-only for real.

pub mod btrfs;
pub mod dir;

use std::io;
use std::path::Path;

use crate::config::model::Backend as Declared;
use crate::error::{Error, Result};

pub trait VolumeBackend: Send + Sync {
    fn name(&self) -> &'static str;
    /// An empty, writable volume (subvolume or directory) at `path`.
    fn create(&self, path: &Path) -> io::Result<()>;
    /// A snapshot of `src` at `dst` (which must not exist), writable or read-only.
    fn snapshot(&self, src: &Path, dst: &Path, readonly: bool) -> io::Result<()>;
    fn set_readonly(&self, path: &Path, readonly: bool) -> io::Result<()>;
    fn is_readonly(&self, path: &Path) -> io::Result<bool>;
    /// Delete a volume made by `create` or `snapshot`, read-only or not.
    fn delete(&self, path: &Path) -> io::Result<()>;
    /// A stable identity of the volume at `path` (btrfs subvolume id, or the root directory's inode).
    fn id(&self, path: &Path) -> io::Result<u64>;
}

/// The backend for a volume at `path` (the path or its nearest existing ancestor decides `auto`).
pub fn for_volume(path: &Path, declared: Declared) -> Result<Box<dyn VolumeBackend>> {
    let on_btrfs = btrfs::is_btrfs(nearest_existing(path)).map_err(|e| Error::io(path, e))?;
    match declared {
        Declared::Btrfs if !on_btrfs => Err(Error::Resource {
            address: format!("volume {}", path.display()),
            reason: "backend = \"btrfs\" but the path is not on a btrfs filesystem (use backend = \"auto\" or \"dir\")".into(),
        }),
        Declared::Btrfs => Ok(Box::new(btrfs::Btrfs)),
        Declared::Auto if on_btrfs => Ok(Box::new(btrfs::Btrfs)),
        Declared::Auto | Declared::Dir => Ok(Box::new(dir::Dir)),
    }
}

fn nearest_existing(path: &Path) -> &Path {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    p
}

/// Remove whatever is at `path`: a btrfs subvolume (deleted through the
/// ioctl, even read-only), or a plain file or tree. Recovery uses this, so it
/// must work without knowing which backend made the path.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() && btrfs::is_subvolume(path).unwrap_or(false) => {
            btrfs::Btrfs.delete(path)
        }
        Ok(_) => crate::fsops::remove_any(path),
    }
}

/// The identity of the volume at `path` whichever backend made it.
pub fn volume_id(path: &Path) -> io::Result<u64> {
    if btrfs::is_subvolume(path)? {
        btrfs::Btrfs.id(path)
    } else {
        dir::Dir.id(path)
    }
}
