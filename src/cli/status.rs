use super::{Cli, StatusArgs};
use crate::error::{exit, Result};
use crate::ops::status::{self, Status};
use crate::output::Printer;
use crate::render::text;

pub fn run(cli: &Cli, a: &StatusArgs, p: &Printer) -> Result<i32> {
    let remote = a.git.remote(cli, Default::default());
    match status::status(&cli.file, remote.as_ref(), cli.load_options())? {
        Status::Report(r) if p.json => p.json_doc(&r),
        Status::Report(r) => text::status(p, &r),
        Status::Unloadable(u) if p.json => p.json_doc(&u),
        Status::Unloadable(u) => text::status_unloadable(p, &u),
    }
    Ok(exit::OK)
}
