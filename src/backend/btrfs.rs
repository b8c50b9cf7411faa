//! btrfs through its ioctls (never by parsing `btrfs` CLI output). This is the
//! only module with unsafe code: each block issues one ioctl on a file
//! descriptor we own, with a `#[repr(C)]` argument laid out exactly as the
//! kernel's `struct btrfs_ioctl_*` (sizes asserted at compile time).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC};

use super::VolumeBackend;

/// The root directory of every btrfs subvolume has this inode number.
const SUBVOLUME_ROOT_INO: u64 = 256;
const SUBVOL_RDONLY: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args`
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2`
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_ino_lookup_args`
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);

nix::ioctl_write_ptr!(ioc_subvol_create, 0x94, 14, VolArgs);
nix::ioctl_write_ptr!(ioc_snap_destroy, 0x94, 15, VolArgs);
nix::ioctl_readwrite!(ioc_ino_lookup, 0x94, 18, InoLookupArgs);
nix::ioctl_write_ptr!(ioc_snap_create_v2, 0x94, 23, VolArgsV2);
nix::ioctl_read!(ioc_subvol_getflags, 0x94, 25, u64);
nix::ioctl_write_ptr!(ioc_subvol_setflags, 0x94, 26, u64);

pub struct Btrfs;

pub fn is_btrfs(path: &Path) -> io::Result<bool> {
    Ok(statfs(path)?.filesystem_type() == BTRFS_SUPER_MAGIC)
}

/// Is `path` the root of a btrfs subvolume (btrfs, and inode 256)?
pub fn is_subvolume(path: &Path) -> io::Result<bool> {
    Ok(is_btrfs(path)? && std::fs::symlink_metadata(path)?.ino() == SUBVOLUME_ROOT_INO)
}

fn require_subvolume(path: &Path) -> io::Result<()> {
    if is_subvolume(path)? {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} is not a btrfs subvolume",
            path.display()
        )))
    }
}

/// The parent directory (opened, on btrfs) and the final name of `path`.
fn parent_and_name(path: &Path) -> io::Result<(File, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no name", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !is_btrfs(parent)? {
        return Err(io::Error::other(format!(
            "{} is not on btrfs",
            parent.display()
        )));
    }
    Ok((File::open(parent)?, name))
}

fn copy_name(dst: &mut [u8], name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.len() >= dst.len() || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "subvolume name too long or has a NUL byte",
        ));
    }
    dst[..b.len()].copy_from_slice(b);
    Ok(())
}

impl VolumeBackend for Btrfs {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn create(&self, path: &Path) -> io::Result<()> {
        let (parent, name) = parent_and_name(path)?;
        let mut args = VolArgs {
            fd: 0,
            name: [0; 4088],
        };
        copy_name(&mut args.name, name)?;
        // SAFETY: `parent` is an open directory fd for the call's duration and
        // `args` is a fully initialised btrfs_ioctl_vol_args with a NUL-terminated name.
        unsafe { ioc_subvol_create(parent.as_raw_fd(), &args) }?;
        Ok(())
    }

    fn snapshot(&self, src: &Path, dst: &Path, readonly: bool) -> io::Result<()> {
        require_subvolume(src)?;
        let source = File::open(src)?;
        let (parent, name) = parent_and_name(dst)?;
        let mut args = VolArgsV2 {
            fd: source.as_raw_fd() as i64,
            transid: 0,
            flags: if readonly { SUBVOL_RDONLY } else { 0 },
            unused: [0; 4],
            name: [0; 4040],
        };
        copy_name(&mut args.name, name)?;
        // SAFETY: `parent` and `source` stay open across the call; `args` is a
        // fully initialised btrfs_ioctl_vol_args_v2 whose fd names the source subvolume.
        unsafe { ioc_snap_create_v2(parent.as_raw_fd(), &args) }?;
        Ok(())
    }

    fn set_readonly(&self, path: &Path, readonly: bool) -> io::Result<()> {
        require_subvolume(path)?;
        let f = File::open(path)?;
        let mut flags: u64 = 0;
        // SAFETY: `f` is an open fd of a subvolume root; `flags` is a valid u64 for the kernel to fill.
        unsafe { ioc_subvol_getflags(f.as_raw_fd(), &mut flags) }?;
        let new = if readonly {
            flags | SUBVOL_RDONLY
        } else {
            flags & !SUBVOL_RDONLY
        };
        if new != flags {
            // SAFETY: as above; the kernel only reads the u64.
            unsafe { ioc_subvol_setflags(f.as_raw_fd(), &new) }?;
        }
        Ok(())
    }

    fn is_readonly(&self, path: &Path) -> io::Result<bool> {
        require_subvolume(path)?;
        let f = File::open(path)?;
        let mut flags: u64 = 0;
        // SAFETY: `f` is an open fd of a subvolume root; `flags` is a valid u64 for the kernel to fill.
        unsafe { ioc_subvol_getflags(f.as_raw_fd(), &mut flags) }?;
        Ok(flags & SUBVOL_RDONLY != 0)
    }

    fn delete(&self, path: &Path) -> io::Result<()> {
        require_subvolume(path)?;
        let (parent, name) = parent_and_name(path)?;
        let mut args = VolArgs {
            fd: 0,
            name: [0; 4088],
        };
        copy_name(&mut args.name, name)?;
        // SAFETY: `parent` is an open directory fd; `args` is a fully initialised
        // btrfs_ioctl_vol_args naming a child subvolume of it.
        unsafe { ioc_snap_destroy(parent.as_raw_fd(), &args) }?;
        Ok(())
    }

    fn id(&self, path: &Path) -> io::Result<u64> {
        require_subvolume(path)?;
        let f = File::open(path)?;
        let mut args = InoLookupArgs {
            treeid: 0,
            objectid: SUBVOLUME_ROOT_INO,
            name: [0; 4080],
        };
        // SAFETY: `f` is an open fd inside the subvolume; `args` is a fully
        // initialised btrfs_ioctl_ino_lookup_args the kernel reads and fills.
        unsafe { ioc_ino_lookup(f.as_raw_fd(), &mut args) }?;
        Ok(args.treeid)
    }
}
