use super::{Cli, LockArgs};
use crate::error::{exit, Result};
use crate::output::Printer;

pub fn run(cli: &Cli, a: &LockArgs, p: &Printer) -> Result<i32> {
    let locked = crate::ops::lock::lock(&cli.file, a.update, p.progress(), &mut |url, addr| {
        p.info(&format!(
            "fetching {} for {addr}",
            crate::output::escape(url)
        ))
    })?;
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        format_version: u32,
        file: &'a std::path::Path,
        pins: usize,
        written: bool,
    }
    if p.json {
        p.json_doc(&Doc {
            format_version: 1,
            file: &locked.path,
            pins: locked.pins,
            written: locked.written,
        });
    } else if locked.written {
        p.out(&format!(
            "Wrote {} ({} pin(s)).",
            crate::output::display_name(&locked.path),
            locked.pins
        ));
    } else {
        p.out(&format!(
            "{} is up to date ({} pin(s)).",
            crate::output::display_name(&locked.path),
            locked.pins
        ));
    }
    Ok(exit::OK)
}
