//! `export`: a machine revision written as a `btrfs send` stream (full, or
//! incremental against another kept revision).

use std::path::{Path, PathBuf};

use crate::config::Desired;
use crate::error::{Error, Result};

/// `machine.NAME@REV` → (NAME, REV).
pub fn parse_revision(text: &str) -> Result<(String, u32)> {
    let usage = || Error::BadArgument(format!("`{text}`: name a revision as machine.NAME@REV"));
    let (name, rev) = text
        .strip_prefix("machine.")
        .and_then(|r| r.rsplit_once('@'))
        .ok_or_else(usage)?;
    Ok((name.to_string(), rev.parse().map_err(|_| usage())?))
}

/// Write revision `rev` of machine `name` (against `parent`) to `out`.
pub fn export(
    desired: &Desired,
    name: &str,
    rev: u32,
    parent: Option<u32>,
    out: &Path,
) -> Result<()> {
    let m = desired.machine(name)?;
    let layout = crate::store::MachineDir::new(&desired.model.volume[&m.volume], name);
    let refuse = |reason: String| Error::Resource {
        address: format!("machine.{name}"),
        reason,
    };
    if layout.backend()?.name() != "btrfs" {
        return Err(refuse(
            "its volume uses the dir backend: only a btrfs subvolume can be sent (put the volume on btrfs)".into(),
        ));
    }
    let entry = |r: u32| -> Result<PathBuf> {
        let path = layout.entry_path(&layout.rev_name(r));
        if !path.is_dir() {
            return Err(refuse(format!(
                "revision {r} is not kept here ({} is missing)",
                path.display()
            )));
        }
        Ok(path)
    };
    let subvolume = entry(rev)?;
    let parent = parent.map(entry).transpose()?;
    crate::store::send::export(&subvolume, parent.as_deref(), out)
        .map_err(|e| refuse(e.to_string()))
}
