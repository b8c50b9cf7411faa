//! Atomic filesystem primitives. Everything reconcile publishes is staged beside
//! its target on the same filesystem, fsynced, and switched in with one rename;
//! the parent directory is fsynced after it.

pub mod digest;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

/// Marker in the names of everything reconcile stages or retires beside a
/// managed path; watchers and observers ignore such names.
pub const STAGING_MARK: &str = ".reconcile-";

/// `.<name>.reconcile-<txn>`: the staging (and, after an exchange, retiring) path of `target`.
pub fn staging_path(target: &Path, txn: &str) -> PathBuf {
    sibling(target, &format!("{}{txn}", STAGING_MARK))
}

/// `.<name>.reconcile-<txn>.old`: where the old copy waits when RENAME_EXCHANGE is refused.
pub fn retired_path(target: &Path, txn: &str) -> PathBuf {
    sibling(target, &format!("{}{txn}.old", STAGING_MARK))
}

fn sibling(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}{suffix}"))
}

pub fn is_staging_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(STAGING_MARK)
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Filesystems that refuse renameat2 flags (some FUSE and network filesystems)
/// answer EINVAL; old kernels ENOSYS.
fn flags_unsupported(e: Errno) -> bool {
    matches!(e, Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
}

/// `RECONCILE_RENAME_FALLBACK=1` takes the fallback path as if the filesystem
/// refused the flags, so the tests exercise it (and its crash recovery) everywhere.
fn renameat2_flags(staged: &Path, target: &Path, flags: RenameFlags) -> Result<(), Errno> {
    if std::env::var_os("RECONCILE_RENAME_FALLBACK").is_some_and(|v| v == "1") {
        return Err(Errno::EINVAL);
    }
    renameat2(AT_FDCWD, staged, AT_FDCWD, target, flags)
}

/// Where the previous content went after [`publish`].
#[derive(Debug, PartialEq, Eq)]
pub enum Previous {
    /// There was nothing at the target.
    None,
    /// The previous content now sits at this path, to be removed.
    At(PathBuf),
}

/// Publish `staged` at `target` atomically.
///
/// With an existing target the two are swapped with `RENAME_EXCHANGE`: no
/// moment where the target is missing or mixed, and the old copy ends up at
/// `staged`. A new target is placed with `RENAME_NOREPLACE`, so a racing
/// creator is never overwritten.
///
/// Fallback, for filesystems that refuse the flags: the old target is renamed
/// to `retired` and the staged copy renamed in — two renames with a short
/// window where the target is missing. The journal knows both names, so a
/// crash inside the window is repaired by recovery.
pub fn publish(staged: &Path, target: &Path, retired: &Path) -> io::Result<Previous> {
    let exists = fs::symlink_metadata(target).is_ok();
    let result = if exists {
        match renameat2_flags(staged, target, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => Previous::At(staged.to_path_buf()),
            Err(e) if flags_unsupported(e) => {
                fs::rename(target, retired)?;
                fs::rename(staged, target)?;
                Previous::At(retired.to_path_buf())
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        match renameat2_flags(staged, target, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {}
            Err(e) if flags_unsupported(e) => {
                if fs::symlink_metadata(target).is_ok() {
                    return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                }
                fs::rename(staged, target)?;
            }
            Err(e) => return Err(e.into()),
        }
        Previous::None
    };
    fsync_dir(parent(target))?;
    Ok(result)
}

/// Point the symlink `link` at `dest` atomically: a temporary symlink renamed over the old one.
pub fn switch_symlink(dest: &Path, link: &Path) -> io::Result<()> {
    let tmp = sibling(
        link,
        &format!("{}link-{}", STAGING_MARK, std::process::id()),
    );
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dest, &tmp)?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(parent(link))
}

/// Write a small file atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = sibling(path, &format!("{}tmp-{}", STAGING_MARK, std::process::id()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(parent(path))
}

/// Remove a file or a whole tree; a missing path is fine.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => match fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        Ok(_) => match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
    }
}

/// Make everything under `root` durable before the rename that publishes it.
/// Small trees get an fsync per file and directory; past [`SYNCFS_ABOVE`]
/// entries one `syncfs(2)` of the filesystem is far cheaper than thousands of
/// fsyncs (each a journal commit) and gives the same guarantee.
pub fn sync_tree(root: &Path) -> io::Result<()> {
    if count_entries(root, SYNCFS_ABOVE + 1)? > SYNCFS_ABOVE {
        return nix::unistd::syncfs(File::open(root)?).map_err(io::Error::from);
    }
    fsync_each(root)
}

/// Entries above which [`sync_tree`] syncs the whole filesystem instead.
pub const SYNCFS_ABOVE: usize = 256;

/// Number of entries under `root`, counting stops at `limit`.
fn count_entries(root: &Path, limit: usize) -> io::Result<usize> {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd {
            let e = e?;
            n += 1;
            if n >= limit {
                return Ok(n);
            }
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(n)
}

fn fsync_each(root: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(root)?;
    if meta.is_dir() {
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                fsync_each(&entry.path())?;
            } else if ft.is_file() {
                File::open(entry.path())?.sync_all()?;
            }
        }
        fsync_dir(root)
    } else if meta.is_file() {
        File::open(root)?.sync_all()
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_new_then_exchange() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("t");
        let staged = staging_path(&target, "1");
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("f"), "one").unwrap();
        assert_eq!(
            publish(&staged, &target, &retired_path(&target, "1")).unwrap(),
            Previous::None
        );
        assert_eq!(fs::read_to_string(target.join("f")).unwrap(), "one");

        let staged = staging_path(&target, "2");
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("f"), "two").unwrap();
        let prev = publish(&staged, &target, &retired_path(&target, "2")).unwrap();
        assert_eq!(fs::read_to_string(target.join("f")).unwrap(), "two");
        match prev {
            Previous::At(old) => assert_eq!(fs::read_to_string(old.join("f")).unwrap(), "one"),
            Previous::None => panic!("old copy lost"),
        }
    }

    #[test]
    fn switch_symlink_replaces() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("m");
        switch_symlink(Path::new("m-1"), &link).unwrap();
        switch_symlink(Path::new("m-2"), &link).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("m-2"));
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary link left"
        );
    }

    #[test]
    fn staging_names_are_recognised() {
        let p = staging_path(Path::new("/x/kolet"), "abc");
        assert_eq!(p, Path::new("/x/.kolet.reconcile-abc"));
        assert!(is_staging_name(p.file_name().unwrap().to_str().unwrap()));
        assert!(!is_staging_name("kolet"));
    }
}
