use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{Cli, SpawnArgs};
use crate::config;
use crate::config::model::{Executor, MachineKind};
use crate::error::{exit, Error, Result};
use crate::output::Printer;
use crate::platform::{self, Provision, Target};
use crate::state::StateDir;

/// Boot a working snapshot of a disk machine (or a netboot image over PXE) and
/// attach this terminal to its serial console.
pub fn run(cli: &Cli, a: &SpawnArgs, p: &Printer) -> Result<i32> {
    let desired = config::load_with(&cli.file, cli.load_options())?;
    let model = &desired.model;
    let target = match (model.machine.get(&a.target), model.image.get(&a.target)) {
        (Some(m), _) if m.kind != MachineKind::Disk => {
            return Err(Error::Usage(format!(
                "machine `{}` is a root filesystem; spawn boots disk machines and netboot images (use `reconcile exec {} -- sh` for a shell in it)",
                a.target, a.target
            )))
        }
        (Some(m), _) => {
            if let Some(tc) = &a.toolchain {
                if !m.toolchain.contains_key(tc) {
                    return Err(Error::Usage(format!(
                        "machine `{}` has no toolchain `{tc}`",
                        a.target
                    )));
                }
            }
            Target::Machine {
                name: &a.target,
                toolchain: a.toolchain.as_deref(),
            }
        }
        (None, Some(_)) => Target::Image { name: &a.target },
        (None, None) => {
            let known: Vec<String> = model
                .machine
                .iter()
                .filter(|(_, m)| m.kind == MachineKind::Disk)
                .map(|(n, _)| n.clone())
                .chain(model.image.keys().cloned())
                .collect();
            return Err(Error::Usage(format!(
                "no disk machine or netboot image `{}` in {} (declared: {})",
                a.target,
                config::display_name(&desired.path),
                known.join(", ")
            )));
        }
    };
    let state = StateDir::create(&desired.state_dir)?;
    let log_dir = state.vm_log_dir(&format!("spawn-{}", a.target));
    let provision = Provision {
        desired: &desired,
        state: &state,
        cancel: Arc::new(AtomicBool::new(false)),
        log_dir: log_dir.clone(),
        isolate_network: false,
        suite: None,
    };
    let mut instance = platform::provision(&provision, Executor::Qemu, target)?;
    let console_log = log_dir.join("console.txt");
    p.info(&format!(
        "serial console of {} (Ctrl-] detaches and stops the VM; console log {})",
        a.target,
        config::display_name(&console_log)
    ));
    let attached = instance.attach(&console_log);
    if a.keep {
        if let Some(path) = instance.keep()? {
            p.info(&format!(
                "kept the working snapshot {} (apply leaves it alone; delete it to let its revision go)",
                config::display_name(&path)
            ));
        }
    } else {
        drop(instance);
    }
    attached.map_err(|i| Error::Resource {
        address: a.target.clone(),
        reason: i.to_string(),
    })?;
    Ok(exit::OK)
}
