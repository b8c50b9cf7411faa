use super::{load, render, targets, ApplyArgs, Cli};
use crate::apply::report::{converge_then_test, ApplyResult, Progress, Tests};
use crate::apply::{self, Event};
use crate::error::{Error, Result};
use crate::harness::{run, select};
use crate::output::{escape, Printer, Style};
use crate::render::{markdown, step_summary};

pub fn run(cli: &Cli, a: &ApplyArgs, p: &Printer) -> Result<i32> {
    let loaded = load(cli, &a.git, p, false)?;
    let (desired, pulled) = (&loaded.desired, &loaded.git);
    if a.locked {
        let problems = desired.unlocked_sources();
        if !problems.is_empty() {
            return Err(Error::Usage(format!(
                "--locked: {}; run `reconcile lock`",
                problems.join("; ")
            )));
        }
    }
    let cancel = crate::process::cancel_on_signals();
    let opts = apply::Options {
        verify: a.verify,
        targets: targets(&a.target)?,
        lock_timeout: a.lock_timeout,
        saved_plan: a.plan.clone(),
        progress: p.progress(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cancel: Some(cancel.clone()),
    };
    // converged: then the [run] test plan (unless --no-test); exit 4 when a test fails
    let tests = match (select::Filters::from_run(desired), a.no_test) {
        (Some(filters), false) => Some(Tests {
            filters,
            opts: run::Options::standard(desired, cancel),
            only_after_changes: false,
        }),
        _ => None,
    };
    let summary = step_summary::target().is_some();
    let report = converge_then_test(
        desired,
        &opts,
        tests,
        p.markdown || summary,
        &mut |e| match e {
            Progress::Apply(e) => narrate(p, &e),
            Progress::Test(e) => render::test_event(p, &e),
        },
    )?;
    // the commit's file is in force once the host converged to it
    if let (Some((remote, commit)), ApplyResult::Converged | ApplyResult::Failed) =
        (pulled, report.result)
    {
        remote.note_applied(commit)?;
    }
    if report.result == ApplyResult::Interrupted {
        p.warn("interrupted: stopped after the resource in progress; every managed path is fully old or fully new. Apply again to finish.");
    }
    let full = match &a.plan {
        Some(plan) => format!("the saved plan `{}`", plan.display()),
        None => "`reconcile plan --format json`".to_string(),
    };
    let md = (p.markdown || summary).then(|| markdown::apply(&report, &full));
    if p.json {
        // one document: the apply and, when tests ran, their report
        p.json_doc(&report);
    } else if let (Some(md), true) = (&md, p.markdown) {
        print!("{md}");
    } else {
        match report.result {
            ApplyResult::Converged => p.out(&format!("Converged: {} change(s) applied.", report.changes)),
            _ if !report.failed.is_empty() => p.out(&format!(
                "Apply failed for {}; everything else converged. The failed resources keep their previous state.",
                escape(&report.failed.join(", "))
            )),
            _ => {}
        }
        if let Some(t) = &report.tests {
            render::test_summary(p, t);
        }
    }
    if let (Some(md), true) = (&md, summary) {
        if let Some(w) = step_summary::append(md) {
            p.warn(&w);
        }
    }
    // a commit not taken: the host converged on the last good one, and says so with exit 1
    if let (Some(nt), Some((_, commit))) = (&loaded.not_taken, pulled) {
        return Ok(super::not_taken(p, nt, commit));
    }
    Ok(report.code())
}

/// What an apply says as it goes (stderr; the plan on stdout in text mode).
fn narrate(p: &Printer, e: &Event) {
    match e {
        Event::Recovered(r) => p.info(&format!(
            "recovered {}: interrupted at step `{}`, {}",
            escape(&r.address),
            escape(&r.last_step),
            r.outcome
        )),
        Event::Planned(plan) => {
            if p.text() {
                render::plan(p, plan);
            }
        }
        Event::Applying { address, changes } => {
            for c in changes.iter() {
                p.detail(&format!(
                    "{} {}: {}",
                    render::action(p, c.action),
                    escape(address),
                    escape(&c.reason)
                ));
            }
        }
        Event::Applied {
            address,
            took,
            said,
        } => {
            p.info(&format!(
                "{} {} ({} ms)",
                p.paint(Style::Create, "done"),
                escape(address),
                took.as_millis()
            ));
            for line in said.iter() {
                p.info(&format!("  {}", escape(line)));
            }
        }
        Event::Failed { address, error } => {
            let msg = error.to_string();
            let msg = if msg.starts_with(*address) {
                msg
            } else {
                format!("{address}: {msg}")
            };
            eprintln!("{} {}", p.paint(Style::Error, "failed:"), escape(&msg));
            if let Some(h) = error.help() {
                eprintln!("  {} {h}", p.paint(Style::Dim, "help:"));
            }
        }
    }
}
