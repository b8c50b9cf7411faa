use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{Cli, ExecArgs};
use crate::config::model::{Executor, MachineKind};
use crate::config::{self, Desired};
use crate::error::{Error, Result};
use crate::output::Printer;
use crate::platform::{self, Provision, Step, Target};
use crate::process::{Flow, Interrupt, Sink, Stream};
use crate::state::StateDir;
use crate::store::working;

/// Run a command in a fresh working snapshot of a machine, deleted afterwards.
pub fn run(cli: &Cli, a: &ExecArgs, p: &Printer) -> Result<i32> {
    let desired = config::load_with(&cli.file, cli.load_options())?;
    let m = machine(&desired, &a.machine)?;
    if let Some(tc) = &a.toolchain {
        if !m.toolchain.contains_key(tc) {
            return Err(Error::Usage(format!(
                "machine `{}` has no toolchain `{tc}`",
                a.machine
            )));
        }
    }
    let executor = match m.kind {
        MachineKind::Disk => Executor::Qemu,
        MachineKind::Rootfs if a.host => Executor::Host,
        MachineKind::Rootfs => Executor::Namespace,
    };
    working::cleanup_on_signals();
    let state = StateDir::create(&desired.state_dir)?;
    let provision = Provision {
        desired: &desired,
        state: &state,
        cancel: Arc::new(AtomicBool::new(false)),
        log_dir: state.vm_log_dir("exec"),
        isolate_network: a.no_network,
        suite: None,
    };
    let target = Target::Machine {
        name: &a.machine,
        toolchain: a.toolchain.as_deref(),
    };
    let mut instance = platform::provision(&provision, executor, target)?;
    if let Some(snapshot) = instance.facts().snapshot {
        p.detail(&format!("working snapshot {}", snapshot.display()));
    }
    let step = Step {
        name: "exec".into(),
        argv: a.command.clone(),
        env: Vec::new(),
        timeout: a.timeout,
    };
    // a VM's console (its boot) shows with -v; a process's console only repeats its output
    let mut sink = Forward {
        console: p.verbose && executor == Executor::Qemu,
    };
    let outcome = instance
        .start(&mut sink)
        .and_then(|()| instance.run(&step, &mut sink));
    drop(instance);
    match outcome {
        Ok(exit) => Ok(exit.status()),
        Err(Interrupt::TimedOut { what, after }) => {
            p.warn(&format!(
                "{what} timed out after {}; everything it started was killed",
                humantime::format_duration(after)
            ));
            Ok(124)
        }
        Err(Interrupt::Cancelled) => Ok(130),
        Err(i) => Err(Error::Resource {
            address: format!("machine.{}", a.machine),
            reason: i.to_string(),
        }),
    }
}

/// The declared machine called `name`, or a usage error listing them.
pub fn machine<'d>(desired: &'d Desired, name: &str) -> Result<&'d crate::config::model::Machine> {
    desired.model.machine.get(name).ok_or_else(|| {
        Error::Usage(format!(
            "no machine `{name}` in {} (declared: {})",
            config::display_name(&desired.path),
            desired
                .model
                .machine
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// The command's output to ours; a VM's console to stderr when asked.
struct Forward {
    console: bool,
}

impl Sink for Forward {
    fn step(&mut self, _name: &str) {}
    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Flow {
        let _ = match stream {
            Stream::Stdout => std::io::stdout().write_all(bytes),
            Stream::Stderr => std::io::stderr().write_all(bytes),
            Stream::Console | Stream::Input if self.console => std::io::stderr().write_all(bytes),
            _ => Ok(()),
        };
        Flow::Continue
    }
}
