//! Machines moved as `btrfs send` streams (buildos's way between hosts).
//!
//! `receive` takes a stream file (raw, or zstd/gzip/xz-compressed, told
//! apart by its first bytes) the way an untrusted archive is taken:
//!
//! - its SHA-256 is checked before `btrfs receive` sees one byte (a file
//!   outside the state dir is first copied into it while it is hashed, so
//!   what is received is what was checked);
//! - the decompressed stream is read command by command on its way to
//!   `btrfs receive` and refused at the first command that names a path
//!   outside its subvolume (absolute, or with `..`), makes a second
//!   subvolume, clones data from a subvolume that is neither its own nor
//!   its declared parent, or takes the stream past the size limit;
//! - `btrfs receive --chroot` runs confined to the scratch directory it
//!   receives into, so not even a symlink the stream made leads a write out.
//!
//! `export` writes one with `btrfs send` (full, or incremental against a
//! parent), compressed with zstd when the name ends in `.zst`, into an
//! unnamed file linked in place only when complete.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

/// What a stream must be, and where it goes.
pub struct Receive<'a> {
    /// The stream file.
    pub file: &'a Path,
    /// The digest its bytes must have.
    pub sha256: &'a str,
    /// The file is private to reconcile (a cache object in the state dir):
    /// hashed where it is instead of copied first.
    pub private: bool,
    /// A directory of the state dir for the verified copy.
    pub scratch: &'a Path,
    /// The (empty, absolute) directory it is received into; receive is chrooted there.
    pub into: &'a Path,
    /// Most bytes the decompressed stream may have (`extract_limit`).
    pub limit: u64,
    /// An incremental stream's parent: the UUIDs the stream may name as its
    /// parent (the subvolume's received UUID and its own). None: a full stream.
    pub parent: Option<Vec<[u8; 16]>>,
}

/// Why a stream was not received.
#[derive(Debug)]
pub enum Refused {
    /// Its bytes are not the declared ones (nothing was fed to receive).
    Digest { actual: String },
    /// What it holds is refused (said in words).
    Stream(String),
    /// Reading it, or `btrfs receive`, failed.
    Failed(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Digest { actual } => write!(f, "its sha256 is {actual}"),
            Refused::Stream(why) | Refused::Failed(why) => f.write_str(why),
        }
    }
}

static COPIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A verified copy of a stream, removed when dropped.
struct Copy(PathBuf);

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The stream, verified: an open file whose bytes have the declared digest
/// (and the private copy it is, when one was made).
fn verified(r: &Receive) -> Result<(File, Option<Copy>), Refused> {
    let failed = |e: io::Error, p: &Path| Refused::Failed(format!("{}: {e}", p.display()));
    let mut src = File::open(r.file).map_err(|e| failed(e, r.file))?;
    if !src.metadata().map_err(|e| failed(e, r.file))?.is_file() {
        return Err(Refused::Failed(format!(
            "{} is not a regular file",
            r.file.display()
        )));
    }
    let (mut file, copy) = if r.private {
        (src, None)
    } else {
        use std::os::unix::fs::OpenOptionsExt;
        let path = r.scratch.join(format!(
            "stream-{}-{}",
            std::process::id(),
            COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| failed(e, &path))?;
        let copy = Copy(path);
        // reflinked where the filesystems allow (the copy's bytes are hashed below either way)
        if crate::backend::btrfs::clone_file(&src, &out).is_err() {
            io::copy(&mut src, &mut out).map_err(|e| failed(e, &copy.0))?;
        }
        (out, Some(copy))
    };
    file.rewind().map_err(|e| failed(e, r.file))?;
    // read once start to end (twice: checked, then fed): the kernel may read ahead far
    let _ = nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
    let (actual, _) = crate::fsops::digest::sha256_reader(&file).map_err(|e| failed(e, r.file))?;
    if actual != r.sha256 {
        return Err(Refused::Digest { actual });
    }
    file.rewind().map_err(|e| failed(e, r.file))?;
    Ok((file, copy))
}

/// Receive the stream into `r.into` and return the name of the subvolume it
/// made. `halfway` runs once half the file has been fed (a fault point).
pub fn receive(r: &Receive, halfway: impl Fn()) -> Result<String, Refused> {
    let (file, _copy) = verified(r)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut head = [0u8; 16];
    let n = {
        use std::os::unix::fs::FileExt;
        file.read_at(&mut head, 0).unwrap_or(0)
    };
    let mut child = {
        let mut cmd = Command::new("btrfs");
        // -C: chrooted into the directory it receives into; -e: one subvolume, then stop
        cmd.args(["receive", "-C", "-e"])
            .arg(r.into)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        crate::process::child::spawn_tied(&mut cmd, None)
            .map_err(|e| Refused::Failed(format!("cannot run `btrfs receive`: {e}")))?
    };
    let stdin = child.stdin.take().expect("piped");
    let mut check = StreamCheck::new(stdin, r.limit, r.parent.clone());
    let fed = (|| -> io::Result<()> {
        let counted = CountingReader {
            inner: &file,
            read: 0,
            size,
            halfway: &halfway,
            fired: false,
        };
        let mut d = crate::source::archive::decompressed(counted, &head[..n])?;
        // large reads: a send stream is GiBs of ~48 KiB commands
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match d.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => check.write_all(&buf[..k])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        check.finish()
    })();
    let refusal = check.refusal.take();
    drop(check);
    if refusal.is_some() {
        // what receive made so far is in the scratch directory, which the caller removes
        let _ = child.kill();
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Refused::Failed(format!("btrfs receive: {e}")))?;
    if let Some(why) = refusal {
        return Err(Refused::Stream(why));
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        return Err(Refused::Failed(format!(
            "btrfs receive failed ({}): {}",
            out.status,
            crate::output::escape(&last)
        )));
    }
    if let Err(e) = fed {
        return Err(Refused::Failed(format!(
            "reading {}: {e}",
            r.file.display()
        )));
    }
    // the one subvolume the stream made
    let mut made: Vec<String> = std::fs::read_dir(r.into)
        .map_err(|e| Refused::Failed(format!("{}: {e}", r.into.display())))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if made.len() != 1 {
        return Err(Refused::Stream(format!(
            "the stream made {} entries, not one subvolume",
            made.len()
        )));
    }
    Ok(made.remove(0))
}

const MAGIC: &[u8] = b"btrfs-stream\0";
const HEADER: usize = MAGIC.len() + 4;
const CMD_HEADER: usize = 10;
/// The largest command passed on (a v2 encoded write is at most a few hundred KiB).
const MAX_COMMAND: usize = 16 << 20;

const C_SUBVOL: u16 = 1;
const C_SNAPSHOT: u16 = 2;
const C_END: u16 = 21;

const A_UUID: u16 = 1;
const A_PATH: u16 = 15;
const A_PATH_TO: u16 = 16;
const A_DATA: u16 = 19;
const A_CLONE_UUID: u16 = 20;
const A_CLONE_PATH: u16 = 22;

/// A writer in front of `btrfs receive` that passes on whole commands of a
/// send stream and stops at the first one it refuses (`refusal` says why;
/// nothing of that command is passed on).
struct StreamCheck<W: Write> {
    out: W,
    pending: Vec<u8>,
    /// Stream version, once the header is read.
    version: Option<u32>,
    passed: u64,
    limit: u64,
    parent: Option<Vec<[u8; 16]>>,
    /// The stream's own subvolume, once its first command named it.
    own: Option<[u8; 16]>,
    ended: bool,
    refusal: Option<String>,
}

impl<W: Write> StreamCheck<W> {
    fn new(out: W, limit: u64, parent: Option<Vec<[u8; 16]>>) -> Self {
        StreamCheck {
            out,
            pending: Vec::new(),
            version: None,
            passed: 0,
            limit,
            parent,
            own: None,
            ended: false,
            refusal: None,
        }
    }

    fn refuse(&mut self, why: String) -> io::Error {
        let e = io::Error::new(io::ErrorKind::InvalidData, why.clone());
        self.refusal = Some(why);
        e
    }

    /// The stream ended: what is left (half a command) goes on, so receive
    /// says itself that the stream is truncated.
    fn finish(&mut self) -> io::Result<()> {
        if !self.ended && !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.out.write_all(&rest)?;
        }
        self.out.flush()
    }

    /// How many bytes of `buf` make the next whole unit (the stream header,
    /// or one command), when they are all there.
    fn unit(&self, buf: &[u8]) -> io::Result<Option<usize>> {
        if self.version.is_none() {
            return Ok((buf.len() >= HEADER).then_some(HEADER));
        }
        if buf.len() < CMD_HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_COMMAND {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a command of {len} bytes (more than {MAX_COMMAND})"),
            ));
        }
        Ok((buf.len() >= CMD_HEADER + len).then_some(CMD_HEADER + len))
    }

    /// Check one whole unit and pass it on.
    fn pass(&mut self, unit: &[u8]) -> io::Result<()> {
        if self.version.is_none() {
            if !unit.starts_with(MAGIC) {
                return Err(
                    self.refuse("it is not a btrfs send stream (no btrfs-stream header)".into())
                );
            }
            let v = u32::from_le_bytes(unit[MAGIC.len()..HEADER].try_into().expect("4 bytes"));
            if !(1..=3).contains(&v) {
                return Err(self.refuse(format!(
                    "send stream version {v} is not one btrfs receive takes"
                )));
            }
            self.version = Some(v);
            return self.out.write_all(unit);
        }
        let cmd = u16::from_le_bytes(unit[4..6].try_into().expect("2 bytes"));
        if let Err(why) = self.check(cmd, &unit[CMD_HEADER..]) {
            return Err(self.refuse(why));
        }
        self.passed += unit.len() as u64;
        if self.passed > self.limit {
            return Err(self.refuse(format!(
                "it expands past the limit of {} bytes (settings.extract_limit)",
                self.limit
            )));
        }
        if cmd == C_END {
            self.ended = true;
        }
        self.out.write_all(unit)
    }

    /// One command's attributes checked.
    fn check(&mut self, cmd: u16, body: &[u8]) -> Result<(), String> {
        match cmd {
            C_SUBVOL | C_SNAPSHOT if self.own.is_some() => {
                return Err("it holds more than one subvolume".into())
            }
            C_SUBVOL if self.parent.is_some() => {
                return Err(
                    "it is a full stream, and the source declares a parent (an incremental stream)"
                        .into(),
                )
            }
            C_SNAPSHOT if self.parent.is_none() => return Err(
                "it is incremental (made against a parent), and the source declares no `parent`"
                    .into(),
            ),
            C_SUBVOL | C_SNAPSHOT => {}
            _ if self.own.is_none() => return Err("its first command makes no subvolume".into()),
            _ => {}
        }
        let v2 = self.version.unwrap_or(1) >= 2;
        let mut pos = 0;
        let mut uuid = None;
        let mut named_parent = false;
        while pos < body.len() {
            let kind = u16::from_le_bytes(
                body.get(pos..pos + 2)
                    .ok_or("a truncated attribute")?
                    .try_into()
                    .expect("2 bytes"),
            );
            pos += 2;
            let len = if v2 && kind == A_DATA {
                body.len() - pos
            } else {
                let l = u16::from_le_bytes(
                    body.get(pos..pos + 2)
                        .ok_or("a truncated attribute")?
                        .try_into()
                        .expect("2 bytes"),
                ) as usize;
                pos += 2;
                l
            };
            let value = body.get(pos..pos + len).ok_or("a truncated attribute")?;
            pos += len;
            match kind {
                // the subvolume's own name is one component; every other path is inside it
                A_PATH
                    if matches!(cmd, C_SUBVOL | C_SNAPSHOT)
                        && (value.is_empty()
                            || value.contains(&b'/')
                            || value == b".."
                            || value == b".") =>
                {
                    return Err(format!(
                        "it names its subvolume `{}`, which is not one plain name",
                        crate::output::escape(&String::from_utf8_lossy(value))
                    ));
                }
                A_PATH | A_PATH_TO | A_CLONE_PATH => {
                    if let Err(why) = inside(value) {
                        return Err(format!(
                            "it names the path `{}`, {why}",
                            crate::output::escape(&String::from_utf8_lossy(value))
                        ));
                    }
                }
                A_UUID if matches!(cmd, C_SUBVOL | C_SNAPSHOT) => {
                    uuid = Some(<[u8; 16]>::try_from(value).map_err(|_| "a malformed UUID")?);
                }
                A_CLONE_UUID => {
                    let u = <[u8; 16]>::try_from(value).map_err(|_| "a malformed UUID")?;
                    named_parent = true;
                    let parents = self.parent.as_deref().unwrap_or(&[]);
                    let ok = match cmd {
                        C_SNAPSHOT => parents.contains(&u),
                        _ => Some(u) == self.own || parents.contains(&u),
                    };
                    if !ok {
                        let what = if cmd == C_SNAPSHOT {
                            "is made against"
                        } else {
                            "clones data from"
                        };
                        let want = match parents {
                            [] => "a full stream has no parent".to_string(),
                            p => format!(
                                "the declared parent is {}",
                                crate::backend::btrfs::uuid_text(&p[0])
                            ),
                        };
                        return Err(format!(
                            "it {what} the subvolume {}, not its own or its declared parent's ({want})",
                            crate::backend::btrfs::uuid_text(&u)
                        ));
                    }
                }
                _ => {}
            }
        }
        match cmd {
            C_SNAPSHOT if !named_parent => {
                return Err("it is incremental, and names no parent".into())
            }
            C_SUBVOL | C_SNAPSHOT => self.own = Some(uuid.ok_or("its subvolume has no UUID")?),
            _ => {}
        }
        Ok(())
    }
}

/// A path inside the subvolume: relative, no `..`.
fn inside(p: &[u8]) -> Result<(), &'static str> {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(std::ffi::OsStr::from_bytes(p));
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("which leads out of its subvolume (`..`)"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("which is absolute (outside its subvolume)")
            }
        }
    }
    Ok(())
}

impl<W: Write> Write for StreamCheck<W> {
    /// Whole commands go on straight from `buf`; only a command split across
    /// writes is gathered in `pending` (each byte copied at most once).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(why) = &self.refusal {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        let mut rest = buf;
        while !rest.is_empty() && !self.ended {
            if !self.pending.is_empty() {
                // complete the unit in hand: first its header, then its length
                let need = match self
                    .unit(&self.pending)
                    .map_err(|e| self.refuse(e.to_string()))?
                {
                    Some(n) => n,
                    None => {
                        let head = if self.version.is_none() {
                            HEADER
                        } else {
                            CMD_HEADER
                        };
                        if self.pending.len() < head {
                            head
                        } else {
                            let len =
                                u32::from_le_bytes(self.pending[..4].try_into().expect("4 bytes"))
                                    as usize;
                            CMD_HEADER + len
                        }
                    }
                };
                let take = (need - self.pending.len()).min(rest.len());
                self.pending.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self
                    .unit(&self.pending)
                    .map_err(|e| self.refuse(e.to_string()))?
                    == Some(self.pending.len())
                {
                    let unit = std::mem::take(&mut self.pending);
                    self.pass(&unit)?;
                }
                continue;
            }
            match self.unit(rest).map_err(|e| self.refuse(e.to_string()))? {
                Some(n) => {
                    let (unit, after) = rest.split_at(n);
                    self.pass(unit)?;
                    rest = after;
                }
                None => {
                    self.pending.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        // past the end command: receive -e stops there; nothing more is passed on
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

struct CountingReader<'a, R: Read, F: Fn()> {
    inner: R,
    read: u64,
    size: u64,
    halfway: &'a F,
    fired: bool,
}

impl<R: Read, F: Fn()> Read for CountingReader<'_, R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if !self.fired && self.read * 2 >= self.size && self.size > 0 {
            self.fired = true;
            (self.halfway)();
        }
        Ok(n)
    }
}

/// Why an export wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot run `btrfs send`: {0}")]
    Spawn(io::Error),
    #[error("btrfs send failed ({status}): {stderr}")]
    Send { status: String, stderr: String },
}

/// Write `subvolume` (read-only) as a send stream to `out`, incremental
/// against `parent` when given; zstd-compressed when `out` ends in `.zst`.
/// Written into an unnamed file in `out`'s directory (`O_TMPFILE`), linked
/// under a fresh name and renamed over `out` only when complete; nothing is
/// ever written through a symlink planted at `out`.
pub fn export(subvolume: &Path, parent: Option<&Path>, out: &Path) -> Result<(), ExportError> {
    let at = |source| ExportError::Io {
        path: out.to_path_buf(),
        source,
    };
    let mut cmd = Command::new("btrfs");
    cmd.arg("send").arg("-q");
    if let Some(p) = parent {
        cmd.arg("-p").arg(p);
    }
    cmd.arg(subvolume)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let file = Unlinked::create(out).map_err(at)?;
    let mut child = cmd.spawn().map_err(ExportError::Spawn)?;
    let mut stdout = child.stdout.take().expect("piped");
    let copied = if out.to_string_lossy().ends_with(".zst") {
        zstd::stream::write::Encoder::new(&file.file, 3).and_then(|mut z| {
            io::copy(&mut stdout, &mut z)?;
            z.finish()?;
            file.file.sync_all()
        })
    } else {
        io::copy(&mut stdout, &mut &file.file).and_then(|_| file.file.sync_all())
    };
    let status = child.wait_with_output().map_err(ExportError::Spawn)?;
    if !status.status.success() {
        let err = String::from_utf8_lossy(&status.stderr);
        return Err(ExportError::Send {
            status: status.status.to_string(),
            stderr: crate::output::escape(err.trim()).into_owned(),
        });
    }
    copied.map_err(at)?;
    file.publish().map_err(at)
}

/// A file being written in a directory, with no name until it is complete.
struct Unlinked {
    dir: crate::fsops::Beneath,
    file: File,
    name: std::ffi::OsString,
}

impl Unlinked {
    fn create(out: &Path) -> io::Result<Unlinked> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = out
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
            .to_os_string();
        let dir = crate::fsops::Beneath::open(parent)?;
        let fd = nix::fcntl::openat(
            dir.fd(),
            ".",
            nix::fcntl::OFlag::O_TMPFILE
                | nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .map_err(io::Error::from)?;
        Ok(Unlinked {
            dir,
            file: File::from(fd),
            name,
        })
    }

    /// Give the file its name: linked under a fresh temporary name, then
    /// renamed over `out` (a symlink there is replaced, never followed).
    fn publish(self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(&self.name);
        tmp.push(format!(".partial-{}", std::process::id()));
        let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            Path::new(&proc_path),
            self.dir.fd(),
            Path::new(&tmp),
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        )
        .map_err(io::Error::from)?;
        let r = self.dir.rename(Path::new(&tmp), Path::new(&self.name));
        if r.is_err() {
            let _ = self.dir.remove_file(Path::new(&tmp));
        }
        r?;
        self.dir.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C_CLONE: u16 = 16;

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = kind.to_le_bytes().to_vec();
        v.extend((value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    fn command(cmd: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend(cmd.to_le_bytes());
        v.extend([0u8; 4]);
        v.extend(body);
        v
    }

    fn stream(cmds: &[Vec<u8>]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend(1u32.to_le_bytes());
        for c in cmds {
            v.extend_from_slice(c);
        }
        v
    }

    /// Feed a stream in pieces of `chunk` bytes; what was passed on, or the refusal.
    fn feed(s: &[u8], chunk: usize, parent: Option<Vec<[u8; 16]>>) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut c = StreamCheck::new(&mut out, 1 << 20, parent);
        for piece in s.chunks(chunk) {
            if c.write_all(piece).is_err() {
                return Err(c.refusal.clone().unwrap());
            }
        }
        c.finish().unwrap();
        drop(c);
        Ok(out)
    }

    const OWN: [u8; 16] = [7; 16];
    const PARENT: [u8; 16] = [9; 16];

    fn subvol() -> Vec<u8> {
        command(
            C_SUBVOL,
            &[
                tlv(A_PATH, b"kit-1"),
                tlv(A_UUID, &OWN),
                tlv(2, &1u64.to_le_bytes()),
            ],
        )
    }

    #[test]
    fn a_stream_inside_its_subvolume_is_passed_on_whole_in_any_pieces() {
        let s = stream(&[
            subvol(),
            command(3, &[tlv(A_PATH, b"etc/os-release")]),
            command(
                C_CLONE,
                &[
                    tlv(A_PATH, b"b"),
                    tlv(A_CLONE_UUID, &OWN),
                    tlv(A_CLONE_PATH, b"a"),
                ],
            ),
            command(C_END, &[]),
        ]);
        for chunk in [1, 3, 10, 64, 1 << 16] {
            assert_eq!(feed(&s, chunk, None).unwrap(), s, "in pieces of {chunk}");
        }
    }

    #[test]
    fn paths_out_of_the_subvolume_foreign_clones_and_bombs_are_refused() {
        let bad = |cmds: Vec<Vec<u8>>, parent: Option<Vec<[u8; 16]>>| {
            feed(&stream(&cmds), 7, parent).unwrap_err()
        };
        let e = bad(
            vec![subvol(), command(3, &[tlv(A_PATH, b"../../etc/cron.d/x")])],
            None,
        );
        assert!(e.contains("leads out of its subvolume"), "{e}");
        let e = bad(
            vec![
                subvol(),
                command(9, &[tlv(A_PATH, b"a"), tlv(A_PATH_TO, b"/etc/x")]),
            ],
            None,
        );
        assert!(e.contains("absolute"), "{e}");
        // a second path attribute is checked too (receive takes the last one)
        let e = bad(
            vec![
                subvol(),
                command(3, &[tlv(A_PATH, b"fine"), tlv(A_PATH, b"../x")]),
            ],
            None,
        );
        assert!(e.contains("`../x`"), "{e}");
        let e = bad(
            vec![
                subvol(),
                command(C_CLONE, &[tlv(A_PATH, b"b"), tlv(A_CLONE_UUID, &[3; 16])]),
            ],
            None,
        );
        assert!(e.contains("clones data from"), "{e}");
        let e = bad(vec![subvol(), subvol()], None);
        assert!(e.contains("more than one subvolume"), "{e}");
        let e = bad(
            vec![command(
                C_SUBVOL,
                &[tlv(A_PATH, b"../up"), tlv(A_UUID, &OWN)],
            )],
            None,
        );
        assert!(e.contains("not one plain name"), "{e}");
        // an incremental stream against another subvolume than the declared parent
        let snap = |clone: [u8; 16]| {
            command(
                C_SNAPSHOT,
                &[
                    tlv(A_PATH, b"kit-2"),
                    tlv(A_UUID, &OWN),
                    tlv(A_CLONE_UUID, &clone),
                ],
            )
        };
        let e = bad(vec![snap([5; 16])], Some(vec![PARENT]));
        assert!(e.contains("is made against"), "{e}");
        assert!(feed(
            &stream(&[snap(PARENT), command(C_END, &[])]),
            5,
            Some(vec![PARENT])
        )
        .is_ok());
        let e = bad(vec![snap(PARENT)], None);
        assert!(e.contains("declares no `parent`"), "{e}");
        let e = bad(vec![subvol()], Some(vec![PARENT]));
        assert!(e.contains("full stream"), "{e}");
        // past the limit
        let big = command(15, &[tlv(A_PATH, b"f"), tlv(A_DATA, &vec![0u8; 60_000])]);
        let s = stream(&[subvol(), big.clone(), big.clone(), big]);
        let mut out = Vec::new();
        let mut c = StreamCheck::new(&mut out, 100_000, None);
        assert!(c.write_all(&s).is_err());
        assert!(c
            .refusal
            .as_deref()
            .unwrap()
            .contains("expands past the limit"));
        assert!(feed(b"not a stream at all, no", 4, None)
            .unwrap_err()
            .contains("not a btrfs send stream"));
    }
}
