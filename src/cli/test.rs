use super::{Cli, TestArgs};
use crate::error::{exit, Result};
use crate::ops::test::{self, Request};
use crate::output::Printer;
use crate::render::{self, markdown, text};

pub fn run(cli: &Cli, a: &TestArgs, p: &Printer) -> Result<i32> {
    let desired = crate::ops::load(&cli.file, None, cli.load_options(), false)?.desired;
    let req = Request {
        patterns: a.patterns.clone(),
        suites: a.suite.clone(),
        tags: a.tag.clone(),
        partition: a.partition,
        rerun_failed: a.rerun_failed,
        jobs: a.jobs,
        timeout_multiplier: a.timeout_multiplier,
        output: a.output.clone(),
    };
    let Some(filters) = req.filters(&desired)? else {
        p.out("The last run had no failures; nothing to rerun.");
        return Ok(exit::OK);
    };
    if a.list {
        let sel = test::list(&desired, &filters)?;
        if p.json {
            p.json_doc(&sel.listing(a.explain));
        } else {
            text::test_list(p, &sel, a.explain);
        }
        return Ok(exit::OK);
    }
    let report = test::run(&desired, &filters, &req, &mut |e| text::test_event(p, e))?;
    render::emit(
        p,
        &report,
        || markdown::test(&report),
        || text::test_summary(p, &report),
    );
    Ok(test::code(&report))
}
