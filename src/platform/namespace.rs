//! The `namespace` executor: runs a command inside a root filesystem (a
//! machine's working snapshot) in new mount, pid, uts and ipc namespaces
//! (network optional), with private mounts, `chroot`, `/proc` and a minimal
//! `/dev` (null, zero, full, random, urandom, tty).
//!
//! The command becomes pid 1 of its pid namespace, so killing it (on timeout)
//! takes down every process it started. Needs root, and says so at once.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, chroot, fork, sethostname, ForkResult};

use super::{Facts, Instance, Provision, Root, Step};
use crate::error::Result;
use crate::process::{Interrupt, Outcome, Sink};

const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct NamespaceInstance {
    root: Root,
    hostname: String,
    /// Also a new (empty) network namespace.
    isolate_network: bool,
    cancel: Arc<AtomicBool>,
}

/// The error every caller shows when not root.
pub fn require_root() -> io::Result<()> {
    require_root_as(nix::unistd::geteuid().is_root())
}

fn require_root_as(is_root: bool) -> io::Result<()> {
    if is_root {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the namespace executor needs root: it creates mount, pid, uts and ipc namespaces and chroots into the snapshot. \
             Run as root, or use the host executor (with the dir backend, bootstraps then run on the host with $RECONCILE_ROOT)",
        ))
    }
}

/// Everything the child needs, allocated before fork (nothing may allocate after it).
struct Prepared {
    /// The working snapshot's lock, inherited by the namespace's pid 1.
    lock: Option<std::os::fd::RawFd>,
    root: CString,
    proc_dir: CString,
    dev_dir: CString,
    devices: Vec<(CString, CString)>,
    cwd: CString,
    hostname: String,
    flags: CloneFlags,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// Find `prog` on PATH inside `root`; returns the path as seen from inside.
fn resolve(root: &Path, prog: &str) -> io::Result<String> {
    if prog.contains('/') {
        return Ok(prog.to_string());
    }
    for dir in PATH.split(':') {
        let inside = format!("{dir}/{prog}");
        let outside = root.join(inside.trim_start_matches('/'));
        // symlinks inside the root may be absolute: resolve them against the root, not the host
        if std::fs::symlink_metadata(&outside).is_ok() {
            return Ok(inside);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("`{prog}` is not on PATH inside {}", root.display()),
    ))
}

impl NamespaceInstance {
    /// Run in `root` (a working snapshot it deletes when dropped, or a staging volume), as host `hostname`.
    pub fn new(p: &Provision, root: Root, hostname: String) -> NamespaceInstance {
        NamespaceInstance {
            root,
            hostname,
            isolate_network: p.isolate_network,
            cancel: p.cancel.clone(),
        }
    }

    fn spawn(&self, step: &Step) -> io::Result<Child> {
        require_root()?;
        let Some((prog, args)) = step.argv.split_first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
        };
        let root = self.root.path();
        for d in ["proc", "dev"] {
            let p = root.join(d);
            if !p.exists() {
                std::fs::create_dir(&p)?;
            }
        }
        let dev_dir = root.join("dev");
        let prepared = Prepared {
            lock: self.root.lock_fd(),
            root: cstr(root)?,
            proc_dir: cstr(&root.join("proc"))?,
            dev_dir: cstr(&dev_dir)?,
            devices: DEVICES
                .iter()
                .map(|d| Ok((cstr(&Path::new("/dev").join(d))?, cstr(&dev_dir.join(d))?)))
                .collect::<io::Result<_>>()?,
            cwd: cstr(&Path::new("/").join(step.cwd.as_deref().unwrap_or("/")))?,
            hostname: self.hostname.clone(),
            flags: CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | if self.isolate_network {
                    CloneFlags::CLONE_NEWNET
                } else {
                    CloneFlags::empty()
                },
        };
        let mut cmd = Command::new(resolve(root, prog)?);
        cmd.args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .envs(step.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec. It only makes
        // syscalls (unshare, fork, waitpid, _exit, prctl, mount, open, sethostname,
        // chroot, chdir) on data prepared above; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || enter(&prepared));
        }
        cmd.spawn()
    }
}

/// In the child: new namespaces, then fork so the command is pid 1 of the new
/// pid namespace; this process stays behind to pass on its exit status.
fn enter(p: &Prepared) -> io::Result<()> {
    // the intermediate dies with reconcile, and its death takes pid 1 (below) with it
    crate::process::child::tie_to_parent(p.lock)?;
    unshare(p.flags)?;
    // SAFETY: the child of Command's fork is single-threaded; forking again is sound.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            close_inherited_fds();
            forward_exit(child)
        }
        ForkResult::Child => {}
    }
    // if the supervising process dies (timeout kill), pid 1 dies and takes the namespace with it
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // mounts made here never propagate back to the host
    mount(
        None::<&CStr0>,
        c"/",
        None::<&CStr0>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&CStr0>,
    )?;
    mount(
        Some(c"proc"),
        p.proc_dir.as_c_str(),
        Some(c"proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&CStr0>,
    )?;
    mount(
        Some(c"tmpfs"),
        p.dev_dir.as_c_str(),
        Some(c"tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(c"mode=0755"),
    )?;
    for (host, inside) in &p.devices {
        let fd = nix::fcntl::open(
            inside.as_c_str(),
            nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )?;
        drop(fd);
        mount(
            Some(host.as_c_str()),
            inside.as_c_str(),
            None::<&CStr0>,
            MsFlags::MS_BIND,
            None::<&CStr0>,
        )?;
    }
    sethostname(&p.hostname)?;
    chroot(p.root.as_c_str())?;
    chdir(p.cwd.as_c_str())?;
    Ok(())
}

type CStr0 = std::ffi::CStr;

/// The intermediate keeps only stdio: in particular it drops its copy of the
/// spawner's exec-status pipe, so `spawn` returns once the command has exec'd
/// (or reports its setup error) instead of waiting for it to finish. (pid 1
/// keeps the working snapshot's lock; the intermediate needs none.)
fn close_inherited_fds() {
    // SAFETY: close_range(2) and close(2) take plain integers; closing fds this
    // process will never use again is sound.
    unsafe {
        if nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..4096 {
                nix::libc::close(fd);
            }
        }
    }
}

/// Wait for pid 1 of the namespace and exit with its status.
fn forward_exit(child: nix::unistd::Pid) -> ! {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => exit_now(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => exit_now(128 + sig as i32),
            Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
            Err(_) => exit_now(127),
        }
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and ends this intermediate process without running destructors.
    unsafe { nix::libc::_exit(code) }
}

impl Instance for NamespaceInstance {
    fn run(&mut self, step: &Step, sink: &mut dyn Sink) -> Outcome {
        sink.step(&step.name);
        let child = self
            .spawn(step)
            .map_err(|e| Interrupt::Infra(format!("cannot run {:?}: {e}", step.argv)))?;
        let kill = |c: &mut Child| {
            // the intermediate's death SIGKILLs pid 1, which ends the whole pid namespace
            let _ = c.kill();
        };
        crate::process::child::supervise(child, step.timeout, &self.cancel, &kill, sink)
            .map_err(|e| Interrupt::Infra(format!("cannot supervise {:?}: {e}", step.argv)))?
    }

    fn facts(&self) -> Facts {
        Facts {
            snapshot: Some(self.root.path().to_path_buf()),
            ..Facts::default()
        }
    }

    fn keep(self: Box<Self>) -> Result<Option<PathBuf>> {
        self.root.keep()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_root_is_refused_with_a_clear_message() {
        let e = require_root_as(false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("needs root"));
        assert!(require_root_as(true).is_ok());
    }
}
