//! Receipts: every directory reconcile publishes carries one, recording what it
//! came from, which transaction published it, and every file with its digest
//! and stat key (so a no-op observe never re-reads content).

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::io::Write;

use crate::error::{Error, Result};
use crate::fsops::beneath::{self, Beneath, DirAt};
use crate::fsops::digest::{StatIndex, StatKey};
use crate::fsops::is_staging_name;
use crate::source::archive::Written;

/// Name of the receipt every published directory carries; its `txn` tells recovery
/// which transaction published it.
pub const RECEIPT_NAME: &str = ".reconcile-receipt.json";

/// Largest receipt read (a tree of a million files fits).
const MAX_RECEIPT: u64 = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub kind: String,
    pub name: String,
    pub version: Option<String>,
    pub source: ReceiptSource,
    /// Transaction that published it (recovery compares this).
    pub txn: String,
    pub installed_at: String,
    pub reconcile_version: String,
    /// Kind-specific facts (a plugin's `bin`…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    pub files: Vec<FileRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptSource {
    pub location: String,
    pub sha256: String,
}

/// One entry of a published tree. Stored flat (no serde flatten or tagged
/// enum), because parsing receipts is on the hot path of every no-op plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FlatRecord", into = "FlatRecord")]
pub struct FileRecord {
    pub path: PathBuf,
    pub kind: EntryKind,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatRecord {
    path: PathBuf,
    #[serde(rename = "type")]
    kind: FlatType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stat: Option<StatKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FlatType {
    Dir,
    File,
    Symlink,
}

impl From<FlatRecord> for FileRecord {
    fn from(f: FlatRecord) -> Self {
        let kind = match f.kind {
            FlatType::Dir => EntryKind::Dir {
                mode: f.mode.unwrap_or(0o755),
            },
            FlatType::File => EntryKind::File {
                mode: f.mode.unwrap_or(0o644),
                sha256: f.sha256.unwrap_or_default(),
                stat: f.stat.unwrap_or(StatKey {
                    size: 0,
                    ino: 0,
                    mtime_ns: 0,
                    ctime_ns: 0,
                }),
            },
            FlatType::Symlink => EntryKind::Symlink {
                target: f.target.unwrap_or_default(),
            },
        };
        FileRecord { path: f.path, kind }
    }
}

impl From<FileRecord> for FlatRecord {
    fn from(r: FileRecord) -> Self {
        let mut f = FlatRecord {
            path: r.path,
            kind: FlatType::Dir,
            mode: None,
            sha256: None,
            stat: None,
            target: None,
        };
        match r.kind {
            EntryKind::Dir { mode } => f.mode = Some(mode),
            EntryKind::File { mode, sha256, stat } => {
                f.kind = FlatType::File;
                f.mode = Some(mode);
                f.sha256 = Some(sha256);
                f.stat = Some(stat);
            }
            EntryKind::Symlink { target } => {
                f.kind = FlatType::Symlink;
                f.target = Some(target);
            }
        }
        f
    }
}

/// A receipt as the stat index keeps it: postcard knows no optional or
/// skipped fields, so the fields are laid out plainly.
#[derive(Serialize, Deserialize)]
struct Indexed {
    /// Of the receipt file's bytes (the observation's fingerprint).
    sha256: String,
    receipt: IndexedReceipt,
}

#[derive(Serialize, Deserialize)]
struct IndexedReceipt {
    kind: String,
    name: String,
    version: Option<String>,
    source: (String, String),
    txn: String,
    installed_at: String,
    reconcile_version: String,
    facts: Vec<(String, String)>,
    files: Vec<(PathBuf, IndexedKind)>,
}

#[derive(Serialize, Deserialize)]
enum IndexedKind {
    Dir(u32),
    File(u32, String, StatKey),
    Symlink(PathBuf),
}

impl From<&Receipt> for IndexedReceipt {
    fn from(r: &Receipt) -> Self {
        IndexedReceipt {
            kind: r.kind.clone(),
            name: r.name.clone(),
            version: r.version.clone(),
            source: (r.source.location.clone(), r.source.sha256.clone()),
            txn: r.txn.clone(),
            installed_at: r.installed_at.clone(),
            reconcile_version: r.reconcile_version.clone(),
            facts: r
                .facts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            files: r
                .files
                .iter()
                .map(|f| {
                    let k = match &f.kind {
                        EntryKind::Dir { mode } => IndexedKind::Dir(*mode),
                        EntryKind::File { mode, sha256, stat } => {
                            IndexedKind::File(*mode, sha256.clone(), *stat)
                        }
                        EntryKind::Symlink { target } => IndexedKind::Symlink(target.clone()),
                    };
                    (f.path.clone(), k)
                })
                .collect(),
        }
    }
}

impl From<IndexedReceipt> for Receipt {
    fn from(r: IndexedReceipt) -> Self {
        Receipt {
            kind: r.kind,
            name: r.name,
            version: r.version,
            source: ReceiptSource {
                location: r.source.0,
                sha256: r.source.1,
            },
            txn: r.txn,
            installed_at: r.installed_at,
            reconcile_version: r.reconcile_version,
            facts: r.facts.into_iter().collect(),
            files: r
                .files
                .into_iter()
                .map(|(path, k)| FileRecord {
                    path,
                    kind: match k {
                        IndexedKind::Dir(mode) => EntryKind::Dir { mode },
                        IndexedKind::File(mode, sha256, stat) => {
                            EntryKind::File { mode, sha256, stat }
                        }
                        IndexedKind::Symlink(target) => EntryKind::Symlink { target },
                    },
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        sha256: String,
        stat: StatKey,
    },
    Symlink {
        target: PathBuf,
    },
}

/// How an installed tree differs from its receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub path: PathBuf,
    pub what: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.path.display(), self.what)
    }
}

impl Receipt {
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(RECEIPT_NAME)
    }

    /// The receipt of `dir`, or None when it has none (not ours) or it is unreadable.
    pub fn read(dir: &Path) -> Option<(Receipt, Vec<u8>)> {
        Self::read_in(&Beneath::open_existing_dir(dir).ok()??)
    }

    /// The receipt of an opened directory.
    pub fn read_in(dir: &Beneath) -> Option<(Receipt, Vec<u8>)> {
        let bytes = dir.read(Path::new(RECEIPT_NAME), MAX_RECEIPT).ok()?;
        serde_json::from_slice(&bytes).ok().map(|r| (r, bytes))
    }

    /// The receipt of the directory `dir` (whose own metadata is `dir_stat`)
    /// and the SHA-256 of its bytes: from the stat index while the directory's
    /// key is the one it was decoded under, else read and decoded. reconcile
    /// only ever replaces a receipt by renaming (a new directory is exchanged
    /// in), which changes the directory's key; an edit in place is seen by
    /// `--verify` or once the directory changes.
    pub fn read_indexed(
        dir: &DirAt,
        dir_stat: &beneath::Stat,
        index: &StatIndex,
        verify: bool,
    ) -> Option<(Receipt, String)> {
        let name = std::ffi::OsStr::new(RECEIPT_NAME);
        let path = dir.shown(name);
        let key = StatKey::from_stat(dir_stat);
        if let Some(bytes) = index.blob(&path, &key, verify) {
            if let Ok(c) = postcard::from_bytes::<Indexed>(&bytes) {
                return Some((c.receipt.into(), c.sha256));
            }
        }
        let (bytes, _) = dir.read_stat(name, MAX_RECEIPT).ok()?;
        let receipt: Receipt = serde_json::from_slice(&bytes).ok()?;
        let sha256 = crate::fsops::digest::sha256_bytes(&bytes);
        let indexed = Indexed {
            sha256: sha256.clone(),
            receipt: IndexedReceipt::from(&receipt),
        };
        // remembered only if the directory still has the key it had before the read
        if dir
            .stat()
            .ok()
            .is_some_and(|now| StatKey::from_stat(&now) == key)
        {
            if let Ok(b) = postcard::to_stdvec(&indexed) {
                index.remember_blob(&path, key, b);
            }
        }
        Some((receipt, sha256))
    }

    /// Write the receipt into a staged directory; one already there (an
    /// archive carrying a file of that name) is refused.
    pub fn write(&self, dir: &Beneath) -> Result<()> {
        let name = Path::new(RECEIPT_NAME);
        let bytes = serde_json::to_vec_pretty(self).expect("receipt serialises");
        let mut f = dir.create_file(name, 0o644).map_err(|e| {
            let e = if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "the source carries a file named {RECEIPT_NAME}, which reconcile writes"
                    ),
                )
            } else {
                e
            };
            Error::io(dir.shown(name), e)
        })?;
        f.write_all(&bytes)
            .map_err(|e| Error::io(dir.shown(name), e))
    }

    pub fn file_count(&self) -> usize {
        self.files
            .iter()
            .filter(|f| matches!(f.kind, EntryKind::File { .. }))
            .count()
    }
}

/// Record every entry of a staged tree (through its handle: nothing is
/// followed). Files whose digest was computed while writing them come from
/// `written`; others are hashed now.
pub fn record_tree(root: &Beneath, written: &Written) -> Result<Vec<FileRecord>> {
    let mut out = Vec::new();
    record_dir(root, Path::new(""), written, &mut out)?;
    Ok(out)
}

fn record_dir(
    root: &Beneath,
    rel: &Path,
    written: &Written,
    out: &mut Vec<FileRecord>,
) -> Result<()> {
    let dir = root
        .open_dir(rel)
        .map_err(|e| Error::io(root.shown(rel), e))?;
    for (name, kind) in dir.entries().map_err(|e| Error::io(dir.path(), e))? {
        if rel.as_os_str().is_empty() {
            let n = name.to_string_lossy();
            if n == RECEIPT_NAME || is_staging_name(&n) {
                continue;
            }
        }
        let r = rel.join(&name);
        let io = |e: std::io::Error| Error::io(root.shown(&r), e);
        let entry = match kind {
            beneath::Kind::Dir => EntryKind::Dir {
                mode: root.stat(&r).map_err(io)?.mode,
            },
            beneath::Kind::Symlink => EntryKind::Symlink {
                target: root.read_link(&r).map_err(io)?,
            },
            beneath::Kind::File => {
                let f = root.open_file(&r).map_err(io)?;
                let meta = f.metadata().map_err(io)?;
                let sha256 = match written.get(&r) {
                    Some(s) => s.clone(),
                    None => crate::fsops::digest::sha256_reader(&f).map_err(io)?.0,
                };
                EntryKind::File {
                    mode: meta.permissions().mode() & 0o7777,
                    sha256,
                    stat: StatKey::of(&meta),
                }
            }
            beneath::Kind::Other => {
                return Err(Error::Resource {
                    address: root.shown(&r).display().to_string(),
                    reason: "a device node, fifo or socket in a staged tree".into(),
                })
            }
        };
        out.push(FileRecord {
            path: r.clone(),
            kind: entry,
        });
        if kind == beneath::Kind::Dir {
            record_dir(root, &r, written, out)?;
        }
    }
    Ok(())
}

/// Compare an installed tree (opened as `root`) with its receipt. Unchanged
/// stat keys are trusted unless `verify`; otherwise the file is re-hashed.
/// Read the way `find` reads: each directory opened once, its entries stat
/// relative to it, nothing followed.
pub fn check_tree(
    root: &DirAt,
    root_stat: &beneath::Stat,
    receipt: &Receipt,
    index: &StatIndex,
    verify: bool,
) -> Result<Vec<Drift>> {
    let mut drift = Vec::new();
    // keyed by the path's bytes: compared with memcmp, not component by component
    let mut expected: BTreeMap<&[u8], (&Path, &EntryKind)> = receipt
        .files
        .iter()
        .map(|f| (f.path.as_os_str().as_bytes(), (f.path.as_path(), &f.kind)))
        .collect();
    check_dir(
        root,
        root_stat,
        Path::new(""),
        index,
        verify,
        &mut expected,
        &mut drift,
    )?;
    for (path, kind) in expected.into_values() {
        let what = match kind {
            EntryKind::Dir { .. } => "directory missing",
            _ => "missing",
        };
        drift.push(Drift {
            path: path.to_path_buf(),
            what: what.into(),
        });
    }
    drift.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(drift)
}

fn check_dir(
    dir: &DirAt,
    dir_stat: &beneath::Stat,
    rel: &Path,
    index: &StatIndex,
    verify: bool,
    expected: &mut BTreeMap<&[u8], (&Path, &EntryKind)>,
    drift: &mut Vec<Drift>,
) -> Result<()> {
    let top = rel.as_os_str().is_empty();
    let ignored =
        |n: &std::ffi::OsStr| top && (n == RECEIPT_NAME || n.to_str().is_some_and(is_staging_name));
    let entries = index
        .entries_stat(dir, dir_stat, verify, ignored)
        .map_err(|e| Error::io(dir.path(), e))?;
    for (name, st) in entries {
        let r = rel.join(&name);
        let n = name.as_os_str();
        let d = |what: String| Drift {
            path: r.clone(),
            what,
        };
        match (
            expected.remove(r.as_os_str().as_bytes()).map(|(_, k)| k),
            st.kind,
        ) {
            (None, _) => drift.push(d("is not part of the installed tree (extra)".into())),
            (Some(EntryKind::Dir { .. }), beneath::Kind::Dir) => {}
            (Some(EntryKind::Symlink { target }), beneath::Kind::Symlink) => {
                if dir.read_link(n).ok().as_deref() != Some(target.as_path()) {
                    drift.push(d("points elsewhere".into()));
                }
            }
            (Some(EntryKind::File { mode, sha256, stat }), beneath::Kind::File) => {
                let now = StatKey::from_stat(&st);
                if st.mode != *mode {
                    drift.push(d(format!("mode {:o} ≠ installed {mode:o}", st.mode)));
                } else if now.size != stat.size {
                    drift.push(d(format!(
                        "modified (size {} ≠ installed {})",
                        now.size, stat.size
                    )));
                } else if verify || now != *stat {
                    let f = dir.open_file(n).map_err(|e| Error::io(dir.shown(n), e))?;
                    let actual = crate::fsops::digest::sha256_reader(f)
                        .map_err(|e| Error::io(dir.shown(n), e))?
                        .0;
                    if actual != *sha256 {
                        drift.push(d(format!(
                            "modified (sha256 {} ≠ installed {})",
                            short(&actual),
                            short(sha256)
                        )));
                    }
                }
            }
            (Some(_), _) => drift.push(d("changed type".into())),
        }
        if st.kind == beneath::Kind::Dir {
            check_dir(&dir.join(n), &st, &r, index, verify, expected, drift)?;
        }
    }
    Ok(())
}

pub use crate::fsops::digest::short;
