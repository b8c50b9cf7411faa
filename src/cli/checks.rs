use super::{ChecksArgs, Cli};
use crate::error::{exit, Result};
use crate::output::Printer;
use crate::render::text;

/// Scan log files with the built-in and declared console checks.
pub fn run(cli: &Cli, a: &ChecksArgs, p: &Printer) -> Result<i32> {
    // `--config FILE`, or the file given with `-f`
    let file = a.config.as_ref().or(cli.file_given.then_some(&cli.file));
    let declared = match file {
        Some(f) => crate::ops::checks::declared_in(f, cli.load_options())?,
        None => Default::default(),
    };
    let found = crate::ops::checks::scan(&declared, a.scope, &a.logs)?;
    if p.json {
        p.json_doc(&found);
    } else {
        text::checks(p, &found);
    }
    Ok(if found.failing {
        exit::TESTS_FAILED
    } else {
        exit::OK
    })
}
