//! The `host` executor: a process on the host in its own process group, with
//! the working directory in the machine's snapshot (exported as `$RECONCILE_ROOT`).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{supervise, Executor, Finished, Invocation, Stream};

pub struct Host {
    /// The snapshot the command works in, if any.
    pub root: Option<PathBuf>,
}

impl Executor for Host {
    fn run(
        &self,
        inv: &Invocation,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> io::Result<Finished> {
        let Some((prog, args)) = inv.argv.split_first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
        };
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let cwd = match (&self.root, &inv.cwd) {
            (Some(root), Some(c)) => Some(root.join(c.strip_prefix("/").unwrap_or(c))),
            (Some(root), None) => Some(root.clone()),
            (None, c) => c.clone(),
        };
        if let Some(c) = cwd {
            cmd.current_dir(c);
        }
        if let Some(root) = &self.root {
            cmd.env("RECONCILE_ROOT", root);
        }
        cmd.envs(inv.env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn()?;
        let kill = |c: &mut Child| {
            // the whole process group: the command and everything it started
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
        };
        supervise(
            child,
            inv.timeout,
            [inv.stop.as_deref(), inv.cancel.as_deref()],
            &kill,
            on_output,
        )
    }
}
