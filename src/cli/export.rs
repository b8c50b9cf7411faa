use super::{Cli, ExportArgs};
use crate::error::{exit, Result};
use crate::ops::export;
use crate::output::Printer;

/// `reconcile export machine.NAME@REV [--parent REV] -o FILE`.
pub fn run(cli: &Cli, a: &ExportArgs, p: &Printer) -> Result<i32> {
    let (name, rev) = export::parse_revision(&a.revision)?;
    let desired = crate::ops::load(&cli.file, None, cli.load_options(), false)?.desired;
    export::export(&desired, &name, rev, a.parent, &a.output)?;
    p.info(&format!(
        "Wrote machine.{}@{rev}{} to {}.",
        crate::output::escape(&name),
        a.parent
            .map(|r| format!(" (incremental against {r})"))
            .unwrap_or_default(),
        a.output.display()
    ));
    Ok(exit::OK)
}
