//! Converge: take the lock, recover what a crashed run left, observe and diff,
//! then apply each change through the journal. Emits events; rendering is the
//! caller's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::Desired;
use crate::error::{Error, Result};
use crate::fsops::digest::StatIndex;
use crate::plan::{self, Plan};
use crate::resource::{self, ApplyContext, Change, Context};
use crate::state::journal::{Journal, Recovered};
use crate::state::{lock, now_rfc3339, LastApply, StateDir};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub verify: bool,
    pub targets: Vec<glob::Pattern>,
    pub lock_timeout: Option<Duration>,
    pub saved_plan: Option<PathBuf>,
    pub progress: bool,
    /// Shown to a command waiting for the lock.
    pub command: String,
    /// Set (by a signal handler) to stop after the resource being applied.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Each of `targets` must match a resource (`--target`; watch's own need not).
    pub require_targets: bool,
    /// The run's clouds (the tests after the converge use the same).
    pub clouds: std::sync::Arc<crate::resource::Clouds>,
    /// Test candidates whose gate failed again, though they did not change (`--retest`).
    pub retest: bool,
}

/// What happens during an apply, in order.
pub enum Event<'a> {
    Recovered(&'a Recovered),
    Planned(&'a Plan),
    Applying {
        address: &'a str,
        changes: &'a [Change],
    },
    Applied {
        address: &'a str,
        took: Duration,
        /// What the resource said about it (see [`ApplyContext::said`]).
        said: &'a [String],
    },
    Failed {
        address: &'a str,
        error: &'a Error,
    },
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub changes: usize,
    pub failed: Vec<String>,
    /// Addresses applied successfully.
    pub applied: Vec<String>,
    /// Addresses that drifted and were left so (`drift = "warn"`).
    pub drift_kept: Vec<String>,
    /// Candidates built and held behind their promotion gates.
    pub held: Vec<crate::resource::Candidate>,
    /// Stopped early by `Options::cancel` (every resource is still fully old or fully new).
    pub cancelled: bool,
}

/// Converge the host to `desired` under the lock of `state` (the
/// operation's state dir, opened once by the caller): recover what an
/// interrupted run left, plan, then apply each resource's changes.
pub fn converge(
    desired: &Desired,
    state: &StateDir,
    opts: &Options,
    on: &mut dyn FnMut(Event),
) -> Result<Outcome> {
    let started = Instant::now();
    let (_lock, mut journal, index) = begin(desired, state, opts, on)?;
    let cx = context(desired, state, &index, opts);
    let resources = resource::all(&cx)?;
    if opts.require_targets {
        plan::require_matched(&resources, &opts.targets)?;
    }
    let (plan, planned) = plan::make(resources, &cx, &opts.targets)?;
    if let Some(saved) = &opts.saved_plan {
        let reasons = Plan::load(saved)?.staleness(&plan);
        if !reasons.is_empty() {
            return Err(Error::StalePlan { reasons });
        }
    }
    on(Event::Planned(&plan));

    let mut roots = cx.roots.clone();
    let mut outcome = Outcome::default();
    for p in in_dependency_order(&planned) {
        if p.changes.is_empty() {
            continue;
        }
        if p.drift_warn() {
            // drift = "warn": reported in the plan, left as it is
            outcome.drift_kept.push(p.resource.address().to_string());
            continue;
        }
        if opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
        {
            outcome.cancelled = true;
            break;
        }
        let address = p.resource.address();
        if let Some(dep) = p
            .resource
            .depends_on()
            .into_iter()
            .find(|d| outcome.failed.iter().any(|f| f == d))
        {
            let error = Error::Resource {
                address: address.to_string(),
                reason: format!("not applied: {dep}, which it depends on, failed"),
            };
            on(Event::Failed {
                address,
                error: &error,
            });
            outcome.failed.push(address.to_string());
            continue;
        }
        on(Event::Applying {
            address,
            changes: &p.changes,
        });
        let t = Instant::now();
        let mut acx = ApplyContext::new(&cx, &mut journal, &mut roots);
        match p.resource.apply(&p.observed, &mut acx) {
            Ok(()) => {
                outcome.held.append(&mut acx.held);
                // a candidate held behind its gate is not applied yet: the gate says what became of it
                let made = p.changes.iter().filter(|c| c.candidate.is_none()).count();
                if made > 0 {
                    outcome.changes += made;
                    outcome.applied.push(address.to_string());
                    on(Event::Applied {
                        address,
                        took: t.elapsed(),
                        said: &acx.said,
                    });
                }
            }
            Err(error) => {
                on(Event::Failed {
                    address,
                    error: &error,
                });
                outcome.failed.push(address.to_string());
            }
        }
    }
    journal.clear()?;
    if roots != cx.roots {
        state.save_roots(&roots)?;
    }
    index
        .save()
        .map_err(|e| Error::io(state.stat_index_path(), e))?;
    state.save_last_apply(&LastApply {
        finished: now_rfc3339(),
        desired_file: desired.path.clone(),
        desired_sha256: desired.digest.clone(),
        changes: outcome.changes,
        duration_ms: started.elapsed().as_millis(),
        result: if outcome.failed.is_empty() {
            "converged".into()
        } else {
            format!("{} resource(s) failed", outcome.failed.len())
        },
    })?;
    Ok(outcome)
}

/// Switch a candidate that passed its gate in (the machine's link moves to
/// it), under the apply lock; its record goes with it.
pub fn promote(
    desired: &Desired,
    state: &StateDir,
    candidate: &crate::resource::Candidate,
    opts: &Options,
    on: &mut dyn FnMut(Event),
) -> Result<()> {
    let (_lock, mut journal, index) = begin(desired, state, opts, on)?;
    // the run's clouds: what the switch changes there is read anew by what follows
    let cx = context(desired, state, &index, opts);
    let address = candidate.address.clone();
    let resource = resource::all(&cx)?
        .into_iter()
        .find(|r| r.address() == address)
        .ok_or_else(|| Error::Resource {
            address: address.clone(),
            reason: "is not declared any more; nothing to promote".into(),
        })?;
    let mut roots = cx.roots.clone();
    resource.promote(
        candidate,
        &mut ApplyContext::new(&cx, &mut journal, &mut roots),
    )?;
    journal.clear()?;
    state.update_candidates(|records| {
        records.remove(&address);
    })
}

/// Take the apply lock, then recover what an interrupted run left (each
/// recovery said through `on`) and load the stat index.
fn begin(
    desired: &Desired,
    state: &StateDir,
    opts: &Options,
    on: &mut dyn FnMut(Event),
) -> Result<(lock::ApplyLock, Journal, StatIndex)> {
    let held = lock::acquire(state, &opts.command, opts.lock_timeout)?;
    let recoveries = resource::recoveries(desired, state);
    let (journal, recovered) = Journal::open_and_recover(state, &recoveries.kinds())?;
    for r in &recovered {
        on(Event::Recovered(r));
    }
    Ok((held, journal, StatIndex::load(&state.stat_index_path())))
}

/// The resources' context of an operation, with the run's clouds.
fn context<'a>(
    desired: &'a Desired,
    state: &'a StateDir,
    index: &'a StatIndex,
    opts: &Options,
) -> Context<'a> {
    let cx = Context::new(desired, state, index, opts.progress, opts.verify);
    #[cfg(feature = "cloud")]
    let cx = Context {
        clouds: opts.clouds.clone(),
        ..cx
    };
    cx
}

/// Record how a candidate's gate went, under the apply lock.
pub fn record_candidate(
    state: &StateDir,
    address: &str,
    tested: crate::state::candidates::Tested,
    opts: &Options,
) -> Result<()> {
    let _lock = lock::acquire(state, &opts.command, opts.lock_timeout)?;
    state.update_candidates(|records| {
        records.insert(address.to_string(), tested);
    })
}

/// What a dry run observed, handed back so that a one-shot command can leave
/// it to the operating system at exit: freeing tens of thousands of small
/// allocations one by one is most of a no-op plan's last milliseconds.
pub struct Observations {
    _planned: Vec<crate::plan::Planned>,
    _index: StatIndex,
}

/// The planned resources in the order their changes apply: by address, each
/// after every resource it depends on (a cloud image after its machine).
fn in_dependency_order(planned: &[crate::plan::Planned]) -> Vec<&crate::plan::Planned> {
    let index: std::collections::HashMap<&str, usize> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| (p.resource.address(), i))
        .collect();
    let mut out = Vec::with_capacity(planned.len());
    let mut placed = vec![false; planned.len()];
    fn place<'a>(
        i: usize,
        planned: &'a [crate::plan::Planned],
        index: &std::collections::HashMap<&str, usize>,
        placed: &mut Vec<bool>,
        out: &mut Vec<&'a crate::plan::Planned>,
    ) {
        if placed[i] {
            return;
        }
        placed[i] = true;
        for d in planned[i].resource.depends_on() {
            if let Some(&j) = index.get(d.as_str()) {
                place(j, planned, index, placed, out);
            }
        }
        out.push(&planned[i]);
    }
    for i in 0..planned.len() {
        place(i, planned, &index, &mut placed, &mut out);
    }
    out
}

/// Observe and diff without changing anything outside the state dir.
pub fn dry_run(
    desired: &Desired,
    state: &StateDir,
    verify: bool,
    targets: &[glob::Pattern],
) -> Result<(Plan, Observations)> {
    let index = StatIndex::load(&state.stat_index_path());
    let planned = {
        let cx = Context::new(desired, state, &index, false, verify);
        let resources = resource::all(&cx)?;
        plan::require_matched(&resources, targets)?;
        plan::make(resources, &cx, targets)
    };
    let (plan, planned) = planned?;
    // the stat index is a cache inside the state dir; failing to save it loses nothing
    let _ = index.save();
    Ok((
        plan,
        Observations {
            _planned: planned,
            _index: index,
        },
    ))
}
