//! Supervising one process of a process-based instance (`host`, `namespace`):
//! its stdout and stderr pumped to the sink with `poll(2)` on the calling
//! thread (no helper threads per command), a timeout, Ctrl-C and the sink's
//! stop request each killing everything it started.

use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{Exit, Flow, Interrupt, Outcome, Sink, Stream};

/// How long output is still read after the command was reaped and killed.
const PIPE_GRACE: Duration = Duration::from_millis(250);

/// Pump `child`'s pipes into `sink` until it exits; `kill` tears down
/// everything it started. Without a console of their own, these instances
/// show their combined output as the console too.
pub fn supervise(
    mut child: Child,
    timeout: Option<Duration>,
    cancel: &AtomicBool,
    kill: &dyn Fn(&mut Child),
    sink: &mut dyn Sink,
) -> io::Result<Outcome> {
    let started = Instant::now();
    let mut pipes: Vec<(Stream, Box<dyn ReadFd>)> = Vec::new();
    if let Some(p) = child.stdout.take() {
        pipes.push((Stream::Stdout, Box::new(p)));
    }
    if let Some(p) = child.stderr.take() {
        pipes.push((Stream::Stderr, Box::new(p)));
    }
    let deadline = timeout.map(|t| started + t);
    let mut interrupted: Option<Interrupt> = None;
    let mut status = None;
    // when the command (and what it started) was reaped and killed: pipes a
    // descendant that escaped still holds are read a moment longer, then left
    let mut reaped: Option<Instant> = None;
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
                    Ok(n) => {
                        let a = sink.output(*stream, &buf[..n]);
                        let b = sink.output(Stream::Console, &buf[..n]);
                        if (a == Flow::Stop || b == Flow::Stop) && interrupted.is_none() {
                            interrupted = Some(Interrupt::Stopped);
                        }
                    }
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
        if status.is_some() && reaped.get_or_insert_with(Instant::now).elapsed() > PIPE_GRACE {
            // something outside the command's reach holds its output open: not waited for
            break;
        }
        if interrupted.is_none() && cancel.load(Ordering::SeqCst) {
            interrupted = Some(Interrupt::Cancelled);
        }
        if interrupted.is_none() && deadline.is_some_and(|d| Instant::now() >= d) {
            interrupted = Some(Interrupt::TimedOut {
                what: "the command".into(),
                after: timeout.unwrap_or_default(),
            });
        }
        if status.is_none() && interrupted.is_some() {
            kill(&mut child);
            status = Some(child.wait()?);
        }
        if pipes.is_empty() && status.is_none() {
            status = Some(child.wait()?);
        }
    }
    if let Some(i) = interrupted {
        return Ok(Err(i));
    }
    let status = status.expect("child waited");
    Ok(Ok(match status.code() {
        Some(c) => Exit::Code(c),
        None => Exit::Signal(status.signal().unwrap_or(0)),
    }))
}

/// What a child must do between fork and exec to be tied to reconcile: die
/// when the thread that started it dies (`PR_SET_PDEATHSIG`: a killed
/// reconcile takes its tests with it), and keep `lock` — its working
/// snapshot's lock — open across exec, so the snapshot counts as in use for
/// as long as it or anything it starts lives. Async-signal-safe: two syscalls.
pub fn tie_to_parent(lock: Option<std::os::fd::RawFd>) -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if let Some(fd) = lock {
        // SAFETY: `fd` is the snapshot's lock, open in the parent and so in
        // this freshly forked child; clearing FD_CLOEXEC touches nothing else.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
    }
    Ok(())
}

/// Spawn `cmd` tied to this thread as [`tie_to_parent`] says (dying with
/// it, keeping `lock` open across exec).
pub fn spawn_tied(
    cmd: &mut std::process::Command,
    lock: Option<std::os::fd::RawFd>,
) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // the two syscalls of `tie_to_parent`; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || tie_to_parent(lock));
    }
    cmd.spawn()
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
