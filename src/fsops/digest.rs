//! Content digests. Hashing is streamed (never a whole file in memory); a stat
//! index remembers the digest of a file together with its size, inode, mtime
//! and ctime, so an unchanged file is never re-read. `--verify` bypasses it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    Ok((hex::encode(h.finalize()), n))
}

pub fn sha256_file(path: &Path) -> io::Result<String> {
    Ok(sha256_reader(File::open(path)?)?.0)
}

/// The first 12 hex digits, for messages.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
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
    sha256: String,
}

/// Digests of files outside managed objects (local sources), persisted in the state dir.
#[derive(Debug, Default)]
pub struct StatIndex {
    path: Option<PathBuf>,
    /// Read from `path` on first use: a plan that needs no local digest never parses it.
    entries: std::sync::OnceLock<Mutex<HashMap<PathBuf, Entry>>>,
    dirty: Mutex<bool>,
}

impl StatIndex {
    /// Load from `path`; a missing or unreadable index is an empty one (it is only a cache).
    pub fn load(path: &Path) -> Self {
        StatIndex {
            path: Some(path.to_path_buf()),
            entries: std::sync::OnceLock::new(),
            dirty: Mutex::new(false),
        }
    }

    fn entries(&self) -> &Mutex<HashMap<PathBuf, Entry>> {
        self.entries.get_or_init(|| {
            // read beneath its directory, never through a symlink
            let entries = self
                .path
                .as_ref()
                .and_then(|p| {
                    let dir = super::Beneath::open(p.parent()?).ok()?;
                    dir.read(Path::new(p.file_name()?), 256 << 20).ok()
                })
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            Mutex::new(entries)
        })
    }

    /// An index that is never saved.
    pub fn ephemeral() -> Self {
        Self::default()
    }

    /// SHA-256 of `path`: from the index when its stat is unchanged (and not `verify`), else re-read.
    pub fn digest(&self, path: &Path, verify: bool) -> io::Result<String> {
        let meta = fs::metadata(path)?;
        let stat = StatKey::of(&meta);
        if !verify {
            if let Some(e) = self.entries().lock().unwrap().get(path) {
                if e.stat == stat {
                    return Ok(e.sha256.clone());
                }
            }
        }
        let sha256 = sha256_file(path)?;
        self.remember(path, stat, &sha256);
        Ok(sha256)
    }

    pub fn remember(&self, path: &Path, stat: StatKey, sha256: &str) {
        self.entries().lock().unwrap().insert(
            path.to_path_buf(),
            Entry {
                stat,
                sha256: sha256.to_string(),
            },
        );
        *self.dirty.lock().unwrap() = true;
    }

    /// Persist when something changed (atomically; the index lives in the state dir).
    pub fn save(&self) -> io::Result<()> {
        let (Some(path), true) = (&self.path, *self.dirty.lock().unwrap()) else {
            return Ok(());
        };
        let bytes =
            serde_json::to_vec(&*self.entries().lock().unwrap()).map_err(io::Error::other)?;
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
}
