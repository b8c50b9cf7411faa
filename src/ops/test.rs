//! `test`: select tests (by pattern, suite, tag, partition, the last
//! failures), list them, or run them.

use std::path::PathBuf;

pub use crate::harness::report::Report;
pub use crate::harness::run::Event;
pub use crate::harness::select::{Partition, Selection};

use crate::config::Desired;
use crate::error::{exit, Result};
use crate::harness::run;
use crate::harness::select::{self, Filters};

/// What `reconcile test` is asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub patterns: Vec<String>,
    pub suites: Vec<String>,
    pub tags: Vec<String>,
    pub partition: Option<Partition>,
    /// The failures of the last run instead.
    pub rerun_failed: bool,
    pub jobs: Option<usize>,
    pub timeout_multiplier: f64,
    /// Where runs go (default `<state_dir>/runs`).
    pub output: Option<PathBuf>,
}

impl Request {
    fn runs_dir(&self, desired: &Desired) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| desired.state_dir.join("runs"))
    }

    /// The filters; None when the last failures are asked for and there were none.
    pub fn filters(&self, desired: &Desired) -> Result<Option<Filters>> {
        let mut filters = Filters {
            patterns: self.patterns.clone(),
            suites: self.suites.clone(),
            tags: self.tags.clone(),
            names: None,
            partition: self.partition,
        };
        if self.rerun_failed {
            let names = run::last_failures(&self.runs_dir(desired))?;
            if names.is_empty() {
                return Ok(None);
            }
            filters.names = Some(names);
        }
        Ok(Some(filters))
    }
}

/// The tests the filters select, and every other one with why not.
pub fn list<'d>(desired: &'d Desired, filters: &Filters) -> Result<Selection<'d>> {
    select::select(desired, filters)
}

/// Select and run; SIGINT/SIGTERM kill the running tests and mark the report incomplete.
pub fn run(
    desired: &Desired,
    filters: &Filters,
    req: &Request,
    on: &mut dyn FnMut(&Event),
) -> Result<Report> {
    let sel = select::select(desired, filters)?;
    let mut opts = run::Options::standard(desired, crate::process::cancel_on_signals());
    if let Some(j) = req.jobs {
        opts.jobs = j;
    }
    opts.timeout_multiplier = req.timeout_multiplier;
    opts.runs_dir = req.runs_dir(desired);
    let state = crate::state::StateDir::create(&desired.state_dir)?;
    run::run(desired, &state, sel, &opts, &mut |e| on(&e))
}

/// The exit code of a run: 0 passed, 4 a test failed, 1 interrupted.
pub fn code(report: &Report) -> i32 {
    if report.incomplete {
        exit::ERROR
    } else if report.failed() {
        exit::TESTS_FAILED
    } else {
        exit::OK
    }
}

/// The JSON Schema of a run's `report.json`.
pub fn report_schema() -> String {
    crate::harness::report::schema()
}
