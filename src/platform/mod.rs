//! Platforms: where a step (a test, a toolchain bootstrap, `reconcile exec`)
//! runs. One factory, [`provision`], turns a machine or netboot image into an
//! [`Instance`] on the executor a suite names — kola's flight → machine, the
//! NixOS test driver's machine object:
//!
//! - `host`: a process on the host, cwd in a working snapshot;
//! - `namespace`: inside the snapshot's root filesystem, in new namespaces;
//! - `qemu`: a VM booted from a qcow2 overlay of a disk machine, or diskless
//!   over PXE from a netboot image, driven over its serial console;
//! - `cloud`: an instance of a disk machine's published image in an
//!   EC2-compatible cloud, the test delivered as user data and its result
//!   read back from the console output.
//!
//! An instance streams what it sees (stdout, stderr, console, typed input) to
//! a [`Sink`] the caller owns, which may ask it to stop at once (a fatal
//! console check). Dropping an instance tears it down on every path: the
//! process or VM is killed and the working snapshot deleted.

#[cfg(feature = "cloud")]
pub mod cloud;
pub mod host;
pub mod namespace;
pub mod process;
pub mod qemu;

pub use qemu::normalise_arch;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::config::model::{Executor, MachineKind};
use crate::config::Desired;
use crate::error::{Error, Result};
use crate::state::StateDir;
use crate::store::working::WorkingSnapshot;

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

/// One command to run on an instance.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Shown in logs and used for check attribution (a test's name, `bootstrap build2`).
    pub name: String,
    pub argv: Vec<String>,
    /// Added to the environment.
    pub env: Vec<(String, String)>,
    /// As declared; platforms that run slower (QEMU under TCG) scale it.
    pub timeout: Option<Duration>,
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
            Interrupt::Infra(why) => f.write_str(why),
        }
    }
}

pub type Outcome = std::result::Result<Exit, Interrupt>;

/// Facts about an instance a report records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// `kvm` or `tcg` for a VM.
    pub accel: Option<&'static str>,
    /// Every timeout was multiplied by this (QEMU under TCG).
    pub timeout_factor: Option<f64>,
    /// How long the VM took from start to its prompt.
    pub boot: Option<Duration>,
    /// The working snapshot it runs on.
    pub snapshot: Option<PathBuf>,
}

/// A machine (or image) made ready to run steps; torn down when dropped.
pub trait Instance {
    /// Bring it up (boot a VM to its prompt); output goes to `sink` under the step `boot`.
    fn start(&mut self, _sink: &mut dyn Sink) -> std::result::Result<(), Interrupt> {
        Ok(())
    }
    fn run(&mut self, step: &Step, sink: &mut dyn Sink) -> Outcome;
    /// Shut down cleanly (a toolchain bootstrap keeps what the VM wrote).
    fn shutdown(&mut self, _sink: &mut dyn Sink) -> std::result::Result<(), Interrupt> {
        Ok(())
    }
    /// Attach this process's terminal to the console until the VM stops or the user detaches.
    fn attach(&mut self, _log: &Path) -> std::result::Result<(), Interrupt> {
        Err(Interrupt::Infra(
            "only a VM has a console to attach to (executor = \"qemu\")".into(),
        ))
    }
    fn facts(&self) -> Facts;
    /// Keep the working snapshot instead of deleting it; returns where it is.
    fn keep(self: Box<Self>) -> Result<Option<PathBuf>>;
}

/// What to provision.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Nothing: a `host` step outside any machine.
    Host,
    /// A fresh working snapshot of a machine (its toolchain snapshot, or its current revision).
    Machine {
        name: &'a str,
        toolchain: Option<&'a str>,
    },
    /// A netboot image, booted diskless over PXE from its published TFTP tree.
    Image { name: &'a str },
    /// A volume being built (a toolchain bootstrap), used in place and kept.
    Staging { machine: &'a str, root: &'a Path },
}

/// What every instance needs from its caller.
pub struct Provision<'a> {
    pub desired: &'a Desired,
    pub state: &'a StateDir,
    /// Set by Ctrl-C: what runs is killed and torn down.
    pub cancel: Arc<AtomicBool>,
    /// Where QEMU's own messages go (`qemu.log`).
    pub log_dir: PathBuf,
    /// Give namespace instances an empty network namespace.
    pub isolate_network: bool,
    /// The suite a test belongs to (the cloud executor launches in its cloud).
    pub suite: Option<&'a str>,
}

/// The one factory: an instance of `target` on `executor`.
pub fn provision(p: &Provision, executor: Executor, target: Target) -> Result<Box<dyn Instance>> {
    let machine = |name: &str| {
        p.desired
            .model
            .machine
            .get(name)
            .ok_or_else(|| Error::Usage(format!("no machine `{name}` is declared")))
    };
    let working = |name: &str, toolchain: Option<&str>| -> Result<WorkingSnapshot> {
        let m = machine(name)?;
        let volume = &p.desired.model.volume[&m.volume];
        WorkingSnapshot::create(p.state, volume, name, m.kind, toolchain)
    };
    let needs = |what: &str, why: &str| {
        Err(Error::Usage(format!(
            "the {what} executor cannot run {why}"
        )))
    };
    match (executor, target) {
        #[cfg(feature = "cloud")]
        (Executor::Cloud, Target::Machine { name, toolchain: None }) => {
            Ok(Box::new(cloud::CloudInstance::provision(p, p.suite, name)?))
        }
        #[cfg(not(feature = "cloud"))]
        (Executor::Cloud, _) => Err(Error::Usage(
            "this build of reconcile has no cloud support (built without the `cloud` feature)".into(),
        )),
        #[cfg(feature = "cloud")]
        (Executor::Cloud, _) => needs(
            "cloud",
            "anything but a machine's current revision (no toolchain, no netboot image, no staging volume)",
        ),
        (Executor::Qemu, Target::Host) => needs("qemu", "without a machine or an image"),
        (Executor::Qemu, t) => Ok(Box::new(qemu::QemuInstance::provision(p, t)?)),
        (_, Target::Image { .. }) => needs(
            executor_name(executor),
            "a netboot image (it boots only in QEMU: executor = \"qemu\")",
        ),
        (_, Target::Machine { name, .. }) if machine(name)?.kind == MachineKind::Disk => needs(
            executor_name(executor),
            "a disk machine (it boots only in QEMU: executor = \"qemu\")",
        ),
        (Executor::Namespace, Target::Host) => needs("namespace", "without a machine"),
        (Executor::Namespace, Target::Machine { name, toolchain }) => {
            let w = working(name, toolchain)?;
            let hostname = w.name.clone();
            Ok(Box::new(namespace::NamespaceInstance::new(
                p,
                w.into(),
                hostname,
            )))
        }
        (Executor::Namespace, Target::Staging { machine, root }) => Ok(Box::new(
            namespace::NamespaceInstance::new(p, root.to_path_buf().into(), machine.to_string()),
        )),
        (Executor::Host, Target::Host) => Ok(Box::new(host::HostInstance::new(p, None))),
        (Executor::Host, Target::Machine { name, toolchain }) => {
            let w = working(name, toolchain)?;
            Ok(Box::new(host::HostInstance::new(p, Some(w.into()))))
        }
        (Executor::Host, Target::Staging { root, .. }) => Ok(Box::new(host::HostInstance::new(
            p,
            Some(root.to_path_buf().into()),
        ))),
    }
}

/// One line per distinct way instances of these (executor, machine, image)
/// targets will run — for QEMU, the accelerator and the timeout factor — to
/// be said once per run.
pub fn notes(desired: &Desired, targets: &[(Executor, Option<&str>, Option<&str>)]) -> Vec<String> {
    let model = &desired.model;
    let mut notes: Vec<String> = Vec::new();
    for (executor, machine, image) in targets {
        if *executor == Executor::Host {
            if let Some(note) = host::Containment::here().note() {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        if *executor != Executor::Qemu {
            continue;
        }
        let (vm, arch) = match (
            machine.and_then(|m| model.machine.get(m)),
            image.and_then(|i| model.image.get(i)),
        ) {
            (Some(m), _) => (
                m.vm.clone().unwrap_or_default(),
                m.arch
                    .clone()
                    .unwrap_or_else(|| std::env::consts::ARCH.into()),
            ),
            (None, Some(i)) => (i.vm.clone().unwrap_or_default(), i.arch.clone()),
            _ => continue,
        };
        let note = match qemu::decide(&vm, &arch) {
            Ok((_, _, line)) => line,
            Err(e) => format!("qemu: {e}"),
        };
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    notes
}

pub fn executor_name(e: Executor) -> &'static str {
    match e {
        Executor::Host => "host",
        Executor::Namespace => "namespace",
        Executor::Qemu => "qemu",
        Executor::Cloud => "cloud",
    }
}

/// The root a process-based instance works in: a working snapshot it owns
/// (deleted with it) or a directory someone else owns.
pub enum Root {
    Snapshot(WorkingSnapshot),
    Borrowed(PathBuf),
}

impl Root {
    pub fn path(&self) -> &Path {
        match self {
            Root::Snapshot(w) => &w.path,
            Root::Borrowed(p) => p,
        }
    }

    /// The working snapshot's lock, for the processes run in it to inherit.
    pub fn lock_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            Root::Snapshot(w) => w.lock_fd(),
            Root::Borrowed(_) => None,
        }
    }

    /// Keep a working snapshot after the instance is gone.
    pub fn keep(self) -> Result<Option<PathBuf>> {
        match self {
            Root::Snapshot(w) => w.keep().map(Some),
            Root::Borrowed(_) => Ok(None),
        }
    }
}

impl From<WorkingSnapshot> for Root {
    fn from(w: WorkingSnapshot) -> Root {
        Root::Snapshot(w)
    }
}

impl From<PathBuf> for Root {
    fn from(p: PathBuf) -> Root {
        Root::Borrowed(p)
    }
}
