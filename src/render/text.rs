//! Human rendering of errors, diagnostics and plans.

use miette::{GraphicalReportHandler, GraphicalTheme};

use crate::config::Diagnostic;
use crate::error::Error;
use crate::output::{escape, Printer, Style};
use crate::plan::Plan;
use crate::resource::Action;

/// Diagnostics shown with their source snippet; past this, one line each
/// (a snippet costs a scan of the file, and thousands of them help no one).
const WITH_SNIPPETS: usize = 50;

pub fn diagnostics(p: &Printer, diags: &[Diagnostic]) {
    let theme = if p.color() {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_context_lines(1);
    for (i, d) in diags.iter().enumerate() {
        if i == WITH_SNIPPETS {
            eprintln!(
                "… and {} more, one line each (`reconcile validate --json` lists them all):",
                diags.len() - WITH_SNIPPETS
            );
        }
        if i >= WITH_SNIPPETS {
            eprintln!(
                "{}:{}:{}: {} {}",
                d.file,
                d.line,
                d.column,
                p.paint(Style::Error, "error:"),
                escape(&d.message)
            );
            continue;
        }
        let mut s = String::new();
        if handler.render_report(&mut s, d).is_err() {
            s = format!("{}:{}:{}: {}\n", d.file, d.line, d.column, d.message);
        }
        // the location first, as compilers print it, so editors and CI logs can jump to it
        eprintln!(
            "{}:{}:{}: {}",
            d.file,
            d.line,
            d.column,
            p.paint(Style::Error, "error")
        );
        eprint!("{s}");
    }
}

pub fn error(p: &Printer, e: &Error) {
    if let Error::Invalid(diags) = e {
        diagnostics(p, diags);
    }
    eprintln!(
        "{} {}",
        p.paint(Style::Error, "error:"),
        escape(&e.to_string())
    );
    if let Some(h) = e.help() {
        eprintln!("  {} {h}", p.paint(Style::Dim, "help:"));
    }
}

pub fn action(p: &Printer, a: Action) -> String {
    let style = match a {
        Action::Create => Style::Create,
        Action::Update | Action::Replace => Style::Update,
        Action::Delete => Style::Delete,
    };
    p.paint(style, a.symbol())
}

/// `+ plugin.kolet → plugins/kolet: not installed (version 1.2.0)`, one line per change, then the summary.
pub fn plan(p: &Printer, plan: &Plan) {
    for r in &plan.resources {
        for c in &r.changes {
            p.out(&format!(
                "{} {} {} {}: {}",
                action(p, c.action),
                p.paint(Style::Bold, &escape(&r.address)),
                p.paint(Style::Dim, "→"),
                escape(&crate::config::display_name(&r.path)),
                escape(&c.reason)
            ));
        }
    }
    for n in &plan.not_for_host {
        p.out(&p.paint(
            Style::Dim,
            &format!(
                "= {}: not for this host ({})",
                escape(&n.address),
                escape(&n.reason)
            ),
        ));
    }
    p.out(&summary(plan));
}

pub fn summary(plan: &Plan) -> String {
    let s = &plan.summary;
    if s.changes() == 0 {
        format!("No changes: {} resource(s) in sync.", s.unchanged)
    } else {
        format!(
            "Plan: {} to create, {} to update, {} to replace, {} to delete; {} unchanged.",
            s.create, s.update, s.replace, s.delete, s.unchanged
        )
    }
}

/// One line per test as it finishes (stdout in text mode); notes and the run's start on stderr.
pub fn test_event(p: &Printer, e: &crate::harness::run::Event) {
    use crate::harness::report::Verdict;
    use crate::harness::run::Event;
    match e {
        Event::Started { run_dir, tests } => p.info(&format!(
            "running {tests} test(s); output in {}",
            crate::config::display_name(run_dir)
        )),
        Event::Note(line) => p.info(line),
        Event::TestStarted { name } => p.detail(&format!("started {}", escape(name))),
        Event::Retrying {
            name,
            attempt,
            class,
            reason,
        } => p.info(&format!(
            "{} {} (attempt {attempt} failed{}: {}); trying again",
            p.paint(Style::Update, "RETRY"),
            escape(name),
            class.map(|c| format!(", {}", c.key())).unwrap_or_default(),
            escape(reason)
        )),
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
            p.out(&format!(
                "{} {} ({} ms){reason}",
                p.paint(style, word),
                escape(&t.name),
                t.duration_ms
            ));
        }
    }
}

/// The end of a test run: each failure with where its output is, then the counts.
pub fn test_summary(p: &Printer, report: &crate::harness::report::Report) {
    let s = &report.summary;
    p.out("");
    for (name, (reason, out)) in crate::harness::run::failures(report) {
        p.out(&format!(
            "{} {}: {}\n     output: {}",
            p.paint(Style::Delete, "failed:"),
            escape(&name),
            escape(&reason),
            escape(&crate::config::display_name(&out))
        ));
    }
    p.out(&format!(
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
    ));
}
