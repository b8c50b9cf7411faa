//! Atomic filesystem primitives. Everything reconcile publishes is staged beside
//! its target on the same filesystem, fsynced, and switched in with one rename;
//! the parent directory is fsynced after it.

pub mod beneath;
pub mod digest;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::RenameFlags;

pub use beneath::Beneath;

/// Marker in the names of everything reconcile stages or retires beside a
/// managed path; watchers and observers ignore such names.
pub const STAGING_MARK: &str = ".reconcile-";

/// `.<name>.reconcile-<txn>`: the staging (and, after an exchange, retiring) name for `name`.
pub fn staging_name(name: &Path, txn: &str) -> PathBuf {
    dotted(name, &format!("{STAGING_MARK}{txn}"))
}

/// `.<name>.reconcile-<txn>.old`: where the old copy waits when RENAME_EXCHANGE is refused.
pub fn retired_name(name: &Path, txn: &str) -> PathBuf {
    dotted(name, &format!("{STAGING_MARK}{txn}.old"))
}

fn dotted(name: &Path, suffix: &str) -> PathBuf {
    let mut n = OsString::from(".");
    n.push(name.as_os_str());
    n.push(suffix);
    PathBuf::from(n)
}

/// The staging path beside `target` (as the journal records it).
pub fn staging_path(target: &Path, txn: &str) -> PathBuf {
    beside(target, staging_name(&file_name(target), txn))
}

/// The retired path beside `target` (as the journal records it).
pub fn retired_path(target: &Path, txn: &str) -> PathBuf {
    beside(target, retired_name(&file_name(target), txn))
}

fn file_name(p: &Path) -> PathBuf {
    PathBuf::from(p.file_name().unwrap_or_default())
}

fn beside(target: &Path, name: PathBuf) -> PathBuf {
    target.with_file_name(name)
}

pub fn is_staging_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(STAGING_MARK)
}

const CANDIDATE: &str = "candidate";

/// `<dir>/.<name>.reconcile-candidate` beside `target`: where a new tree
/// waits behind a promotion gate. Staging-named, so observers and watchers
/// pass it by; published there and recovered like any managed path.
pub fn candidate_path(target: &Path) -> PathBuf {
    beside(
        target,
        dotted(&file_name(target), &format!("{STAGING_MARK}{CANDIDATE}")),
    )
}

pub fn is_candidate_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(&format!("{STAGING_MARK}{CANDIDATE}"))
}

/// Filesystems that refuse renameat2 flags (some FUSE and network filesystems)
/// answer EINVAL; old kernels ENOSYS.
fn flags_unsupported(e: &io::Error) -> bool {
    [Errno::EINVAL, Errno::ENOSYS, Errno::EOPNOTSUPP]
        .iter()
        .any(|c| e.raw_os_error() == Some(*c as i32))
}

/// `RECONCILE_RENAME_FALLBACK=1` takes the fallback path as if the filesystem
/// refused the flags, so the tests exercise it (and its crash recovery) everywhere.
fn rename_flags(dir: &Beneath, from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
    if std::env::var_os("RECONCILE_RENAME_FALLBACK").is_some_and(|v| v == "1") {
        return Err(io::Error::from_raw_os_error(Errno::EINVAL as i32));
    }
    dir.rename_with(from, to, flags)
}

/// Where the previous content went after [`publish`].
#[derive(Debug, PartialEq, Eq)]
pub enum Previous {
    /// There was nothing at the target.
    None,
    /// The previous content now sits under this name (in the same directory), to be removed.
    At(PathBuf),
}

/// Publish `staged` as `target`, both names in the directory `dir`, atomically.
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
pub fn publish(
    dir: &Beneath,
    staged: &Path,
    target: &Path,
    retired: &Path,
) -> io::Result<Previous> {
    let exists = dir.try_stat(target)?.is_some();
    let result = if exists {
        match rename_flags(dir, staged, target, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => Previous::At(staged.to_path_buf()),
            Err(e) if flags_unsupported(&e) => {
                dir.rename(target, retired)?;
                dir.rename(staged, target)?;
                Previous::At(retired.to_path_buf())
            }
            Err(e) => return Err(e),
        }
    } else {
        match rename_flags(dir, staged, target, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {}
            Err(e) if flags_unsupported(&e) => {
                if dir.try_stat(target)?.is_some() {
                    return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                }
                dir.rename(staged, target)?;
            }
            Err(e) => return Err(e),
        }
        Previous::None
    };
    dir.sync()?;
    Ok(result)
}

/// Point the symlink `link` (in `dir`) at `dest` atomically: a temporary
/// symlink renamed over the old one.
pub fn switch_symlink(dir: &Beneath, dest: &Path, link: &Path) -> io::Result<()> {
    let tmp = dotted(link, &format!("{STAGING_MARK}link-{}", std::process::id()));
    let _ = dir.remove_file(&tmp);
    dir.symlink(dest, &tmp)?;
    if let Err(e) = dir.rename(&tmp, link) {
        let _ = dir.remove_file(&tmp);
        return Err(e);
    }
    dir.sync()
}

/// Write a small file atomically by path — for files the user names (a saved
/// plan, `reconcile.lock`, reports): temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = beside(
        path,
        dotted(
            &file_name(path),
            &format!("{STAGING_MARK}tmp-{}", std::process::id()),
        ),
    );
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Read a file the user names: a regular file (a fifo or a device would block
/// or never end) of at most `limit` bytes, opened without blocking.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let too_big = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {} MiB", limit >> 20),
        )
    };
    if meta.len() > limit {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    f.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

/// Why a directory others could tamper with is refused (ssh's StrictModes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposed {
    /// It belongs to this uid, not to one of the allowed owners.
    Owner(u32),
    /// It is writable by group or others (its permission bits).
    Writable(u32),
    /// This directory above it is writable by everyone without the sticky bit.
    Ancestor(PathBuf),
}

/// `dir` (opened at `path`) must belong to one of `owners` and be writable by
/// no one else, and no directory above it may be writable by everyone without
/// the sticky bit (someone could swap it for their own).
pub fn check_private(
    path: &Path,
    dir: &Beneath,
    owners: &[u32],
) -> io::Result<Result<(), Exposed>> {
    let st = dir.stat(Path::new(""))?;
    if !owners.contains(&st.uid) {
        return Ok(Err(Exposed::Owner(st.uid)));
    }
    if st.mode & 0o022 != 0 {
        return Ok(Err(Exposed::Writable(st.mode & 0o777)));
    }
    let abs = std::path::absolute(path)?;
    for parent in abs.ancestors().skip(1) {
        let Ok(m) = fs::metadata(parent) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        if m.mode() & 0o002 != 0 && m.mode() & 0o1000 == 0 {
            return Ok(Err(Exposed::Ancestor(parent.to_path_buf())));
        }
    }
    Ok(Ok(()))
}

/// Make everything under `root` durable before the rename that publishes it.
/// Small trees get an fsync per file and directory; past [`SYNCFS_ABOVE`]
/// entries one `syncfs(2)` of the filesystem is far cheaper than thousands of
/// fsyncs (each a journal commit) and gives the same guarantee.
pub fn sync_tree(root: &Beneath) -> io::Result<()> {
    let mut seen = 0;
    if count_entries(root, &mut seen)? {
        return nix::unistd::syncfs(root.fd()).map_err(io::Error::from);
    }
    match fsync_each(root) {
        // a read-only subvolume (a received send stream) refuses fsync: sync the filesystem
        Err(e)
            if e.kind() == io::ErrorKind::ReadOnlyFilesystem
                || e.raw_os_error() == Some(nix::libc::EROFS) =>
        {
            nix::unistd::syncfs(root.fd()).map_err(io::Error::from)
        }
        other => other,
    }
}

/// Entries above which [`sync_tree`] syncs the whole filesystem instead.
pub const SYNCFS_ABOVE: usize = 256;

/// Count entries under `dir` into `seen`; true once past [`SYNCFS_ABOVE`].
fn count_entries(dir: &Beneath, seen: &mut usize) -> io::Result<bool> {
    for (name, kind) in dir.entries()? {
        *seen += 1;
        if *seen > SYNCFS_ABOVE {
            return Ok(true);
        }
        if kind == beneath::Kind::Dir && count_entries(&dir.open_dir(Path::new(&name))?, seen)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn fsync_each(dir: &Beneath) -> io::Result<()> {
    for (name, kind) in dir.entries()? {
        let n = Path::new(&name);
        match kind {
            beneath::Kind::Dir => fsync_each(&dir.open_dir(n)?)?,
            beneath::Kind::File => dir.open_file(n)?.sync_all()?,
            _ => {}
        }
    }
    dir.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_new_then_exchange() {
        let d = tempfile::tempdir().unwrap();
        let dir = Beneath::open(d.path()).unwrap();
        let target = Path::new("t");
        let staged = staging_name(target, "1");
        dir.create_dir(&staged, 0o755).unwrap();
        fs::write(d.path().join(&staged).join("f"), "one").unwrap();
        assert_eq!(
            publish(&dir, &staged, target, &retired_name(target, "1")).unwrap(),
            Previous::None
        );
        assert_eq!(fs::read_to_string(d.path().join("t/f")).unwrap(), "one");

        let staged = staging_name(target, "2");
        dir.create_dir(&staged, 0o755).unwrap();
        fs::write(d.path().join(&staged).join("f"), "two").unwrap();
        let prev = publish(&dir, &staged, target, &retired_name(target, "2")).unwrap();
        assert_eq!(fs::read_to_string(d.path().join("t/f")).unwrap(), "two");
        match prev {
            Previous::At(old) => {
                assert_eq!(
                    fs::read_to_string(d.path().join(old).join("f")).unwrap(),
                    "one"
                )
            }
            Previous::None => panic!("old copy lost"),
        }
    }

    #[test]
    fn switch_symlink_replaces() {
        let d = tempfile::tempdir().unwrap();
        let dir = Beneath::open(d.path()).unwrap();
        switch_symlink(&dir, Path::new("m-1"), Path::new("m")).unwrap();
        switch_symlink(&dir, Path::new("m-2"), Path::new("m")).unwrap();
        assert_eq!(fs::read_link(d.path().join("m")).unwrap(), Path::new("m-2"));
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
        assert_eq!(
            staging_name(Path::new("kolet"), "abc"),
            Path::new(".kolet.reconcile-abc")
        );
        assert!(is_staging_name(p.file_name().unwrap().to_str().unwrap()));
        assert!(!is_staging_name("kolet"));
    }
}
