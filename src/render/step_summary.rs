//! GitHub Actions job summaries: when `GITHUB_STEP_SUMMARY` names a file,
//! `plan`, `apply` and `test` append their Markdown to it. GitHub shows at
//! most 1 MiB of it per step, so what would pass that is cut at a line
//! boundary, with a note saying so; nothing is written when the variable is
//! unset or empty.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The most a step summary may hold (GitHub's limit per step).
pub const LIMIT: u64 = 1 << 20;
const CUT_NOTE: &str =
    "\n> **Cut here:** a job step summary holds at most 1 MiB. The full output: run with `--format json`.\n";

/// Where the summary goes, from the environment.
pub fn target() -> Option<PathBuf> {
    std::env::var_os("GITHUB_STEP_SUMMARY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// What was appended: all of it, cut, or nothing (no room left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    All,
    Cut,
    Nothing,
}

/// Append `markdown` to the summary file at `path`, keeping the file within [`LIMIT`].
pub fn append_to(path: &Path, markdown: &str) -> std::io::Result<Appended> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let used = f.metadata()?.len();
    let room = LIMIT.saturating_sub(used) as usize;
    let mut text = String::with_capacity(markdown.len() + 2);
    text.push_str(markdown);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    if text.len() <= room {
        f.write_all(text.as_bytes())?;
        return Ok(Appended::All);
    }
    if room <= CUT_NOTE.len() {
        return Ok(Appended::Nothing);
    }
    // the longest run of whole lines that leaves room for the note
    let budget = room - CUT_NOTE.len();
    // a newline byte is never inside a multi-byte character: the cut is on a boundary
    let bytes = text.as_bytes();
    let cut = memchr::memrchr(b'\n', &bytes[..budget])
        .map(|i| i + 1)
        .unwrap_or(0);
    f.write_all(&bytes[..cut])?;
    f.write_all(CUT_NOTE.as_bytes())?;
    Ok(Appended::Cut)
}

/// Append to the step summary when there is one; a warning line to show, when something went wrong or was cut.
pub fn append(markdown: &str) -> Option<String> {
    let path = target()?;
    match append_to(&path, markdown) {
        Ok(Appended::All) => None,
        Ok(Appended::Cut) => Some(format!(
            "the step summary {} reached 1 MiB: what follows was cut",
            path.display()
        )),
        Ok(Appended::Nothing) => Some(format!(
            "the step summary {} is full (1 MiB): nothing appended",
            path.display()
        )),
        Err(e) => Some(format!(
            "cannot append to the step summary {}: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_never_passes_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.md");
        assert_eq!(append_to(&p, "# one").unwrap(), Appended::All);
        assert_eq!(append_to(&p, "# two\n").unwrap(), Appended::All);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "# one\n\n# two\n\n");
        let line = "x".repeat(99) + "\n";
        let big = line.repeat(12_000); // 1.2 MB
        assert_eq!(append_to(&p, &big).unwrap(), Appended::Cut);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.len() as u64 <= LIMIT, "{}", text.len());
        assert!(text.ends_with(CUT_NOTE));
        // whole lines only before the note
        let body = &text[..text.len() - CUT_NOTE.len()];
        assert!(body.ends_with('\n'));
        assert!(body.lines().skip(4).all(|l| l.len() == 99));
        // a full file takes no more than fits
        assert_ne!(append_to(&p, &big).unwrap(), Appended::All);
        assert!(std::fs::metadata(&p).unwrap().len() <= LIMIT);
        let full = dir.path().join("full.md");
        std::fs::write(&full, vec![b'x'; LIMIT as usize - 10]).unwrap();
        assert_eq!(
            append_to(&full, "# a plan that does not fit\n").unwrap(),
            Appended::Nothing
        );
        assert_eq!(std::fs::metadata(&full).unwrap().len(), LIMIT - 10);
    }
}
