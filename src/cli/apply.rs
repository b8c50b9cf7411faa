use super::{render, targets, ApplyArgs, Cli};
use crate::apply::{self, Event};
use crate::config;
use crate::error::{exit, Error, Result};
use crate::output::{escape, Printer, Style};

pub fn run(cli: &Cli, a: &ApplyArgs, p: &Printer) -> Result<i32> {
    let desired = config::load(&cli.file)?;
    if a.locked {
        let problems = desired.unlocked_sources();
        if !problems.is_empty() {
            return Err(Error::Usage(format!(
                "--locked: {}; run `reconcile lock`",
                problems.join("; ")
            )));
        }
    }
    let opts = apply::Options {
        verify: a.verify,
        targets: targets(&a.target)?,
        lock_timeout: a.lock_timeout,
        saved_plan: a.plan.clone(),
        progress: p.progress(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cancel: Some(interrupt_flag()),
    };
    let mut events = Vec::new();
    let outcome = apply::converge(&desired, &opts, &mut |e| match e {
        Event::Recovered(r) => {
            p.info(&format!(
                "recovered {}: interrupted at step `{}`, {}",
                escape(&r.address),
                escape(&r.last_step),
                r.outcome
            ));
            events.push(serde_json::json!({ "event": "recovered", "address": r.address, "outcome": r.outcome, "step": r.last_step }));
        }
        Event::Planned(plan) => {
            if !p.json {
                render::plan(p, plan);
            }
        }
        Event::Applying { address, changes } => {
            for c in changes {
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
            for line in said {
                p.info(&format!("  {}", escape(line)));
            }
            events.push(serde_json::json!({ "event": "applied", "address": address, "ms": took.as_millis(), "said": said }));
        }
        Event::Failed { address, error } => {
            let msg = error.to_string();
            let msg = if msg.starts_with(address) {
                msg
            } else {
                format!("{address}: {msg}")
            };
            eprintln!("{} {}", p.paint(Style::Error, "failed:"), escape(&msg));
            if let Some(h) = error.help() {
                eprintln!("  {} {h}", p.paint(Style::Dim, "help:"));
            }
            events.push(serde_json::json!({ "event": "failed", "address": address, "error": error.to_string() }));
        }
    })?;
    if outcome.cancelled {
        p.warn("interrupted: stopped after the resource in progress; every managed path is fully old or fully new. Apply again to finish.");
    }
    let code = if outcome.failed.is_empty() && !outcome.cancelled {
        exit::OK
    } else {
        exit::ERROR
    };
    // converged: now the [run] test plan (unless --no-test); exit 4 when a test fails
    let tests = match (
        code,
        crate::harness::select::Filters::from_run(&desired),
        a.no_test,
    ) {
        (exit::OK, Some(plan), false) if p.json => {
            Some(super::test::run_tests_quietly(&desired, &plan)?)
        }
        _ => None,
    };
    if p.json {
        // one document: the apply and, when tests ran, their report
        p.json_doc(&serde_json::json!({
            "format_version": 1,
            "result": if code == exit::OK { "converged" } else { "failed" },
            "changes": outcome.changes,
            "failed": outcome.failed,
            "events": events,
            "tests": tests,
        }));
        return Ok(tests.as_ref().map_or(code, super::test::code));
    }
    if code == exit::OK {
        p.out(&format!(
            "Converged: {} change(s) applied.",
            outcome.changes
        ));
    } else {
        p.out(&format!("Apply failed for {}; everything else converged. The failed resources keep their previous state.", escape(&outcome.failed.join(", "))));
    }
    if let (exit::OK, Some(plan), false) = (
        code,
        crate::harness::select::Filters::from_run(&desired),
        a.no_test,
    ) {
        let report = super::test::run_tests(&desired, &plan, None, 1.0, None, p)?;
        return Ok(super::test::code(&report));
    }
    Ok(code)
}

/// SIGINT/SIGTERM set this flag instead of killing the process, so an apply
/// finishes the resource in progress and stops cleanly.
fn interrupt_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}
