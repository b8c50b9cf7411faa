//! Safe archive extraction: tar (plain, gz, xz, zst) and zip.
//!
//! Every entry is checked before anything is written: no absolute paths, no
//! `..`, no device nodes or fifos, setuid/setgid/sticky bits stripped, and
//! the total unpacked size capped against archive bombs. Everything is
//! created through a [`Beneath`] handle on the destination, so nothing is
//! ever written through a symlink, whatever the archive planted first. Once
//! the tree is complete, every symlink in it is resolved inside the tree the
//! way the kernel would (through the other links it meets), and one that
//! leads out — however it is chained — refuses the archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::model::ArchiveFormat;
use crate::error::{Error, Result};
use crate::fsops::beneath::{self, Beneath, Kind as EntryType};

/// Most entries an archive may have.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// Digests of regular files written, by path relative to the destination.
pub type Written = HashMap<PathBuf, String>;

/// Guess the format from a file name, then from its first bytes.
pub fn detect(name: &str, path: &Path) -> ArchiveFormat {
    let n = name.to_ascii_lowercase();
    let by_name = if n.ends_with(".tar.gz") || n.ends_with(".tgz") {
        Some(ArchiveFormat::TarGz)
    } else if n.ends_with(".tar.xz") || n.ends_with(".txz") {
        Some(ArchiveFormat::TarXz)
    } else if n.ends_with(".tar.zst") || n.ends_with(".tzst") {
        Some(ArchiveFormat::TarZst)
    } else if n.ends_with(".tar") {
        Some(ArchiveFormat::Tar)
    } else if n.ends_with(".zip") {
        Some(ArchiveFormat::Zip)
    } else if [".btrfs", ".btrfs.zst", ".btrfs.gz", ".btrfs.xz"]
        .iter()
        .any(|e| n.ends_with(e))
    {
        Some(ArchiveFormat::BtrfsSend)
    } else {
        None
    };
    by_name.unwrap_or_else(|| sniff(path))
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// A reader of what `r` holds, decompressed when `head` (its first bytes)
/// starts like gzip, xz or zstd, as it is otherwise.
pub fn decompressed<'a>(r: impl Read + 'a, head: &[u8]) -> io::Result<Box<dyn Read + 'a>> {
    Ok(if head.starts_with(ZSTD_MAGIC) {
        Box::new(zstd::stream::read::Decoder::new(r)?)
    } else if head.starts_with(GZIP_MAGIC) {
        Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(r)))
    } else if head.starts_with(XZ_MAGIC) {
        Box::new(liblzma::read::XzDecoder::new(io::BufReader::new(r)))
    } else {
        Box::new(r)
    })
}

fn sniff(path: &Path) -> ArchiveFormat {
    let mut head = [0u8; 512];
    let n = File::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .unwrap_or(0);
    let h = &head[..n];
    if h.starts_with(GZIP_MAGIC) {
        ArchiveFormat::TarGz
    } else if h.starts_with(XZ_MAGIC) {
        ArchiveFormat::TarXz
    } else if h.starts_with(ZSTD_MAGIC) {
        ArchiveFormat::TarZst
    } else if h.starts_with(b"PK\x03\x04") {
        ArchiveFormat::Zip
    } else if h.starts_with(b"btrfs-stream\0") {
        ArchiveFormat::BtrfsSend
    } else if n >= 262 && &h[257..262] == b"ustar" {
        ArchiveFormat::Tar
    } else {
        ArchiveFormat::File
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// How much an archive is trusted beyond the path rules, which always hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// A machine's root filesystem from a pinned source: setuid/setgid bits and
    /// ownership are kept (a system needs them), and device nodes and fifos are
    /// skipped rather than refused (the namespace executor provides `/dev`).
    pub rootfs: bool,
}

/// Extract the archive read from `input` into the existing, empty
/// directory `dest`. `label` names it in messages. Tar formats stream;
/// zip needs the file itself (its directory is at the end).
pub fn extract(
    input: ArchiveInput,
    format: ArchiveFormat,
    dest: &Beneath,
    label: &str,
    strip: u32,
    limit: u64,
    policy: Policy,
) -> Result<Written> {
    let mut x = Extractor {
        dest,
        label: label.to_string(),
        strip,
        limit,
        total: 0,
        entries: 0,
        written: Written::new(),
        policy,
        owner: None,
        is_root: nix::unistd::geteuid().is_root(),
    };
    match (format, input) {
        (ArchiveFormat::Tar, ArchiveInput::Stream(r)) => x.tar(r)?,
        (ArchiveFormat::TarGz, ArchiveInput::Stream(r)) => x.tar(
            flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(1 << 20, r)),
        )?,
        (ArchiveFormat::TarXz, ArchiveInput::Stream(r)) => {
            x.tar(liblzma::read::XzDecoder::new(io::BufReader::new(r)))?
        }
        (ArchiveFormat::TarZst, ArchiveInput::Stream(r)) => {
            let d = zstd::stream::read::Decoder::new(r).map_err(|e| x.bad(e.to_string()))?;
            x.tar(d)?
        }
        (ArchiveFormat::Zip, ArchiveInput::File(f)) => x.zip(f)?,
        (ArchiveFormat::Zip, ArchiveInput::Stream(_)) => {
            unreachable!("a zip is extracted from its file")
        }
        (_, ArchiveInput::File(f)) => {
            return extract(
                ArchiveInput::Stream(Box::new(f)),
                format,
                dest,
                label,
                strip,
                limit,
                policy,
            )
        }
        (ArchiveFormat::File, _) => unreachable!("a plain file is not extracted"),
        (ArchiveFormat::BtrfsSend, _) => {
            return Err(x.bad(
                "a btrfs send stream is received into a machine's btrfs volume, not unpacked"
                    .into(),
            ))
        }
    }
    x.check_links(Path::new(""))?;
    Ok(x.written)
}

/// What an archive is read from.
pub enum ArchiveInput<'r> {
    /// Read once, front to back (tar formats).
    Stream(Box<dyn Read + 'r>),
    /// Read where needed (zip).
    File(File),
}

struct Extractor<'a> {
    dest: &'a Beneath,
    label: String,
    strip: u32,
    limit: u64,
    total: u64,
    entries: u64,
    written: Written,
    policy: Policy,
    /// uid and gid of the entry being placed (tar only).
    owner: Option<(u32, u32)>,
    is_root: bool,
}

enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
    HardLink(PathBuf),
}

impl Extractor<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::Archive {
            archive: self.label.clone(),
            reason,
        }
    }

    fn hostile(&self, entry: &Path, reason: impl Into<String>) -> Error {
        Error::HostileArchive {
            archive: self.label.clone(),
            entry: entry.display().to_string(),
            reason: reason.into(),
        }
    }

    /// Archive path → safe relative path (None: stripped away or the root itself).
    fn clean(&self, raw: &Path) -> Result<Option<PathBuf>> {
        let mut parts = Vec::new();
        for c in raw.components() {
            match c {
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.hostile(raw, "has an absolute path"))
                }
                Component::ParentDir => return Err(self.hostile(raw, "contains `..`")),
                Component::CurDir => {}
                Component::Normal(p) => parts.push(p.to_os_string()),
            }
        }
        if parts.len() <= self.strip as usize {
            return Ok(None);
        }
        Ok(Some(parts[self.strip as usize..].iter().collect()))
    }

    fn count(&mut self, raw: &Path) -> Result<()> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(self.hostile(raw, format!("is past the limit of {MAX_ENTRIES} entries")));
        }
        Ok(())
    }

    /// Create the parent directories of `rel`, refusing to pass through anything but real directories.
    fn parent_dirs(&self, rel: &Path, raw: &Path) -> Result<()> {
        let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        self.dest
            .create_dir_all(parent, 0o755)
            .map(|_| ())
            .map_err(|e| {
                // say what is in the way
                let mut at = PathBuf::new();
                for c in parent.components() {
                    at.push(c);
                    match self.dest.try_stat(&at) {
                        Ok(Some(s)) if s.kind == EntryType::Symlink => {
                            return self.hostile(raw, "is written through a symlink")
                        }
                        Ok(Some(s)) if s.kind != EntryType::Dir => {
                            return self.hostile(raw, "has a parent that is not a directory")
                        }
                        _ => {}
                    }
                }
                self.hostile(raw, format!("cannot be placed: {e}"))
            })
    }

    fn place(&mut self, raw: &Path, kind: Kind, mode: u32, data: &mut dyn Read) -> Result<()> {
        self.count(raw)?;
        let Some(rel) = self.clean(raw)? else {
            return Ok(());
        };
        self.parent_dirs(&rel, raw)?;
        let io = |e: io::Error| Error::io(self.dest.shown(&rel), e);
        if let Some(st) = self.dest.try_stat(&rel).map_err(io)? {
            if st.kind == EntryType::Dir && matches!(kind, Kind::Dir) {
                return Ok(());
            }
            return Err(self.hostile(raw, "appears twice in the archive"));
        }
        // setuid, setgid and sticky bits are dropped (except in a trusted rootfs); owner keeps read/write
        let mode = if self.policy.rootfs {
            mode & 0o7777
        } else {
            (mode & 0o777) | 0o600
        };
        let chown = self.owner.filter(|_| self.policy.rootfs && self.is_root);
        match kind {
            Kind::Dir => {
                self.dest.create_dir(&rel, 0o700).map_err(io)?;
                self.dest.set_mode(&rel, mode | 0o700).map_err(io)?;
            }
            Kind::File => {
                let mut f = self.dest.create_file(&rel, 0o600).map_err(io)?;
                let room = self.limit.saturating_sub(self.total);
                let mut w = HashingWriter::new(&mut f);
                let n = io::copy(&mut data.take(room + 1), &mut w)
                    .map_err(|e| self.bad(format!("{}: {e}", raw.display())))?;
                self.total += n;
                if n > room {
                    return Err(self.hostile(raw, format!("makes the archive unpack to more than {} bytes (settings.extract_limit)", self.limit)));
                }
                let sha = w.finish();
                if let Some((uid, gid)) = chown {
                    nix::unistd::fchown(&f, Some(uid.into()), Some(gid.into()))
                        .map_err(|e| io(e.into()))?;
                }
                // through the open file: chown first (it clears setuid), the mode after
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(io)?;
                self.written.insert(rel, sha);
                return Ok(());
            }
            Kind::Symlink(target) => {
                if target.is_absolute() && !self.policy.rootfs {
                    return Err(self.hostile(
                        raw,
                        format!("is a symlink to the absolute path {}", target.display()),
                    ));
                }
                // where it leads is checked once the tree is complete (it may name entries still to come)
                self.dest.symlink(&target, &rel).map_err(io)?;
            }
            Kind::HardLink(target) => {
                let Some(trel) = self.clean(&target).map_err(|_| {
                    self.hostile(
                        raw,
                        format!(
                            "is a hard link to {} which leaves the tree",
                            target.display()
                        ),
                    )
                })?
                else {
                    return Err(self.hostile(raw, "is a hard link to a stripped path"));
                };
                let Some(sha) = self.written.get(&trel).cloned() else {
                    return Err(self.hostile(
                        raw,
                        format!(
                            "is a hard link to {} which is not a file extracted before it",
                            target.display()
                        ),
                    ));
                };
                self.dest.hard_link(&trel, &rel).map_err(io)?;
                self.written.insert(rel, sha);
                return Ok(());
            }
        }
        if let Some((uid, gid)) = chown {
            let (dir, name) = match rel.parent() {
                Some(p) if !p.as_os_str().is_empty() => (
                    self.dest.open_dir(p).map_err(io)?,
                    rel.file_name().expect("a name"),
                ),
                _ => (self.dest.try_clone().map_err(io)?, rel.as_os_str()),
            };
            nix::unistd::fchownat(
                dir.fd(),
                name,
                Some(uid.into()),
                Some(gid.into()),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io(e.into()))?;
        }
        Ok(())
    }

    /// Every symlink of the finished tree, resolved inside it.
    fn check_links(&self, rel: &Path) -> Result<()> {
        let dir = self
            .dest
            .open_dir(rel)
            .map_err(|e| Error::io(self.dest.shown(rel), e))?;
        for (name, kind) in dir.entries().map_err(|e| Error::io(dir.path(), e))? {
            let r = rel.join(&name);
            match kind {
                EntryType::Dir => self.check_links(&r)?,
                EntryType::Symlink => {
                    if let Err(why) = beneath::resolve_inside(self.dest, &r, self.policy.rootfs) {
                        let target = self.dest.read_link(&r).unwrap_or_default();
                        return Err(self.hostile(
                            &r,
                            format!("is a symlink to {} which {why}", target.display()),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn tar(&mut self, r: impl Read) -> Result<()> {
        let mut ar = tar::Archive::new(r);
        let entries = ar.entries().map_err(|e| self.bad(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.bad(e.to_string()))?;
            let raw = entry
                .path()
                .map_err(|e| self.bad(e.to_string()))?
                .into_owned();
            let mode = entry.header().mode().unwrap_or(0o644);
            let et = entry.header().entry_type();
            self.owner = match (entry.header().uid(), entry.header().gid()) {
                (Ok(u), Ok(g)) => Some((u as u32, g as u32)),
                _ => None,
            };
            let kind = match et {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(|e| self.bad(e.to_string()))?
                        .ok_or_else(|| self.hostile(&raw, "is a link without a target"))?
                        .into_owned();
                    if et == tar::EntryType::Symlink {
                        Kind::Symlink(target)
                    } else {
                        Kind::HardLink(target)
                    }
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
                    if self.policy.rootfs =>
                {
                    continue
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    return Err(self.hostile(&raw, "is a device node"))
                }
                tar::EntryType::Fifo => return Err(self.hostile(&raw, "is a fifo")),
                // pax and GNU metadata entries are consumed by the tar crate; anything else is skipped
                _ => continue,
            };
            self.place(&raw, kind, mode, &mut entry)?;
        }
        Ok(())
    }

    fn zip(&mut self, f: File) -> Result<()> {
        let mut ar = zip::ZipArchive::new(f).map_err(|e| self.bad(e.to_string()))?;
        for i in 0..ar.len() {
            let mut file = ar.by_index(i).map_err(|e| self.bad(e.to_string()))?;
            let raw = PathBuf::from(String::from_utf8_lossy(file.name_raw()).into_owned());
            let mode = file
                .unix_mode()
                .unwrap_or(if file.is_dir() { 0o755 } else { 0o644 });
            let kind = match mode & 0o170000 {
                0o120000 => {
                    let mut t = String::new();
                    file.by_ref()
                        .take(4096)
                        .read_to_string(&mut t)
                        .map_err(|e| self.bad(e.to_string()))?;
                    Kind::Symlink(PathBuf::from(t))
                }
                0o020000 | 0o060000 => return Err(self.hostile(&raw, "is a device node")),
                0o010000 => return Err(self.hostile(&raw, "is a fifo")),
                _ if file.is_dir() => Kind::Dir,
                _ => Kind::File,
            };
            self.place(&raw, kind, mode, &mut file)?;
        }
        Ok(())
    }
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
        }
    }

    /// Read what is left (a tar reader stops at its end marker), then the digest and size.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            crate::fsops::digest::to_hex(&self.hasher.finalize()),
            self.read,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }
    pub fn finish(self) -> String {
        crate::fsops::digest::to_hex(&self.hasher.finalize())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_name_and_magic() {
        use std::fs;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("blob");
        fs::write(&p, [0x1f, 0x8b, 8, 0]).unwrap();
        assert_eq!(detect("blob", &p), ArchiveFormat::TarGz);
        assert_eq!(detect("x.zip", &p), ArchiveFormat::Zip);
        fs::write(&p, b"#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(detect("kolet_1.2.0_linux_amd64", &p), ArchiveFormat::File);
    }
}
