//! Sources: `path`, `dir` and `url` (http, https, file). Remote content goes
//! through a content-addressed cache in the state dir and is verified against
//! its SHA-256 before anything is staged.

pub mod archive;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::config::model::{ArchiveFormat, Source};
use crate::config::Lockfile;
use crate::error::{Error, Result};
use crate::fsops::digest::{StatIndex, StatKey};
use crate::source::archive::{HashingWriter, Written};

/// Where a source is read from, once resolved.
#[derive(Debug, Clone)]
pub enum Location {
    File(PathBuf),
    Dir(PathBuf),
    Url(String),
}

impl Location {
    pub fn of(s: &Source) -> Location {
        match (&s.path, &s.dir, &s.url) {
            (Some(p), _, _) => Location::File(PathBuf::from(p)),
            (_, Some(d), _) => Location::Dir(PathBuf::from(d)),
            (_, _, Some(u)) => Location::Url(u.clone()),
            _ => unreachable!("validated: exactly one location"),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Location::File(p) | Location::Dir(p) => p.display().to_string(),
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
    /// A verified local file (in the cache, or the `path` source itself).
    File {
        path: PathBuf,
        sha256: String,
        name: String,
        format: ArchiveFormat,
    },
    Dir {
        path: PathBuf,
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
            Location::Dir(d) => self.memoised(&d, || tree_digest(&d, self.index, self.verify)),
        }
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

    /// Fetch and verify `s`. Nothing is staged by this; a wrong checksum fails here.
    pub fn fetch(&self, s: &Source) -> Result<Artifact> {
        let loc = Location::of(s);
        let name = loc.file_name();
        let (path, sha256) = match &loc {
            Location::Dir(d) => {
                if !d.is_dir() {
                    return Err(Error::io(
                        d,
                        io::Error::new(io::ErrorKind::NotFound, "source directory missing"),
                    ));
                }
                return Ok(Artifact::Dir { path: d.clone() });
            }
            Location::File(p) => {
                let actual = self.index.digest(p, true).map_err(|e| Error::io(p, e))?;
                if let Some(want) = &s.sha256 {
                    if !want.eq_ignore_ascii_case(&actual) {
                        return Err(Error::Checksum {
                            what: p.display().to_string(),
                            expected: want.clone(),
                            actual,
                        });
                    }
                }
                (p.clone(), actual)
            }
            Location::Url(url) => {
                let want = self.expected_digest(s)?;
                (self.download(url, Some(&want))?.0, want)
            }
        };
        let format = s.format.unwrap_or_else(|| archive::detect(&name, &path));
        Ok(Artifact::File {
            path,
            sha256,
            name,
            format,
        })
    }

    /// Download `url` into the cache (or find it there) and check it has `want`.
    /// `want = None` (used by `reconcile lock`) accepts any content. Returns the
    /// cached path and the content's digest.
    pub fn download(&self, url: &str, want: Option<&str>) -> Result<(PathBuf, String)> {
        let dir = self.cache_dir.join("sha256");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        if let Some(want) = want {
            let cached = dir.join(want);
            if cached.is_file()
                && self
                    .index
                    .digest(&cached, self.verify)
                    .map(|d| d == want)
                    .unwrap_or(false)
            {
                return Ok((cached, want.to_string()));
            }
        }
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

/// Copy an artifact into the empty directory `dest`: extract an archive, copy a
/// plain file as `file_name`, or copy a directory tree. Returns digests of what was written.
pub fn unpack(
    a: &Artifact,
    dest: &Path,
    file_name: &str,
    strip: u32,
    limit: u64,
    policy: archive::Policy,
) -> Result<Written> {
    match a {
        Artifact::File {
            path,
            format: ArchiveFormat::File,
            sha256,
            ..
        } => {
            let to = dest.join(file_name);
            fs::copy(path, &to).map_err(|e| Error::io(&to, e))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(&to, e))?;
            Ok([(PathBuf::from(file_name), sha256.clone())].into())
        }
        Artifact::File { path, format, .. } => {
            archive::extract(path, *format, dest, strip, limit, policy)
        }
        Artifact::Dir { path } => {
            let mut written = Written::new();
            copy_tree(path, dest, Path::new(""), &mut written)?;
            Ok(written)
        }
    }
}

fn copy_tree(src: &Path, dest: &Path, rel: &Path, written: &mut Written) -> Result<()> {
    let from = src.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&from)
        .map_err(|e| Error::io(&from, e))?
        .collect::<io::Result<_>>()
        .map_err(|e| Error::io(&from, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let (s, d) = (src.join(&r), dest.join(&r));
        let meta = fs::symlink_metadata(&s).map_err(|e| Error::io(&s, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            fs::create_dir(&d).map_err(|e| Error::io(&d, e))?;
            copy_tree(src, dest, &r, written)?;
            fs::set_permissions(&d, fs::Permissions::from_mode(mode | 0o700))
                .map_err(|e| Error::io(&d, e))?;
        } else if meta.file_type().is_symlink() {
            let t = fs::read_link(&s).map_err(|e| Error::io(&s, e))?;
            std::os::unix::fs::symlink(&t, &d).map_err(|e| Error::io(&d, e))?;
        } else if meta.is_file() {
            let mut input = File::open(&s).map_err(|e| Error::io(&s, e))?;
            let mut out = File::create(&d).map_err(|e| Error::io(&d, e))?;
            let mut w = HashingWriter::new(&mut out);
            io::copy(&mut input, &mut w).map_err(|e| Error::io(&d, e))?;
            let sha = w.finish();
            out.flush().map_err(|e| Error::io(&d, e))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(mode | 0o600))
                .map_err(|e| Error::io(&d, e))?;
            written.insert(r, sha);
        } else {
            return Err(Error::Resource {
                address: s.display().to_string(),
                reason: "source directory holds a device node, fifo or socket".into(),
            });
        }
    }
    Ok(())
}

/// Digest of a directory tree: names, kinds, modes and file digests, in name order.
pub fn tree_digest(dir: &Path, index: &StatIndex, verify: bool) -> Result<String> {
    let mut lines = String::new();
    walk_digest(dir, Path::new(""), index, verify, &mut lines)?;
    Ok(crate::fsops::digest::sha256_bytes(lines.as_bytes()))
}

fn walk_digest(
    root: &Path,
    rel: &Path,
    index: &StatIndex,
    verify: bool,
    out: &mut String,
) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for n in names {
        let r = rel.join(&n);
        let p = root.join(&r);
        let m = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
        let mode = m.permissions().mode() & 0o777;
        if m.is_dir() {
            out.push_str(&format!("d {mode:o} {}\n", r.display()));
            walk_digest(root, &r, index, verify, out)?;
        } else if m.file_type().is_symlink() {
            let t = fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
            out.push_str(&format!("l {} -> {}\n", r.display(), t.display()));
        } else {
            let sha = index.digest(&p, verify).map_err(|e| Error::io(&p, e))?;
            out.push_str(&format!("f {mode:o} {} {sha}\n", r.display()));
        }
    }
    Ok(())
}
