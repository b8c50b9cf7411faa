//! The ground floor of running things: what a process (a test, a VM's
//! console, a git call) streams to whoever watches it, how it ended, and the
//! two ways to run one — supervised with a timeout ([`child`]) and tied to
//! reconcile so it dies with it; who we are ([`identity`]).

pub mod child;
pub mod identity;

use std::time::Duration;

/// Which output a chunk of bytes belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// The serial console (or, without one, the combined output).
    Console,
    /// Console bytes that echo what the driver typed: logged, never scanned by checks.
    Input,
    Journal,
}

/// What a sink wants after a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop at once (a fatal console check hit): the instance kills what runs.
    Stop,
}

/// Receives an instance's output as it arrives.
pub trait Sink {
    /// The step now running (`boot`, a test's name, `shutdown`…): later output is attributed to it.
    fn step(&mut self, name: &str);
    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Flow;
}

/// A sink that keeps the last 64 KiB of everything (a bootstrap shows its tail on failure).
#[derive(Default)]
pub struct Tail {
    pub bytes: Vec<u8>,
}

impl Tail {
    const KEEP: usize = 64 << 10;

    /// The last `n` lines.
    pub fn lines(&self, n: usize) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Sink for Tail {
    fn step(&mut self, _name: &str) {}
    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Flow {
        // a console repeats the command's output: keep one copy
        if matches!(stream, Stream::Stdout | Stream::Stderr | Stream::Console) {
            self.bytes.extend_from_slice(bytes);
            if self.bytes.len() > Self::KEEP {
                self.bytes.drain(..self.bytes.len() - Self::KEEP);
            }
        }
        Flow::Continue
    }
}

/// How a step's command ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The status a shell would report (128 + signal).
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// Why a step (or a boot) did not end by itself. Whatever it started has been killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupt {
    /// It ran past its time limit (`what`: `the command`, `boot`…).
    TimedOut { what: String, after: Duration },
    /// The sink asked to stop (a fatal console check).
    Stopped,
    /// Ctrl-C (or SIGTERM).
    Cancelled,
    /// The console printed nothing for `after`.
    Stalled { after: Duration, last_line: String },
    /// The platform failed: QEMU exited, the guest's shell went away, a snapshot could not be made.
    Infra(String),
    /// The guest refused what the configuration told reconcile to do (a
    /// console login with a wrong password): the test's fault, not retried as infra.
    Refused(String),
}

impl std::fmt::Display for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            Interrupt::TimedOut { what, after } => {
                write!(f, "{what} timed out after {}", d(after))
            }
            Interrupt::Stopped => write!(f, "stopped by a fatal console check"),
            Interrupt::Cancelled => write!(f, "cancelled (interrupted)"),
            Interrupt::Stalled { after, last_line } => write!(
                f,
                "the console printed nothing for {}; last line: {last_line:?}",
                d(after)
            ),
            Interrupt::Infra(why) | Interrupt::Refused(why) => f.write_str(why),
        }
    }
}

pub type Outcome = std::result::Result<Exit, Interrupt>;

/// SIGINT/SIGTERM set this flag instead of killing the process, so an
/// operation finishes the step in progress and stops cleanly (running tests
/// are killed and cleaned up).
pub fn cancel_on_signals() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}
