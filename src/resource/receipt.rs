//! Receipts: every directory reconcile publishes carries one, recording what it
//! came from, which transaction published it, and every file with its digest
//! and stat key (so a no-op observe never re-reads content).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::io::Write;

use crate::error::{Error, Result};
use crate::fsops::beneath::{self, Beneath};
use crate::fsops::digest::{sha256_file, StatKey};
use crate::fsops::is_staging_name;
use crate::source::archive::Written;
use crate::state::journal::RECEIPT_NAME;

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
        let bytes = fs::read(Self::path_in(dir)).ok()?;
        serde_json::from_slice(&bytes).ok().map(|r| (r, bytes))
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

/// Compare an installed tree with its receipt. Unchanged stat keys are trusted
/// unless `verify`; otherwise the file is re-hashed.
pub fn check_tree(root: &Path, receipt: &Receipt, verify: bool) -> Result<Vec<Drift>> {
    let mut drift = Vec::new();
    let mut expected: BTreeMap<&Path, &EntryKind> = receipt
        .files
        .iter()
        .map(|f| (f.path.as_path(), &f.kind))
        .collect();
    walk(root, Path::new(""), &mut |rel, meta| {
        let full = root.join(rel);
        let d = |what: String| Drift {
            path: rel.to_path_buf(),
            what,
        };
        match expected.remove(rel) {
            None => drift.push(d("is not part of the installed tree (extra)".into())),
            Some(EntryKind::Dir { .. }) if meta.is_dir() => {}
            Some(EntryKind::Symlink { target }) if meta.file_type().is_symlink() => {
                if fs::read_link(&full).ok().as_deref() != Some(target.as_path()) {
                    drift.push(d("points elsewhere".into()));
                }
            }
            Some(EntryKind::File { mode, sha256, stat }) if meta.is_file() => {
                let now = StatKey::of(meta);
                let m = meta.permissions().mode() & 0o7777;
                if m != *mode {
                    drift.push(d(format!("mode {m:o} ≠ installed {mode:o}")));
                } else if now.size != stat.size {
                    drift.push(d(format!(
                        "modified (size {} ≠ installed {})",
                        now.size, stat.size
                    )));
                } else if verify || now != *stat {
                    let actual = sha256_file(&full).map_err(|e| Error::io(&full, e))?;
                    if actual != *sha256 {
                        drift.push(d(format!(
                            "modified (sha256 {} ≠ installed {})",
                            short(&actual),
                            short(sha256)
                        )));
                    }
                }
            }
            Some(_) => drift.push(d("changed type".into())),
        }
        Ok(())
    })?;
    for (path, kind) in expected {
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

/// Walk a tree in name order, skipping the receipt itself and staging leftovers.
fn walk(
    root: &Path,
    rel: &Path,
    f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<()>,
) -> Result<()> {
    let dir = root.join(rel);
    // DirEntry::metadata stats relative to the open directory (no path walk per file)
    let mut entries = Vec::new();
    for e in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let e = e.map_err(|e| Error::io(&dir, e))?;
        let name = e.file_name();
        if rel.as_os_str().is_empty() {
            let n = name.to_string_lossy();
            if n == RECEIPT_NAME || is_staging_name(&n) {
                continue;
            }
        }
        match e.metadata() {
            Ok(m) => entries.push((name, m)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::io(e.path(), err)),
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, meta) in entries {
        let r = rel.join(&name);
        f(&r, &meta)?;
        if meta.is_dir() {
            walk(root, &r, f)?;
        }
    }
    Ok(())
}

pub use crate::fsops::digest::short;
