use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::json;

use super::{Cli, TestArgs};
use crate::config::{self, Desired};
use crate::error::{exit, Result};
use crate::harness::report::{Report, Verdict};
use crate::harness::run::{self, Event};
use crate::harness::select::{self, Filters};
use crate::output::{escape, Printer, Style};

pub fn run(cli: &Cli, a: &TestArgs, p: &Printer) -> Result<i32> {
    let desired = config::load(&cli.file)?;
    let runs_dir = a
        .output
        .clone()
        .unwrap_or_else(|| desired.state_dir.join("runs"));
    let mut filters = Filters {
        patterns: a.patterns.clone(),
        suites: a.suite.clone(),
        tags: a.tag.clone(),
        names: None,
    };
    if a.rerun_failed {
        let names = run::last_failures(&runs_dir)?;
        if names.is_empty() {
            p.out("The last run had no failures; nothing to rerun.");
            return Ok(exit::OK);
        }
        filters.names = Some(names);
    }
    if a.list {
        return list(&desired, &filters, a.explain, p);
    }
    let report = run_tests(
        &desired,
        &filters,
        a.jobs,
        a.timeout_multiplier,
        Some(runs_dir),
        p,
    )?;
    Ok(code(&report))
}

pub fn code(report: &Report) -> i32 {
    if report.incomplete {
        exit::ERROR
    } else if report.failed() {
        exit::TESTS_FAILED
    } else {
        exit::OK
    }
}

fn list(desired: &Desired, filters: &Filters, explain: bool, p: &Printer) -> Result<i32> {
    let sel = select::select(desired, filters)?;
    if p.json {
        let selected: Vec<_> = sel
            .selected
            .iter()
            .map(|s| json!({ "name": s.case.name, "suite": s.case.suite, "machine": s.case.machine, "skip": s.skip.as_ref().map(|k| json!({"reason": k.reason, "warn": k.warn})) }))
            .collect();
        let excluded: Vec<_> = sel
            .excluded
            .iter()
            .map(|(n, r)| json!({ "name": n, "reason": r }))
            .collect();
        p.json_doc(&json!({ "format_version": 1, "selected": selected, "excluded": if explain { excluded } else { vec![] } }));
        return Ok(exit::OK);
    }
    for s in &sel.selected {
        match &s.skip {
            Some(k) if k.warn => p.out(&format!(
                "{}  (runs; a failure only warns: {})",
                escape(&s.case.name),
                k.reason
            )),
            Some(k) => p.out(&format!(
                "{}  (skipped: {})",
                escape(&s.case.name),
                k.reason
            )),
            None => p.out(&escape(&s.case.name)),
        }
    }
    if explain {
        for (name, why) in &sel.excluded {
            p.out(&format!(
                "{} {}: {}",
                p.paint(Style::Dim, "not selected:"),
                escape(name),
                escape(why)
            ));
        }
    }
    p.info(&format!(
        "{} selected, {} not selected",
        sel.selected.len(),
        sel.excluded.len()
    ));
    Ok(exit::OK)
}

/// Select and run without printing anything (for `apply --json`, which embeds the report).
pub fn run_tests_quietly(desired: &Desired, filters: &Filters) -> Result<Report> {
    let sel = select::select(desired, filters)?;
    run::run(
        desired,
        sel,
        &run::Options::standard(desired, interrupt_flag()),
        &mut |_| {},
    )
}

fn interrupt_flag() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, cancel.clone());
    }
    cancel
}

/// Select, run and render; used by `test` and `apply` (the `[run]` plan).
pub fn run_tests(
    desired: &Desired,
    filters: &Filters,
    jobs: Option<usize>,
    timeout_multiplier: f64,
    runs_dir: Option<PathBuf>,
    p: &Printer,
) -> Result<Report> {
    let sel = select::select(desired, filters)?;
    let cancel = interrupt_flag();
    let opts = run::Options {
        jobs: jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        timeout_multiplier,
        runs_dir: runs_dir.unwrap_or_else(|| desired.state_dir.join("runs")),
        cancel: cancel.clone(),
    };
    let report = run::run(desired, sel, &opts, &mut |e| match e {
        Event::Started { run_dir, tests } => p.info(&format!(
            "running {tests} test(s); output in {}",
            config::display_name(run_dir)
        )),
        Event::Note(line) => p.info(line),
        Event::Finished(t) => {
            let (word, style) = match t.result {
                Verdict::Pass => ("PASS", Style::Create),
                Verdict::Fail => ("FAIL", Style::Delete),
                Verdict::Warn => ("WARN", Style::Update),
                Verdict::Skip => ("SKIP", Style::Dim),
            };
            let reason = t
                .reason
                .as_deref()
                .map(|r| format!(": {}", escape(r)))
                .unwrap_or_default();
            if !p.json {
                println!(
                    "{} {} ({} ms){reason}",
                    p.paint(style, word),
                    escape(&t.name),
                    t.duration_ms
                );
            }
        }
    })?;
    if p.json {
        p.json_doc(&report);
    } else {
        let s = &report.summary;
        println!();
        for (name, (reason, out)) in run::failures(&report) {
            println!(
                "{} {}: {}\n     output: {}",
                p.paint(Style::Delete, "failed:"),
                escape(&name),
                escape(&reason),
                escape(&config::display_name(&out))
            );
        }
        println!(
            "{}: {} passed, {} failed, {} warned, {} skipped{}",
            if report.failed() { "FAILED" } else { "ok" },
            s.pass,
            s.fail,
            s.warn,
            s.skip,
            if report.incomplete {
                " (interrupted: the report is incomplete)"
            } else {
                ""
            }
        );
    }
    Ok(report)
}
