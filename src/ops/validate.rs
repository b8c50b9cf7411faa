//! `validate`: parse and check the file; every problem as a located diagnostic.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{self, LoadOptions};
use crate::diagnostic::{Diagnostic, DiagnosticRecord};
use crate::error::{Error, Result};

/// The file is valid (what was read), or its problems.
pub enum Validated {
    Valid {
        path: PathBuf,
        files: usize,
        digest: String,
    },
    /// The file (absolute, as when it is valid) and its problems.
    Invalid(PathBuf, Vec<Diagnostic>),
}

/// What `validate --json` prints.
#[derive(Serialize)]
pub struct ValidationDoc<'a> {
    pub format_version: u32,
    pub valid: bool,
    pub file: &'a Path,
    pub diagnostics: Vec<DiagnosticRecord<'a>>,
}

pub fn validate(file: &Path, opts: LoadOptions) -> Result<Validated> {
    match config::load_with(file, opts) {
        Ok(d) => Ok(Validated::Valid {
            path: d.path,
            files: d.files.len(),
            digest: d.digest,
        }),
        Err(Error::Invalid(diags)) => Ok(Validated::Invalid(
            std::path::absolute(file).map_err(|e| Error::io(file, e))?,
            diags,
        )),
        Err(e) => Err(e),
    }
}
