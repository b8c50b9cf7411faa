//! Test runs on disk: `<runs>/<UTC time>-<pid>/`, and `latest` pointing at
//! the last one that finished. A run holds a shared `flock(2)` on its own
//! directory while it runs (the kernel drops it when the process dies);
//! pruning keeps the newest `keep_runs` runs, never removes the one
//! `latest` names nor one whose lock is held, and leaves alone anything in
//! the directory that is not a run's.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Runs kept by default (`[settings] keep_runs`).
pub const DEFAULT_KEEP_RUNS: u32 = 20;

/// Held while a run runs: pruning in another process passes it by.
pub struct InUse {
    _lock: Flock<File>,
}

/// Mark `run_dir` in use until the returned guard is dropped.
pub fn hold(run_dir: &Path) -> io::Result<InUse> {
    let dir = File::open(run_dir)?;
    let lock = Flock::lock(dir, FlockArg::LockShared).map_err(|(_, e)| io::Error::from(e))?;
    Ok(InUse { _lock: lock })
}

/// Whether `name` is a run's directory name: `YYYYMMDDTHHMMSSZ-<pid>`.
fn is_run(name: &str) -> bool {
    let Some((stamp, pid)) = name.split_once('-') else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
        && !pid.is_empty()
        && pid.bytes().all(|c| c.is_ascii_digit())
}

/// Remove the runs under `runs_dir` beyond the newest `keep`, except the
/// one `latest` names and those in use; the removed ones, oldest first.
pub fn prune(runs_dir: &Path, keep: usize) -> io::Result<Vec<PathBuf>> {
    let latest = std::fs::read_link(runs_dir.join("latest"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut runs: Vec<String> = std::fs::read_dir(runs_dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_run(n))
        .collect();
    // newest first: the stamp sorts as the time
    runs.sort_by(|a, b| b.cmp(a));
    let mut removed = Vec::new();
    for name in runs.into_iter().skip(keep) {
        if latest.as_deref() == Some(name.as_str()) {
            continue;
        }
        let path = runs_dir.join(&name);
        let Ok(dir) = File::open(&path) else { continue };
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            // removed while holding it: no run can start using it meanwhile
            Ok(_held) => {
                std::fs::remove_dir_all(&path)?;
                removed.push(path);
            }
            Err((_, Errno::EWOULDBLOCK)) => {}
            Err((_, e)) => return Err(io::Error::from(e)),
        }
    }
    removed.reverse();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reconciles_run_names_are_runs() {
        assert!(is_run("20261204T191602Z-15541"));
        assert!(!is_run("latest"));
        assert!(!is_run("20261204T191602Z"));
        assert!(!is_run("2026120xT191602Z-1"));
        assert!(!is_run("20261204T191602Z-"));
        assert!(!is_run("notes-1"));
    }

    #[test]
    fn prune_keeps_the_newest_latest_and_runs_in_use() {
        let t = tempfile::tempdir().unwrap();
        let names: Vec<String> = (1..=6).map(|i| format!("20261204T10000{i}Z-{i}")).collect();
        for n in &names {
            std::fs::create_dir(t.path().join(n)).unwrap();
            std::fs::write(t.path().join(n).join("report.json"), "{}").unwrap();
        }
        std::fs::create_dir(t.path().join("mine")).unwrap();
        // latest names the oldest; run 2 is running
        std::os::unix::fs::symlink(&names[0], t.path().join("latest")).unwrap();
        let _running = hold(&t.path().join(&names[1])).unwrap();
        let removed = prune(t.path(), 2).unwrap();
        let removed: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(removed, vec![names[2].clone(), names[3].clone()]);
        for kept in [&names[0], &names[1], &names[4], &names[5]] {
            assert!(t.path().join(kept).join("report.json").exists(), "{kept}");
        }
        assert!(t.path().join("mine").is_dir(), "not a run: left alone");
        assert!(t.path().join("latest").exists());
    }
}
