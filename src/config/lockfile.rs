//! `reconcile.lock`: SHA-256 pins of remote sources, written by `reconcile lock`
//! beside the desired-state file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default)]
pub struct Lockfile {
    pub pins: BTreeMap<String, Pin>,
    /// The text as read (part of the desired-state digest).
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub sha256: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LockDoc {
    version: u32,
    #[serde(default)]
    source: BTreeMap<String, Pin>,
}

pub fn path_for(desired: &Path) -> PathBuf {
    desired.with_file_name("reconcile.lock")
}

impl Lockfile {
    /// A missing lock file is an empty one.
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::load_by(path, super::read_file)
    }

    /// [`Lockfile::load`], reading with `read` (beneath a checkout's root, say).
    pub fn load_by(
        path: &Path,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Self, String> {
        let text = match read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let doc: LockDoc =
            toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
        if doc.version != 1 {
            return Err(format!(
                "{}: unsupported lock file version {}",
                path.display(),
                doc.version
            ));
        }
        Ok(Self {
            pins: doc.source,
            text,
        })
    }

    pub fn sha256_for(&self, url: &str) -> Option<&str> {
        self.pins.get(url).map(|p| p.sha256.as_str())
    }

    pub fn render(pins: &BTreeMap<String, Pin>) -> String {
        let doc = LockDoc {
            version: 1,
            source: pins.clone(),
        };
        format!(
            "# Written by `reconcile lock`: SHA-256 pins of remote sources. Commit it; do not edit.\n{}",
            toml::to_string(&doc).expect("lock document serialises")
        )
    }
}
