//! Tests that are executables in a suite's `dir`, each with optional metadata
//! in a `# reconcile: {…}` header line (within its first ten lines). The
//! header is read like the file: typed, unknown keys refused, and a problem is
//! a diagnostic pointing at the header line — found by `validate`, not when
//! the test is about to run.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::model::{Expect, FailureClass, Test};
use crate::diagnostic::Diagnostic;

/// The header's keys: those of a test in the file, but `run` (the executable itself).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    distros: Vec<String>,
    #[serde(default)]
    platforms: Vec<String>,
    min_version: Option<String>,
    end_version: Option<String>,
    #[serde(default, with = "super::units::duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    expect: Expect,
    #[serde(default)]
    skip_checks: BTreeMap<String, String>,
    #[serde(default)]
    retries: BTreeMap<FailureClass, u32>,
}

/// Bytes of a test file searched for its header.
const HEADER_SCAN: usize = 4096;

/// The executable tests in `dir`, by name, or every problem with their headers.
pub fn read(dir: &Path) -> Result<Vec<(String, Test)>, Vec<Diagnostic>> {
    let whole = |what: String| {
        vec![Diagnostic::whole_file(
            &dir.display().to_string(),
            what,
            None,
        )]
    };
    let rd = std::fs::read_dir(dir)
        .map_err(|e| whole(format!("cannot read the suite's test directory: {e}")))?;
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for e in entries {
        let path = e.path();
        // a regular executable file (a symlink in a test dir is not followed)
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        match header(&path) {
            Ok(h) => out.push((
                name,
                Test {
                    run: vec![path.to_string_lossy().into_owned()],
                    expect: h.expect,
                    timeout: h.timeout,
                    tags: h.tags,
                    architectures: h.architectures,
                    distros: h.distros,
                    platforms: h.platforms,
                    min_version: h.min_version,
                    end_version: h.end_version,
                    skip_checks: h.skip_checks,
                    retries: h.retries,
                    ..Test::default()
                },
            )),
            Err(d) => problems.push(*d),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn header(path: &Path) -> Result<Header, Box<Diagnostic>> {
    use std::io::Read;
    let file = path.display().to_string();
    let mut head = Vec::with_capacity(HEADER_SCAN);
    std::fs::File::open(path)
        .and_then(|f| f.take(HEADER_SCAN as u64).read_to_end(&mut head))
        .map_err(|e| {
            Box::new(Diagnostic::whole_file(
                &file,
                format!("cannot read the test: {e}"),
                None,
            ))
        })?;
    let text = Arc::new(String::from_utf8_lossy(&head).into_owned());
    let mut offset = 0;
    for line in text.split_inclusive('\n').take(10) {
        let start = offset;
        offset += line.len();
        let Some(json) = line
            .trim_start_matches(['#', '/', ' '])
            .strip_prefix("reconcile:")
        else {
            continue;
        };
        let at = start..start + line.trim_end().len();
        let bad = |message: String, help: &str| {
            Box::new(Diagnostic::new(
                &file,
                &text,
                Some(at.clone()),
                message,
                "in this header",
                Some(help.to_string()),
            ))
        };
        let h: Header = serde_json::from_str(json.trim()).map_err(|e| {
            bad(
                format!("bad `# reconcile:` header: {e}"),
                "the header is JSON with the keys of a test in the file (tags, timeout, expect, retries…)",
            )
        })?;
        if h.timeout
            .is_some_and(|t| t.is_zero() || t > Duration::from_secs(30 * 24 * 3600))
        {
            return Err(bad(
                "bad `# reconcile:` header: a timeout must be more than 0 and at most 30 days"
                    .into(),
                "write e.g. \"timeout\": \"5m\"",
            ));
        }
        for m in h
            .expect
            .stdout
            .iter()
            .chain(&h.expect.stderr)
            .chain(&h.expect.console)
        {
            if let Err(e) = &m.parsed {
                return Err(bad(
                    format!(
                        "bad `# reconcile:` header: invalid matcher `{}`: {e}",
                        m.text
                    ),
                    "matchers are \"text\", \"!text\", \"/regex/\" or \"!/regex/\"",
                ));
            }
        }
        return Ok(h);
    }
    Ok(Header::default())
}
