use super::{ApplyArgs, Cli};
use crate::error::Result;
use crate::ops::apply::{self, Progress, Request};
use crate::output::Printer;
use crate::render::{self, markdown, text};

pub fn run(cli: &Cli, a: &ApplyArgs, p: &Printer) -> Result<i32> {
    let loaded = crate::ops::load(
        &cli.file,
        a.git.remote(cli, a.take.clone()),
        cli.load_options(),
        false,
    )?;
    if let Some((remote, commit)) = &loaded.git {
        text::pulled(p, &remote.url, commit);
    }
    let req = Request {
        verify: a.converge.verify,
        targets: a.converge.target.clone(),
        lock_timeout: a.lock_timeout,
        saved_plan: a.plan.clone(),
        progress: p.progress(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        no_test: a.no_test,
        retest: a.retest,
        locked: a.converge.locked,
        keep_plan: p.markdown || render::step_summary::target().is_some(),
    };
    let report = apply::apply(&loaded, &req, &mut |e| match e {
        Progress::Apply(e) => text::apply_event(p, &e),
        Progress::Test(e) => text::test_event(p, &e),
        Progress::Gate(e) => text::gate_event(p, &e),
    })?;
    let full = match &a.plan {
        Some(plan) => format!("the saved plan `{}`", plan.display()),
        None => "`reconcile plan --format json`".to_string(),
    };
    render::emit(
        p,
        &report,
        || markdown::apply(&report, &full),
        || text::apply_report(p, &report),
    );
    // a commit not taken: the host converged on the last good one, and says so with exit 1
    if let (Some(nt), Some((_, commit))) = (&loaded.not_taken, &loaded.git) {
        text::not_taken(p, nt, commit);
        return Ok(crate::error::exit::ERROR);
    }
    Ok(report.code())
}
