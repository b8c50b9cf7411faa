//! The plain-directory backend: the same layout with ordinary directories.
//! Snapshots are copies, reflinked file by file where the filesystem supports
//! it (btrfs, XFS) and copied otherwise. Read-only is not enforced here.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::VolumeBackend;
use crate::fsops::beneath::{Beneath, Kind};

pub struct Dir;

impl VolumeBackend for Dir {
    fn name(&self) -> &'static str {
        "dir"
    }

    fn create(&self, dir: &Beneath, name: &Path) -> io::Result<()> {
        dir.create_dir(name, 0o755)
    }

    fn snapshot(&self, dir: &Beneath, src: &Path, dst: &Path, _readonly: bool) -> io::Result<()> {
        let mode = dir.stat(src)?.mode;
        dir.create_dir(dst, 0o700)?;
        copy_tree(&dir.open_dir(src)?, &dir.open_dir(dst)?)?;
        dir.set_mode(dst, mode)
    }

    fn set_readonly(&self, _dir: &Beneath, _name: &Path, _readonly: bool) -> io::Result<()> {
        Ok(())
    }

    fn is_readonly(&self, _dir: &Beneath, _name: &Path) -> io::Result<bool> {
        Ok(false)
    }

    fn delete(&self, dir: &Beneath, name: &Path) -> io::Result<()> {
        super::remove_in(dir, name)
    }

    fn id(&self, dir: &Beneath, name: &Path) -> io::Result<u64> {
        Ok(dir.stat(name)?.ino)
    }
}

/// Copy the contents of `src` into the empty directory `dst`, keeping modes
/// and symlinks (as symlinks); files are reflinked when the filesystem can.
/// Device nodes, fifos and sockets are not part of a machine image and are skipped.
pub fn copy_tree(src: &Beneath, dst: &Beneath) -> io::Result<()> {
    for (name, kind) in src.entries()? {
        let n = Path::new(&name);
        match kind {
            Kind::Dir => {
                let mode = src.stat(n)?.mode;
                dst.create_dir(n, 0o700)?;
                copy_tree(&src.open_dir(n)?, &dst.open_dir(n)?)?;
                dst.set_mode(n, mode)?;
            }
            Kind::Symlink => dst.symlink(&src.read_link(n)?, n)?,
            Kind::File => {
                let from = src.open_file(n)?;
                let mode = from.metadata()?.permissions().mode();
                let mut to = dst.create_file(n, 0o600)?;
                if super::btrfs::clone_file(&from, &to).is_err() {
                    std::io::copy(&mut &from, &mut to)?;
                }
                to.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            Kind::Other => {}
        }
    }
    Ok(())
}
