//! Running commands for bootstraps and tests: on the host (`host`) or inside a
//! root filesystem in new namespaces (`namespace`). Output is streamed to the
//! caller as it arrives; a timeout kills everything the command started.

pub mod host;
pub mod namespace;

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub argv: Vec<String>,
    /// Added to the environment.
    pub env: Vec<(String, String)>,
    /// Working directory (inside the root for `namespace`).
    pub cwd: Option<PathBuf>,
    pub timeout: Option<Duration>,
    /// Set from elsewhere (a fatal console check) to kill the command and everything it started.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Like `stop`, shared by every command of a run (Ctrl-C).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signalled(i32),
    /// Killed (with everything it started) when the timeout passed.
    TimedOut,
    /// Killed (with everything it started) because `Invocation::stop` was set.
    Stopped,
}

impl Outcome {
    pub fn success(self) -> bool {
        self == Outcome::Exited(0)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(c) => write!(f, "exit status {c}"),
            Outcome::Signalled(s) => write!(f, "killed by signal {s}"),
            Outcome::TimedOut => write!(f, "timed out (killed with everything it started)"),
            Outcome::Stopped => write!(f, "stopped (killed with everything it started)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: Outcome,
    pub duration: Duration,
}

pub trait Executor {
    fn run(
        &self,
        inv: &Invocation,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> io::Result<Finished>;
}

/// Pump a spawned child's stdout and stderr to `on_output` until it exits or
/// the timeout passes; `kill` tears down everything it started. One thread,
/// `poll(2)` on both pipes: no helper threads per command.
pub(crate) fn supervise(
    mut child: Child,
    timeout: Option<Duration>,
    stop: [Option<&std::sync::atomic::AtomicBool>; 2],
    kill: &dyn Fn(&mut Child),
    on_output: &mut dyn FnMut(Stream, &[u8]),
) -> io::Result<Finished> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let started = Instant::now();
    let mut pipes: Vec<(Stream, Box<dyn ReadFd>)> = Vec::new();
    if let Some(p) = child.stdout.take() {
        pipes.push((Stream::Stdout, Box::new(p)));
    }
    if let Some(p) = child.stderr.take() {
        pipes.push((Stream::Stderr, Box::new(p)));
    }
    let deadline = timeout.map(|t| started + t);
    let (mut timed_out, mut stopped, mut status) = (false, false, None);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if !pipes.is_empty() {
            let wait = deadline.map_or(Duration::from_millis(50), |d| {
                d.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50))
            });
            let ready: Vec<bool> = {
                let mut fds: Vec<PollFd> = pipes
                    .iter()
                    .map(|(_, p)| PollFd::new(p.fd(), PollFlags::POLLIN))
                    .collect();
                match poll(
                    &mut fds,
                    PollTimeout::from(wait.as_millis().min(u16::MAX as u128) as u16),
                ) {
                    Ok(_) => fds
                        .iter()
                        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                        .collect(),
                    Err(nix::errno::Errno::EINTR) => vec![false; pipes.len()],
                    Err(e) => return Err(e.into()),
                }
            };
            let mut closed = Vec::new();
            for (i, r) in ready.iter().enumerate() {
                if !r {
                    continue;
                }
                let (stream, pipe) = &mut pipes[i];
                match pipe.read(&mut buf) {
                    Ok(0) => closed.push(i),
                    Ok(n) => on_output(*stream, &buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => closed.push(i),
                }
            }
            for i in closed.into_iter().rev() {
                pipes.remove(i);
            }
        }
        if status.is_none() {
            if let Some(s) = child.try_wait()? {
                status = Some(s);
                // whatever the command left running is killed, so its pipes close
                kill(&mut child);
            }
        }
        if status.is_some() && pipes.is_empty() {
            break;
        }
        if status.is_none()
            && stop
                .iter()
                .flatten()
                .any(|s| s.load(std::sync::atomic::Ordering::SeqCst))
        {
            stopped = true;
            kill(&mut child);
            status = Some(child.wait()?);
        }
        if status.is_none() && deadline.is_some_and(|d| Instant::now() >= d) {
            timed_out = true;
            kill(&mut child);
            status = Some(child.wait()?);
        }
        if pipes.is_empty() && status.is_none() {
            status = Some(child.wait()?);
        }
    }
    use std::os::unix::process::ExitStatusExt;
    let status = status.expect("child waited");
    let outcome = if timed_out {
        Outcome::TimedOut
    } else if stopped {
        Outcome::Stopped
    } else if let Some(c) = status.code() {
        Outcome::Exited(c)
    } else {
        Outcome::Signalled(status.signal().unwrap_or(0))
    };
    Ok(Finished {
        outcome,
        duration: started.elapsed(),
    })
}

/// A pipe we can both poll and read.
trait ReadFd: Read {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl ReadFd for std::process::ChildStdout {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

impl ReadFd for std::process::ChildStderr {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}
