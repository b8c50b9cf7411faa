//! Content digests. Hashing is streamed (never a whole file in memory); a stat
//! index remembers the digest of a file together with its size, inode, mtime
//! and ctime, so an unchanged file is never re-read. `--verify` bypasses it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::beneath::{DirAt, Kind, Stat};

const BUF: usize = 1 << 20;

/// SHA-256 of everything `r` yields, and its length.
pub fn sha256_reader(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((to_hex(&h.finalize()), n))
}

pub fn sha256_file(path: &Path) -> io::Result<String> {
    Ok(sha256_reader(File::open(path)?)?.0)
}

/// Lower-case hex of a digest, a table lookup per nibble (the `hex` crate
/// goes through `char` iterators: a no-op plan formats thousands of digests).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// The first 12 hex digits, for messages.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

pub fn sha256_bytes(b: &[u8]) -> String {
    to_hex(&Sha256::digest(b))
}

/// The stat fields that change whenever a file's content can have changed.
/// ctime cannot be set from user space, so restoring mtime after an edit is caught too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatKey {
    pub size: u64,
    pub ino: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl StatKey {
    pub fn from_stat(s: &Stat) -> Self {
        StatKey {
            size: s.size,
            ino: s.ino,
            mtime_ns: s.mtime_ns as i64,
            ctime_ns: s.ctime_ns as i64,
        }
    }

    pub fn of(m: &fs::Metadata) -> Self {
        StatKey {
            size: m.size(),
            ino: m.ino(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    stat: StatKey,
    sha256: [u8; 32],
}

/// A directory's names and kinds as they were listed under its stat key.
/// Adding, removing or renaming an entry changes the directory's mtime and
/// ctime, so an unchanged key means an unchanged listing (what git's
/// untracked cache relies on).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Listing {
    stat: StatKey,
    names: Names,
}

/// A directory's entries (unsorted) in one buffer: per entry a kind byte,
/// the name, a NUL (which no name contains). One allocation however many
/// names, shared with the index that remembers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Names(std::sync::Arc<serde_bytes::ByteBuf>);

impl Names {
    fn new(entries: &[(OsString, Kind)]) -> Names {
        let mut b = Vec::with_capacity(entries.iter().map(|(n, _)| n.len() + 2).sum());
        for (n, k) in entries {
            b.push(kind_code(*k));
            b.extend_from_slice(n.as_bytes());
            b.push(0);
        }
        Names(std::sync::Arc::new(serde_bytes::ByteBuf::from(b)))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, Kind)> {
        self.0
            .split(|&c| c == 0)
            .filter(|e| !e.is_empty())
            .map(|e| (OsStr::from_bytes(&e[1..]), code_kind(e[0])))
    }
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::File => b'f',
        Kind::Dir => b'd',
        Kind::Symlink => b'l',
        Kind::Other => b'o',
    }
}

fn code_kind(c: u8) -> Kind {
    match c {
        b'f' => Kind::File,
        b'd' => Kind::Dir,
        b'l' => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// A small file's decoded form (a receipt), kept under the file's stat key
/// in whatever encoding its owner chose.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Blob {
    stat: StatKey,
    /// As one byte string, not a sequence of numbers.
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

/// What is persisted, keyed by absolute path: digests of files, listings of
/// directories and decoded receipts, each under the stat key it was taken with.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Entries {
    files: foldhash::HashMap<String, Entry>,
    dirs: foldhash::HashMap<String, Listing>,
    blobs: foldhash::HashMap<String, Blob>,
}

/// The first bytes of the index file: a different format is an empty index.
const MAGIC: &[u8] = b"reconcile stat index 4\n";

/// How long after its last change an entry's stat key is trusted: file
/// times tick coarsely (a jiffy), so a change within the same tick as the
/// one recorded would keep the key. An entry changed less than this before
/// the run began is used but not remembered — git's "racily clean" rule.
const SETTLE_NS: i128 = 2_000_000_000;

/// Digests of files outside managed objects (local sources), listings of the
/// directories and receipts reconcile reads each run, persisted in the state
/// dir (postcard, not JSON: a no-op plan of a large farm decodes it whole).
#[derive(Debug)]
pub struct StatIndex {
    path: Option<PathBuf>,
    /// Read from `path` on first use: a plan that needs no local digest never parses it.
    entries: std::sync::OnceLock<Mutex<Entries>>,
    dirty: std::sync::atomic::AtomicBool,
    /// When this run began (ns since the epoch): keys changed after `began - SETTLE_NS` are not kept.
    began: i128,
}

impl Default for StatIndex {
    fn default() -> Self {
        StatIndex {
            path: None,
            entries: std::sync::OnceLock::new(),
            dirty: std::sync::atomic::AtomicBool::new(false),
            began: now_ns(),
        }
    }
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

impl StatIndex {
    /// Load from `path`; a missing or unreadable index is an empty one (it is only a cache).
    pub fn load(path: &Path) -> Self {
        StatIndex {
            path: Some(path.to_path_buf()),
            ..Self::default()
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .get_or_init(|| {
                // read beneath its directory, never through a symlink
                let entries = self
                    .path
                    .as_ref()
                    .and_then(|p| {
                        let dir = super::Beneath::open(p.parent()?).ok()?;
                        dir.read(Path::new(p.file_name()?), 256 << 20).ok()
                    })
                    .and_then(|b| postcard::from_bytes(b.strip_prefix(MAGIC)?).ok())
                    .unwrap_or_default();
                Mutex::new(entries)
            })
            .lock()
            .unwrap()
    }

    /// An index that is never saved.
    pub fn ephemeral() -> Self {
        Self::default()
    }

    /// Changed long enough before this run that a later change must show in the key.
    fn settled(&self, stat: &StatKey) -> bool {
        let last = stat.mtime_ns.max(stat.ctime_ns) as i128;
        last <= self.began - SETTLE_NS
    }

    fn changed(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// SHA-256 of `path`: from the index when its stat is unchanged (and not `verify`), else re-read.
    pub fn digest(&self, path: &Path, verify: bool) -> io::Result<String> {
        let meta = fs::metadata(path)?;
        self.digest_known(path, StatKey::of(&meta), verify, || File::open(path))
    }

    /// SHA-256 of the file at `path` whose stat the caller already has: from the
    /// index when it matches (and not `verify`), else read through `open`.
    pub fn digest_known(
        &self,
        path: &Path,
        stat: StatKey,
        verify: bool,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<String> {
        if let (false, Some(key)) = (verify, path.to_str()) {
            if let Some(e) = self.entries().files.get(key) {
                if e.stat == stat {
                    return Ok(to_hex(&e.sha256));
                }
            }
        }
        let sha256 = sha256_reader(open()?)?.0;
        self.remember(path, stat, &sha256);
        Ok(sha256)
    }

    pub fn remember(&self, path: &Path, stat: StatKey, sha256: &str) {
        let (Some(key), true) = (path.to_str(), self.settled(&stat)) else {
            return;
        };
        let mut raw = [0u8; 32];
        if hex::decode_to_slice(sha256, &mut raw).is_err() {
            return;
        }
        self.entries()
            .files
            .insert(key.to_string(), Entry { stat, sha256: raw });
        self.changed();
    }

    /// The bytes remembered for the file at `path` under `stat` (not with `verify`).
    pub fn blob(&self, path: &Path, stat: &StatKey, verify: bool) -> Option<Vec<u8>> {
        if verify {
            return None;
        }
        let e = self.entries();
        let b = e.blobs.get(path.to_str()?)?;
        (b.stat == *stat).then(|| b.bytes.clone())
    }

    /// Remember `bytes` for the file at `path` under `stat` (once settled).
    pub fn remember_blob(&self, path: &Path, stat: StatKey, bytes: Vec<u8>) {
        let (Some(key), true) = (path.to_str(), self.settled(&stat)) else {
            return;
        };
        self.entries()
            .blobs
            .insert(key.to_string(), Blob { stat, bytes });
        self.changed();
    }

    fn remembered_listing(&self, path: &str, key: &StatKey) -> Option<Names> {
        let e = self.entries();
        e.dirs
            .get(path)
            .filter(|l| l.stat == *key)
            .map(|l| l.names.clone())
    }

    fn remember_listing(&self, path: String, key: StatKey, names: &Names) {
        if !self.settled(&key) {
            return;
        }
        self.entries().dirs.insert(
            path,
            Listing {
                stat: key,
                names: names.clone(),
            },
        );
        self.changed();
    }

    /// The names and kinds in the directory `dir` whose own metadata is
    /// `stat`: remembered when its key is unchanged (and not `verify`), else
    /// read from the directory (and remembered once settled, under the key of
    /// what was opened).
    pub fn listing(&self, dir: &DirAt, stat: &Stat, verify: bool) -> io::Result<Names> {
        let path = dir.path();
        let path = path.to_str();
        if let (false, Some(p)) = (verify, path) {
            if let Some(names) = self.remembered_listing(p, &StatKey::from_stat(stat)) {
                return Ok(names);
            }
        }
        let mut opened = dir.open()?;
        let key = StatKey::from_stat(&opened.stat(Path::new(""))?);
        let names = Names::new(&opened.names()?);
        if let Some(p) = path {
            self.remember_listing(p.to_string(), key, &names);
        }
        Ok(names)
    }

    /// The entries of the directory `dir` (whose own metadata is `stat`)
    /// with their metadata, in name order, the names from
    /// [`StatIndex::listing`]: one `fstatat` per entry when nothing was added
    /// or removed, and nothing opened.
    pub fn entries_stat(
        &self,
        dir: &DirAt,
        stat: &Stat,
        verify: bool,
        skip: impl Fn(&OsStr) -> bool,
    ) -> io::Result<Vec<(OsString, Stat)>> {
        let names = self.listing(dir, stat, verify)?;
        let kept: Vec<&OsStr> = names.iter().map(|(n, _)| n).filter(|n| !skip(n)).collect();
        let out = dir.stat_names(kept.iter().copied());
        if out.len() < kept.len() {
            // a remembered name is gone although the key did not change: list afresh
            let fresh = dir.names()?;
            return Ok(dir.stat_names(
                fresh
                    .iter()
                    .map(|(n, _)| n.as_os_str())
                    .filter(|n| !skip(n)),
            ));
        }
        Ok(out)
    }

    /// Persist when something changed (atomically; the index lives in the state dir).
    pub fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let mut bytes = MAGIC.to_vec();
        bytes.extend(postcard::to_stdvec(&*self.entries()).map_err(io::Error::other)?);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::other("the stat index has no directory"));
        };
        super::Beneath::open(dir)?.write_atomic(Path::new(name), &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_matches_the_hex_crate() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&bytes), hex::encode(&bytes));
    }

    #[test]
    fn known_digest() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_reader(&b"abc"[..]).unwrap().1, 3);
    }

    #[test]
    fn index_rehashes_after_change() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "one").unwrap();
        let idx = StatIndex::load(&d.path().join("idx.json"));
        let a = idx.digest(&f, false).unwrap();
        fs::write(&f, "two").unwrap();
        let b = idx.digest(&f, false).unwrap();
        assert_ne!(a, b);
        assert_eq!(b, sha256_bytes(b"two"));
        idx.save().unwrap();
        let again = StatIndex::load(&d.path().join("idx.json"));
        assert_eq!(again.digest(&f, false).unwrap(), b);
    }

    fn key(at_ns: i64) -> StatKey {
        StatKey {
            size: 3,
            ino: 7,
            mtime_ns: at_ns,
            ctime_ns: at_ns,
        }
    }

    /// The racily-clean rule: a digest taken under a stat key that changed
    /// within the settle time is used once, never remembered; an older one
    /// is remembered, survives a save and load, and is trusted after.
    #[test]
    fn only_settled_keys_are_remembered() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("idx");
        let f = d.path().join("f");
        let opens = std::cell::Cell::new(0);
        let open = || {
            opens.set(opens.get() + 1);
            Ok(File::open(d.path().join("content")).unwrap())
        };
        fs::write(d.path().join("content"), "abc").unwrap();
        let now = now_ns() as i64;
        let fresh = key(now);
        let old = key(now - 10_000_000_000);

        let idx = StatIndex::load(&path);
        idx.digest_known(&f, fresh, false, open).unwrap();
        idx.digest_known(&f, fresh, false, open).unwrap();
        assert_eq!(opens.get(), 2, "a fresh key is read every time");
        idx.digest_known(&f, old, false, open).unwrap();
        idx.save().unwrap();

        let idx = StatIndex::load(&path);
        let sha = idx.digest_known(&f, old, false, open).unwrap();
        assert_eq!(opens.get(), 3, "a settled key is remembered across runs");
        assert_eq!(sha, sha256_bytes(b"abc"));
        idx.digest_known(&f, old, true, open).unwrap();
        assert_eq!(opens.get(), 4, "--verify reads regardless");
        idx.digest_known(&f, key(now - 9_000_000_000), false, open)
            .unwrap();
        assert_eq!(opens.get(), 5, "another key is read");
    }

    /// An index in another format (or garbage) is an empty index, not an error.
    #[test]
    fn a_foreign_index_file_is_an_empty_index() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("idx");
        fs::write(&path, b"{\"/x\": {\"stat\": 1}}").unwrap();
        let idx = StatIndex::load(&path);
        let opened = std::cell::Cell::new(false);
        fs::write(d.path().join("content"), "abc").unwrap();
        let sha = idx
            .digest_known(&d.path().join("f"), key(0), false, || {
                opened.set(true);
                File::open(d.path().join("content"))
            })
            .unwrap();
        assert!(opened.get());
        assert_eq!(sha, sha256_bytes(b"abc"));
    }
}
