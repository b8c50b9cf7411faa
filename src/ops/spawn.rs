//! `spawn`: boot a working snapshot of a disk machine (or a netboot image
//! over PXE) in QEMU and attach the terminal to its serial console.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::model::{Executor, Fresh, MachineKind};
use crate::config::{self, Desired};
use crate::error::{Error, Result};
use crate::platform::{self, Provision, Target};
use crate::state::StateDir;

/// What `reconcile spawn` is asked to boot.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// A disk machine or a netboot image.
    pub target: String,
    pub toolchain: Option<String>,
    /// Keep the working snapshot after the VM stops.
    pub keep: bool,
}

/// What the caller hears before the terminal is handed over.
pub struct Attaching {
    pub console_log: PathBuf,
}

/// Boot, attach until the VM stops or Ctrl-] detaches; the snapshot kept
/// (its path) when asked.
pub fn spawn(
    desired: &Desired,
    req: &Request,
    attaching: &mut dyn FnMut(&Attaching),
) -> Result<Option<PathBuf>> {
    let model = &desired.model;
    let target = match (model.machine.get(&req.target), model.image.get(&req.target)) {
        (Some(m), _) if m.kind != MachineKind::Disk => {
            return Err(Error::NotBootable {
                machine: req.target.clone(),
            })
        }
        (Some(m), _) => {
            if let Some(tc) = &req.toolchain {
                if !m.toolchain.contains_key(tc) {
                    return Err(Error::Usage(format!(
                        "machine `{}` has no toolchain `{tc}`",
                        req.target
                    )));
                }
            }
            Target::machine(desired, &req.target, req.toolchain.as_deref())?
        }
        (None, Some(_)) => Target::image(desired, &req.target)?,
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
                req.target,
                config::display_name(&desired.path),
                known.join(", ")
            )));
        }
    };
    let state = StateDir::create(&desired.state_dir)?;
    let log_dir = state.vm_log_dir(&format!("spawn-{}", req.target));
    let provision = Provision {
        node: None,
        desired,
        state: &state,
        clouds: None,
        cancel: Arc::new(AtomicBool::new(false)),
        log_dir: log_dir.clone(),
        isolate_network: false,
        suite: None,
        fresh: Fresh::Boot,
    };
    let mut instance = platform::provision(&provision, Executor::Qemu, target)?;
    let console_log = log_dir.join("console.txt");
    attaching(&Attaching {
        console_log: console_log.clone(),
    });
    let attached = instance.attach(&console_log);
    let kept = if req.keep {
        instance.keep()?
    } else {
        drop(instance);
        None
    };
    attached.map_err(|i| Error::Resource {
        address: req.target.clone(),
        reason: i.to_string(),
    })?;
    Ok(kept)
}
