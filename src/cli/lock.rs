use std::collections::BTreeMap;

use super::{Cli, LockArgs};
use crate::config::lockfile::{self, Lockfile, Pin};
use crate::config::{self, LoadOptions};
use crate::error::{exit, Error, Result};
use crate::fsops::{self, digest::StatIndex};
use crate::output::Printer;
use crate::source::Fetcher;
use crate::state::{lock, StateDir};

pub fn run(cli: &Cli, a: &LockArgs, p: &Printer) -> Result<i32> {
    let desired = config::load_with(
        &cli.file,
        LoadOptions {
            allow_unpinned: true,
            all_hosts: true,
            ..Default::default()
        },
    )?;
    let state = StateDir::create(&desired.state_dir)?;
    let _lock = lock::acquire(&state, "reconcile lock", None)?;
    let index = StatIndex::load(&state.stat_index_path());
    let fetcher = Fetcher::new(
        state.cache_dir(),
        &index,
        &desired.lock,
        p.progress(),
        false,
    );
    let mut pins: BTreeMap<String, Pin> = BTreeMap::new();
    for (addr, s) in desired.sources() {
        let Some(url) = s.url() else { continue };
        if pins.contains_key(url) {
            continue;
        }
        let pinned = desired.lock.sha256_for(url);
        let inline = s.sha256.as_deref().map(str::to_ascii_lowercase);
        let sha = match (pinned, &inline) {
            (Some(pin), None) if !a.update => pin.to_string(),
            (Some(pin), Some(i)) if !a.update && pin == i => pin.to_string(),
            _ => {
                p.info(&format!("fetching {url} for {addr}"));
                fetcher.fetch_url(url, inline.as_deref())?.1
            }
        };
        pins.insert(url.to_string(), Pin { sha256: sha });
    }
    let _ = index.save();
    let path = lockfile::path_for(&desired.path);
    if pins == desired.lock.pins {
        p.out(&format!(
            "{} is up to date ({} pin(s)).",
            config::display_name(&path),
            pins.len()
        ));
        return Ok(exit::OK);
    }
    fsops::write_atomic(&path, Lockfile::render(&pins).as_bytes())
        .map_err(|e| Error::io(&path, e))?;
    p.out(&format!(
        "Wrote {} ({} pin(s)).",
        config::display_name(&path),
        pins.len()
    ));
    Ok(exit::OK)
}
