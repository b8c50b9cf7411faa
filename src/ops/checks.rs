//! `checks`: log files scanned with the built-in and declared console checks.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use crate::harness::checks::Hit;

use crate::config::model::{Check, Scope};
use crate::error::{Error, Result};
use crate::harness::checks;

/// One log's hits, in log order.
#[derive(Debug, Serialize)]
pub struct Scanned {
    pub file: PathBuf,
    pub hits: Vec<Hit>,
}

/// What `checks` found (and `checks --json` prints).
#[derive(Debug, Serialize)]
pub struct Found {
    pub format_version: u32,
    pub logs: Vec<Scanned>,
    /// A fail or fatal hit anywhere.
    pub failing: bool,
}

/// Scan `logs` with the built-in checks and `declared`, those of `scope`.
pub fn scan(
    declared: &std::collections::BTreeMap<String, Check>,
    scope: Scope,
    logs: &[PathBuf],
) -> Result<Found> {
    let all = checks::all(declared);
    let mut found = Found {
        format_version: 1,
        logs: Vec::new(),
        failing: false,
    };
    for log in logs {
        let f = std::fs::File::open(log).map_err(|e| Error::io(log, e))?;
        let mut hits = checks::scan_reader(&all, scope, BufReader::with_capacity(1 << 20, f))
            .map_err(|e| Error::io(log, e))?;
        // in log order, as a reader goes through the log
        hits.sort_by_key(|h| h.line);
        found.failing |= checks::failing(&hits);
        found.logs.push(Scanned {
            file: log.clone(),
            hits,
        });
    }
    Ok(found)
}

/// The `[check.*]` of a desired-state file.
pub fn declared_in(
    file: &Path,
    opts: crate::config::LoadOptions,
) -> Result<std::collections::BTreeMap<String, Check>> {
    Ok(crate::config::load_with(file, opts)?.model.check)
}
