//! watch's log: one line per event, for people (time, then what happened)
//! or a JSON object per line (`--json`: the event serialised, with its time).

use crate::ops::watch::Event;
use crate::output::{escape, Printer, Style};

/// One line per event: human, or a JSON object per line with `--json`.
pub fn line(p: &Printer, e: &Event) {
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    if p.json {
        #[derive(serde::Serialize)]
        struct Line<'a, 'e> {
            #[serde(flatten)]
            event: &'a Event<'e>,
            time: String,
        }
        let doc = Line { event: e, time };
        crate::output::stdout(format_args!(
            "{}\n",
            serde_json::to_string(&doc).expect("an event serialises")
        ));
        return;
    }
    let human = match e {
        Event::Gate { gate } => match gate.result {
            crate::ops::promote::GateResult::Promoted => format!(
                "{} {}: {} is current",
                p.paint(Style::Create, "promoted"),
                escape(&gate.address),
                escape(&gate.candidate)
            ),
            _ => format!(
                "{} {}",
                p.paint(Style::Error, "not promoted:"),
                super::text::gate_failure(gate)
            ),
        },
        Event::Listening { url } => format!("serving {url} (metrics, healthz, readyz, status)"),
        Event::DriftKept { addresses } => format!(
            "{} {} drifted and stay so (drift = \"warn\"); `reconcile plan` shows how",
            p.paint(Style::Error, "drift:"),
            escape(&addresses.join(", "))
        ),
        Event::Started { file, resources } => format!(
            "watching {} ({resources} resources)",
            escape(&file.display().to_string())
        ),
        Event::Changed { files } => format!("reloaded: {} changed", join_paths(files)),
        Event::CheckoutDrift { paths, reverted } => format!(
            "{} the checkout was changed by hand ({}); put back as committed: {}",
            p.paint(Style::Error, "drift:"),
            join_paths(paths),
            join_paths(reverted)
        ),
        Event::Drift { addresses, paths } => format!(
            "drift in {}: {}",
            escape(&addresses.join(", ")),
            join_paths(paths)
        ),
        Event::Planned {
            addresses,
            changes,
            trigger,
        } => format!(
            "{changes} change(s) to {} ({trigger})",
            escape(&addresses.join(", "))
        ),
        Event::Applied {
            addresses, took, ..
        } => format!(
            "{} {} in {} ms",
            p.paint(Style::Create, "applied"),
            escape(&addresses.join(", ")),
            took.as_millis()
        ),
        Event::InvalidConfig { diagnostics } => {
            if !p.json {
                super::text::diagnostics(p, diagnostics);
            }
            format!(
                "{} {} problem(s); the last good file stays in force",
                p.paint(Style::Error, "invalid file:"),
                diagnostics.len()
            )
        }
        Event::Error { message } => {
            format!("{} {}", p.paint(Style::Error, "error:"), escape(message))
        }
        Event::Commit { commit, from } => format!(
            "applying commit {}{}",
            crate::ops::short_commit(commit),
            from.map(|f| format!(" (was {})", crate::ops::short_commit(f)))
                .unwrap_or_default()
        ),
        Event::Stopped { signal } => format!("stopped ({signal})"),
        Event::Tested {
            run,
            pass,
            fail,
            warn,
            skip,
        } => format!("tests ({run}): {pass} passed, {fail} failed, {warn} warned, {skip} skipped"),
    };
    if !p.quiet || matches!(e, Event::Error { .. } | Event::InvalidConfig { .. }) {
        crate::output::stdout(format_args!("{time} {human}\n"));
    }
}

fn join_paths(paths: &[std::path::PathBuf]) -> String {
    let shown: Vec<String> = paths
        .iter()
        .take(3)
        .map(|p| escape(&crate::output::display_name(p)).into_owned())
        .collect();
    let more = if paths.len() > 3 {
        format!(" and {} more", paths.len() - 3)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}
