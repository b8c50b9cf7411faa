//! `apply`: "converge, then test" — the one entry point `apply` and `watch`
//! share, and its typed result (what the text, JSON and Markdown renderers
//! read).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::apply::Event;

use super::promote::{run_gates, Gate, GateEvent, GateResult};
use super::Loaded;
use crate::apply::{converge, Options};
use crate::config::Desired;
use crate::error::{exit, Result};
use crate::harness::report::Report;
use crate::harness::run::{self, Event as TestEvent};
use crate::harness::select::{self, Filters};
use crate::plan::Plan;
use crate::state::StateDir;

/// What happened to one resource, in order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Step {
    Recovered {
        address: String,
        outcome: &'static str,
        step: String,
    },
    Applied {
        address: String,
        ms: u128,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        said: Vec<String>,
    },
    Failed {
        address: String,
        error: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        help: Option<String>,
    },
}

/// `converged`, `failed` (a resource failed; the others converged) or `interrupted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyResult {
    Converged,
    Failed,
    Interrupted,
}

/// The result of one apply (and its tests), as `apply --format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub format_version: u32,
    pub result: ApplyResult,
    pub changes: usize,
    /// Addresses that failed.
    pub failed: Vec<String>,
    /// Addresses that drifted and were left so (`drift = "warn"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift_kept: Vec<String>,
    /// Candidates behind promotion gates: tested and switched in, or kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    pub events: Vec<Step>,
    pub took_ms: u128,
    /// The plan that was applied, when the caller asked to keep it (for
    /// Markdown; not in the JSON: `plan --format json` has it).
    #[serde(skip)]
    pub plan: Option<Plan>,
    /// The `[run]` tests, when they ran.
    pub tests: Option<Report>,
}

impl ApplyReport {
    /// The exit code: 0 converged (and tests passed), 1 failed or
    /// interrupted, 4 a test or a candidate's gate failed.
    pub fn code(&self) -> i32 {
        let gate = |r: GateResult| self.gates.iter().any(|g| g.result == r);
        if gate(GateResult::Interrupted) {
            return exit::ERROR;
        }
        if self.result == ApplyResult::Converged && gate(GateResult::Failed) {
            return exit::TESTS_FAILED;
        }
        match (&self.result, &self.tests) {
            (ApplyResult::Converged, Some(t)) if t.incomplete => exit::ERROR,
            (ApplyResult::Converged, Some(t)) if t.failed() => exit::TESTS_FAILED,
            (ApplyResult::Converged, _) => exit::OK,
            _ => exit::ERROR,
        }
    }
}

/// What converge-then-test reports as it goes.
pub enum Progress<'a> {
    Apply(Event<'a>),
    Test(TestEvent<'a>),
    /// A candidate behind its promotion gate.
    Gate(GateEvent<'a>),
}

/// The tests to run after converging, and when.
pub struct Tests {
    pub filters: Filters,
    pub opts: run::Options,
    /// Only when something was applied (watch), not after every converge (apply).
    pub only_after_changes: bool,
}

/// Converge the host (`apply`), then, when it converged and `tests` is
/// given, run those tests. Errors that stop everything (an invalid saved
/// plan, the lock) are `Err`; a resource that fails is in the report.
/// `keep_plan`: copy the plan into the report (only a renderer needs it).
pub fn converge_then_test(
    desired: &Desired,
    state: &StateDir,
    opts: &Options,
    tests: Option<Tests>,
    keep_plan: bool,
    on: &mut dyn FnMut(Progress),
) -> Result<ApplyReport> {
    let started = Instant::now();
    let mut events = Vec::new();
    let mut plan = None;
    let mut outcome = converge(desired, state, opts, &mut |e| {
        match &e {
            Event::Recovered(r) => events.push(Step::Recovered {
                address: r.address.clone(),
                outcome: r.outcome,
                step: r.last_step.clone(),
            }),
            Event::Planned(p) if keep_plan => plan = Some((*p).clone()),
            Event::Planned(_) => {}
            Event::Applying { .. } => {}
            Event::Applied {
                address,
                took,
                said,
            } => events.push(Step::Applied {
                address: address.to_string(),
                ms: took.as_millis(),
                said: said.to_vec(),
            }),
            Event::Failed { address, error } => events.push(Step::Failed {
                address: address.to_string(),
                error: error.to_string(),
                help: error.help(),
            }),
        }
        on(Progress::Apply(e));
    })?;
    let mut gates = Vec::new();
    if !outcome.cancelled && !outcome.held.is_empty() {
        gates = run_gates(desired, state, &outcome.held, opts, on)?;
        let promoted: Vec<glob::Pattern> = gates
            .iter()
            .filter(|g| g.result == GateResult::Promoted)
            .filter_map(|g| glob::Pattern::new(&glob::Pattern::escape(&g.address)).ok())
            .collect();
        // each switch is a change applied
        outcome.changes += promoted.len();
        outcome.applied.extend(
            gates
                .iter()
                .filter(|g| g.result == GateResult::Promoted)
                .map(|g| g.address.clone()),
        );
        if !promoted.is_empty() {
            // now current: its toolchains are bootstrapped on it, retention runs
            let again = Options {
                targets: promoted,
                require_targets: false,
                saved_plan: None,
                ..opts.clone()
            };
            let more = converge(desired, state, &again, &mut |e| {
                if let Event::Failed { address, error } = &e {
                    events.push(Step::Failed {
                        address: address.to_string(),
                        error: error.to_string(),
                        help: error.help(),
                    });
                }
                on(Progress::Apply(e));
            })?;
            outcome.changes += more.changes;
            outcome.failed.extend(more.failed);
            outcome.applied.extend(more.applied);
            outcome.cancelled |= more.cancelled;
        }
    }
    if !outcome.cancelled {
        // booted snapshots of revisions retention removed go with them
        crate::platform::qemu::booted::prune(&state.booted_dir());
    }
    let result = if outcome.cancelled {
        ApplyResult::Interrupted
    } else if outcome.failed.is_empty() {
        ApplyResult::Converged
    } else {
        ApplyResult::Failed
    };
    let tests = match (result, tests) {
        (ApplyResult::Converged, Some(t))
            if !t.only_after_changes || !outcome.applied.is_empty() =>
        {
            let sel = select::select(desired, &t.filters)?;
            // the connections and inventories the converge read, shared
            let opts = run::Options {
                clouds: opts.clouds.clone(),
                ..t.opts
            };
            Some(run::run(desired, state, sel, &opts, &mut |e| {
                on(Progress::Test(e))
            })?)
        }
        _ => None,
    };
    Ok(ApplyReport {
        format_version: 1,
        result,
        changes: outcome.changes,
        failed: outcome.failed,
        drift_kept: outcome.drift_kept,
        gates,
        events,
        took_ms: started.elapsed().as_millis(),
        plan,
        tests,
    })
}

/// The `[run]` tests to run after converging (when the file has a `[run]`).
pub fn run_tests_after(
    desired: &Desired,
    cancel: Arc<AtomicBool>,
    only_after_changes: bool,
) -> Option<Tests> {
    select::Filters::from_run(desired).map(|filters| Tests {
        filters,
        opts: run::Options::standard(desired, cancel),
        only_after_changes,
    })
}

/// What `reconcile apply` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub verify: bool,
    /// Resource address patterns (`--target`).
    pub targets: Vec<String>,
    pub lock_timeout: Option<Duration>,
    /// A plan saved with `plan --out`.
    pub saved_plan: Option<PathBuf>,
    pub progress: bool,
    /// Shown to a command waiting for the lock.
    pub command: String,
    /// Skip the `[run]` tests.
    pub no_test: bool,
    /// Refuse remote sources not pinned in reconcile.lock.
    pub locked: bool,
    /// Keep the plan in the report (a Markdown renderer reads it).
    pub keep_plan: bool,
    /// Test candidates whose gate failed again (`--retest`).
    pub retest: bool,
}

/// `reconcile apply`: converge the loaded desired state, then run its
/// `[run]` tests; a commit pulled from git is recorded as applied once the
/// host converged to it. SIGINT/SIGTERM stop it after the resource in progress.
pub fn apply(loaded: &Loaded, req: &Request, on: &mut dyn FnMut(Progress)) -> Result<ApplyReport> {
    let desired = &loaded.desired;
    if req.locked {
        desired.require_locked()?;
    }
    let cancel = crate::process::cancel_on_signals();
    let opts = Options {
        verify: req.verify,
        targets: super::targets(&req.targets)?,
        require_targets: true,
        lock_timeout: req.lock_timeout,
        saved_plan: req.saved_plan.clone(),
        progress: req.progress,
        command: req.command.clone(),
        cancel: Some(cancel.clone()),
        clouds: Default::default(),
        retest: req.retest,
    };
    let tests = (!req.no_test)
        .then(|| run_tests_after(desired, cancel, false))
        .flatten();
    let state = StateDir::create(&desired.state_dir)?;
    let report = converge_then_test(desired, &state, &opts, tests, req.keep_plan, on)?;
    // the commit's file is in force once the host converged to it
    if let (Some((remote, commit)), ApplyResult::Converged | ApplyResult::Failed) =
        (&loaded.git, report.result)
    {
        remote.note_applied(commit)?;
    }
    Ok(report)
}
