//! Sources: `path`, `dir` and `url` (http, https, file). Remote content goes
//! through a content-addressed cache in the state dir.
//!
//! What is installed is hashed as it is installed: a source is opened once,
//! its bytes hashed while they are copied or extracted from that one file
//! descriptor, and the digest compared with the expected one before the
//! staged copy can be committed — a file swapped after it was checked, or a
//! cache object corrupted on disk, is caught in the same pass, and the
//! receipt records the digest of the bytes actually read. A `dir` source is
//! digested from the tree as it was copied.

pub mod archive;
#[cfg(test)]
mod fuzz;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::config::model::{ArchiveFormat, Source, SourceLocation};
use crate::config::Lockfile;
use crate::error::{Error, Result};
use crate::fsops::beneath::{self, Beneath, DirAt, Kind, Stat};
use crate::fsops::digest::{StatIndex, StatKey};
use crate::source::archive::{ArchiveInput, HashingReader, HashingWriter, Written};

/// Where a source is read from, once resolved.
#[derive(Debug, Clone)]
pub enum Location {
    File(PathBuf),
    Dir(PathBuf),
    Url(String),
}

impl Location {
    pub fn of(s: &Source) -> Location {
        match &s.location {
            SourceLocation::Path(p) => Location::File(PathBuf::from(p)),
            SourceLocation::Dir(d) => Location::Dir(PathBuf::from(d)),
            SourceLocation::Url(u) => Location::Url(u.clone()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Location::File(p) | Location::Dir(p) => crate::output::display_name(p),
            Location::Url(u) => u.clone(),
        }
    }

    /// The last path segment, used to guess the archive format.
    pub fn file_name(&self) -> String {
        match self {
            Location::File(p) | Location::Dir(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Location::Url(u) => u
                .split(['?', '#'])
                .next()
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string(),
        }
    }
}

/// Content ready to stage.
#[derive(Debug)]
pub enum Artifact {
    /// A local file (in the cache, or the `path` source itself) and the
    /// digest it must have; checked while it is staged.
    File {
        path: PathBuf,
        sha256: String,
        name: String,
        format: ArchiveFormat,
        /// An object of the download cache (removed when it turns out corrupt).
        cached: bool,
    },
    Dir {
        path: PathBuf,
        /// The tree digest the plan saw; a copy that differs is refused.
        expected: Option<String>,
    },
}

/// Fetches sources, with the cache and the stat index of one run.
pub struct Fetcher<'a> {
    pub cache_dir: PathBuf,
    pub index: &'a StatIndex,
    pub lock: &'a Lockfile,
    pub progress: bool,
    pub verify: bool,
    /// Digests of local sources computed in this run (many resources may share one source).
    pub memo: Mutex<HashMap<PathBuf, String>>,
    /// Parents of local source directories, opened once for the run.
    pub dirs: crate::fsops::beneath::OpenRoots,
}

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

impl<'a> Fetcher<'a> {
    pub fn new(
        cache_dir: PathBuf,
        index: &'a StatIndex,
        lock: &'a Lockfile,
        progress: bool,
        verify: bool,
    ) -> Self {
        Fetcher {
            cache_dir,
            index,
            lock,
            progress,
            verify,
            memo: Mutex::new(HashMap::new()),
            dirs: Default::default(),
        }
    }

    /// The SHA-256 the source is expected to have, without fetching anything:
    /// declared, pinned, or (for local files and directories) computed.
    pub fn expected_digest(&self, s: &Source) -> Result<String> {
        match Location::of(s) {
            Location::Url(u) => Ok(s
                .sha256
                .clone()
                .or_else(|| self.lock.sha256_for(&u).map(str::to_string))
                .expect("validated: remote sources are pinned")
                .to_ascii_lowercase()),
            Location::File(p) => match &s.sha256 {
                Some(sha) => Ok(sha.to_ascii_lowercase()),
                None => self.memoised(&p, || {
                    self.index
                        .digest(&p, self.verify)
                        .map_err(|e| Error::io(&p, e))
                }),
            },
            Location::Dir(d) => self.memoised(&d, || {
                let (root, st) = self.open_source_dir(&d)?;
                tree_digest_in(&root, &st, &d, self.index, self.verify)
            }),
        }
    }

    /// A local source directory, opened beneath its parent (shared by the
    /// sources beside it) — or by its whole path when it is a symlink the
    /// user made.
    fn open_source_dir(&self, d: &Path) -> Result<(DirAt, Stat)> {
        if let (Some(parent), Some(name)) = (d.parent(), d.file_name()) {
            if let Ok(Some(found)) = self.dirs.dir_at(parent, Path::new(name)) {
                return Ok(found);
            }
        }
        let io = |e| Error::io(d, e);
        let at = DirAt::new(
            std::sync::Arc::new(Beneath::open(d).map_err(io)?),
            Path::new(""),
        )
        .map_err(io)?;
        let st = at.stat().map_err(io)?;
        Ok((at, st))
    }

    fn memoised(&self, key: &Path, f: impl FnOnce() -> Result<String>) -> Result<String> {
        if let Some(d) = self.memo.lock().unwrap().get(key) {
            return Ok(d.clone());
        }
        let d = f()?;
        self.memo
            .lock()
            .unwrap()
            .insert(key.to_path_buf(), d.clone());
        Ok(d)
    }

    /// Fetch `s`: a download lands in the cache (verified on the way in); a
    /// local file is found. Nothing is staged by this; [`unpack`] verifies the
    /// bytes it stages.
    pub fn fetch(&self, s: &Source) -> Result<Artifact> {
        let loc = Location::of(s);
        let name = loc.file_name();
        let (path, sha256, cached) = match &loc {
            Location::Dir(d) => {
                if !d.is_dir() {
                    return Err(Error::io(
                        d,
                        io::Error::new(io::ErrorKind::NotFound, "source directory missing"),
                    ));
                }
                return Ok(Artifact::Dir {
                    path: d.clone(),
                    expected: Some(self.expected_digest(s)?),
                });
            }
            Location::File(p) => {
                let meta = fs::metadata(p).map_err(|e| Error::io(p, e))?;
                if !meta.is_file() {
                    return Err(Error::io(
                        p,
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "the source is not a regular file",
                        ),
                    ));
                }
                (p.clone(), self.expected_digest(s)?, false)
            }
            Location::Url(url) => {
                let want = self.expected_digest(s)?;
                let (path, fresh) = self.download(url, Some(&want))?;
                (path, want, !fresh)
            }
        };
        let format = s.format.unwrap_or_else(|| archive::detect(&name, &path));
        Ok(Artifact::File {
            path,
            sha256,
            name,
            format,
            cached,
        })
    }

    /// The cached object for `url` when it is there (its bytes are checked
    /// when staged), or a fresh download checked on its way into the cache.
    /// Returns the path and whether it was downloaded now.
    pub fn download(&self, url: &str, want: Option<&str>) -> Result<(PathBuf, bool)> {
        if let Some(want) = want {
            let cached = self.cache_dir.join("sha256").join(want);
            if fs::symlink_metadata(&cached).is_ok_and(|m| m.is_file()) {
                return Ok((cached, false));
            }
        }
        self.fetch_url(url, want).map(|(p, _)| (p, true))
    }

    /// Download `url` into the cache and check it has `want` (`None`, for
    /// `reconcile lock`, accepts any content). Returns the cached path and the
    /// content's digest.
    pub fn fetch_url(&self, url: &str, want: Option<&str>) -> Result<(PathBuf, String)> {
        let dir = self.cache_dir.join("sha256");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let tmp = self.cache_dir.join(format!(
            "download-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.download_to(url, &tmp);
        let (actual, stat) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Some(want) = want.filter(|w| *w != actual) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Checksum {
                what: url.to_string(),
                expected: want.to_string(),
                actual,
            });
        }
        let cached = dir.join(&actual);
        fs::rename(&tmp, &cached).map_err(|e| Error::io(&cached, e))?;
        self.index.remember(&cached, stat, &actual);
        Ok((cached, actual))
    }

    fn download_to(&self, url: &str, tmp: &Path) -> Result<(String, StatKey)> {
        let fail = |reason: String| Error::Download {
            url: url.to_string(),
            reason,
        };
        let (reader, len): (Box<dyn Read>, Option<u64>) =
            if let Some(path) = url.strip_prefix("file://") {
                let f = File::open(path).map_err(|e| fail(e.to_string()))?;
                let len = f.metadata().ok().map(|m| m.len());
                (Box::new(f), len)
            } else {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_connect(Some(std::time::Duration::from_secs(30)))
                    .build()
                    .into();
                let resp = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
                let len = resp
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                (Box::new(resp.into_body().into_reader()), len)
            };
        let bar = self.bar(len, url);
        let mut file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut w = HashingWriter::new(&mut file);
        let mut reader = bar.wrap_read(reader);
        io::copy(&mut reader, &mut w).map_err(|e| fail(e.to_string()))?;
        let sha = w.finish();
        file.sync_all().map_err(|e| Error::io(tmp, e))?;
        bar.finish_and_clear();
        let stat = StatKey::of(&file.metadata().map_err(|e| Error::io(tmp, e))?);
        Ok((sha, stat))
    }

    fn bar(&self, len: Option<u64>, what: &str) -> indicatif::ProgressBar {
        if !self.progress {
            return indicatif::ProgressBar::hidden();
        }
        let bar =
            indicatif::ProgressBar::with_draw_target(len, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!(
            "downloading {}",
            what.rsplit('/').next().unwrap_or(what)
        ));
        bar
    }
}

/// The error for a source whose bytes were not the expected ones: a cache
/// object is removed (it is downloaded again, see [`fresh_on_corrupt_cache`]).
pub fn mismatch(path: &Path, expected: &str, actual: String, cached: bool, when: &str) -> Error {
    if cached {
        let _ = fs::remove_file(path);
        return Error::CorruptCache {
            object: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
            then: None,
        };
    }
    Error::Checksum {
        what: format!("{} ({when})", path.display()),
        expected: expected.to_string(),
        actual,
    }
}

/// Run `install`; when it meets a corrupt cache object (removed by then),
/// run it once more, which downloads the source afresh. What happened is
/// said in `said`; when the second try fails too, the error says both.
pub fn fresh_on_corrupt_cache<T>(
    said: &mut Vec<String>,
    mut install: impl FnMut() -> Result<T>,
) -> Result<T> {
    match install() {
        Err(Error::CorruptCache {
            object,
            expected,
            actual,
            ..
        }) => {
            said.push(format!(
                "the cached copy {} was corrupt (sha256 {actual}): removed and downloaded again",
                object.display()
            ));
            install().map_err(|e| match e {
                e @ Error::CorruptCache { .. } => e,
                other => Error::CorruptCache {
                    object,
                    expected,
                    actual,
                    then: Some(other.to_string()),
                },
            })
        }
        other => other,
    }
}

/// What staging an artifact produced.
#[derive(Debug)]
pub struct Staged {
    /// Digests of the files written, by path relative to the destination.
    pub written: Written,
    /// Digest of the source as it was read (the file's bytes, or the tree of a `dir`).
    pub sha256: String,
}

/// Copy an artifact into the empty directory `dest`: extract an archive, copy
/// a plain file as `file_name`, or copy a directory tree — reading the source
/// once, hashing it on the way, and refusing (nothing committed) when what was
/// read is not what was expected.
pub fn unpack(
    a: &Artifact,
    dest: &Beneath,
    file_name: &str,
    strip: u32,
    limit: u64,
    policy: archive::Policy,
) -> Result<Staged> {
    match a {
        Artifact::File {
            path,
            format,
            sha256,
            cached,
            ..
        } => {
            let (staged, actual) =
                stage_file(path, *format, dest, file_name, strip, limit, policy)?;
            // the digest first: a corrupt or swapped file is reported as that,
            // not as whatever its bytes made the extraction say
            if actual != *sha256 {
                return Err(mismatch(
                    path,
                    sha256,
                    actual,
                    *cached,
                    "as read while installing",
                ));
            }
            Ok(Staged {
                written: staged?,
                sha256: actual,
            })
        }
        Artifact::Dir { path, expected } => {
            let src = Beneath::open(path).map_err(|e| Error::io(path, e))?;
            let mut copy = TreeCopy::default();
            copy.copy(&src, dest, Path::new(""))?;
            for link in &copy.links {
                if let Err(why) = beneath::resolve_inside(dest, link, policy.rootfs) {
                    return Err(Error::Resource {
                        address: path.join(link).display().to_string(),
                        reason: format!("the source directory holds a symlink that {why}"),
                    });
                }
            }
            let actual = crate::fsops::digest::sha256_bytes(copy.lines.as_bytes());
            if expected.as_deref().is_some_and(|e| *e != actual) {
                return Err(Error::Resource {
                    address: path.display().to_string(),
                    reason: "the source directory changed while it was being copied; apply again"
                        .into(),
                });
            }
            Ok(Staged {
                written: copy.written,
                sha256: actual,
            })
        }
    }
}

/// Stage one file artifact, hashing it as it is read; returns what staging
/// gave (an archive may fail to extract) and the digest of every byte of the
/// source, read to its end either way.
fn stage_file(
    path: &Path,
    format: ArchiveFormat,
    dest: &Beneath,
    file_name: &str,
    strip: u32,
    limit: u64,
    policy: archive::Policy,
) -> Result<(Result<Written>, String)> {
    let input = open_source(path)?;
    let label = path.display().to_string();
    match format {
        ArchiveFormat::File => {
            let to = Path::new(file_name);
            let mut out = dest
                .create_file(to, 0o600)
                .map_err(|e| Error::io(dest.shown(to), e))?;
            let mut r = HashingReader::new(input);
            let mut w = HashingWriter::new(&mut out);
            io::copy(&mut r, &mut w).map_err(|e| Error::io(dest.shown(to), e))?;
            let written = w.finish();
            out.set_permissions(fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(dest.shown(to), e))?;
            let (sha, _) = r.finish().map_err(|e| Error::io(path, e))?;
            Ok((Ok([(PathBuf::from(file_name), written)].into()), sha))
        }
        ArchiveFormat::Zip => {
            // zip's directory is at its end: hash the file, then extract from the
            // same descriptor, and refuse if it was modified in between
            let mut f = input;
            let before = StatKey::of(&f.metadata().map_err(|e| Error::io(path, e))?);
            let (sha, _) = HashingReader::new(&mut f)
                .finish()
                .map_err(|e| Error::io(path, e))?;
            use std::io::Seek;
            f.rewind().map_err(|e| Error::io(path, e))?;
            let check = f.try_clone().map_err(|e| Error::io(path, e))?;
            let written = archive::extract(
                ArchiveInput::File(f),
                format,
                dest,
                &label,
                strip,
                limit,
                policy,
            );
            let after = StatKey::of(&check.metadata().map_err(|e| Error::io(path, e))?);
            if before != after {
                return Err(Error::Resource {
                    address: label,
                    reason: "the archive changed while it was being extracted; apply again".into(),
                });
            }
            Ok((written, sha))
        }
        _ => {
            let mut r = HashingReader::new(input);
            let extracted = archive::extract(
                ArchiveInput::Stream(Box::new(&mut r)),
                format,
                dest,
                &label,
                strip,
                limit,
                policy,
            );
            // the digest is finished either way: a corrupt copy fails to
            // decompress, and its digest then says why
            let (sha, _) = r.finish().map_err(|e| Error::io(path, e))?;
            Ok((extracted, sha))
        }
    }
}

/// Open a source file for reading: a regular file (a fifo or device would
/// block or never end), opened without blocking on the open itself.
fn open_source(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the source is not a regular file",
            ),
        ));
    }
    nix::fcntl::fcntl(
        &f,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(|e| Error::io(path, e.into()))?;
    Ok(f)
}

/// A `dir` source copied through two [`Beneath`] handles (nothing followed
/// on either side), with the digest lines of what was copied.
#[derive(Default)]
struct TreeCopy {
    written: Written,
    /// The [`tree_digest`] lines of the copy, in the same order.
    lines: String,
    links: Vec<PathBuf>,
}

impl TreeCopy {
    fn copy(&mut self, src: &Beneath, dest: &Beneath, rel: &Path) -> Result<()> {
        let dir = src
            .open_dir(rel)
            .map_err(|e| Error::io(src.shown(rel), e))?;
        for (name, kind) in dir.entries().map_err(|e| Error::io(dir.path(), e))? {
            let r = rel.join(&name);
            let io_src = |e: io::Error| Error::io(src.shown(&r), e);
            let io_dest = |e: io::Error| Error::io(dest.shown(&r), e);
            match kind {
                Kind::Dir => {
                    let mode = src.stat(&r).map_err(io_src)?.mode & 0o777;
                    self.lines
                        .push_str(&format!("d {mode:o} {}\n", r.display()));
                    dest.create_dir(&r, 0o700).map_err(io_dest)?;
                    self.copy(src, dest, &r)?;
                    dest.set_mode(&r, mode | 0o700).map_err(io_dest)?;
                }
                Kind::Symlink => {
                    let t = src.read_link(&r).map_err(io_src)?;
                    self.lines
                        .push_str(&format!("l {} -> {}\n", r.display(), t.display()));
                    dest.symlink(&t, &r).map_err(io_dest)?;
                    self.links.push(r);
                }
                Kind::File => {
                    let input = src.open_file(&r).map_err(io_src)?;
                    let mode = file_mode(&input).map_err(io_src)?;
                    let mut out = dest.create_file(&r, 0o600).map_err(io_dest)?;
                    let mut w = HashingWriter::new(&mut out);
                    io::copy(&mut &input, &mut w).map_err(io_dest)?;
                    let sha = w.finish();
                    out.set_permissions(fs::Permissions::from_mode(mode | 0o600))
                        .map_err(io_dest)?;
                    self.lines
                        .push_str(&format!("f {mode:o} {} {sha}\n", r.display()));
                    self.written.insert(r, sha);
                }
                Kind::Other => {
                    return Err(Error::Resource {
                        address: src.shown(&r).display().to_string(),
                        reason: "source directory holds a device node, fifo or socket".into(),
                    })
                }
            }
        }
        Ok(())
    }
}

/// Permission bits of an open file.
fn file_mode(f: &File) -> io::Result<u32> {
    Ok(f.metadata()?.permissions().mode() & 0o777)
}

/// Digest of a directory tree: names, kinds, modes and file digests, in name
/// order — read the way `find` reads: each directory opened once, its entries
/// stat relative to it, a file read only when the stat index does not know it.
pub fn tree_digest(dir: &Path, index: &StatIndex, verify: bool) -> Result<String> {
    let io = |e| Error::io(dir, e);
    let root = DirAt::new(
        std::sync::Arc::new(Beneath::open(dir).map_err(io)?),
        Path::new(""),
    )
    .map_err(io)?;
    let st = root.stat().map_err(io)?;
    tree_digest_in(&root, &st, dir, index, verify)
}

/// [`tree_digest`] of the directory `root` (at `dir`, whose metadata is `stat`).
pub fn tree_digest_in(
    root: &DirAt,
    stat: &Stat,
    dir: &Path,
    index: &StatIndex,
    verify: bool,
) -> Result<String> {
    let mut lines = String::new();
    walk_digest(root, stat, dir, Path::new(""), index, verify, &mut lines)?;
    Ok(crate::fsops::digest::sha256_bytes(lines.as_bytes()))
}

fn walk_digest(
    dir: &DirAt,
    dir_stat: &Stat,
    root: &Path,
    rel: &Path,
    index: &StatIndex,
    verify: bool,
    out: &mut String,
) -> Result<()> {
    let entries = index
        .entries_stat(dir, dir_stat, verify, |_| false)
        .map_err(|e| Error::io(dir.path(), e))?;
    for (name, st) in entries {
        let r = rel.join(&name);
        let n = name.as_os_str();
        let mode = st.mode & 0o777;
        match st.kind {
            Kind::Dir => {
                let _ = writeln!(out, "d {mode:o} {}", r.display());
                walk_digest(&dir.join(n), &st, root, &r, index, verify, out)?;
            }
            Kind::Symlink => {
                let t = dir.read_link(n).map_err(|e| Error::io(dir.shown(n), e))?;
                let _ = writeln!(out, "l {} -> {}", r.display(), t.display());
            }
            _ => {
                let full = root.join(&r);
                let sha = index
                    .digest_known(&full, StatKey::from_stat(&st), verify, || dir.open_file(n))
                    .map_err(|e| Error::io(&full, e))?;
                let _ = writeln!(out, "f {mode:o} {} {sha}", r.display());
            }
        }
    }
    Ok(())
}
