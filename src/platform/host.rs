//! The `host` executor: a process on the host, with the working directory in
//! the machine's snapshot (exported as `$RECONCILE_ROOT`).
//!
//! No process of a test outlives it, and the kernel enforces it: the command
//! runs in a PID namespace of its own (inside a user namespace of its own
//! when reconcile is not root), under a small init that reaps what the
//! command leaves behind and exits with the command's status — and when the
//! namespace's init exits, the kernel kills every process left in it, a
//! double-forked `setsid` daemon with its stdio on /dev/null included. The
//! init dies with the process that started it, and that one with the
//! reconcile thread that started it (`PR_SET_PDEATHSIG`): a SIGKILLed
//! reconcile takes the whole namespace with it. A timeout kills the same
//! way, so no pipe a descendant held is left open.
//!
//! Where namespaces cannot be made (no user namespaces for a non-root user),
//! the command runs in a process group of its own, killed as a group, and
//! the run says so once: a process that leaves the group can outlive it.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::{Facts, Instance, Provision, Root, Step};
use crate::error::Result;
use crate::process::child;
use crate::process::{Interrupt, Outcome, Sink};

pub struct HostInstance {
    root: Option<Root>,
    cancel: Arc<AtomicBool>,
}

impl HostInstance {
    pub fn new(p: &Provision, root: Option<Root>) -> HostInstance {
        HostInstance {
            root,
            cancel: p.cancel.clone(),
        }
    }
}

/// How the host executor contains a test's processes here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containment {
    /// A PID namespace (root).
    PidNamespace,
    /// A PID namespace inside a user namespace of its own (not root).
    UserAndPidNamespace,
    /// A process group only (namespaces refused here).
    ProcessGroup,
}

impl Containment {
    /// What this host allows, found once per run by starting `/bin/true` so.
    pub fn here() -> Containment {
        static HERE: OnceLock<Containment> = OnceLock::new();
        *HERE.get_or_init(|| {
            // the tests take the fallback on purpose (as RECONCILE_RENAME_FALLBACK does)
            if std::env::var_os("RECONCILE_NO_PIDNS").is_some_and(|v| v == "1") {
                return Containment::ProcessGroup;
            }
            let try_with = |c: Containment| {
                let mut cmd = Command::new("/bin/true");
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                match Prepared::new(c, None) {
                    Ok(p) => {
                        // SAFETY: as in `run`: the closure only makes syscalls on
                        // data prepared before the fork.
                        unsafe { cmd.pre_exec(move || p.enter()) };
                        cmd.status().is_ok_and(|s| s.success())
                    }
                    Err(_) => false,
                }
            };
            if nix::unistd::geteuid().is_root() && try_with(Containment::PidNamespace) {
                Containment::PidNamespace
            } else if try_with(Containment::UserAndPidNamespace) {
                Containment::UserAndPidNamespace
            } else {
                Containment::ProcessGroup
            }
        })
    }

    /// The one line a run says when a test's processes are not contained.
    pub fn note(self) -> Option<String> {
        (self == Containment::ProcessGroup).then(|| {
            "host executor: no PID namespace can be made here (user namespaces are disabled); \
             a test's processes are killed as a process group, and one that leaves it can outlive the test"
                .to_string()
        })
    }
}

/// Everything the forked children need, made before the fork (nothing may
/// allocate after it).
struct Prepared {
    how: Containment,
    lock: Option<std::os::fd::RawFd>,
    /// `uid_map`/`gid_map` lines mapping our ids to themselves (user namespace).
    maps: Option<[(CString, Vec<u8>); 3]>,
}

impl Prepared {
    fn new(how: Containment, lock: Option<std::os::fd::RawFd>) -> io::Result<Prepared> {
        let maps = match how {
            Containment::UserAndPidNamespace => {
                let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
                let c = |s: &str| CString::new(s).map_err(io::Error::other);
                Some([
                    (
                        c("/proc/self/uid_map")?,
                        format!("{uid} {uid} 1\n").into_bytes(),
                    ),
                    (c("/proc/self/setgroups")?, b"deny".to_vec()),
                    (
                        c("/proc/self/gid_map")?,
                        format!("{gid} {gid} 1\n").into_bytes(),
                    ),
                ])
            }
            _ => None,
        };
        Ok(Prepared { how, lock, maps })
    }

    /// In the forked child, before exec: tied to reconcile; then, unless
    /// only a process group is possible, a new PID namespace whose init
    /// (pid 1) runs the command as pid 2. This process stays behind to pass
    /// on the command's exit status (or the signal that killed it).
    fn enter(&self) -> io::Result<()> {
        child::tie_to_parent(self.lock)?;
        match self.how {
            Containment::ProcessGroup => return Ok(()),
            Containment::PidNamespace => unshare(CloneFlags::CLONE_NEWPID)?,
            Containment::UserAndPidNamespace => {
                unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID)?;
                for (path, line) in self.maps.iter().flatten() {
                    write_file(path, line)?;
                }
            }
        }
        // how the command ended, from the init to this process (raw wait status)
        let (status_r, status_w) = nix::unistd::pipe()?;
        // SAFETY: the child of Command's fork is single-threaded; forking again is sound.
        match unsafe { fork() }? {
            ForkResult::Parent { child } => {
                drop(status_w);
                keep_only(status_r.as_raw());
                forward(child, status_r.as_raw())
            }
            ForkResult::Child => {}
        }
        drop(status_r);
        // pid 1: dies with the process above; its death ends the namespace
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        // SAFETY: single-threaded, as above.
        match unsafe { fork() }? {
            ForkResult::Parent { child } => {
                keep_only(status_w.as_raw());
                init(child, status_w.as_raw())
            }
            ForkResult::Child => {}
        }
        drop(status_w);
        // pid 2: the command (its exec follows)
        Ok(())
    }
}

/// `as_raw_fd` for the pipe ends.
trait Raw {
    fn as_raw(&self) -> i32;
}

impl Raw for std::os::fd::OwnedFd {
    fn as_raw(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

fn write_file(path: &CString, bytes: &[u8]) -> io::Result<()> {
    let fd = nix::fcntl::open(
        path.as_c_str(),
        nix::fcntl::OFlag::O_WRONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::write(&fd, bytes)?;
    Ok(())
}

/// Keep stdio and `keep`, close every other inherited descriptor: in
/// particular the spawner's exec-status pipe, so `spawn` returns once the
/// command has exec'd instead of when these processes end.
fn keep_only(keep: i32) {
    let keep = keep as u32;
    if keep > 3 {
        close_range(3, keep - 1);
    }
    close_range(keep + 1, u32::MAX);
}

fn close_range(from: u32, to: u32) {
    // SAFETY: close_range(2) and close(2) take plain integers; closing
    // descriptors this process will never use again is sound.
    unsafe {
        if nix::libc::syscall(nix::libc::SYS_close_range, from, to, 0u32) != 0 {
            for fd in from..to.min(4096) {
                nix::libc::close(fd as i32);
            }
        }
    }
}

/// pid 1: reap everything (orphans reparent here), and when the command
/// ends, say how over `status` and exit — which ends the namespace.
fn init(command: Pid, status: i32) -> ! {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => {
                say(status, code, 0);
                exit_now(code)
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                say(status, 0, sig as i32);
                exit_now(128 + sig as i32)
            }
            Err(nix::errno::Errno::ECHILD) => exit_now(127),
            _ => continue,
        }
    }
}

fn say(fd: i32, code: i32, sig: i32) {
    let msg = [code as u8, sig as u8];
    // SAFETY: write(2) on a descriptor this process owns, from a stack buffer.
    unsafe {
        nix::libc::write(fd, msg.as_ptr().cast(), 2);
    }
}

/// The process that started the namespace: wait for its init, then end the
/// way the command ended (its exit status, or its signal raised again).
fn forward(init: Pid, status: i32) -> ! {
    loop {
        match waitpid(init, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                let mut msg = [0u8; 2];
                // SAFETY: read(2) into a stack buffer from a descriptor this process owns.
                let n = unsafe { nix::libc::read(status, msg.as_mut_ptr().cast(), 2) };
                if n == 2 && msg[1] != 0 {
                    // SAFETY: back to the default action, then the same signal: this
                    // process ends as the command did (signal(2), raise(3) are
                    // async-signal-safe).
                    unsafe {
                        nix::libc::signal(msg[1] as i32, nix::libc::SIG_DFL);
                        nix::libc::raise(msg[1] as i32);
                    }
                }
                exit_now(if n == 2 { msg[0] as i32 } else { code })
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => exit_now(128 + sig as i32),
            Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
            Err(_) => exit_now(127),
        }
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and ends this process without running destructors.
    unsafe { nix::libc::_exit(code) }
}

impl Instance for HostInstance {
    fn run(&mut self, step: &Step, sink: &mut dyn Sink) -> Outcome {
        let Some((prog, args)) = step.argv.split_first() else {
            return Err(Interrupt::Infra("empty command".into()));
        };
        sink.step(&step.name);
        let how = Containment::here();
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(root) = &self.root {
            cmd.current_dir(root.path())
                .env("RECONCILE_ROOT", root.path());
        }
        if let Some(dir) = &step.cwd {
            // relative to the snapshot (or to where reconcile runs, without one)
            let base = self.root.as_ref().map(|r| r.path().to_path_buf());
            cmd.current_dir(base.unwrap_or_default().join(dir));
        }
        cmd.envs(step.env.iter().map(|(k, v)| (k, v)));
        let prepared = Prepared::new(how, self.root.as_ref().and_then(Root::lock_fd))
            .map_err(|e| Interrupt::Infra(format!("cannot prepare {:?}: {e}", step.argv)))?;
        // SAFETY: the closure runs in the forked child before exec. It only
        // makes syscalls (prctl, fcntl, unshare, open, write, pipe, fork,
        // waitpid, close, _exit) on data prepared above; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || prepared.enter());
        }
        let child = cmd
            .spawn()
            .map_err(|e| Interrupt::Infra(format!("cannot run {:?}: {e}", step.argv)))?;
        let kill = |c: &mut Child| {
            // the whole process group: the command and everything it started (in
            // a namespace, the process holding it, whose death ends the namespace)
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
        };
        child::supervise(child, step.timeout, &self.cancel, &kill, sink)
            .map_err(|e| Interrupt::Infra(format!("cannot supervise {:?}: {e}", step.argv)))?
    }

    fn facts(&self) -> Facts {
        Facts {
            snapshot: self.root.as_ref().map(|r| r.path().to_path_buf()),
            ..Facts::default()
        }
    }

    fn keep(self: Box<Self>) -> Result<Option<PathBuf>> {
        match self.root {
            Some(r) => r.keep(),
            None => Ok(None),
        }
    }
}
