use super::{Cli, ExecArgs};
use crate::error::Result;
use crate::ops::exec::{self, Ended, Request};
use crate::output::Printer;
use crate::render::text::PassThrough;

/// Run a command in a fresh working snapshot of a machine, deleted afterwards.
pub fn run(cli: &Cli, a: &ExecArgs, p: &Printer) -> Result<i32> {
    let desired = crate::ops::load(&cli.file, None, cli.load_options(), false)?.desired;
    let req = Request {
        machine: a.machine.clone(),
        toolchain: a.toolchain.clone(),
        timeout: a.timeout,
        host: a.host,
        no_network: a.no_network,
        command: a.command.clone(),
    };
    let boots = desired.machine(&a.machine).is_ok_and(|m| m.kind.boots());
    // a VM's console (its boot) shows with -v; a process's console only repeats its output
    let mut sink = PassThrough {
        console: p.verbose && boots,
    };
    let (ended, _) = exec::exec(&desired, &req, &mut sink, &mut |s| {
        p.detail(&format!("working snapshot {}", s.display()))
    })?;
    Ok(match ended {
        Ended::Exit(code) => code,
        Ended::TimedOut { what, after } => {
            p.warn(&format!(
                "{what} timed out after {}; everything it started was killed",
                humantime::format_duration(after)
            ));
            124
        }
        Ended::Cancelled => 130,
    })
}
