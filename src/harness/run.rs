//! Running selected tests: `-j N` workers, each test on a fresh working
//! snapshot of its machine (deleted whatever happens), output streamed to its
//! own files and through the console checks, timeouts and fatal checks killing
//! everything the test started, retries per failure class, and a report at the
//! end — also when interrupted.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::checks::{self, CheckSet, Hit, Scanner};
use super::report::{Attempt, Class, Report, Summary, TestResult, Verdict};
use super::select::{Selected, Selection};
use crate::config::model::{Executor, Scope, Severity};
use crate::config::Desired;
use crate::error::{Error, Result};
use crate::executor::{
    host::Host, namespace::Namespace, Executor as _, Invocation, Outcome, Stream,
};
use crate::fsops;
use crate::resource::machine::working::WorkingSnapshot;
use crate::state::{now_rfc3339, StateDir};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Options {
    pub jobs: usize,
    pub timeout_multiplier: f64,
    /// Where runs go (`<state_dir>/runs` by default): `<dir>/<UTC time>-<pid>/` and `<dir>/latest`.
    pub runs_dir: PathBuf,
    /// Set by Ctrl-C: running tests are killed and cleaned up, the report is marked incomplete.
    pub cancel: Arc<AtomicBool>,
}

impl Options {
    /// One job per core, timeouts as declared, runs in `<state_dir>/runs`.
    pub fn standard(desired: &Desired, cancel: Arc<AtomicBool>) -> Options {
        Options {
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            timeout_multiplier: 1.0,
            runs_dir: desired.state_dir.join("runs"),
            cancel,
        }
    }
}

/// What the runner reports as it goes.
pub enum Event<'a> {
    Started { run_dir: &'a Path, tests: usize },
    Finished(&'a TestResult),
}

pub fn run(
    desired: &Desired,
    selection: Selection,
    opts: &Options,
    on: &mut dyn FnMut(Event),
) -> Result<Report> {
    let started = now_rfc3339();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let run_name = format!("{stamp}-{}", std::process::id());
    let run_dir = opts.runs_dir.join(&run_name);
    fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
    on(Event::Started {
        run_dir: &run_dir,
        tests: selection.selected.len(),
    });

    let all = checks::all(&desired.model.check);
    // compiled once per run, shared by every test's scanners
    let checks = (
        CheckSet::new(&all, Scope::Console),
        CheckSet::new(&all, Scope::Output),
    );
    let queue: Mutex<VecDeque<Selected>> = Mutex::new(selection.selected.into_iter().collect());
    let (tx, rx) = mpsc::channel::<TestResult>();
    let state = StateDir::create(&desired.state_dir)?;
    let mut results = Vec::new();
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            let tx = tx.clone();
            let (queue, checks, run_dir, state) = (&queue, &checks, &run_dir, &state);
            s.spawn(move || loop {
                let next = queue.lock().unwrap().pop_front();
                let Some(sel) = next else { break };
                let r = run_one(desired, &sel, checks, run_dir, state, opts);
                if tx.send(r).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for r in rx {
            on(Event::Finished(&r));
            results.push(r);
        }
    });
    results.sort_by(|a, b| a.name.cmp(&b.name));
    let mut summary = Summary::default();
    for r in &results {
        match r.result {
            Verdict::Pass => summary.pass += 1,
            Verdict::Fail => summary.fail += 1,
            Verdict::Warn => summary.warn += 1,
            Verdict::Skip => summary.skip += 1,
        }
    }
    let report = Report {
        format_version: super::report::FORMAT_VERSION,
        reconcile_version: env!("CARGO_PKG_VERSION").into(),
        run: run_name.clone(),
        started,
        finished: now_rfc3339(),
        incomplete: opts.cancel.load(Ordering::SeqCst),
        summary,
        tests: results,
    };
    report.write(&run_dir)?;
    let latest = opts.runs_dir.join("latest");
    fsops::switch_symlink(Path::new(&run_name), &latest).map_err(|e| Error::io(&latest, e))?;
    Ok(report)
}

fn safe_dir_name(name: &str) -> String {
    name.chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect()
}

fn run_one(
    desired: &Desired,
    sel: &Selected,
    checks: &(Arc<CheckSet>, Arc<CheckSet>),
    run_dir: &Path,
    state: &StateDir,
    opts: &Options,
) -> TestResult {
    let case = &sel.case;
    let out_dir = run_dir.join(safe_dir_name(&case.name));
    let _ = fs::create_dir_all(&out_dir);
    let machine = case
        .machine
        .as_ref()
        .and_then(|m| desired.model.machine.get(m));
    let mut result = TestResult {
        name: case.name.clone(),
        suite: case.suite.clone(),
        result: Verdict::Pass,
        class: None,
        reason: None,
        duration_ms: 0,
        attempts: Vec::new(),
        checks: Vec::new(),
        machine: case.machine.clone(),
        revision: machine.map(|m| m.revision),
        digests: Default::default(),
        output: out_dir.clone(),
    };
    if let Some(m) = machine {
        if let Some(sha) = m.source.sha256.clone() {
            result.digests.insert("source_sha256".into(), sha);
        }
    }
    let started = Instant::now();
    if let Some(skip) = sel.skip.as_ref().filter(|s| !s.warn) {
        result.result = Verdict::Skip;
        result.reason = Some(format!("skip list: {}", skip.reason));
        write_result(&out_dir, &result);
        return result;
    }
    loop {
        let (attempt, hits) = attempt(desired, sel, checks, &out_dir, state, opts);
        result.checks = hits;
        let class = attempt.class;
        let verdict = attempt.result;
        result.attempts.push(attempt);
        let retries = class
            .and_then(|c| case.spec.retries.get(c.key()).copied())
            .unwrap_or(0) as usize;
        let failed_so_far = result
            .attempts
            .iter()
            .filter(|a| a.result == Verdict::Fail && a.class == class)
            .count();
        if verdict == Verdict::Fail
            && failed_so_far <= retries
            && !opts.cancel.load(Ordering::SeqCst)
        {
            continue;
        }
        break;
    }
    let last = result.attempts.last().expect("one attempt").clone();
    result.result = last.result;
    result.class = last.class;
    result.reason = last.reason.clone();
    if result.attempts.len() > 1 && last.result != Verdict::Fail {
        result.reason = Some(format!(
            "{} after {} attempts",
            last.reason.as_deref().unwrap_or("passed"),
            result.attempts.len()
        ));
    }
    if let (Verdict::Fail, Some(skip)) = (result.result, &sel.skip) {
        result.result = Verdict::Warn;
        result.reason = Some(format!(
            "failure tolerated by the skip list ({}): {}",
            skip.reason,
            result.reason.clone().unwrap_or_default()
        ));
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    write_result(&out_dir, &result);
    result
}

fn write_result(dir: &Path, r: &TestResult) {
    let _ = fs::write(
        dir.join("result.json"),
        serde_json::to_vec_pretty(r).expect("result serialises"),
    );
}

/// One attempt: snapshot, run, check; the snapshot is gone when this returns.
fn attempt(
    desired: &Desired,
    sel: &Selected,
    checks: &(Arc<CheckSet>, Arc<CheckSet>),
    out_dir: &Path,
    state: &StateDir,
    opts: &Options,
) -> (Attempt, Vec<Hit>) {
    let case = &sel.case;
    let t0 = Instant::now();
    let infra = |reason: String| {
        (
            Attempt {
                result: Verdict::Fail,
                class: Some(Class::Infra),
                duration_ms: t0.elapsed().as_millis() as u64,
                reason: Some(reason),
                exit_status: None,
            },
            Vec::new(),
        )
    };
    if opts.cancel.load(Ordering::SeqCst) {
        return infra("cancelled before it started".into());
    }
    if matches!(case.executor, Executor::Qemu | Executor::Cloud) {
        return infra(
            format!(
                "the {:?} executor is not available in this release",
                case.executor
            )
            .to_lowercase(),
        );
    }
    // a fresh working snapshot per attempt (dropped — deleted — on every path out of here)
    let snapshot = match &case.machine {
        Some(m) => {
            let mach = &desired.model.machine[m];
            let volume = &desired.model.volume[&mach.volume];
            match WorkingSnapshot::create(state, volume, m, case.toolchain.as_deref()) {
                Ok(w) => Some(w),
                Err(e) => return infra(format!("cannot create the working snapshot: {e}")),
            }
        }
        None => None,
    };
    let timeout = case
        .spec
        .timeout
        .as_deref()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(DEFAULT_TIMEOUT)
        .mul_f64(opts.timeout_multiplier.max(0.01));
    let stop = Arc::new(AtomicBool::new(false));
    let inv = Invocation {
        argv: case.spec.run.clone(),
        env: vec![("RECONCILE_TEST".into(), case.name.clone())],
        cwd: None,
        timeout: Some(timeout),
        stop: Some(stop.clone()),
        // Ctrl-C stops a test even when it prints nothing
        cancel: Some(opts.cancel.clone()),
    };
    let files = (
        File::create(out_dir.join("stdout.txt")),
        File::create(out_dir.join("stderr.txt")),
        File::create(out_dir.join("console.txt")),
    );
    let (Ok(mut fout), Ok(mut ferr), Ok(mut fcon)) = files else {
        return infra(format!(
            "cannot write output files in {}",
            out_dir.display()
        ));
    };
    let mut scanner = Scanner::with(checks.0.clone(), case.spec.skip_checks.clone());
    scanner.set_step(&case.name);
    let mut output_scanner = Scanner::with(checks.1.clone(), case.spec.skip_checks.clone());
    output_scanner.set_step(&case.name);
    let mut fatal = false;
    let cancel = opts.cancel.clone();
    let mut on_output = |s: Stream, chunk: &[u8]| {
        let _ = match s {
            Stream::Stdout => fout.write_all(chunk),
            Stream::Stderr => ferr.write_all(chunk),
        };
        // executors without a console: the combined output plays its role
        let _ = fcon.write_all(chunk);
        fatal |= scanner.feed(chunk);
        output_scanner.feed(chunk);
        if fatal || cancel.load(Ordering::SeqCst) {
            stop.store(true, Ordering::SeqCst);
        }
    };
    let finished = match (&case.executor, &snapshot) {
        (Executor::Namespace, Some(w)) => Namespace {
            root: w.path.clone(),
            hostname: w.name.clone(),
            isolate_network: false,
        }
        .run(&inv, &mut on_output),
        (Executor::Namespace, None) => Err(std::io::Error::other(
            "the namespace executor needs a machine (set `machines` on the suite)",
        )),
        (_, w) => Host {
            root: w.as_ref().map(|w| w.path.clone()),
        }
        .run(&inv, &mut on_output),
    };
    let mut hits = scanner.finish();
    for h in output_scanner.finish() {
        if !hits.iter().any(|x| x.check == h.check) {
            hits.push(h);
        }
    }
    drop(snapshot);
    let finished = match finished {
        Ok(f) => f,
        Err(e) => return infra(format!("cannot run {:?}: {e}", case.spec.run)),
    };
    let duration_ms = finished.duration.as_millis() as u64;
    let exit_status = match finished.outcome {
        Outcome::Exited(c) => Some(c),
        _ => None,
    };
    let fail = |class, reason: String| Attempt {
        result: Verdict::Fail,
        class: Some(class),
        duration_ms,
        reason: Some(reason),
        exit_status,
    };
    let failing_check = hits
        .iter()
        .find(|h| h.suppressed.is_none() && h.severity >= Severity::Fail);
    let verdict = match finished.outcome {
        Outcome::Stopped if fatal => fail(
            Class::Check,
            format!("fatal console check: {}", describe(failing_check)),
        ),
        Outcome::Stopped => fail(Class::Infra, "cancelled (interrupted)".into()),
        Outcome::TimedOut => fail(
            Class::Timeout,
            format!("timed out after {}", humantime::format_duration(timeout)),
        ),
        _ if failing_check.is_some() => fail(
            Class::Check,
            format!("console check: {}", describe(failing_check)),
        ),
        outcome => {
            let want = case.spec.expect.exit.unwrap_or(0);
            let mismatch = if outcome != Outcome::Exited(want) {
                Some(format!("{outcome}, expected exit status {want}"))
            } else {
                super::matchers::first_failure(&[
                    (
                        "stdout",
                        &case.spec.expect.stdout,
                        &out_dir.join("stdout.txt"),
                    ),
                    (
                        "stderr",
                        &case.spec.expect.stderr,
                        &out_dir.join("stderr.txt"),
                    ),
                    (
                        "console",
                        &case.spec.expect.console,
                        &out_dir.join("console.txt"),
                    ),
                ])
            };
            match mismatch {
                Some(reason) => fail(Class::Test, reason),
                None => {
                    let warns: Vec<&Hit> = hits
                        .iter()
                        .filter(|h| h.suppressed.is_none() && h.severity == Severity::Warn)
                        .collect();
                    if warns.is_empty() {
                        Attempt {
                            result: Verdict::Pass,
                            class: None,
                            duration_ms,
                            reason: None,
                            exit_status,
                        }
                    } else {
                        Attempt {
                            result: Verdict::Warn,
                            class: None,
                            duration_ms,
                            reason: Some(format!(
                                "console check: {}",
                                describe(warns.first().copied())
                            )),
                            exit_status,
                        }
                    }
                }
            }
        }
    };

    (verdict, hits)
}

fn describe(h: Option<&Hit>) -> String {
    match h {
        Some(h) => format!(
            "{} (line {}, {} hit(s)): {}",
            h.check, h.line, h.count, h.excerpt
        ),
        None => "?".into(),
    }
}

/// Names of the failed tests of the last run under `runs_dir`.
pub fn last_failures(runs_dir: &Path) -> Result<Vec<String>> {
    let report = super::report::Report::load(&runs_dir.join("latest").join("report.json"))?;
    Ok(report
        .tests
        .into_iter()
        .filter(|t| t.result == Verdict::Fail)
        .map(|t| t.name)
        .collect())
}

/// Group results by verdict for the final summary.
pub fn failures(report: &Report) -> BTreeMap<String, (String, PathBuf)> {
    report
        .tests
        .iter()
        .filter(|t| t.result == Verdict::Fail)
        .map(|t| {
            (
                t.name.clone(),
                (t.reason.clone().unwrap_or_default(), t.output.clone()),
            )
        })
        .collect()
}
