//! btrfs through its ioctls (never by parsing `btrfs` CLI output), on
//! directories opened beneath the volume (never through a symlink). Each
//! unsafe block issues one ioctl on a file descriptor we own, with a
//! `#[repr(C)]` argument laid out exactly as the kernel's
//! `struct btrfs_ioctl_*` (sizes asserted at compile time). `FICLONE`
//! (btrfs's clone ioctl, which XFS implements too) gives the dir backend its
//! reflinks.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::statfs::{fstatfs, statfs, BTRFS_SUPER_MAGIC};

use super::VolumeBackend;
use crate::fsops::beneath::Beneath;

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

/// `struct btrfs_ioctl_timespec`
#[repr(C)]
struct Timespec {
    sec: u64,
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args`
#[repr(C)]
struct SubvolInfoArgs {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: Timespec,
    otime: Timespec,
    stime: Timespec,
    rtime: Timespec,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<SubvolInfoArgs>() == 504);
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);

nix::ioctl_write_ptr!(ioc_subvol_create, 0x94, 14, VolArgs);
nix::ioctl_write_ptr!(ioc_snap_destroy, 0x94, 15, VolArgs);
nix::ioctl_readwrite!(ioc_ino_lookup, 0x94, 18, InoLookupArgs);
nix::ioctl_write_ptr!(ioc_snap_create_v2, 0x94, 23, VolArgsV2);
nix::ioctl_read!(ioc_subvol_getflags, 0x94, 25, u64);
nix::ioctl_write_ptr!(ioc_subvol_setflags, 0x94, 26, u64);
nix::ioctl_write_int!(ioc_clone, 0x94, 9);
nix::ioctl_read!(ioc_get_subvol_info, 0x94, 60, SubvolInfoArgs);

/// The identities of a subvolume: its own UUID, the UUID of the subvolume
/// it was snapshotted from, and the UUID of the send stream it was received
/// from (all zero when there is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uuids {
    pub uuid: [u8; 16],
    pub parent: [u8; 16],
    pub received: [u8; 16],
}

/// [`Uuids`] of the subvolume `name` in `dir`.
pub fn uuids(dir: &Beneath, name: &Path) -> io::Result<Uuids> {
    let sub = open_subvolume(dir, name)?;
    // SAFETY: all-zero bytes are a valid value of this plain-integer struct.
    let mut args: SubvolInfoArgs = unsafe { std::mem::zeroed() };
    // SAFETY: `sub` is an open subvolume root; the kernel fills the
    // btrfs_ioctl_get_subvol_info_args it is handed and reads nothing from it.
    unsafe { ioc_get_subvol_info(sub.fd().as_raw_fd(), &mut args) }?;
    Ok(Uuids {
        uuid: args.uuid,
        parent: args.parent_uuid,
        received: args.received_uuid,
    })
}

/// A UUID as btrfs prints it (8-4-4-4-12 hex digits).
pub fn uuid_text(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub struct Btrfs;

pub fn is_btrfs(path: &Path) -> io::Result<bool> {
    Ok(statfs(path)?.filesystem_type() == BTRFS_SUPER_MAGIC)
}

fn on_btrfs(fd: impl AsFd) -> io::Result<bool> {
    Ok(fstatfs(fd)?.filesystem_type() == BTRFS_SUPER_MAGIC)
}

/// Is `name` in `dir` the root of a btrfs subvolume (btrfs, and inode 256)?
pub fn is_subvolume_in(dir: &Beneath, name: &Path) -> io::Result<bool> {
    match dir.try_stat(name)? {
        Some(s) if s.ino == SUBVOLUME_ROOT_INO => on_btrfs(dir),
        _ => Ok(false),
    }
}

/// The subvolume `name` in `dir`, opened (refused when it is not one).
fn open_subvolume(dir: &Beneath, name: &Path) -> io::Result<Beneath> {
    if !is_subvolume_in(dir, name)? {
        return Err(io::Error::other(format!(
            "{} is not a btrfs subvolume",
            dir.shown(name).display()
        )));
    }
    dir.open_dir(name)
}

fn require_btrfs(dir: &Beneath) -> io::Result<()> {
    if on_btrfs(dir)? {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} is not on btrfs",
            dir.path().display()
        )))
    }
}

fn copy_name(dst: &mut [u8], name: &Path) -> io::Result<()> {
    let n: &OsStr = name.as_os_str();
    let b = n.as_bytes();
    if b.is_empty() || b.len() >= dst.len() || b.contains(&0) || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "subvolume name empty, too long, or not a single component",
        ));
    }
    dst[..b.len()].copy_from_slice(b);
    Ok(())
}

/// Share `src`'s blocks with the empty file `dst` (a reflink). Fails with
/// EOPNOTSUPP, EXDEV or EINVAL where the filesystem cannot.
pub fn clone_file(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: both descriptors are open for the call's duration; FICLONE takes
    // the source fd as its integer argument and reads nothing else.
    unsafe { ioc_clone(dst.as_raw_fd(), src.as_raw_fd() as nix::libc::c_ulong) }?;
    Ok(())
}

impl VolumeBackend for Btrfs {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn create(&self, dir: &Beneath, name: &Path) -> io::Result<()> {
        require_btrfs(dir)?;
        let mut args = VolArgs {
            fd: 0,
            name: [0; 4088],
        };
        copy_name(&mut args.name, name)?;
        // SAFETY: `dir` is an open directory fd for the call's duration and
        // `args` is a fully initialised btrfs_ioctl_vol_args with a NUL-terminated name.
        unsafe { ioc_subvol_create(dir.fd().as_raw_fd(), &args) }?;
        Ok(())
    }

    fn snapshot(&self, dir: &Beneath, src: &Path, dst: &Path, readonly: bool) -> io::Result<()> {
        let source = open_subvolume(dir, src)?;
        let mut args = VolArgsV2 {
            fd: source.fd().as_raw_fd() as i64,
            transid: 0,
            flags: if readonly { SUBVOL_RDONLY } else { 0 },
            unused: [0; 4],
            name: [0; 4040],
        };
        copy_name(&mut args.name, dst)?;
        // SAFETY: `dir` and `source` stay open across the call; `args` is a
        // fully initialised btrfs_ioctl_vol_args_v2 whose fd names the source subvolume.
        unsafe { ioc_snap_create_v2(dir.fd().as_raw_fd(), &args) }?;
        Ok(())
    }

    fn set_readonly(&self, dir: &Beneath, name: &Path, readonly: bool) -> io::Result<()> {
        let f = open_subvolume(dir, name)?;
        let mut flags: u64 = 0;
        // SAFETY: `f` is an open fd of a subvolume root; `flags` is a valid u64 for the kernel to fill.
        unsafe { ioc_subvol_getflags(f.fd().as_raw_fd(), &mut flags) }?;
        let new = if readonly {
            flags | SUBVOL_RDONLY
        } else {
            flags & !SUBVOL_RDONLY
        };
        if new != flags {
            // SAFETY: as above; the kernel only reads the u64.
            unsafe { ioc_subvol_setflags(f.fd().as_raw_fd(), &new) }?;
        }
        Ok(())
    }

    fn is_readonly(&self, dir: &Beneath, name: &Path) -> io::Result<bool> {
        let f = open_subvolume(dir, name)?;
        let mut flags: u64 = 0;
        // SAFETY: `f` is an open fd of a subvolume root; `flags` is a valid u64 for the kernel to fill.
        unsafe { ioc_subvol_getflags(f.fd().as_raw_fd(), &mut flags) }?;
        Ok(flags & SUBVOL_RDONLY != 0)
    }

    fn delete(&self, dir: &Beneath, name: &Path) -> io::Result<()> {
        open_subvolume(dir, name)?;
        let mut args = VolArgs {
            fd: 0,
            name: [0; 4088],
        };
        copy_name(&mut args.name, name)?;
        // SAFETY: `dir` is an open directory fd; `args` is a fully initialised
        // btrfs_ioctl_vol_args naming a child subvolume of it.
        unsafe { ioc_snap_destroy(dir.fd().as_raw_fd(), &args) }?;
        Ok(())
    }

    fn id(&self, dir: &Beneath, name: &Path) -> io::Result<u64> {
        let f = open_subvolume(dir, name)?;
        let mut args = InoLookupArgs {
            treeid: 0,
            objectid: SUBVOLUME_ROOT_INO,
            name: [0; 4080],
        };
        // SAFETY: `f` is an open fd inside the subvolume; `args` is a fully
        // initialised btrfs_ioctl_ino_lookup_args the kernel reads and fills.
        unsafe { ioc_ino_lookup(f.fd().as_raw_fd(), &mut args) }?;
        Ok(args.treeid)
    }
}
