//! Paths beneath a root, never through a symlink. Every managed write goes
//! through a [`Beneath`] handle on a root reconcile was told about (a plugin
//! dir, a TFTP root, a machine volume, the state dir, a staging directory):
//! a path below it is resolved by the kernel with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` — or, where openat2 is
//! missing, one `openat(O_NOFOLLOW)` per component — so no `..` leads out,
//! no absolute path is taken, and no symlink is followed anywhere along the
//! way: a symlink in the way is an error, never a detour. Changes are made
//! relative to the opened parent directory (`mkdirat`, `symlinkat`,
//! `renameat2`, `unlinkat`) and modes through the opened file (`fchmod`).
//!
//! The root itself is opened as given: a symlink the user put *above* the
//! root is theirs to make.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{linkat, symlinkat, unlinkat, UnlinkatFlags};

/// What an entry is, from `fstatat` without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A device node, fifo or socket.
    Other,
}

/// An entry's metadata, never through a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    pub size: u64,
    pub ino: u64,
    pub dev: u64,
    pub uid: u32,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Stat {
    pub fn of(st: &FileStat) -> Stat {
        let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let kind = if fmt == SFlag::S_IFREG {
            Kind::File
        } else if fmt == SFlag::S_IFDIR {
            Kind::Dir
        } else if fmt == SFlag::S_IFLNK {
            Kind::Symlink
        } else {
            Kind::Other
        };
        Stat {
            kind,
            mode: st.st_mode & 0o7777,
            size: st.st_size as u64,
            ino: st.st_ino,
            dev: st.st_dev,
            uid: st.st_uid,
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
            ctime_ns: st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128,
        }
    }
}

/// An open directory that paths are resolved beneath.
#[derive(Debug)]
pub struct Beneath {
    fd: OwnedFd,
    /// Where it is, for messages only: nothing is resolved through it.
    path: PathBuf,
    /// The descriptor's directory offset has moved (a listing read it): the
    /// next listing rewinds first. Each handle owns its open file description.
    listed: bool,
}

/// A path's parent directory: the handle itself, or one opened below it.
enum Parent<'a> {
    Same(&'a Beneath),
    Opened(Beneath),
}

impl std::ops::Deref for Parent<'_> {
    type Target = Beneath;
    fn deref(&self) -> &Beneath {
        match self {
            Parent::Same(b) => b,
            Parent::Opened(b) => b,
        }
    }
}

/// Set once openat2 answers ENOSYS (kernels before 5.6): the per-component walk is used after.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// `rel` as its normal components; anything else (absolute, `..`) is refused.
pub fn components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a plain relative path", rel.display()),
                ))
            }
        }
    }
    Ok(out)
}

impl Beneath {
    fn new(fd: OwnedFd, path: PathBuf) -> Beneath {
        Beneath {
            fd,
            path,
            listed: false,
        }
    }

    /// Open the root itself.
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| with_path(errno(e), root))?;
        Ok(Beneath::new(fd, root.to_path_buf()))
    }

    /// Open `path` as a handle only if it is a real directory (not a symlink
    /// to one): None when nothing is there, an error naming what is.
    pub fn open_existing_dir(path: &Path) -> io::Result<Option<Beneath>> {
        match nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(Beneath::new(fd, path.to_path_buf()))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(with_path(errno(e), path)),
        }
    }

    /// The names in this directory with their kinds from the listing itself
    /// (`d_type`; a filesystem without it is asked with `fstatat`), unsorted.
    /// Reads the handle's own descriptor: `&mut` so no one else moves its
    /// offset meanwhile.
    pub fn names(&mut self) -> io::Result<Vec<(OsString, Kind)>> {
        if self.listed {
            nix::unistd::lseek(self.fd.as_fd(), 0, nix::unistd::Whence::SeekSet).map_err(errno)?;
        }
        self.listed = true;
        let mut out = read_names(self.fd.as_fd())?;
        for (name, kind) in &mut out {
            if kind.is_none() {
                *kind = Some(self.stat(Path::new(name))?.kind);
            }
        }
        Ok(out
            .into_iter()
            .map(|(n, k)| (n, k.unwrap_or(Kind::Other)))
            .collect())
    }

    /// `fstatat` each name relative to this directory (nothing followed), in
    /// name order; a name gone since it was listed is left out.
    pub fn stat_names<'n>(&self, names: impl Iterator<Item = &'n OsStr>) -> Vec<(OsString, Stat)> {
        let mut out = Vec::new();
        for name in names {
            if let Some(st) = self.stat_name(name) {
                out.push((name.to_os_string(), st));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// One entry of this directory (a single name), not followed; None when it is gone or unreadable.
    pub fn stat_name(&self, name: &OsStr) -> Option<Stat> {
        fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()
        .map(|st| Stat::of(&st))
    }

    /// Where the handle is (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` below the root, for messages.
    pub fn shown(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Open `rel` beneath the root with `flags`, refusing symlinks on the way and at the end.
    fn open_at(&self, rel: &Path, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let parts = components(rel)?;
        let flags = flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        if parts.is_empty() {
            // the root itself
            return nix::fcntl::openat(self.fd.as_fd(), ".", flags, mode).map_err(errno);
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how = OpenHow::new().flags(flags).mode(mode).resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
            let joined: PathBuf = parts.iter().collect();
            match openat2(self.fd.as_fd(), joined.as_path(), how) {
                Err(Errno::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                other => return other.map_err(errno),
            }
        }
        self.open_walk(&parts, flags, mode)
    }

    /// openat2's resolution done by hand: one component at a time, each opened
    /// without following a symlink (`..` and absolute paths never get here).
    fn open_walk(&self, parts: &[&OsStr], flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let mut dir: Option<OwnedFd> = None;
        for (i, name) in parts.iter().enumerate() {
            let at = dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd());
            let last = i + 1 == parts.len();
            let f = if last {
                flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
            } else {
                OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW
            };
            dir = Some(nix::fcntl::openat(at, *name, f, mode).map_err(errno)?);
        }
        dir.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
    }

    /// The directory `rel` beneath the root, as a handle of its own.
    pub fn open_dir(&self, rel: &Path) -> io::Result<Beneath> {
        let fd = self
            .open_at(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())
            .map_err(|e| with_path(e, &self.shown(rel)))?;
        Ok(Beneath::new(fd, self.shown(rel)))
    }

    /// The parent of `rel` (this handle itself for a single name, else opened)
    /// and the last component.
    fn parent<'s, 'r>(&'s self, rel: &'r Path) -> io::Result<(Parent<'s>, &'r OsStr)> {
        let parts = components(rel)?;
        let Some((name, up)) = parts.split_last() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the root itself has no parent here",
            ));
        };
        if up.is_empty() {
            return Ok((Parent::Same(self), name));
        }
        let up: PathBuf = up.iter().collect();
        Ok((Parent::Opened(self.open_dir(&up)?), name))
    }

    pub fn stat(&self, rel: &Path) -> io::Result<Stat> {
        if components(rel)?.is_empty() {
            return fstat(self.fd.as_fd()).map(|s| Stat::of(&s)).map_err(errno);
        }
        let (dir, name) = self.parent(rel)?;
        fstatat(
            dir.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map(|s| Stat::of(&s))
        .map_err(|e| with_path(errno(e), &self.shown(rel)))
    }

    /// Like [`Beneath::stat`], with a missing entry (or a missing parent) as `None`.
    pub fn try_stat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        match self.stat(rel) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn create_dir(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        mkdirat(dir.fd.as_fd(), name, Mode::from_bits_truncate(mode))
            .map_err(|e| with_path(errno(e), &self.shown(rel)))
    }

    /// Create `rel` and the directories above it that are missing; returns the
    /// ones created, outermost first. A symlink in the way is an error.
    pub fn create_dir_all(&self, rel: &Path, mode: u32) -> io::Result<Vec<PathBuf>> {
        let mut made = Vec::new();
        let mut at = PathBuf::new();
        for name in components(rel)? {
            at.push(name);
            match self.try_stat(&at)? {
                Some(s) if s.kind == Kind::Dir => {}
                Some(s) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{} is a {} where a directory is needed (reconcile does not follow it)",
                            self.shown(&at).display(),
                            kind_name(s.kind)
                        ),
                    ))
                }
                None => match self.create_dir(&at, mode) {
                    Ok(()) => made.push(at.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(made)
    }

    /// A new regular file (it must not exist, not even as a dangling symlink).
    pub fn create_file(&self, rel: &Path, mode: u32) -> io::Result<File> {
        let fd = self
            .open_at(
                rel,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
                Mode::from_bits_truncate(mode),
            )
            .map_err(|e| with_path(e, &self.shown(rel)))?;
        Ok(File::from(fd))
    }

    /// An existing regular file, for reading.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        Ok(self.open_regular(rel)?.0)
    }

    /// An existing regular file and its metadata (from the opened file).
    fn open_regular(&self, rel: &Path) -> io::Result<(File, Stat)> {
        let fd = self
            .open_at(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())
            .map_err(|e| with_path(e, &self.shown(rel)))?;
        let f = File::from(fd);
        let st = Stat::of(&fstat(f.as_fd()).map_err(errno)?);
        if st.kind != Kind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", self.shown(rel).display()),
            ));
        }
        // O_NONBLOCK kept a fifo from blocking the open; on a regular file it changes nothing
        Ok((f, st))
    }

    /// Open (creating it when missing) a regular file for reading and
    /// writing, or appending — the state dir's lock and journal.
    pub fn open_rw(&self, rel: &Path, append: bool, mode: u32) -> io::Result<File> {
        let mut flags = OFlag::O_CREAT | OFlag::O_RDWR | OFlag::O_NONBLOCK;
        if append {
            flags |= OFlag::O_APPEND;
        }
        let fd = self
            .open_at(rel, flags, Mode::from_bits_truncate(mode))
            .map_err(|e| with_path(e, &self.shown(rel)))?;
        let f = File::from(fd);
        if Stat::of(&fstat(f.as_fd()).map_err(errno)?).kind != Kind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", self.shown(rel).display()),
            ));
        }
        let keep = if append {
            OFlag::O_APPEND
        } else {
            OFlag::empty()
        };
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(keep)).map_err(errno)?;
        Ok(f)
    }

    /// Read a whole regular file of at most `limit` bytes.
    pub fn read(&self, rel: &Path, limit: u64) -> io::Result<Vec<u8>> {
        Ok(self.read_stat(rel, limit)?.0)
    }

    /// [`Beneath::read`], with the metadata of the file that was read (taken when it was opened).
    pub fn read_stat(&self, rel: &Path, limit: u64) -> io::Result<(Vec<u8>, Stat)> {
        let (mut f, st) = self.open_regular(rel)?;
        let too_big = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {limit} bytes", self.shown(rel).display()),
            )
        };
        if st.size > limit {
            return Err(too_big());
        }
        // sized from the file: one read when it is as large as it was at the open
        let mut out = vec![0u8; st.size as usize + 1];
        let mut got = 0;
        loop {
            match f.read(&mut out[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if got < out.len() {
                // a short read of a regular file is its end
                break;
            }
            // it grew since the open: read on, still bounded
            if got as u64 > limit {
                return Err(too_big());
            }
            out.resize(out.len() * 2, 0);
        }
        out.truncate(got);
        if out.len() as u64 > limit {
            return Err(too_big());
        }
        Ok((out, st))
    }

    pub fn symlink(&self, target: &Path, rel: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        symlinkat(target, dir.fd.as_fd(), name).map_err(|e| with_path(errno(e), &self.shown(rel)))
    }

    pub fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        let (dir, name) = self.parent(rel)?;
        nix::fcntl::readlinkat(dir.fd.as_fd(), name)
            .map(PathBuf::from)
            .map_err(|e| with_path(errno(e), &self.shown(rel)))
    }

    /// A hard link `to` of the file `from` (never of a symlink's target).
    pub fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (a, an) = self.parent(from)?;
        let (b, bn) = self.parent(to)?;
        linkat(
            a.fd.as_fd(),
            an,
            b.fd.as_fd(),
            bn,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(|e| with_path(errno(e), &self.shown(to)))
    }

    /// chmod through the opened file or directory; a symlink is refused.
    pub fn set_mode(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let fd = self
            .open_at(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())
            .map_err(|e| with_path(e, &self.shown(rel)))?;
        fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
            .map_err(|e| with_path(errno(e), &self.shown(rel)))
    }

    /// Rename within the root (both ends beneath it, neither followed).
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename_with(from, to, nix::fcntl::RenameFlags::empty())
    }

    pub fn rename_with(
        &self,
        from: &Path,
        to: &Path,
        flags: nix::fcntl::RenameFlags,
    ) -> io::Result<()> {
        let (a, an) = self.parent(from)?;
        let (b, bn) = self.parent(to)?;
        nix::fcntl::renameat2(a.fd.as_fd(), an, b.fd.as_fd(), bn, flags)
            .map_err(|e| with_path(errno(e), &self.shown(to)))
    }

    pub fn remove_file(&self, rel: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        unlinkat(dir.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| with_path(errno(e), &self.shown(rel)))
    }

    pub fn remove_dir(&self, rel: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        unlinkat(dir.fd.as_fd(), name, UnlinkatFlags::RemoveDir)
            .map_err(|e| with_path(errno(e), &self.shown(rel)))
    }

    /// Remove `rel` whatever it is — a file, a symlink (not what it points
    /// to), or a whole tree, descending only through real directories.
    /// Missing is fine.
    pub fn remove_tree(&self, rel: &Path) -> io::Result<()> {
        match self.try_stat(rel)? {
            None => Ok(()),
            Some(s) if s.kind == Kind::Dir => {
                let dir = self.open_dir(rel)?;
                for (name, kind) in dir.entries()? {
                    let child = Path::new(&name);
                    match kind {
                        Kind::Dir => dir.remove_tree(child)?,
                        _ => ignore_missing(dir.remove_file(child))?,
                    }
                }
                ignore_missing(self.remove_dir(rel))
            }
            Some(_) => ignore_missing(self.remove_file(rel)),
        }
    }

    /// The names in this directory with their kinds (never following a symlink).
    pub fn entries(&self) -> io::Result<Vec<(OsString, Kind)>> {
        let fd = nix::fcntl::openat(
            self.fd.as_fd(),
            ".",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(errno)?;
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(errno)?;
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let kind = match e.file_type() {
                Some(nix::dir::Type::File) => Kind::File,
                Some(nix::dir::Type::Directory) => Kind::Dir,
                Some(nix::dir::Type::Symlink) => Kind::Symlink,
                Some(_) => Kind::Other,
                // a filesystem without d_type: ask
                None => self.stat(Path::new(name))?.kind,
            };
            out.push((name.to_os_string(), kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Write a small file atomically: a temporary file beside it, fsynced,
    /// renamed over it, the directory fsynced.
    pub fn write_atomic(&self, rel: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        let tmp = OsString::from(format!(
            ".{}{}tmp-{}",
            name.to_string_lossy(),
            super::STAGING_MARK,
            std::process::id()
        ));
        let _ = dir.remove_file(Path::new(&tmp));
        let mut f = dir.create_file(Path::new(&tmp), mode)?;
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        if let Err(e) = written.and_then(|()| dir.rename(Path::new(&tmp), Path::new(name))) {
            let _ = dir.remove_file(Path::new(&tmp));
            return Err(e);
        }
        dir.sync()
    }

    /// fsync the directory itself.
    pub fn sync(&self) -> io::Result<()> {
        nix::unistd::fsync(self.fd.as_fd()).map_err(errno)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// An independent handle on the same directory (its own open file
    /// description, so listing one never moves the other's offset).
    pub fn try_clone(&self) -> io::Result<Beneath> {
        let fd = nix::fcntl::openat(
            self.fd.as_fd(),
            ".",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Beneath::new(fd, self.path.clone()))
    }

    /// A `/proc/self/fd` path naming this directory, for tools that take paths
    /// (qemu-img, btrfs ioctls on a child): it resolves to the opened
    /// directory, not to whatever its path names now.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// The names in the directory `fd` (from its current offset) with their
/// `d_type` kinds, `.` and `..` left out, read with getdents64 — without
/// libc's `DIR`, whose `fdopendir` and rewind cost three more syscalls per
/// directory.
fn read_names(fd: BorrowedFd) -> io::Result<Vec<(OsString, Option<Kind>)>> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        if buf.is_empty() {
            buf.resize(32 << 10, 0);
        }
        let mut names = Vec::new();
        loop {
            // SAFETY: getdents64 writes at most `buf.len()` bytes of linux_dirent64
            // records into `buf`, which outlives the call; `fd` is an open directory.
            let n = unsafe {
                nix::libc::syscall(
                    nix::libc::SYS_getdents64,
                    fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Ok(names);
            }
            // each record: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name (NUL-terminated)
            let mut at = 0usize;
            while at + 19 <= n as usize {
                let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
                if reclen < 19 || at + reclen > n as usize {
                    return Err(io::Error::other("a malformed directory record"));
                }
                let name = &buf[at + 19..at + reclen];
                let name = &name[..memchr::memchr(0, name).unwrap_or(name.len())];
                if name != b"." && name != b".." {
                    let kind = match buf[at + 18] {
                        nix::libc::DT_REG => Some(Kind::File),
                        nix::libc::DT_DIR => Some(Kind::Dir),
                        nix::libc::DT_LNK => Some(Kind::Symlink),
                        nix::libc::DT_UNKNOWN => None,
                        _ => Some(Kind::Other),
                    };
                    names.push((OsStr::from_bytes(name).to_os_string(), kind));
                }
                at += reclen;
            }
        }
    })
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "directory",
        Kind::Symlink => "symlink",
        Kind::Other => "device node, fifo or socket",
    }
}

/// An io::Error that names the path it is about; ELOOP says what it means here.
fn with_path(e: io::Error, p: &Path) -> io::Error {
    let why = match e.raw_os_error() {
        Some(c) if c == Errno::ELOOP as i32 => {
            "a symlink is in the way (reconcile never follows one inside a managed root)"
                .to_string()
        }
        Some(c) if c == Errno::EXDEV as i32 => {
            "the path leads outside its root (reconcile resolves every path beneath it)".to_string()
        }
        _ => e.to_string(),
    };
    io::Error::new(e.kind(), format!("{}: {why}", p.display()))
}

/// How a path resolved inside a tree leaves it (or cannot be resolved).
#[derive(Debug, thiserror::Error)]
pub enum Escape {
    #[error("leaves the tree (through {} it reaches {})", .link.display(), .target.display())]
    Through { link: PathBuf, target: PathBuf },
    #[error("leaves the tree (it climbs above the tree's top)")]
    Climbs,
    #[error("leaves the tree (through {} it reaches the absolute path {})", .link.display(), .target.display())]
    Absolute { link: PathBuf, target: PathBuf },
    #[error("never ends (a loop of symlinks)")]
    Loop,
    #[error("{} is not a relative path", .0.display())]
    NotRelative(PathBuf),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Where a symlink at `link` (relative to the tree's root) leads, resolved
/// inside the tree the way the kernel would — through the other symlinks it
/// meets, `..` included — or why it leaves the tree. An absolute target
/// leaves it, unless `chroot` (a root filesystem: `/` is the tree's root).
/// Parts that do not exist (yet) are taken as they are written.
pub fn resolve_inside(tree: &Beneath, link: &Path, chroot: bool) -> Result<PathBuf, Escape> {
    let mut at: Vec<OsString> = components(link)?.iter().map(|c| c.to_os_string()).collect();
    // the link itself is resolved from its directory
    let todo: Vec<OsString> = at.pop().into_iter().collect();
    walk_inside(tree, at, todo, chroot)
}

/// Where the plain relative path `rel` leads inside the tree: every symlink
/// along it (its directories too) resolved the way the kernel would, none
/// allowed to leave — or why it leaves. The path returned holds no symlink,
/// so it can be opened beneath the tree with nothing followed.
pub fn resolve_path(tree: &Beneath, rel: &Path) -> Result<PathBuf, Escape> {
    let mut todo = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => todo.push(n.to_os_string()),
            Component::ParentDir => todo.push(OsString::from("..")),
            Component::CurDir => {}
            _ => return Err(Escape::NotRelative(rel.to_path_buf())),
        }
    }
    todo.reverse();
    walk_inside(tree, Vec::new(), todo, false)
}

/// Resolve the parts `todo` (last first) from the resolved directory `at`.
fn walk_inside(
    tree: &Beneath,
    mut at: Vec<OsString>,
    mut todo: Vec<OsString>,
    chroot: bool,
) -> Result<PathBuf, Escape> {
    let mut follows = 0;
    // the last symlink followed: an escape is said with the link that made it
    let mut last_link: Option<(PathBuf, PathBuf)> = None;
    while let Some(part) = todo.pop() {
        let here: PathBuf = at.iter().chain([&part]).collect();
        if part == ".." {
            if at.pop().is_none() && !chroot {
                return Err(match last_link {
                    Some((link, target)) => Escape::Through { link, target },
                    None => Escape::Climbs,
                });
            }
            continue;
        }
        if part == "." {
            continue;
        }
        match tree.try_stat(&here) {
            Ok(Some(s)) if s.kind == Kind::Symlink => {
                follows += 1;
                if follows > 40 {
                    return Err(Escape::Loop);
                }
                let target = tree.read_link(&here)?;
                if target.is_absolute() {
                    if !chroot {
                        return Err(Escape::Absolute { link: here, target });
                    }
                    at.clear();
                }
                // the target's parts come next, in order
                let parts: Vec<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                last_link = Some((here, target));
                todo.extend(parts.into_iter().rev());
            }
            _ => at.push(part),
        }
    }
    Ok(at.iter().collect())
}

/// A directory named by a plain relative path beneath an open root, looked at
/// without being opened: its entries are stat with one `fstatat` from the
/// root each (`<rel>/<name>`), which is how a no-op plan stays at the cost
/// of `find`. Only looking goes through the path: a stat of the directory
/// itself refuses a symlink there, and everything that reads (a file, a
/// link, a listing) is opened beneath the root with nothing followed. A
/// directory swapped for a symlink between two stats can mislead one
/// observation, never a read or a write.
#[derive(Debug, Clone)]
pub struct DirAt {
    base: std::sync::Arc<Beneath>,
    rel: PathBuf,
}

impl DirAt {
    pub fn new(base: std::sync::Arc<Beneath>, rel: &Path) -> io::Result<DirAt> {
        components(rel)?;
        Ok(DirAt {
            base,
            rel: rel.to_path_buf(),
        })
    }

    /// Where it is, for messages and as the stat index's key.
    pub fn path(&self) -> PathBuf {
        self.base.shown(&self.rel)
    }

    /// The subdirectory `name`.
    pub fn join(&self, name: &OsStr) -> DirAt {
        DirAt {
            base: self.base.clone(),
            rel: self.rel.join(name),
        }
    }

    fn below(&self, name: &OsStr) -> PathBuf {
        self.rel.join(name)
    }

    /// The directory's own metadata; a symlink or file here is an error, not followed.
    pub fn stat(&self) -> io::Result<Stat> {
        let st = if self.rel.as_os_str().is_empty() {
            fstat(self.base.fd.as_fd()).map_err(errno)?
        } else {
            fstatat(
                self.base.fd.as_fd(),
                self.rel.as_path(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| with_path(errno(e), &self.path()))?
        };
        let st = Stat::of(&st);
        if st.kind != Kind::Dir {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!(
                    "{} is a {}, not a directory (reconcile does not follow it)",
                    self.path().display(),
                    kind_name(st.kind)
                ),
            ));
        }
        Ok(st)
    }

    /// One entry, not followed; None when it is gone or unreadable.
    pub fn stat_name(&self, name: &OsStr) -> Option<Stat> {
        if self.rel.as_os_str().is_empty() {
            return self.base.stat_name(name);
        }
        fstatat(
            self.base.fd.as_fd(),
            self.below(name).as_path(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()
        .map(|st| Stat::of(&st))
    }

    /// [`DirAt::stat_name`] of each name, in name order, the gone left out.
    pub fn stat_names<'n>(&self, names: impl Iterator<Item = &'n OsStr>) -> Vec<(OsString, Stat)> {
        if self.rel.as_os_str().is_empty() {
            return self.base.stat_names(names);
        }
        // one path buffer for all of them: `<rel>/<name>`
        let mut at = self.rel.clone().into_os_string().into_vec();
        at.push(b'/');
        let keep = at.len();
        let mut out = Vec::new();
        for n in names {
            at.truncate(keep);
            at.extend_from_slice(n.as_bytes());
            let st = fstatat(
                self.base.fd.as_fd(),
                OsStr::from_bytes(&at),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            );
            if let Ok(st) = st {
                out.push((n.to_os_string(), Stat::of(&st)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The directory opened for reading (beneath the root, nothing followed).
    pub fn open(&self) -> io::Result<Beneath> {
        if self.rel.as_os_str().is_empty() {
            return self.base.try_clone();
        }
        self.base.open_dir(&self.rel)
    }

    /// The directory's names and kinds, read from it.
    pub fn names(&self) -> io::Result<Vec<(OsString, Kind)>> {
        self.open()?.names()
    }

    pub fn open_file(&self, name: &OsStr) -> io::Result<File> {
        self.base.open_file(&self.below(name))
    }

    pub fn read_stat(&self, name: &OsStr, limit: u64) -> io::Result<(Vec<u8>, Stat)> {
        self.base.read_stat(&self.below(name), limit)
    }

    pub fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        self.base.read_link(&self.below(name))
    }

    pub fn shown(&self, name: &OsStr) -> PathBuf {
        self.base.shown(&self.below(name))
    }
}

/// Roots opened once per run and shared by everything observed beneath them:
/// a plugin directory, a TFTP root, the parent of local sources. A resource's
/// directory is then one short `openat2` below an open descriptor instead of
/// a walk of its whole path. Only successful opens are kept (a root made
/// later in the run is found then).
#[derive(Debug, Default)]
pub struct OpenRoots {
    open: std::sync::Mutex<foldhash::HashMap<PathBuf, std::sync::Arc<Beneath>>>,
}

impl OpenRoots {
    /// The root itself, opened as given (a symlink above a root is the user's to make).
    pub fn root(&self, root: &Path) -> io::Result<std::sync::Arc<Beneath>> {
        if let Some(b) = self.open.lock().unwrap().get(root) {
            return Ok(b.clone());
        }
        let b = std::sync::Arc::new(Beneath::open(root)?);
        self.open
            .lock()
            .unwrap()
            .insert(root.to_path_buf(), b.clone());
        Ok(b)
    }

    /// The directory `rel` beneath `root`, to be looked at ([`DirAt`]):
    /// None when it (or the root) is not there; an error naming what is
    /// there instead of a directory (a file, a symlink).
    pub fn dir_at(&self, root: &Path, rel: &Path) -> io::Result<Option<(DirAt, Stat)>> {
        let r = match self.root(root) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let at = DirAt::new(r, rel)?;
        match at.stat() {
            Ok(st) => Ok(Some((at, st))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for Beneath {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree() -> (tempfile::TempDir, Beneath) {
        let d = tempfile::tempdir().unwrap();
        let b = Beneath::open(d.path()).unwrap();
        (d, b)
    }

    #[test]
    fn nothing_is_reached_through_a_symlink_or_above_the_root() {
        let (d, b) = tree();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("amd64")).unwrap();
        // writing beneath a symlinked directory is refused, at every depth
        assert!(b.create_dir_all(Path::new("amd64/generic"), 0o755).is_err());
        assert!(b.create_file(Path::new("amd64/x"), 0o644).is_err());
        assert!(b.open_dir(Path::new("amd64")).is_err());
        assert!(b.create_file(Path::new("../x"), 0o644).is_err());
        assert!(b.create_file(Path::new("/tmp/x"), 0o644).is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        // a dangling symlink is not created through
        std::os::unix::fs::symlink(outside.path().join("made"), d.path().join("plugin.json"))
            .unwrap();
        assert!(b.create_file(Path::new("plugin.json"), 0o644).is_err());
        assert!(!outside.path().join("made").exists());
        // chmod never reaches a symlink's target
        fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("bin")).unwrap();
        assert!(b.set_mode(Path::new("bin"), 0o755).is_err());
        let mode = fs::metadata(outside.path().join("secret"))
            .unwrap()
            .permissions();
        assert_ne!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o755
        );
    }

    #[test]
    fn the_walk_without_openat2_refuses_symlinks_too() {
        let (d, b) = tree();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("amd64")).unwrap();
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY;
        let mode = Mode::from_bits_truncate(0o644);
        let walk = |p: &[&str]| {
            let parts: Vec<&OsStr> = p.iter().map(OsStr::new).collect();
            b.open_walk(&parts, flags, mode)
        };
        // O_NOFOLLOW on a symlink: ELOOP (ENOTDIR when O_DIRECTORY is asked, EEXIST with O_EXCL)
        let refused = |e: io::Error| {
            [Errno::ELOOP, Errno::ENOTDIR, Errno::EEXIST]
                .iter()
                .any(|c| e.raw_os_error() == Some(*c as i32))
        };
        assert!(refused(walk(&["amd64", "x"]).unwrap_err()));
        assert!(refused(walk(&["amd64"]).unwrap_err()));
        assert!(walk(&["real", "x"]).is_ok());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn remove_tree_removes_links_not_what_they_point_to() {
        let (d, b) = tree();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), "k").unwrap();
        fs::create_dir_all(d.path().join("m/sub")).unwrap();
        fs::write(d.path().join("m/sub/f"), "f").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("m/link")).unwrap();
        b.remove_tree(Path::new("m")).unwrap();
        assert!(!d.path().join("m").exists());
        assert!(outside.path().join("keep").exists());
        // a symlink given as the tree is removed itself
        std::os::unix::fs::symlink(outside.path(), d.path().join("m2")).unwrap();
        b.remove_tree(Path::new("m2")).unwrap();
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn symlinks_resolve_inside_the_tree_or_say_how_they_leave() {
        let (d, b) = tree();
        let p = d.path();
        fs::create_dir_all(p.join("a0/a1/a2")).unwrap();
        let link = |t: &str, at: &str| std::os::unix::fs::symlink(t, p.join(at)).unwrap();
        // the chain of issue 13: each link alone looks harmless, together they leave
        link("../..", "a0/a1/a2/up");
        link("a0/a1/a2/up/../..", "esc");
        link("esc/etc/shadow", "bin");
        let r = |at: &str| resolve_inside(&b, Path::new(at), false);
        assert!(r("a0/a1/a2/up").is_ok());
        assert_eq!(r("a0/a1/a2/up").unwrap(), Path::new("a0"));
        assert!(r("esc").is_err(), "{:?}", r("esc"));
        assert!(r("bin").is_err());
        link("a0/a1", "inside");
        assert_eq!(r("inside").unwrap(), Path::new("a0/a1"));
        link("/etc/passwd", "abs");
        assert!(r("abs").is_err());
        // a root filesystem's absolute links point into the tree
        assert_eq!(
            resolve_inside(&b, Path::new("abs"), true).unwrap(),
            Path::new("etc/passwd")
        );
        link("loop2", "loop1");
        link("loop1", "loop2");
        assert!(matches!(r("loop1").unwrap_err(), Escape::Loop));
        assert!(r("loop1").unwrap_err().to_string().contains("loop"));
        assert!(r("esc")
            .unwrap_err()
            .to_string()
            .contains("leaves the tree"));
        link("missing/x", "dangling");
        assert_eq!(r("dangling").unwrap(), Path::new("missing/x"));
    }

    #[test]
    fn a_whole_path_resolves_through_its_directories_or_names_the_link_that_leaves() {
        let (d, b) = tree();
        let p = d.path();
        fs::create_dir_all(p.join("src/real")).unwrap();
        fs::write(p.join("src/real/kolet"), "x").unwrap();
        let link = |t: &str, at: &str| std::os::unix::fs::symlink(t, p.join(at)).unwrap();
        link("real", "src/alias");
        link("../../..", "src/real/up");
        link("/etc", "etc");
        let r = |at: &str| resolve_path(&b, Path::new(at));
        // a directory along the way is a link inside: resolved, no link left
        assert_eq!(r("src/alias/kolet").unwrap(), Path::new("src/real/kolet"));
        assert_eq!(r("src/real/kolet").unwrap(), Path::new("src/real/kolet"));
        // a directory along the way leads out: the link is named
        let e = r("src/real/up/etc/shadow").unwrap_err().to_string();
        assert!(e.contains("src/real/up") && e.contains("../../.."), "{e}");
        let e = r("etc/shadow").unwrap_err();
        assert!(matches!(e, Escape::Absolute { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("etc") && e.contains("/etc"), "{e}");
        assert!(r("../x").is_err());
    }

    #[test]
    fn atomic_writes_and_entries() {
        let (d, b) = tree();
        b.create_dir_all(Path::new("x/y"), 0o755).unwrap();
        b.write_atomic(Path::new("x/y/state.json"), b"{}", 0o600)
            .unwrap();
        assert_eq!(fs::read(d.path().join("x/y/state.json")).unwrap(), b"{}");
        let x = b.open_dir(Path::new("x/y")).unwrap();
        let names: Vec<_> = x.entries().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec![OsString::from("state.json")]);
        assert_eq!(b.read(Path::new("x/y/state.json"), 10).unwrap(), b"{}");
        assert!(b.read(Path::new("x/y/state.json"), 1).is_err());
    }
}
