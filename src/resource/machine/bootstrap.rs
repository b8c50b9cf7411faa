//! Bootstrapping a toolchain snapshot: the machine's current revision
//! snapshotted, the bootstrap command run in it (namespaces, or a VM for a
//! disk machine), the result committed read-only.

use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{bootstrap_digest, MachineResource, DEFAULT_BOOTSTRAP_TIMEOUT};
use crate::config::model::{Executor, Fresh, Machine, MachineKind};
use crate::error::{Error, Result};
use crate::platform::{Provision, Target};
use crate::process::{Interrupt, Tail};
use crate::resource::ApplyContext;
use crate::store::{disk, EntryKind, EntryReceipt};
use crate::{fault, platform};

impl MachineResource {
    /// Bootstrap a toolchain snapshot: a snapshot of the current revision (a
    /// qcow2 overlay of it, for a disk machine), the bootstrap run inside it
    /// (namespaces as root, the host otherwise; over the serial console of a
    /// VM for a disk machine, which is then shut down cleanly), sealed read-only.
    pub(super) fn bootstrap(&self, m: &Machine, tc: &str, cx: &mut ApplyContext) -> Result<()> {
        let be = self.backend()?;
        let t = &m.toolchain[tc];
        let base_name = self.rev_name(m.revision);
        let base = self.entry_path(&base_name);
        let src_sha = cx.cx.fetcher.expected_digest(&m.source)?;
        let name = self.tc_name(tc);
        let timeout = t.timeout.unwrap_or(DEFAULT_BOOTSTRAP_TIMEOUT);
        let executor = match m.kind {
            MachineKind::Disk => Executor::Qemu,
            MachineKind::Rootfs if nix::unistd::geteuid().is_root() => Executor::Namespace,
            MachineKind::Rootfs if be.name() == "btrfs" => {
                return Err(Error::Resource {
                    address: self.address.clone(),
                    reason: platform::namespace::require_root()
                        .expect_err("not root")
                        .to_string(),
                })
            }
            MachineKind::Rootfs => Executor::Host,
        };
        let provision = Provision {
            node: None,
            desired: cx.cx.desired,
            state: cx.cx.state,
            clouds: None,
            // an apply finishes the step in progress when interrupted
            cancel: Arc::new(AtomicBool::new(false)),
            log_dir: cx.cx.state.vm_log_dir(&format!("{}.{tc}", self.address)),
            isolate_network: false,
            suite: None,
            fresh: Fresh::Boot,
        };
        let failed = |what: String, tail: &Tail| Error::Resource {
            address: self.address.clone(),
            reason: format!(
                "toolchain {tc}: {what}; the previous {name} stays. Its output:\n{}",
                tail.lines(20)
            ),
        };
        self.publish_volume(cx, be.as_ref(), &name, |dir, staging_name| {
            let staging = &dir.shown(staging_name);
            match m.kind {
                MachineKind::Rootfs => be.snapshot(dir, Path::new(&base_name), staging_name, false),
                MachineKind::Disk => be.create(dir, staging_name).and_then(|()| {
                    let (image, format) = disk::image_in(&base)?;
                    disk::create_overlay(staging, &image, format).map(|_| ())
                }),
            }
            .map_err(|e| Error::io(staging, e))?;
            fault::point(&self.address, "stage-partial");
            let mut instance = platform::provision(
                &provision,
                executor,
                Target::Staging {
                    name: self.name(),
                    machine: m,
                    root: staging,
                },
            )?;
            let step = platform::Step {
                name: format!("bootstrap {tc}"),
                argv: t.bootstrap.clone(),
                timeout: Some(timeout),
                ..platform::Step::default()
            };
            let mut tail = Tail::default();
            // the console is kept in the bootstrap's log directory as well
            let (ran, down) = {
                let mut log = platform::ConsoleLog::new(&mut tail, &provision.log_dir);
                let ran = instance
                    .start(&mut log)
                    .and_then(|()| instance.run(&step, &mut log));
                let down = match ran {
                    Ok(exit) if exit.success() => {
                        fault::point(&self.address, "bootstrapped");
                        Some(instance.shutdown(&mut log))
                    }
                    _ => None,
                };
                (ran, down)
            };
            match ran {
                Ok(exit) if exit.success() => {}
                Ok(exit) => return Err(failed(format!("bootstrap failed ({exit})"), &tail)),
                Err(i) => return Err(failed(format!("bootstrap did not finish: {i}"), &tail)),
            }
            if let Some(Err(i)) = down {
                let i: Interrupt = i;
                return Err(failed(format!("clean shutdown failed: {i}"), &tail));
            }
            drop(instance);
            if m.kind == MachineKind::Disk {
                // what the overlay holds now is the toolchain: nothing writes to it again
                let overlay = staging.join(disk::OVERLAY);
                fs::set_permissions(
                    &overlay,
                    std::os::unix::fs::PermissionsExt::from_mode(0o444),
                )
                .map_err(|e| Error::io(&overlay, e))?;
            }
            Ok(EntryReceipt {
                toolchain: Some(tc.to_string()),
                bootstrap_sha256: Some(bootstrap_digest(&t.bootstrap)),
                ..self.receipt(EntryKind::Toolchain, m, src_sha.clone())
            })
        })
    }
}
