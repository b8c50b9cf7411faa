//! `lock`: pin the sha256 of every remote source (of every host) in
//! reconcile.lock, downloading what is not pinned yet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::lockfile::{self, Lockfile, Pin};
use crate::config::{self, LoadOptions};
use crate::error::{Error, Result};
use crate::fsops::{self, digest::StatIndex};
use crate::source::Fetcher;
use crate::state::{lock, StateDir};

/// What `lock` did.
pub struct Locked {
    pub path: PathBuf,
    pub pins: usize,
    /// False when the lock file already said all of it.
    pub written: bool,
}

/// Pin every remote source; `update` re-downloads and re-pins them all.
/// `fetching` hears each download (url, address).
pub fn lock(
    file: &Path,
    update: bool,
    progress: bool,
    fetching: &mut dyn FnMut(&str, &str),
) -> Result<Locked> {
    let desired = config::load_with(
        file,
        LoadOptions {
            allow_unpinned: true,
            all_hosts: true,
            ..Default::default()
        },
    )?;
    let state = StateDir::create(&desired.state_dir)?;
    let _lock = lock::acquire(&state, "reconcile lock", None)?;
    let index = StatIndex::load(&state.stat_index_path());
    let fetcher = Fetcher::new(state.cache_dir(), &index, &desired.lock, progress, false);
    let mut pins: BTreeMap<String, Pin> = BTreeMap::new();
    for (addr, s) in desired.sources() {
        let Some(url) = s.url() else { continue };
        if pins.contains_key(url) {
            continue;
        }
        let pinned = desired.lock.sha256_for(url);
        let inline = s.sha256.as_deref().map(str::to_ascii_lowercase);
        let sha = match (pinned, &inline) {
            (Some(pin), None) if !update => pin.to_string(),
            (Some(pin), Some(i)) if !update && pin == i => pin.to_string(),
            _ => {
                fetching(url, &addr);
                fetcher.fetch_url(url, inline.as_deref())?.1
            }
        };
        pins.insert(url.to_string(), Pin { sha256: sha });
    }
    let _ = index.save();
    let path = lockfile::path_for(&desired.path);
    let written = pins != desired.lock.pins;
    if written {
        fsops::write_atomic(&path, Lockfile::render(&pins).as_bytes())
            .map_err(|e| Error::io(&path, e))?;
    }
    Ok(Locked {
        path,
        pins: pins.len(),
        written,
    })
}
