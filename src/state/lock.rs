//! One apply at a time per state dir: `flock(2)` on `state_dir/lock`, released
//! by the kernel when the holder dies. The holder writes who it is into the
//! file so a waiting command can say who holds it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::StateDir;
use crate::error::{Error, Result};

/// Held while applying; dropping it releases the lock.
pub struct ApplyLock {
    flock: Flock<File>,
}

/// Released: the holder's line is cleared first, so the file never names a
/// process that has finished (a holder killed outright leaves its line, but
/// the kernel freed the lock and the next holder overwrites it).
impl Drop for ApplyLock {
    fn drop(&mut self) {
        let _ = self.flock.set_len(0);
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    pid: u32,
    host: String,
    command: String,
    started: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} running `{}` since {}",
            self.pid, self.host, self.command, self.started
        )
    }
}

/// Take the lock, waiting up to `timeout` (no wait when `None`).
pub fn acquire(state: &StateDir, command: &str, timeout: Option<Duration>) -> Result<ApplyLock> {
    let path = state.lock_path();
    let dir = state.open()?;
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let file = dir
            .open_rw(std::path::Path::new(super::LOCK), false, 0o600)
            .map_err(|e| Error::io(&path, e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut flock) => {
                let me = Holder {
                    pid: std::process::id(),
                    host: crate::process::identity::kernel_hostname(),
                    command: command.to_string(),
                    started: super::now_rfc3339(),
                };
                let text = serde_json::to_string(&me).expect("holder serialises");
                flock.set_len(0).map_err(|e| Error::io(&path, e))?;
                flock.rewind().map_err(|e| Error::io(&path, e))?;
                flock
                    .write_all(text.as_bytes())
                    .map_err(|e| Error::io(&path, e))?;
                return Ok(ApplyLock { flock });
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                if deadline.is_some_and(|d| Instant::now() < d) {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = serde_json::from_str::<Holder>(&text)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|_| "holder unknown".to_string());
                return Err(Error::LockHeld {
                    holder,
                    waited: timeout,
                });
            }
            Err((_, e)) => return Err(Error::io(&path, e.into())),
        }
    }
}
