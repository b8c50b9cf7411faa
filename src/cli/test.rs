use std::path::PathBuf;

use serde_json::json;

use super::{Cli, TestArgs};
use crate::config::{self, Desired};
use crate::error::{exit, Result};
use crate::harness::report::Report;
use crate::harness::run;
use crate::harness::select::{self, Filters};
use crate::output::{escape, Printer, Style};
use crate::render::text as render;
use crate::render::{markdown, step_summary};

pub fn run(cli: &Cli, a: &TestArgs, p: &Printer) -> Result<i32> {
    let desired = config::load_with(&cli.file, cli.load_options())?;
    let runs_dir = a
        .output
        .clone()
        .unwrap_or_else(|| desired.state_dir.join("runs"));
    let mut filters = Filters {
        patterns: a.patterns.clone(),
        suites: a.suite.clone(),
        tags: a.tag.clone(),
        names: None,
        partition: a.partition,
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
    // a list is text in every format but JSON
    let say = |line: &str| println!("{line}");
    for s in &sel.selected {
        match &s.skip {
            Some(k) if k.warn => say(&format!(
                "{}  (runs; a failure only warns: {})",
                escape(&s.case.name),
                k.reason
            )),
            Some(k) => say(&format!(
                "{}  (skipped: {})",
                escape(&s.case.name),
                k.reason
            )),
            None => say(&escape(&s.case.name)),
        }
    }
    if explain {
        for (name, why) in &sel.excluded {
            say(&format!(
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

/// Select, run and render (`test`).
pub fn run_tests(
    desired: &Desired,
    filters: &Filters,
    jobs: Option<usize>,
    timeout_multiplier: f64,
    runs_dir: Option<PathBuf>,
    p: &Printer,
) -> Result<Report> {
    let sel = select::select(desired, filters)?;
    let mut opts = run::Options::standard(desired, crate::process::cancel_on_signals());
    if let Some(j) = jobs {
        opts.jobs = j;
    }
    opts.timeout_multiplier = timeout_multiplier;
    if let Some(dir) = runs_dir {
        opts.runs_dir = dir;
    }
    let report = run::run(desired, sel, &opts, &mut |e| render::test_event(p, &e))?;
    let summary = step_summary::target().is_some();
    let md = (p.markdown || summary).then(|| markdown::test(&report));
    if p.json {
        p.json_doc(&report);
    } else if let (Some(md), true) = (&md, p.markdown) {
        print!("{md}");
    } else {
        render::test_summary(p, &report);
    }
    if let (Some(md), true) = (&md, summary) {
        if let Some(w) = step_summary::append(md) {
            p.warn(&w);
        }
    }
    Ok(report)
}
