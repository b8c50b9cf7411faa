//! Running commands for bootstraps and tests: on the host (`host`) or inside a
//! root filesystem in new namespaces (`namespace`). Output is streamed to the
//! caller as it arrives; a timeout kills everything the command started.

pub mod host;
pub mod namespace;

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::Child;
use std::sync::mpsc;
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
/// the timeout passes; `kill` tears down everything it started.
pub(crate) fn supervise(
    mut child: Child,
    timeout: Option<Duration>,
    stop: [Option<&std::sync::atomic::AtomicBool>; 2],
    kill: &dyn Fn(&mut Child),
    on_output: &mut dyn FnMut(Stream, &[u8]),
) -> io::Result<Finished> {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<(Stream, Vec<u8>)>();
    let mut readers = Vec::new();
    for (stream, pipe) in [
        (
            Stream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send((stream, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let deadline = timeout.map(|t| started + t);
    let mut timed_out = false;
    let mut stopped = false;
    let mut status = None;
    loop {
        let wait = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50)),
            None => Duration::from_millis(50),
        };
        match rx.recv_timeout(wait) {
            Ok((s, chunk)) => on_output(s, &chunk),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if status.is_none() {
                    status = Some(child.wait()?);
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if status.is_none() {
            if let Some(s) = child.try_wait()? {
                status = Some(s);
                // whatever the command left running is killed, so its pipes close
                kill(&mut child);
            }
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
    }
    for r in readers {
        let _ = r.join();
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
