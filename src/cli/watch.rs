use super::{Cli, WatchArgs};
use crate::error::{exit, Result};
use crate::ops::watch::{self, Options};
use crate::output::Printer;
use crate::render::watch_log;

pub fn run(cli: &Cli, a: &WatchArgs, p: &Printer) -> Result<i32> {
    let opts = Options {
        file: cli.file.clone(),
        interval: a.interval,
        debounce: a.debounce,
        lock_timeout: a.lock_timeout,
        git: a.git.remote(cli, a.take.clone()),
        load: cli.load_options(),
    };
    watch::run(&opts, &mut |e| watch_log::line(p, &e))?;
    Ok(exit::OK)
}
