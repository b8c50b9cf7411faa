use serde_json::json;

use super::{render, Cli, WatchArgs};
use crate::error::{exit, Result};
use crate::output::{escape, Printer, Style};
use crate::state::now_rfc3339;
use crate::watch::{self, Event};

pub fn run(cli: &Cli, a: &WatchArgs, p: &Printer) -> Result<i32> {
    let opts = watch::Options {
        file: cli.file.clone(),
        interval: a.interval,
        debounce: a.debounce,
        lock_timeout: a.lock_timeout,
        git: a.git.remote(cli),
        load: cli.load_options(),
    };
    watch::run(&opts, &mut |e| log(p, &e))?;
    Ok(exit::OK)
}

/// One line per event: human, or a JSON object per line with `--json`.
fn log(p: &Printer, e: &Event) {
    let time = now_rfc3339();
    let (name, doc, human) = match e {
        Event::Started { file, resources } => (
            "started",
            json!({ "file": file, "resources": resources }),
            format!(
                "watching {} ({resources} resources)",
                escape(&file.display().to_string())
            ),
        ),
        Event::Changed { files } => (
            "changed",
            json!({ "files": files }),
            format!("reloaded: {} changed", join_paths(files)),
        ),
        Event::CheckoutDrift { paths, reverted } => (
            "checkout-drift",
            json!({ "paths": paths, "reverted": reverted }),
            format!(
                "{} the checkout was changed by hand ({}); put back as committed: {}",
                p.paint(Style::Error, "drift:"),
                join_paths(paths),
                join_paths(reverted)
            ),
        ),
        Event::Drift { addresses, paths } => (
            "drift",
            json!({ "addresses": addresses, "paths": paths }),
            format!(
                "drift in {}: {}",
                escape(&addresses.join(", ")),
                join_paths(paths)
            ),
        ),
        Event::Planned {
            addresses,
            changes,
            trigger,
        } => (
            "planned",
            json!({ "addresses": addresses, "changes": changes, "trigger": trigger }),
            format!(
                "{changes} change(s) to {} ({trigger})",
                escape(&addresses.join(", "))
            ),
        ),
        Event::Applied {
            addresses,
            changes,
            took,
        } => (
            "applied",
            json!({ "addresses": addresses, "changes": changes, "ms": took.as_millis() }),
            format!(
                "{} {} in {} ms",
                p.paint(Style::Create, "applied"),
                escape(&addresses.join(", ")),
                took.as_millis()
            ),
        ),
        Event::InvalidConfig { diagnostics } => {
            if !p.json {
                render::diagnostics(p, diagnostics);
            }
            (
                "invalid-config",
                json!({ "diagnostics": diagnostics.iter().map(|d| d.record()).collect::<Vec<_>>() }),
                format!(
                    "{} {} problem(s); the last good file stays in force",
                    p.paint(Style::Error, "invalid file:"),
                    diagnostics.len()
                ),
            )
        }
        Event::Error { message } => (
            "error",
            json!({ "message": message }),
            format!("{} {}", p.paint(Style::Error, "error:"), escape(message)),
        ),
        Event::Commit { commit, from } => (
            "commit",
            json!({ "commit": commit, "from": from }),
            format!(
                "applying commit {}{}",
                crate::fleet::git::short(commit),
                from.map(|f| format!(" (was {})", crate::fleet::git::short(f)))
                    .unwrap_or_default()
            ),
        ),
        Event::Stopped { signal } => (
            "stopped",
            json!({ "signal": signal }),
            format!("stopped ({signal})"),
        ),
        Event::Tested {
            run,
            pass,
            fail,
            warn,
            skip,
        } => (
            "tested",
            json!({ "run": run, "pass": pass, "fail": fail, "warn": warn, "skip": skip }),
            format!("tests ({run}): {pass} passed, {fail} failed, {warn} warned, {skip} skipped"),
        ),
    };
    if p.json {
        let mut doc = doc;
        doc["event"] = json!(name);
        doc["time"] = json!(time);
        println!("{doc}");
    } else if !p.quiet || matches!(e, Event::Error { .. } | Event::InvalidConfig { .. }) {
        println!("{time} {human}");
    }
}

fn join_paths(paths: &[std::path::PathBuf]) -> String {
    let shown: Vec<String> = paths
        .iter()
        .take(3)
        .map(|p| escape(&crate::config::display_name(p)).into_owned())
        .collect();
    let more = if paths.len() > 3 {
        format!(" and {} more", paths.len() - 3)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}
