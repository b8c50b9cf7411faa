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

/// An error on stderr, its diagnostics first, then `help` (what to do).
pub fn error(p: &Printer, e: &Error, help: Option<&str>) {
    if let Error::Invalid(diags) = e {
        diagnostics(p, diags);
    }
    eprintln!(
        "{} {}",
        p.paint(Style::Error, "error:"),
        escape(&e.to_string())
    );
    if let Some(h) = help {
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

/// What a plan line of a `drift = "warn"` resource adds.
pub const DRIFT_KEPT: &str = " (drift = \"warn\": reported, not repaired)";

/// `+ plugin.kolet → plugins/kolet: not installed (version 1.2.0)`, one line per change, then the summary.
pub fn plan(p: &Printer, plan: &Plan) {
    for r in &plan.resources {
        for c in &r.changes {
            p.item(&format!(
                "{} {} {} {}: {}{}",
                action(p, c.action),
                p.paint(Style::Bold, &escape(&r.address)),
                p.paint(Style::Dim, "→"),
                escape(&crate::output::display_name(&r.path)),
                escape(&c.reason),
                if r.drift_warn { DRIFT_KEPT } else { "" }
            ));
        }
    }
    for n in &plan.not_for_host {
        p.item(&p.paint(
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
    if s.changing() == 0 {
        format!("No changes: {} resource(s) in sync.", s.unchanged)
    } else {
        format!(
            "Plan: {} to create, {} to update, {} to replace, {} to delete{}; {} unchanged.",
            s.create,
            s.update,
            s.replace,
            s.delete,
            s.changes_beyond_resources()
                .map(|n| format!(" ({n} changes)"))
                .unwrap_or_default(),
            s.unchanged
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
            crate::output::display_name(run_dir)
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
            p.item(&format!(
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
    p.item("");
    for (name, (reason, out)) in crate::harness::run::failures(report) {
        p.out(&format!(
            "{} {}: {}\n     output: {}",
            p.paint(Style::Delete, "failed:"),
            escape(&name),
            escape(&reason),
            escape(&crate::output::display_name(&out))
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

/// What an apply says as it goes (stderr; the plan on stdout in text mode).
pub fn apply_event(p: &Printer, e: &crate::ops::apply::Event) {
    use crate::ops::apply::Event;
    match e {
        Event::Recovered(r) => p.info(&format!(
            "recovered {}: interrupted at step `{}`, {}",
            escape(&r.address),
            escape(&r.last_step),
            r.outcome
        )),
        Event::Planned(plan_) => {
            if p.text() {
                plan(p, plan_);
            }
        }
        Event::Applying { address, changes } => {
            for c in changes.iter() {
                p.detail(&format!(
                    "{} {}: {}",
                    action(p, c.action),
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

/// A candidate behind its promotion gate: tested, then switched in or kept (stderr).
pub fn gate_event(p: &Printer, e: &crate::ops::promote::GateEvent) {
    use crate::ops::promote::{GateEvent, GateResult};
    match e {
        GateEvent::Testing { candidate: c } => p.info(&format!(
            "testing candidate {} of {} (promoted after {})",
            escape(&c.what),
            escape(&c.address),
            escape(&c.after.join(", "))
        )),
        GateEvent::Done(g) => match g.result {
            GateResult::Promoted => p.info(&format!(
                "{} {}: {} is current",
                p.paint(Style::Create, "promoted"),
                escape(&g.address),
                escape(&g.candidate)
            )),
            GateResult::Failed => eprintln!(
                "{} {}",
                p.paint(Style::Error, "not promoted:"),
                gate_failure(g)
            ),
            GateResult::Interrupted => p.warn(&format!(
                "{}: interrupted while testing candidate {}; what was current stays so",
                escape(&g.address),
                escape(&g.candidate)
            )),
        },
    }
}

/// `machine.kit: candidate revision 3 failed smoke.boot (run …); revision 2 stays current…`
pub fn gate_failure(g: &crate::ops::promote::Gate) -> String {
    format!(
        "{}: candidate {} failed {}{}; what is current stays so, the candidate is kept for inspection{}",
        escape(&g.address),
        escape(&g.candidate),
        escape(&g.failed.join(", ")),
        g.run
            .as_deref()
            .map(|r| format!(" (run {})", escape(r)))
            .unwrap_or_default(),
        if g.tested {
            ""
        } else {
            "; it did not change since, so it was not tested again (apply --retest)"
        }
    )
}

/// The end of an apply in text: what converged or failed, then the tests.
pub fn apply_report(p: &Printer, report: &crate::ops::apply::ApplyReport) {
    use crate::ops::apply::ApplyResult;
    if report.result == ApplyResult::Interrupted {
        p.warn("interrupted: stopped after the resource in progress; every managed path is fully old or fully new. Apply again to finish.");
    }
    match report.result {
        ApplyResult::Converged => p.out(&format!(
            "Converged: {} change(s) applied.",
            report.changes
        )),
        _ if !report.failed.is_empty() => p.out(&format!(
            "Apply failed for {}; everything else converged. The failed resources keep their previous state.",
            escape(&report.failed.join(", "))
        )),
        _ => {}
    }
    for g in report
        .gates
        .iter()
        .filter(|g| g.result != crate::ops::promote::GateResult::Promoted)
    {
        p.out(&format!("Not promoted: {}", gate_failure(g)));
    }
    if !report.drift_kept.is_empty() {
        p.warn(&format!(
            "drifted and left so (drift = \"warn\"): {}; `reconcile plan` shows what changed",
            escape(&report.drift_kept.join(", "))
        ));
    }
    if let Some(t) = &report.tests {
        test_summary(p, t);
    }
}

/// The commit a desired state was pulled at (stderr).
pub fn pulled(p: &Printer, url: &str, commit: &str) {
    p.info(&format!(
        "{} at {}",
        escape(url),
        crate::ops::short_commit(commit)
    ));
}

/// A commit that was not taken, said once the last good one was used: its
/// diagnostics, then one line naming it and why.
pub fn not_taken(p: &Printer, nt: &crate::ops::NotTaken, used: &str) {
    if !nt.diagnostics.is_empty() {
        diagnostics(p, &nt.diagnostics);
    }
    eprintln!(
        "{} {}; the last good commit {} was used",
        p.paint(Style::Error, "error:"),
        escape(&nt.why),
        crate::ops::short_commit(used)
    );
}

/// `status` for people.
pub fn status(p: &Printer, st: &crate::ops::status::StatusReport) {
    if let Some(r) = &st.git {
        let c = |x: &Option<String>| {
            x.as_deref()
                .map(crate::ops::short_commit)
                .unwrap_or("none")
                .to_string()
        };
        p.out(&format!(
            "Git: {} {}: applied {}, fetched {}{}",
            escape(&r.url),
            escape(&r.reference),
            c(&r.applied),
            c(&r.fetched),
            r.last_error
                .as_deref()
                .map(|e| format!("; last error: {}", escape(e)))
                .unwrap_or_default()
        ));
    }
    if st.resources.is_empty() {
        p.out("Nothing declared or installed.");
    }
    for r in &st.resources {
        let mut line = format!(
            "{} {} {}: {}",
            p.paint(Style::Bold, &escape(&r.address)),
            p.paint(Style::Dim, "→"),
            escape(&crate::output::display_name(&r.path)),
            escape(&r.state)
        );
        if let Some(at) = r.installed_at() {
            line.push_str(&format!(" (since {at})"));
        }
        if !r.declared {
            line.push_str(" [not declared; the next apply prunes it]");
        }
        p.out(&line);
    }
    match &st.last_apply {
        Some(l) => p.out(&format!(
            "Last apply: {} — {}, {} change(s), {} ms.",
            l.finished, l.result, l.changes, l.duration_ms
        )),
        None => p.out("Last apply: never."),
    }
    match &st.last_tests {
        Some(t) => p.out(&format!(
            "Last tests: {} at {} — {} passed, {} failed, {} warned, {} skipped{}.",
            escape(&t.run),
            t.finished,
            t.summary.pass,
            t.summary.fail,
            t.summary.warn,
            t.summary.skip,
            if t.incomplete { " (interrupted)" } else { "" }
        )),
        None => p.out("Last tests: never."),
    }
    for b in &st.booted {
        p.out(&format!(
            "Booted snapshot: machine.{} revision {}{} — {:.1} MiB, saved {} ({}).",
            escape(&b.machine),
            b.revision,
            b.toolchain
                .as_ref()
                .map(|t| format!(" toolchain {}", escape(t)))
                .unwrap_or_default(),
            b.bytes as f64 / (1 << 20) as f64,
            b.created,
            escape(&b.qemu)
        ));
    }
    for c in &st.candidates {
        p.out(&format!(
            "Candidate: {}{} — {} (promoted after {}){}{}.",
            escape(&c.address),
            if c.revision > 0 {
                format!(" revision {}", c.revision)
            } else {
                String::new()
            },
            c.state.name(),
            escape(&c.after.join(", ")),
            c.run
                .as_deref()
                .map(|r| format!(", run {}", escape(r)))
                .unwrap_or_default(),
            if c.failed.is_empty() {
                String::new()
            } else {
                format!(", failed {}", escape(&c.failed.join(", ")))
            }
        ));
    }
}

/// `status` when the applied commit's file does not load: the record alone.
pub fn status_unloadable(p: &Printer, u: &crate::ops::status::Unloadable) {
    p.out(&format!(
        "Git: {}",
        escape(&serde_json::to_string(&u.git).unwrap_or_default())
    ));
    p.out(&format!(
        "The applied commit's file does not load: {}",
        escape(&u.error)
    ));
}

/// `test --list`: each selected test (a list is text in every format but JSON), then why others are not.
pub fn test_list(p: &Printer, sel: &crate::ops::test::Selection, explain: bool) {
    let say = |line: &str| crate::output::stdout(format_args!("{line}\n"));
    for s in &sel.selected {
        match &s.skip {
            Some(k) if k.warn => say(&format!(
                "{}  (runs; a failure only warns: {})",
                escape(&s.case.name),
                escape(&k.reason)
            )),
            Some(k) => say(&format!(
                "{}  (skipped: {})",
                escape(&s.case.name),
                escape(&k.reason)
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
}

/// `checks`: every hit, in log order, with file and line.
pub fn checks(p: &Printer, found: &crate::ops::checks::Found) {
    use crate::config::model::Severity;
    for log in &found.logs {
        for h in &log.hits {
            let sev = format!("{:?}", h.severity).to_lowercase();
            let style = if h.severity >= Severity::Fail {
                Style::Delete
            } else {
                Style::Update
            };
            p.out(&format!(
                "{}:{}: {} ({}, {} hit(s)): {}",
                escape(&log.file.display().to_string()),
                h.line,
                p.paint(style, &escape(&h.check)),
                sev,
                h.count,
                escape(&h.excerpt)
            ));
        }
    }
}

/// A command's output passed through as it comes (`exec`); a VM's console
/// to stderr when asked.
pub struct PassThrough {
    pub console: bool,
}

impl crate::process::Sink for PassThrough {
    fn step(&mut self, _name: &str) {}
    fn output(&mut self, stream: crate::process::Stream, bytes: &[u8]) -> crate::process::Flow {
        use crate::process::Stream;
        use std::io::Write;
        match stream {
            Stream::Stdout => crate::output::stdout_bytes(bytes),
            Stream::Stderr => {
                let _ = std::io::stderr().write_all(bytes);
            }
            Stream::Console | Stream::Input if self.console => {
                let _ = std::io::stderr().write_all(bytes);
            }
            _ => {}
        }
        crate::process::Flow::Continue
    }
}
