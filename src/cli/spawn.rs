use super::{Cli, SpawnArgs};
use crate::error::{exit, Result};
use crate::ops::spawn::{self, Request};
use crate::output::Printer;

/// Boot a working snapshot of a disk machine (or a netboot image over PXE) and
/// attach this terminal to its serial console.
pub fn run(cli: &Cli, a: &SpawnArgs, p: &Printer) -> Result<i32> {
    let desired = crate::ops::load(&cli.file, None, cli.load_options(), false)?.desired;
    let req = Request {
        target: a.target.clone(),
        toolchain: a.toolchain.clone(),
        keep: a.keep,
    };
    let kept = spawn::spawn(&desired, &req, &mut |at| {
        p.info(&format!(
            "serial console of {} (Ctrl-] detaches and stops the VM; console log {})",
            crate::output::escape(&a.target),
            crate::output::display_name(&at.console_log)
        ))
    })?;
    if let Some(path) = kept {
        p.info(&format!(
            "kept the working snapshot {} (apply leaves it alone; delete it to let its revision go)",
            crate::output::display_name(&path)
        ));
    }
    Ok(exit::OK)
}
