use std::sync::Arc;

use super::{Cli, WatchArgs};
use crate::error::{exit, Result};
use crate::ops::monitor::Monitor;
use crate::ops::watch::{self, Event, Options};
use crate::output::Printer;
use crate::render::watch_log;

pub fn run(cli: &Cli, a: &WatchArgs, p: &Printer) -> Result<i32> {
    let git = a.git.remote(cli, a.take.clone());
    let monitor = Arc::new(Monitor::new(a.stall, git.clone()));
    let server = match a.listen {
        Some(addr) => Some(crate::serve::start(addr, monitor.clone())?),
        None => None,
    };
    if let Some(s) = &server {
        watch_log::line(
            p,
            &Event::Listening {
                url: format!("http://{}/", s.address),
            },
        );
    }
    let opts = Options {
        file: cli.file.clone(),
        interval: a.interval,
        debounce: a.debounce,
        lock_timeout: a.lock_timeout,
        git,
        load: cli.load_options(),
        monitor,
    };
    watch::run(&opts, &mut |e| watch_log::line(p, &e))?;
    Ok(exit::OK)
}
