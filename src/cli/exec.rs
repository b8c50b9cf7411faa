use std::io::Write;

use super::{Cli, ExecArgs};
use crate::config;
use crate::error::{Error, Result};
use crate::executor::{host::Host, namespace::Namespace, Executor, Invocation, Outcome, Stream};
use crate::output::Printer;
use crate::resource::machine::working::{self, WorkingSnapshot};
use crate::state::StateDir;

/// Run a command in a fresh working snapshot of a machine, deleted afterwards.
pub fn run(cli: &Cli, a: &ExecArgs, p: &Printer) -> Result<i32> {
    let desired = config::load(&cli.file)?;
    let Some(m) = desired.model.machine.get(&a.machine) else {
        return Err(Error::Usage(format!(
            "no machine `{}` in {} (declared: {})",
            a.machine,
            config::display_name(&desired.path),
            desired
                .model
                .machine
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if let Some(tc) = &a.toolchain {
        if !m.toolchain.contains_key(tc) {
            return Err(Error::Usage(format!(
                "machine `{}` has no toolchain `{tc}`",
                a.machine
            )));
        }
    }
    let volume = desired.model.volume[&m.volume].clone();
    working::cleanup_on_signals();
    let state = StateDir::create(&desired.state_dir)?;
    let snapshot = WorkingSnapshot::create(&state, &volume, &a.machine, a.toolchain.as_deref())?;
    p.detail(&format!("working snapshot {}", snapshot.path.display()));
    let inv = Invocation {
        argv: a.command.clone(),
        timeout: a.timeout,
        ..Default::default()
    };
    let mut forward = |s: Stream, chunk: &[u8]| {
        let _ = match s {
            Stream::Stdout => std::io::stdout().write_all(chunk),
            Stream::Stderr => std::io::stderr().write_all(chunk),
        };
    };
    let finished = if a.host {
        Host {
            root: Some(snapshot.path.clone()),
        }
        .run(&inv, &mut forward)
    } else {
        Namespace {
            root: snapshot.path.clone(),
            hostname: snapshot.name.clone(),
            isolate_network: a.no_network,
        }
        .run(&inv, &mut forward)
    };
    let finished = finished.map_err(|e| Error::Resource {
        address: format!("machine.{}", a.machine),
        reason: e.to_string(),
    });
    snapshot.delete()?;
    let finished = finished?;
    Ok(match finished.outcome {
        Outcome::Exited(c) => c,
        Outcome::Signalled(s) => 128 + s,
        Outcome::Stopped => 130,
        Outcome::TimedOut => {
            p.warn(&format!(
                "timed out after {:?}; everything it started was killed",
                a.timeout.unwrap_or_default()
            ));
            124
        }
    })
}
