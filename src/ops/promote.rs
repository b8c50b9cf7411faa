//! Promotion gates: the candidates an apply built and held behind
//! `promote = { after = [...] }` are tested on fresh snapshots of
//! themselves (their suites' tests on this machine, at the candidate
//! revision), then switched in when every test passed — or kept for
//! inspection, named with the tests that failed (apply exits 4).

use serde::Serialize;

use super::apply::Progress;
use crate::apply::{self, Options};
use crate::config::Desired;
use crate::error::Result;
use crate::harness::run;
use crate::harness::select::{self, Filters};
use crate::resource::{Candidate, CandidateState};
use crate::state::candidates::{Tested, Verdict};
use crate::state::{now_rfc3339, StateDir};

/// How one candidate's gate went.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    pub address: String,
    /// `revision 3`, `content 1a2b3c4d…`.
    pub candidate: String,
    pub result: GateResult,
    /// The suites it had to pass.
    pub after: Vec<String>,
    /// The run its tests ran in (`runs/<run>/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// `suite.test` of each test that did not pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// Tested by this apply (false: a failure recorded before, for the same candidate).
    pub tested: bool,
    /// How long the switch took, from taking the lock to dropping the
    /// candidate's record (milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GateResult {
    /// Passed and switched in: the candidate is current.
    Promoted,
    /// Failed: the old revision stays current, the candidate stays beside it.
    Failed,
    /// Stopped by a signal before its tests finished: nothing switched, nothing recorded.
    Interrupted,
}

/// What a gate reports as it goes.
pub enum GateEvent<'a> {
    Testing { candidate: &'a Candidate },
    Done(&'a Gate),
}

/// Test each held candidate (or take its recorded verdict), then switch in
/// those that passed.
pub fn run_gates(
    desired: &Desired,
    state: &StateDir,
    held: &[Candidate],
    opts: &Options,
    on: &mut dyn FnMut(Progress),
) -> Result<Vec<Gate>> {
    let mut gates = Vec::new();
    for c in held {
        let address = c.address.clone();
        let mut gate = Gate {
            address: address.clone(),
            candidate: c.what.clone(),
            result: GateResult::Failed,
            after: c.after.clone(),
            run: c.run.clone(),
            failed: c.failed.clone(),
            tested: false,
            switch_ms: None,
        };
        let passed = match c.state {
            CandidateState::Passed => true,
            CandidateState::Failed if !opts.retest => false,
            _ => {
                on(Progress::Gate(GateEvent::Testing { candidate: c }));
                gate.tested = true;
                match test(desired, state, c, opts, on)? {
                    None => {
                        gate.result = GateResult::Interrupted;
                        on(Progress::Gate(GateEvent::Done(&gate)));
                        gates.push(gate);
                        break;
                    }
                    Some((run, failed)) => {
                        let verdict = if failed.is_empty() {
                            Verdict::Passed
                        } else {
                            Verdict::Failed
                        };
                        gate.run = Some(run.clone());
                        gate.failed = failed.clone();
                        apply::record_candidate(
                            state,
                            &address,
                            Tested {
                                revision: c.revision,
                                inputs: c.inputs.clone(),
                                verdict,
                                run,
                                failed,
                                at: now_rfc3339(),
                            },
                            opts,
                        )?;
                        verdict == Verdict::Passed
                    }
                }
            }
        };
        if passed {
            crate::fault::point(&address, "promote");
            let t = std::time::Instant::now();
            apply::promote(desired, state, c, opts, &mut |e| on(Progress::Apply(e)))?;
            gate.switch_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
            gate.result = GateResult::Promoted;
            gate.failed.clear();
        }
        on(Progress::Gate(GateEvent::Done(&gate)));
        gates.push(gate);
    }
    Ok(gates)
}

/// Run the candidate's suites on it: the run and the tests that did not
/// pass (a gate with no test that passed fails: it proved nothing); None
/// when a signal stopped the run.
fn test(
    desired: &Desired,
    state: &StateDir,
    c: &Candidate,
    opts: &Options,
    on: &mut dyn FnMut(Progress),
) -> Result<Option<(String, Vec<String>)>> {
    let filters = Filters {
        suites: c.after.clone(),
        ..Default::default()
    };
    let mut sel = select::select(desired, &filters)?;
    let image = c.address.starts_with("image.");
    // `cloud.<cloud>.machine.<m>@<rev>`: the tests that launch it in that cloud
    let cloud = c
        .address
        .strip_prefix("cloud.")
        .and_then(|rest| rest.split_once(".machine."))
        .map(|(cloud, _)| cloud.to_string());
    sel.selected.retain(|s| {
        let on = if image {
            s.case.on.image_name()
        } else {
            s.case.on.machine_name()
        };
        let in_cloud = desired
            .model
            .suite
            .get(&s.case.suite)
            .map(|x| x.cloud.clone());
        on == Some(c.name.as_str())
            && match &cloud {
                Some(cl) => {
                    s.case.executor == crate::config::model::Executor::Cloud
                        && in_cloud.flatten().as_deref() == Some(cl.as_str())
                }
                // a machine's own gate: on the machine itself, never a cloud image of it
                None => s.case.executor != crate::config::model::Executor::Cloud,
            }
    });
    let cancel = opts.cancel.clone().unwrap_or_default();
    let mut ropts = run::Options::standard(desired, cancel.clone());
    ropts.clouds = opts.clouds.clone();
    if image {
        ropts
            .image_trees
            .insert(c.name.clone(), candidate_tree(desired, &c.name));
    } else {
        ropts.revisions.insert(c.name.clone(), c.revision);
    }
    let report = run::run(desired, state, sel, &ropts, &mut |e| on(Progress::Test(e)))?;
    if report.incomplete && cancel.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(None);
    }
    let mut failed: Vec<String> = report
        .tests
        .iter()
        .filter(|t| t.result == crate::harness::report::Verdict::Fail)
        .map(|t| t.name.clone())
        .collect();
    if failed.is_empty() && report.summary.pass == 0 {
        failed.push(format!(
            "no test of {} passed on {} (none ran)",
            c.after.join(", "),
            c.address
        ));
    }
    Ok(Some((report.run, failed)))
}

/// Where an image's candidate is published: beside its tree, under a name
/// no TFTP client asks for.
pub fn candidate_tree(desired: &Desired, image: &str) -> std::path::PathBuf {
    crate::fsops::candidate_path(&desired.model.image[image].target())
}
