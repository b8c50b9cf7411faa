//! The state dir: lock, journal, download cache, stat index, the roots
//! reconcile has published into, and the record of the last apply.
//!
//! Nothing in it is trusted blindly: it is created 0700; an existing one must
//! belong to the user running reconcile and be writable by no one else (like
//! ssh's StrictModes), and no directory above it may be writable by others
//! without the sticky bit; its files are opened beneath it without following
//! a symlink.

pub mod candidates;
pub mod journal;
pub mod lock;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsops::Beneath;

const ROOTS: &str = "roots.json";
const LAST_APPLY: &str = "last-apply.json";
pub const LOCK: &str = "lock";
pub const JOURNAL: &str = "journal.jsonl";

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

/// Largest state file read (roots, last apply, stat index).
const MAX_STATE_FILE: u64 = 256 << 20;

impl StateDir {
    /// The state dir at `root`, created if needed (only mutating commands and `plan` call this,
    /// and only once the file is valid), and checked.
    pub fn create(root: &Path) -> Result<Self> {
        if fs::symlink_metadata(root).is_err() {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            use std::os::unix::fs::DirBuilderExt;
            match fs::DirBuilder::new().mode(0o700).create(root) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::io(root, e))
                }
                _ => {}
            }
        }
        let state = StateDir {
            root: root.to_path_buf(),
        };
        let dir = state.open()?;
        dir.create_dir_all(Path::new("cache/sha256"), 0o700)
            .map_err(|e| Error::io(root.join("cache"), e))?;
        Ok(state)
    }

    /// The state dir at `root` without creating anything (`status`).
    pub fn existing(root: &Path) -> Self {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    /// The state dir, opened and checked: ours, writable by no one else, and
    /// not below a directory others could swap it in.
    pub fn open(&self) -> Result<Beneath> {
        let dir = Beneath::open(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let me = nix::unistd::geteuid().as_raw();
        let refuse = |reason: String| Error::State {
            path: self.root.clone(),
            reason,
        };
        use crate::fsops::Exposed;
        match crate::fsops::check_private(&self.root, &dir, &[me])
            .map_err(|e| Error::io(&self.root, e))?
        {
            Ok(()) => {}
            Err(Exposed::Owner(uid)) => return Err(refuse(format!(
                "it belongs to uid {uid}, not to uid {me} running reconcile, who keeps its lock and journal there; \
                 chown it, or set settings.state_dir to a directory of your own"
            ))),
            Err(Exposed::Writable(mode)) => return Err(refuse(format!(
                "it is writable by others (mode {mode:o}); `chmod go-w` it (reconcile makes it 0700)"
            ))),
            Err(Exposed::Ancestor(parent)) => return Err(refuse(format!(
                "{} above it is writable by everyone without the sticky bit: anyone could put their own state dir in its place",
                parent.display()
            ))),
        }
        Ok(dir)
    }

    /// Read a state file (no symlink followed); None when it is missing or unreadable.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        Beneath::open(&self.root)
            .ok()?
            .read(Path::new(name), MAX_STATE_FILE)
            .ok()
    }

    /// Write a state file atomically (no symlink followed).
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(name);
        self.open()?
            .write_atomic(Path::new(name), bytes, 0o600)
            .map_err(|e| Error::io(&path, e))
    }

    /// `tmp/` in the state dir (0700), for private copies of what is being
    /// installed (a send stream checked before it is received). Copies a
    /// killed run left behind (their pid gone) are removed here.
    pub fn tmp_dir(&self) -> Result<PathBuf> {
        let dir = self.open()?;
        dir.create_dir_all(Path::new("tmp"), 0o700)
            .map_err(|e| Error::io(self.root.join("tmp"), e))?;
        let tmp = dir
            .open_dir(Path::new("tmp"))
            .map_err(|e| Error::io(self.root.join("tmp"), e))?;
        for (name, _) in tmp.entries().unwrap_or_default() {
            let n = name.to_string_lossy();
            let pid = n.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| {
                p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists()
            }) {
                let _ = tmp.remove_file(Path::new(&name));
            }
        }
        Ok(self.root.join("tmp"))
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
        self.root.join("statindex.bin")
    }
    pub fn last_apply_path(&self) -> PathBuf {
        self.root.join(LAST_APPLY)
    }
    /// Booted snapshots of disk machines (`fresh = "restore"`): a frozen
    /// overlay and a saved VM state per machine revision and VM settings.
    pub fn booted_dir(&self) -> PathBuf {
        self.root.join("booted")
    }
    /// Where a VM outside a test run (a bootstrap, `exec`, `spawn`) writes `qemu.log`.
    pub fn vm_log_dir(&self, what: &str) -> PathBuf {
        self.root.join("logs").join(what)
    }

    /// Directories reconcile has published objects of each kind into, so that
    /// objects whose declaration disappeared can still be found and pruned.
    pub fn roots(&self) -> Roots {
        self.read_file(ROOTS)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_roots(&self, roots: &Roots) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(roots).expect("roots serialise");
        self.write_file(ROOTS, &bytes)
    }

    pub fn last_apply(&self) -> Option<LastApply> {
        self.read_file(LAST_APPLY)
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn save_last_apply(&self, a: &LastApply) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(a).expect("last apply serialises");
        self.write_file(LAST_APPLY, &bytes)
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
