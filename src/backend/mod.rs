//! Storage backends of machine volumes: btrfs subvolumes and snapshots, or
//! plain directories with reflink copies. Both give the buildos layout; only
//! btrfs makes a snapshot O(1) and read-only for real.
//!
//! Every operation names an entry inside an opened machine directory (a
//! [`Beneath`] handle), never a path: an entry is never reached through a
//! symlink.

pub mod btrfs;
pub mod dir;

use std::io;
use std::path::Path;

use crate::config::model::Backend as Declared;
use crate::error::{Error, Result};
use crate::fsops::beneath::{Beneath, Kind};

pub trait VolumeBackend: Send + Sync {
    fn name(&self) -> &'static str;
    /// An empty, writable volume (subvolume or directory) `name` in `dir`.
    fn create(&self, dir: &Beneath, name: &Path) -> io::Result<()>;
    /// A snapshot `dst` of `src` (both in `dir`; `dst` must not exist), writable or read-only.
    fn snapshot(&self, dir: &Beneath, src: &Path, dst: &Path, readonly: bool) -> io::Result<()>;
    fn set_readonly(&self, dir: &Beneath, name: &Path, readonly: bool) -> io::Result<()>;
    fn is_readonly(&self, dir: &Beneath, name: &Path) -> io::Result<bool>;
    /// Delete a volume made by `create` or `snapshot`, read-only or not.
    fn delete(&self, dir: &Beneath, name: &Path) -> io::Result<()>;
    /// A stable identity of the volume (btrfs subvolume id, or the root directory's inode).
    fn id(&self, dir: &Beneath, name: &Path) -> io::Result<u64>;
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

/// Remove `name` in `dir` whatever it is: a btrfs subvolume (deleted through
/// the ioctl, even read-only), a directory tree (descending only through real
/// directories, subvolumes inside it included), a file or a symlink (never
/// what it points to). Recovery uses this, so it must work without knowing
/// which backend made the entry. Missing is fine.
pub fn remove_in(dir: &Beneath, name: &Path) -> io::Result<()> {
    match dir.try_stat(name)? {
        None => Ok(()),
        Some(s) if s.kind == Kind::Dir => {
            if btrfs::is_subvolume_in(dir, name)? {
                // a read-only subvolume cannot be emptied first; the ioctl takes it whole
                return btrfs::Btrfs.delete(dir, name);
            }
            let inner = dir.open_dir(name)?;
            for (child, kind) in inner.entries()? {
                if kind == Kind::Dir {
                    remove_in(&inner, Path::new(&child))?;
                } else {
                    inner.remove_file(Path::new(&child))?;
                }
            }
            dir.remove_dir(name)
        }
        Some(_) => dir.remove_file(name),
    }
}

/// The identity of the volume `name` in `dir` whichever backend made it.
pub fn volume_id(dir: &Beneath, name: &Path) -> io::Result<u64> {
    if btrfs::is_subvolume_in(dir, name)? {
        btrfs::Btrfs.id(dir, name)
    } else {
        dir::Dir.id(dir, name)
    }
}
