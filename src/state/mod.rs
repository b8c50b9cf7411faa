//! The state dir: lock, journal, download cache, stat index, the roots
//! reconcile has published into, and the record of the last apply.

pub mod fault;
pub mod journal;
pub mod lock;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsops;

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// The state dir at `root`, created if needed (only mutating commands and `plan` call this,
    /// and only once the file is valid).
    pub fn create(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("cache")).map_err(|e| Error::io(root, e))?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// The state dir at `root` without creating anything (`status`).
    pub fn existing(root: &Path) -> Self {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }
    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal.jsonl")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
    pub fn stat_index_path(&self) -> PathBuf {
        self.root.join("statindex.json")
    }
    fn roots_path(&self) -> PathBuf {
        self.root.join("roots.json")
    }
    pub fn last_apply_path(&self) -> PathBuf {
        self.root.join("last-apply.json")
    }
    /// Where a VM outside a test run (a bootstrap, `exec`, `spawn`) writes `qemu.log`.
    pub fn vm_log_dir(&self, what: &str) -> PathBuf {
        self.root.join("logs").join(what)
    }

    /// Directories reconcile has published objects of each kind into, so that
    /// objects whose declaration disappeared can still be found and pruned.
    pub fn roots(&self) -> Roots {
        fs::read(self.roots_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_roots(&self, roots: &Roots) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(roots).expect("roots serialise");
        fsops::write_atomic(&self.roots_path(), &bytes).map_err(|e| Error::io(self.roots_path(), e))
    }

    pub fn last_apply(&self) -> Option<LastApply> {
        fs::read(self.last_apply_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn save_last_apply(&self, a: &LastApply) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(a).expect("last apply serialises");
        fsops::write_atomic(&self.last_apply_path(), &bytes)
            .map_err(|e| Error::io(self.last_apply_path(), e))
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roots {
    #[serde(flatten)]
    pub by_kind: BTreeMap<String, BTreeSet<PathBuf>>,
}

impl Roots {
    pub fn of(&self, kind: &str) -> impl Iterator<Item = &PathBuf> {
        self.by_kind.get(kind).into_iter().flatten()
    }
    pub fn add(&mut self, kind: &str, root: &Path) -> bool {
        self.by_kind
            .entry(kind.to_string())
            .or_default()
            .insert(root.to_path_buf())
    }
}

/// What the last apply did, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastApply {
    pub finished: String,
    pub desired_file: PathBuf,
    pub desired_sha256: String,
    pub changes: usize,
    pub duration_ms: u128,
    pub result: String,
}

/// Current UTC time, RFC 3339 with seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
