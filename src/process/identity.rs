//! Who we are and who holds what: a process identity that survives pid
//! reuse (pid + start time), and this kernel's host name.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (/proc/PID/stat field 22).
    pub start_time: u64,
}

impl Owner {
    pub fn me() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_time: start_time(pid).unwrap_or(0),
        }
    }

    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// The start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The kernel's host name (lock holders, cloud run tags: who really runs).
pub fn kernel_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|| "localhost".into())
}
