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
pub mod cluster;
pub mod host;
pub mod namespace;
pub mod qemu;

pub use qemu::normalise_arch;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::process::{Flow, Interrupt, Outcome, Sink, Stream};

use crate::config::model::{Executor, Fresh, Image, Machine, MachineKind, Volume};
use crate::config::Desired;
use crate::error::{Error, Result};
use crate::state::StateDir;
use crate::store::working::WorkingSnapshot;

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
    /// Working directory: absolute, or relative to where the platform starts
    /// commands (the working snapshot on the host, `/` in a namespace, the
    /// login's directory in a VM).
    pub cwd: Option<String>,
    /// Files copied into the guest before the command (a VM's command channel).
    pub upload: Vec<Upload>,
    /// Guest paths (glob patterns) copied into `collect_into` after the command,
    /// however it ended (a VM's command channel).
    pub collect: Vec<String>,
    pub collect_into: Option<PathBuf>,
}

/// A file copied into a guest: written to a temporary name beside `guest`, then renamed.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub guest: String,
    pub from: PathBuf,
    pub mode: u32,
}

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
    /// How a VM was made fresh: `restore` (from a booted snapshot) or `boot`.
    pub fresh: Option<&'static str>,
    /// Said when a booted snapshot had to be made anew (it did not load).
    pub fresh_note: Option<String>,
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
    /// Pull this node's cable (`up` false), or plug it back in.
    fn set_link(&mut self, _up: bool) -> std::result::Result<(), Interrupt> {
        Err(Interrupt::Infra(
            "only a VM of a cluster has a link to pull (executor = \"qemu\", cluster = N)".into(),
        ))
    }
    fn facts(&self) -> Facts;
    /// Keep the working snapshot instead of deleting it; returns where it is.
    fn keep(self: Box<Self>) -> Result<Option<PathBuf>>;
}

/// What to provision.
#[derive(Debug, Clone, Copy)]
/// What an instance runs on, its declaration resolved once by the caller.
pub enum Target<'a> {
    /// Nothing: a `host` step outside any machine.
    Host,
    /// A fresh working snapshot of a machine (its toolchain snapshot, or its current revision).
    Machine {
        name: &'a str,
        machine: &'a Machine,
        volume: &'a Volume,
        toolchain: Option<&'a str>,
        /// A revision other than the current one: a candidate under test.
        revision: Option<u32>,
    },
    /// A netboot image, booted diskless over PXE from its published TFTP
    /// tree (or from `tree`, a candidate beside it, under the same root).
    Image {
        name: &'a str,
        image: &'a Image,
        tree: Option<&'a Path>,
    },
    /// A volume being built (a toolchain bootstrap), used in place and kept.
    Staging {
        name: &'a str,
        machine: &'a Machine,
        root: &'a Path,
    },
}

impl<'a> Target<'a> {
    /// Machine `name` of `desired` (its toolchain snapshot when given).
    pub fn machine(
        desired: &'a Desired,
        name: &'a str,
        toolchain: Option<&'a str>,
    ) -> Result<Target<'a>> {
        let (_, machine, volume) = desired.machine_on_volume(name)?;
        Ok(Target::Machine {
            name,
            machine,
            volume,
            toolchain,
            revision: None,
        })
    }

    /// Netboot image `name` of `desired`.
    pub fn image(desired: &'a Desired, name: &'a str) -> Result<Target<'a>> {
        let (_, image) = desired.image(name)?;
        Ok(Target::Image {
            name,
            image,
            tree: None,
        })
    }
}

/// What every instance needs from its caller.
pub struct Provision<'a> {
    pub desired: &'a Desired,
    pub state: &'a StateDir,
    /// The run's cloud connections and inventories, when it has them (the
    /// cloud executor connects on its own otherwise).
    pub clouds: Option<&'a Clouds>,
    /// Set by Ctrl-C: what runs is killed and torn down.
    pub cancel: Arc<AtomicBool>,
    /// Where QEMU's own messages go (`qemu.log`).
    pub log_dir: PathBuf,
    /// Give namespace instances an empty network namespace.
    pub isolate_network: bool,
    /// The suite a test belongs to (the cloud executor launches in its cloud).
    pub suite: Option<&'a str>,
    /// How a disk machine's VM is made fresh: restored from a booted
    /// snapshot, or booted (always, outside test runs).
    pub fresh: Fresh,
    /// The VM is node `index` of a test's cluster, its second NIC on this
    /// port of the cluster's hub.
    pub node: Option<Node>,
}

/// A VM's place in its cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub index: usize,
    /// The socket QEMU binds, and the hub's it sends frames to.
    pub local: PathBuf,
    pub remote: PathBuf,
}

/// The clouds of one run: a connection per cloud and what reconcile made
/// there, read once and shared by the resources and the cloud executor.
#[cfg(feature = "cloud")]
pub use crate::cloud::inventory::Clouds;

/// Without the `cloud` feature there is nothing to share.
#[cfg(not(feature = "cloud"))]
#[derive(Debug, Default)]
pub struct Clouds;

/// The one factory: an instance of `target` on `executor`.
pub fn provision(p: &Provision, executor: Executor, target: Target) -> Result<Box<dyn Instance>> {
    let working = |name: &str,
                   m: &Machine,
                   volume: &Volume,
                   toolchain: Option<&str>,
                   revision: Option<u32>| {
        WorkingSnapshot::create(p.state, volume, name, m.kind, toolchain, revision)
    };
    let needs = |what: &str, why: &str| {
        Err(Error::Usage(format!(
            "the {what} executor cannot run {why}"
        )))
    };
    match (executor, target) {
        #[cfg(feature = "cloud")]
        (
            Executor::Cloud,
            Target::Machine {
                name,
                machine,
                volume,
                toolchain: None,
                revision,
            },
        ) => Ok(Box::new(cloud::CloudInstance::provision(
            p, p.suite, name, machine, volume, revision,
        )?)),
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
            executor.name(),
            "a netboot image (it boots only in QEMU: executor = \"qemu\")",
        ),
        (_, Target::Machine { machine, .. }) if machine.kind == MachineKind::Disk => needs(
            executor.name(),
            "a disk machine (it boots only in QEMU: executor = \"qemu\")",
        ),
        (Executor::Namespace, Target::Host) => needs("namespace", "without a machine"),
        (
            executor @ (Executor::Namespace | Executor::Host),
            Target::Machine {
                name,
                machine,
                volume,
                toolchain,
                revision,
            },
        ) => {
            let w = working(name, machine, volume, toolchain, revision)?;
            if executor == Executor::Host {
                return Ok(Box::new(host::HostInstance::new(p, Some(w.into()))));
            }
            let hostname = w.name.clone();
            Ok(Box::new(namespace::NamespaceInstance::new(
                p,
                w.into(),
                hostname,
            )))
        }
        (Executor::Namespace, Target::Staging { name, root, .. }) => Ok(Box::new(
            namespace::NamespaceInstance::new(p, root.to_path_buf().into(), name.to_string()),
        )),
        (Executor::Host, Target::Host) => Ok(Box::new(host::HostInstance::new(p, None))),
        (Executor::Host, Target::Staging { root, .. }) => Ok(Box::new(host::HostInstance::new(
            p,
            Some(root.to_path_buf().into()),
        ))),
    }
}

/// One line per distinct way instances of these (executor, machine, image)
/// targets will run — for QEMU, the accelerator and the timeout factor — to
/// be said once per run.
pub fn notes(targets: &[(Executor, Option<&Machine>, Option<&Image>)]) -> Vec<String> {
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
        let (vm, arch) = match (machine, image) {
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

/// A sink that also keeps a console log (`console.txt` of `exec` and of a
/// toolchain bootstrap): the console's lines and the unterminated last one.
pub struct ConsoleLog<'a> {
    inner: &'a mut dyn Sink,
    file: Option<std::fs::File>,
}

impl<'a> ConsoleLog<'a> {
    /// Log to `dir/console.txt` (a log that cannot be made is left out, never an error).
    pub fn new(inner: &'a mut dyn Sink, dir: &Path) -> ConsoleLog<'a> {
        let _ = std::fs::create_dir_all(dir);
        ConsoleLog {
            inner,
            file: std::fs::File::create(dir.join("console.txt")).ok(),
        }
    }
}

impl Sink for ConsoleLog<'_> {
    fn step(&mut self, name: &str) {
        self.inner.step(name)
    }

    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Flow {
        if stream == Stream::Console {
            if let Some(f) = self.file.as_mut() {
                use std::io::Write as _;
                if f.write_all(bytes).is_err() {
                    self.file = None;
                }
            }
        }
        self.inner.output(stream, bytes)
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
