//! The `host` executor: a process on the host in its own process group, with
//! the working directory in the machine's snapshot (exported as `$RECONCILE_ROOT`).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{process, Facts, Instance, Interrupt, Outcome, Provision, Root, Sink, Step};
use crate::error::Result;

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

impl Instance for HostInstance {
    fn run(&mut self, step: &Step, sink: &mut dyn Sink) -> Outcome {
        let Some((prog, args)) = step.argv.split_first() else {
            return Err(Interrupt::Infra("empty command".into()));
        };
        sink.step(&step.name);
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
        cmd.envs(step.env.iter().map(|(k, v)| (k, v)));
        let lock = self.root.as_ref().and_then(Root::lock_fd);
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the two syscalls of `tie_to_parent`; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || process::tie_to_parent(lock));
        }
        let child = cmd
            .spawn()
            .map_err(|e| Interrupt::Infra(format!("cannot run {:?}: {e}", step.argv)))?;
        let kill = |c: &mut Child| {
            // the whole process group: the command and everything it started
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
        };
        process::supervise(child, step.timeout, &self.cancel, &kill, sink)
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
