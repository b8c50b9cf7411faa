//! Receipts: every directory reconcile publishes carries one, recording what it
//! came from, which transaction published it, and every file with its digest
//! and stat key (so a no-op observe never re-reads content).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: PathBuf,
    #[serde(flatten)]
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
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

    pub fn write(&self, dir: &Path) -> Result<()> {
        let p = Self::path_in(dir);
        let bytes = serde_json::to_vec_pretty(self).expect("receipt serialises");
        fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
    }

    pub fn file_count(&self) -> usize {
        self.files
            .iter()
            .filter(|f| matches!(f.kind, EntryKind::File { .. }))
            .count()
    }
}

/// Record every entry of a staged tree. Files whose digest was computed while
/// writing them come from `written`; others are hashed now.
pub fn record_tree(root: &Path, written: &Written) -> Result<Vec<FileRecord>> {
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut |rel, meta| {
        let full = root.join(rel);
        let mode = meta.permissions().mode() & 0o7777;
        let kind = if meta.is_dir() {
            EntryKind::Dir { mode }
        } else if meta.file_type().is_symlink() {
            EntryKind::Symlink {
                target: fs::read_link(&full).map_err(|e| Error::io(&full, e))?,
            }
        } else {
            let sha256 = match written.get(rel) {
                Some(s) => s.clone(),
                None => sha256_file(&full).map_err(|e| Error::io(&full, e))?,
            };
            EntryKind::File {
                mode,
                sha256,
                stat: StatKey::of(meta),
            }
        };
        out.push(FileRecord {
            path: rel.to_path_buf(),
            kind,
        });
        Ok(())
    })?;
    Ok(out)
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
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    entries.sort();
    for name in entries {
        let n = name.to_string_lossy();
        if rel.as_os_str().is_empty() && (n == RECEIPT_NAME || is_staging_name(&n)) {
            continue;
        }
        let r = rel.join(&name);
        let full = root.join(&r);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&full, e)),
        };
        f(&r, &meta)?;
        if meta.is_dir() {
            walk(root, &r, f)?;
        }
    }
    Ok(())
}

pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
