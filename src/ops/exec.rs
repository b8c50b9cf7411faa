//! `exec`: one command in a fresh working snapshot of a machine (namespaces
//! for a root filesystem, the host with `--host`, QEMU for a disk machine),
//! deleted afterwards.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::config::model::{Executor, Fresh, MachineKind};
use crate::config::Desired;
use crate::error::{Error, Result};
use crate::platform::{self, Provision, Step, Target};
use crate::process::{Interrupt, Sink};
use crate::state::StateDir;

/// What `reconcile exec` is asked to run.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub machine: String,
    pub toolchain: Option<String>,
    pub timeout: Option<Duration>,
    /// On the host (working directory in the snapshot) instead of in namespaces.
    pub host: bool,
    pub no_network: bool,
    pub command: Vec<String>,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Its exit status (128 + the signal that killed it).
    Exit(i32),
    TimedOut {
        what: String,
        after: Duration,
    },
    Cancelled,
}

/// Run it; its output goes to `sink` (a VM's boot as console output).
/// `snapshot` hears which working snapshot it runs in.
pub fn exec(
    desired: &Desired,
    req: &Request,
    sink: &mut dyn Sink,
    snapshot: &mut dyn FnMut(&Path),
) -> Result<(Ended, Executor)> {
    let m = desired.machine(&req.machine)?;
    if let Some(tc) = &req.toolchain {
        if !m.toolchain.contains_key(tc) {
            return Err(Error::Usage(format!(
                "machine `{}` has no toolchain `{tc}`",
                req.machine
            )));
        }
    }
    let executor = match m.kind {
        MachineKind::Disk => Executor::Qemu,
        MachineKind::Rootfs if req.host => Executor::Host,
        MachineKind::Rootfs => Executor::Namespace,
    };
    crate::store::working::cleanup_on_signals();
    let state = StateDir::create(&desired.state_dir)?;
    let provision = Provision {
        node: None,
        desired,
        state: &state,
        clouds: None,
        cancel: Arc::new(AtomicBool::new(false)),
        log_dir: state.vm_log_dir("exec"),
        isolate_network: req.no_network,
        suite: None,
        fresh: Fresh::Boot,
    };
    let target = Target::machine(desired, &req.machine, req.toolchain.as_deref())?;
    let mut instance = platform::provision(&provision, executor, target)?;
    if let Some(s) = instance.facts().snapshot {
        snapshot(&s);
    }
    let step = Step {
        name: "exec".into(),
        argv: req.command.clone(),
        timeout: req.timeout,
        ..Step::default()
    };
    let mut sink = platform::ConsoleLog::new(sink, &provision.log_dir);
    let outcome = instance
        .start(&mut sink)
        .and_then(|()| instance.run(&step, &mut sink));
    drop(instance);
    let ended = match outcome {
        Ok(exit) => Ended::Exit(exit.status()),
        Err(Interrupt::TimedOut { what, after }) => Ended::TimedOut { what, after },
        Err(Interrupt::Cancelled) => Ended::Cancelled,
        Err(i) => {
            return Err(Error::Resource {
                address: format!("machine.{}", req.machine),
                reason: i.to_string(),
            })
        }
    };
    Ok((ended, executor))
}
