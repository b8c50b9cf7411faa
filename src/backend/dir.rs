//! The plain-directory backend: the same layout with ordinary directories.
//! Snapshots are copies, reflinked file by file where the filesystem supports
//! it (btrfs, XFS) and copied otherwise. Read-only is not enforced here.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::VolumeBackend;

pub struct Dir;

impl VolumeBackend for Dir {
    fn name(&self) -> &'static str {
        "dir"
    }

    fn create(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn snapshot(&self, src: &Path, dst: &Path, _readonly: bool) -> io::Result<()> {
        let meta = fs::symlink_metadata(src)?;
        fs::create_dir(dst)?;
        copy_tree(src, dst)?;
        fs::set_permissions(dst, meta.permissions())
    }

    fn set_readonly(&self, _path: &Path, _readonly: bool) -> io::Result<()> {
        Ok(())
    }

    fn is_readonly(&self, _path: &Path) -> io::Result<bool> {
        Ok(false)
    }

    fn delete(&self, path: &Path) -> io::Result<()> {
        crate::fsops::remove_any(path)
    }

    fn id(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::symlink_metadata(path)?.ino())
    }
}

/// Copy the contents of `src` into the existing directory `dst`, keeping modes
/// and symlinks; files are reflinked when the filesystem can.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    for e in fs::read_dir(src)? {
        let e = e?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let meta = fs::symlink_metadata(&from)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to)?;
            copy_tree(&from, &to)?;
            fs::set_permissions(&to, meta.permissions())?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            reflink_copy::reflink_or_copy(&from, &to)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.permissions().mode()))?;
        }
        // device nodes, fifos and sockets are not part of a machine image and are skipped
    }
    Ok(())
}
