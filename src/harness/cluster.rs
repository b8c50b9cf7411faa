//! A test on a cluster (`[suite.S] cluster = N`): N fresh nodes of the
//! suite's machine started at once, the test's `on` steps run node by node
//! in index order (commands, link faults), then `run` on node 0. Every
//! command gets `RECONCILE_NODE` and `RECONCILE_NODES`. Node 0's output is
//! the test's own files; node `i`'s goes to `node<i>/` in the test's folder,
//! through the same console checks.

use std::path::Path;
use std::time::Instant;

use super::checks::Hit;
use super::report::Phases;
use super::run::{Ran, TestSink};
use super::select::TestCase;
use crate::config::model::{LinkState, OnStep};
use crate::platform::cluster::{with_cluster, Cluster, NodeOutput};
use crate::platform::{Provision, Step, Target};
use crate::process::{Exit, Interrupt, Outcome};

/// Node `i`'s folder under the test's.
fn node_dir(i: usize) -> String {
    format!("node{i}")
}

/// Run `step` (the test's `run`) on the case's cluster after the test's
/// `on` steps; `main` is node 0's sink, `new_sink` makes the others'.
pub(super) fn run(
    p: &Provision,
    case: &TestCase<'_>,
    target: Target,
    step: Step,
    main: TestSink,
    new_sink: &dyn Fn(&Path) -> std::io::Result<TestSink>,
    t0: Instant,
) -> Result<Ran, String> {
    let n = case.cluster.map_or(1, |n| n as usize);
    let mut sinks = vec![main];
    for i in 1..n {
        let dir = p.log_dir.join(node_dir(i));
        std::fs::create_dir_all(&dir)
            .and_then(|()| new_sink(&dir))
            .map(|s| sinks.push(s))
            .map_err(|e| format!("cannot write node {i}'s output in {}: {e}", dir.display()))?;
    }
    let mut phases = Phases {
        provision_ms: t0.elapsed().as_millis() as u64,
        ..Phases::default()
    };
    let outputs = sinks
        .iter_mut()
        .enumerate()
        .map(|(i, s)| NodeOutput {
            sink: s,
            log_dir: match i {
                0 => p.log_dir.clone(),
                _ => p.log_dir.join(node_dir(i)),
            },
        })
        .collect();
    let (outcome, facts) = with_cluster(p, case.executor, target, outputs, |c| {
        let t_start = Instant::now();
        c.start().map_err(|(i, e)| on_node(i, e))?;
        phases.boot_ms = t_start.elapsed().as_millis() as u64;
        let t_run = Instant::now();
        let r = steps(c, case, &step);
        phases.run_ms = t_run.elapsed().as_millis() as u64;
        r
    })
    .map_err(|e| format!("cannot provision: {e}"))?;
    let t_down = Instant::now();
    let mut hits: Vec<Hit> = Vec::new();
    let (mut fatal, mut overflow) = (false, None);
    for (i, mut s) in sinks.into_iter().enumerate() {
        s.flush();
        fatal |= s.fatal;
        overflow = overflow.or(s.overflow);
        for mut h in s.scanners.finish() {
            if i > 0 {
                h.log = h.log.map(|l| format!("{}/{l}", node_dir(i)));
            }
            hits.push(h);
        }
    }
    phases.teardown_ms = t_down.elapsed().as_millis() as u64;
    let mut first = facts.first().cloned().unwrap_or_default();
    let notes: Vec<String> = facts
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.fresh_note.as_ref().map(|n| format!("node {i}: {n}")))
        .collect();
    first.fresh_note = (!notes.is_empty()).then(|| notes.join("; "));
    Ok(Ran {
        outcome,
        facts: first,
        phases,
        fatal,
        overflow,
        hits,
    })
}

/// Say which node an interruption happened on.
fn on_node(i: usize, e: Interrupt) -> Interrupt {
    match e {
        Interrupt::Infra(why) => Interrupt::Infra(format!("node {i}: {why}")),
        Interrupt::Refused(why) => Interrupt::Refused(format!("node {i}: {why}")),
        Interrupt::TimedOut { what, after } => Interrupt::TimedOut {
            what: format!("{what} on node {i}"),
            after,
        },
        other => other,
    }
}

/// The `on` steps in node order, then `run` on node 0. Files to upload go
/// to each node before its first command.
fn steps(c: &mut Cluster, case: &TestCase<'_>, run: &Step) -> Outcome {
    let nodes = c.addresses().join(" ");
    let mut on: Vec<(usize, Vec<OnStep>)> = case
        .spec
        .on
        .iter()
        .filter_map(|(k, s)| k.parse::<usize>().ok().map(|i| (i, s.steps())))
        .collect();
    on.sort_by_key(|(i, _)| *i);
    let mut uploaded = vec![false; c.len()];
    let env = |i: usize, mut step: Step| {
        step.env.push(("RECONCILE_NODE".into(), i.to_string()));
        step.env.push(("RECONCILE_NODES".into(), nodes.clone()));
        step
    };
    for (i, list) in on {
        for s in list {
            match s {
                OnStep::Command(argv) => {
                    let mut step = env(
                        i,
                        Step {
                            name: format!("{} on node {i}", run.name),
                            argv: argv.clone(),
                            collect: Vec::new(),
                            collect_into: None,
                            ..run.clone()
                        },
                    );
                    if std::mem::replace(&mut uploaded[i], true) {
                        step.upload.clear();
                    }
                    let shown = shell_words::join(&argv);
                    match c.run(i, &step).map_err(|e| on_node(i, e))? {
                        Exit::Code(0) => {}
                        other => {
                            return Err(Interrupt::Refused(format!(
                                "`{shown}` on node {i}: {other} (an `on` step must succeed)"
                            )))
                        }
                    }
                }
                OnStep::Link(l) => {
                    let node = l.node.map_or(i, |n| n as usize);
                    c.set_link(node, l.link == LinkState::Up)
                        .map_err(|e| on_node(node, e))?;
                }
            }
        }
    }
    let mut step = env(0, run.clone());
    if uploaded[0] {
        step.upload.clear();
    }
    c.run(0, &step)
}
