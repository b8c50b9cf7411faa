//! Running selected tests: `-j N` workers, each test on a fresh working
//! snapshot of its machine (deleted whatever happens), output streamed to its
//! own files and through the console checks, timeouts and fatal checks killing
//! everything the test started, retries per failure class, and a report at the
//! end — also when interrupted.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::checks::{self, CheckSet, Hit, Scanner};
use super::report::{Attempt, Class, Phases, Report, Summary, TestResult, Verdict};
use super::select::{On, Selected, Selection};
use crate::config::model::{self, Scope, Severity};
use crate::config::Desired;
use crate::error::{Error, Result};
use crate::fsops;
use crate::platform::{self, Provision, Step, Target};
use crate::process::{Exit, Flow, Interrupt, Sink, Stream};
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
    /// The run's clouds (shared with the apply before it, when there is one).
    pub clouds: Arc<platform::Clouds>,
    /// Machines tested at this revision instead of their current one: the
    /// candidates of a promotion gate.
    pub revisions: std::collections::BTreeMap<String, u32>,
    /// Images booted from this tree instead of their published one: the
    /// candidates of a promotion gate.
    pub image_trees: std::collections::BTreeMap<String, PathBuf>,
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
            clouds: Default::default(),
            revisions: Default::default(),
            image_trees: Default::default(),
        }
    }
}

/// What the runner reports as it goes.
pub enum Event<'a> {
    Started {
        run_dir: &'a Path,
        tests: usize,
    },
    /// One line about how tests run here (e.g. QEMU under TCG, timeouts scaled).
    Note(&'a str),
    /// A test began its first attempt.
    TestStarted {
        name: &'a str,
    },
    /// An attempt failed with a class its `retries` allows another attempt for.
    Retrying {
        name: &'a str,
        /// The attempt that failed (1-based).
        attempt: usize,
        class: Option<Class>,
        reason: &'a str,
    },
    Finished(&'a TestResult),
}

/// What a worker tells the thread that reports.
enum Progress {
    Started(String),
    Retrying {
        name: String,
        attempt: usize,
        class: Option<Class>,
        reason: String,
    },
    Finished(Box<TestResult>),
    Note(String),
}

/// The checks of each scope, compiled once per run and shared by every test's scanners.
struct CheckSets {
    console: Arc<CheckSet>,
    output: Arc<CheckSet>,
    journal: Arc<CheckSet>,
}

/// Terminate what crashed runs left in the clouds these tests launch in
/// (once per cloud and process), each said as a note.
#[cfg(feature = "cloud")]
fn reap_clouds(
    desired: &Desired,
    state: &StateDir,
    selection: &Selection<'_>,
    opts: &Options,
    on: &mut dyn FnMut(Event),
) {
    let clouds: std::collections::BTreeSet<&str> = selection
        .selected
        .iter()
        .filter(|s| s.case.executor == crate::config::model::Executor::Cloud)
        .filter_map(|s| desired.model.suite.get(&s.case.suite)?.cloud.as_deref())
        .collect();
    for c in clouds {
        match platform::cloud::reap(desired, state, &opts.clouds, c) {
            Ok(notes) => notes.iter().for_each(|n| on(Event::Note(n))),
            Err(e) => on(Event::Note(&format!(
                "cloud {c}: cannot look for instances left by crashed runs: {e}"
            ))),
        }
    }
}

#[cfg(not(feature = "cloud"))]
fn reap_clouds(
    _: &Desired,
    _: &StateDir,
    _: &Selection<'_>,
    _: &Options,
    _: &mut dyn FnMut(Event),
) {
}

/// Run `selection` on fresh instances, `opts.jobs` at a time, into a new
/// run folder; `state` is the operation's state dir (opened once by the caller).
pub fn run(
    desired: &Desired,
    state: &StateDir,
    selection: Selection<'_>,
    opts: &Options,
    on: &mut dyn FnMut(Event),
) -> Result<Report> {
    let started = now_rfc3339();
    let clock = Instant::now();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let run_name = format!("{stamp}-{}", std::process::id());
    let run_dir = opts.runs_dir.join(&run_name);
    fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
    // in use until this returns: pruning elsewhere passes it by
    let _in_use = super::runs::hold(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
    on(Event::Started {
        run_dir: &run_dir,
        tests: selection.selected.len(),
    });

    let targets: Vec<_> = selection
        .selected
        .iter()
        .map(|s| (s.case.executor, s.case.on.machine(), s.case.on.image()))
        .collect();
    for note in platform::notes(&targets) {
        on(Event::Note(&note));
    }
    reap_clouds(desired, state, &selection, opts, on);
    platform::qemu::booted::prune(&state.booted_dir());
    let all = checks::all(&desired.model.check);
    let checks = CheckSets {
        console: CheckSet::new(&all, Scope::Console),
        output: CheckSet::new(&all, Scope::Output),
        journal: CheckSet::new(&all, Scope::Journal),
    };
    let queue = Queue::new(desired, selection.selected);
    let (tx, rx) = mpsc::channel::<Progress>();
    let mut results = Vec::new();
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            let tx = tx.clone();
            let (queue, checks, run_dir) = (&queue, &checks, &run_dir);
            s.spawn(move || {
                while let Some(sel) = queue.next(&tx) {
                    let r = run_one(desired, &sel, checks, run_dir, state, opts, &tx);
                    queue.done(&sel);
                    if tx.send(Progress::Finished(Box::new(r))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for p in rx {
            match p {
                Progress::Started(name) => on(Event::TestStarted { name: &name }),
                Progress::Retrying {
                    name,
                    attempt,
                    class,
                    reason,
                } => on(Event::Retrying {
                    name: &name,
                    attempt,
                    class,
                    reason: &reason,
                }),
                Progress::Finished(r) => {
                    on(Event::Finished(&r));
                    results.push(*r);
                }
                Progress::Note(n) => on(Event::Note(&n)),
            }
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
        duration_ms: clock.elapsed().as_millis() as u64,
        incomplete: opts.cancel.load(Ordering::SeqCst),
        summary,
        tests: results,
    };
    report.write(&run_dir)?;
    let latest = opts.runs_dir.join("latest");
    fsops::Beneath::open(&opts.runs_dir)
        .and_then(|runs| fsops::switch_symlink(&runs, Path::new(&run_name), Path::new("latest")))
        .map_err(|e| Error::io(&latest, e))?;
    let keep = desired
        .model
        .settings
        .as_ref()
        .and_then(|s| s.keep_runs)
        .unwrap_or(super::runs::DEFAULT_KEEP_RUNS);
    if let Err(e) = super::runs::prune(&opts.runs_dir, keep as usize) {
        let why = format!(
            "cannot prune old test runs in {}: {e} (they stay; remove them by hand)",
            opts.runs_dir.display()
        );
        on(Event::Note(&why));
    }
    Ok(report)
}

/// The tests still to run, handed to the workers in order — but never more
/// at once of one suite than its `parallel` allows, and never more VMs than
/// fit in the run's memory (each reserves its `vm.memory` before it starts,
/// as kola does).
struct Queue<'d> {
    inner: Mutex<Waiting<'d>>,
    freed: std::sync::Condvar,
    limits: BTreeMap<String, usize>,
    /// MiB the VMs may use together.
    memory: u64,
}

struct Waiting<'d> {
    tests: VecDeque<Selected<'d>>,
    running: BTreeMap<String, usize>,
    /// MiB reserved by the VMs running.
    reserved: u64,
    /// Said that a VM waits for memory (once per wait).
    said: bool,
}

/// MiB a test's VM reserves (0 when it runs no VM).
fn memory_of(sel: &Selected) -> u64 {
    if sel.case.executor != crate::config::model::Executor::Qemu {
        return 0;
    }
    let vm = match (sel.case.on.machine(), sel.case.on.image()) {
        (Some(m), _) => m.vm.as_ref(),
        (None, Some(i)) => i.vm.as_ref(),
        (None, None) => return 0,
    };
    // a cluster's test starts all its nodes at once
    let nodes = sel.case.cluster.map_or(1, u64::from);
    vm.and_then(|v| v.memory)
        .map_or(platform::qemu::DEFAULT_MEMORY_MIB, |m| m.mib)
        * nodes
}

/// MiB available for VMs: the setting, else MemAvailable less 256 MiB.
fn vm_memory(desired: &Desired) -> u64 {
    if let Some(s) = desired.model.settings.as_ref().and_then(|s| s.vm_memory) {
        return s.0 >> 20;
    }
    let available = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib >> 10);
    available.saturating_sub(256)
}

impl<'d> Queue<'d> {
    fn new(desired: &Desired, tests: Vec<Selected<'d>>) -> Queue<'d> {
        let limits = desired
            .model
            .suite
            .iter()
            .filter_map(|(n, s)| s.parallel.map(|p| (n.clone(), p as usize)))
            .collect();
        Queue {
            inner: Mutex::new(Waiting {
                tests: tests.into(),
                running: BTreeMap::new(),
                reserved: 0,
                said: false,
            }),
            freed: std::sync::Condvar::new(),
            limits,
            memory: vm_memory(desired),
        }
    }

    /// The next test a worker may start (waiting while only full suites, or
    /// VMs that do not fit, are left), or None at the end. A VM larger than
    /// all the memory starts when nothing else runs.
    fn next(&self, tx: &mpsc::Sender<Progress>) -> Option<Selected<'d>> {
        let mut g = self.inner.lock().unwrap();
        loop {
            let w = &mut *g;
            if w.tests.is_empty() {
                return None;
            }
            let free = |suite: &str| {
                self.limits
                    .get(suite)
                    .is_none_or(|limit| w.running.get(suite).copied().unwrap_or(0) < *limit)
            };
            let fits = |need: u64| w.reserved == 0 || w.reserved + need <= self.memory;
            let mut blocked = None;
            let mut pick = None;
            for (i, s) in w.tests.iter().enumerate() {
                if !free(&s.case.suite) {
                    continue;
                }
                let need = memory_of(s);
                if fits(need) {
                    pick = Some((i, need));
                    break;
                }
                blocked.get_or_insert((s.case.name.clone(), need, s.case.cluster.unwrap_or(1)));
            }
            if let Some((i, need)) = pick {
                let sel = w.tests.remove(i).expect("found");
                *w.running.entry(sel.case.suite.clone()).or_default() += 1;
                w.reserved += need;
                w.said = false;
                return Some(sel);
            }
            if let (Some((name, need, nodes)), false) = (blocked, w.said) {
                w.said = true;
                let vms = match nodes {
                    1 => "its VM needs".to_string(),
                    n => format!("its {n} VMs need"),
                };
                let _ = tx.send(Progress::Note(format!(
                    "{name} waits for memory: {vms} {need} MiB, {} of {} MiB are in use by running VMs",
                    w.reserved, self.memory
                )));
            }
            g = self.freed.wait(g).unwrap();
        }
    }

    fn done(&self, sel: &Selected) {
        let mut g = self.inner.lock().unwrap();
        if let Some(n) = g.running.get_mut(&sel.case.suite) {
            *n = n.saturating_sub(1);
        }
        g.reserved = g.reserved.saturating_sub(memory_of(sel));
        self.freed.notify_all();
    }
}

fn safe_dir_name(name: &str) -> String {
    name.chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect()
}

fn run_one(
    desired: &Desired,
    sel: &Selected,
    checks: &CheckSets,
    run_dir: &Path,
    state: &StateDir,
    opts: &Options,
    progress: &mpsc::Sender<Progress>,
) -> TestResult {
    let case = &sel.case;
    let out_dir = run_dir.join(safe_dir_name(&case.name));
    let _ = fs::create_dir_all(&out_dir);
    let machine = case.on.machine();
    let mut result = TestResult {
        name: case.name.clone(),
        suite: case.suite.clone(),
        result: Verdict::Pass,
        class: None,
        reason: None,
        duration_ms: 0,
        attempts: Vec::new(),
        checks: Vec::new(),
        machine: case.on.machine_name().map(str::to_string),
        image: case.on.image_name().map(str::to_string),
        revision: machine.map(|m| m.revision),
        digests: Default::default(),
        output: out_dir.clone(),
    };
    if let Some(m) = machine {
        if let Some(sha) = m.source.sha256.clone() {
            result.digests.insert("source_sha256".into(), sha);
        }
    }
    if let Some(img) = case.on.image() {
        for (file, src) in &img.files {
            if let Some(sha) = &src.sha256 {
                result.digests.insert(format!("files.{file}"), sha.clone());
            }
        }
        if let Some(sha) = img.source.as_ref().and_then(|s| s.sha256.clone()) {
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
    let _ = progress.send(Progress::Started(case.name.clone()));
    loop {
        let (attempt, hits) = attempt(desired, sel, checks, &out_dir, state, opts);
        result.checks = hits;
        let class = attempt.class;
        let verdict = attempt.result;
        result.attempts.push(attempt);
        let retries = class
            .and_then(|c| case.spec.retries.get(&c).copied())
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
            let last = result.attempts.last().expect("one attempt");
            let _ = progress.send(Progress::Retrying {
                name: case.name.clone(),
                attempt: result.attempts.len(),
                class,
                reason: last.reason.clone().unwrap_or_default(),
            });
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

/// The default cap of each log of a test.
pub const DEFAULT_LOG_LIMIT: u64 = 256 << 20;

/// One log file of a test, written as output arrives, up to its cap.
struct Log {
    file: BufWriter<File>,
    written: u64,
}

impl Log {
    fn create(path: &Path) -> std::io::Result<Log> {
        Ok(Log {
            file: BufWriter::with_capacity(64 << 10, File::create(path)?),
            written: 0,
        })
    }

    /// Write `bytes`; false once the log would pass `limit` (nothing past it is written).
    fn write(&mut self, bytes: &[u8], limit: u64) -> bool {
        let room = limit.saturating_sub(self.written) as usize;
        let n = bytes.len().min(room);
        let _ = self.file.write_all(&bytes[..n]);
        self.written += n as u64;
        n == bytes.len()
    }
}

/// Where a test's output goes as it arrives: its files and the console
/// checks. What a console driver typed (its echo) goes to `typed.txt`, never
/// to `console.txt` or the checks, so `reconcile checks console.txt` sees
/// exactly what the harness checked, with the same line numbers.
pub(super) struct TestSink {
    stdout: Log,
    stderr: Log,
    console: Log,
    journal: Option<Log>,
    typed: Option<Log>,
    dir: PathBuf,
    pub(super) scanners: Scanners,
    pub(super) fatal: bool,
    limit: u64,
    /// The log that reached its cap, if one did.
    pub(super) overflow: Option<&'static str>,
}

/// One scanner per scope a stream belongs to.
pub(super) struct Scanners {
    console: Scanner,
    output: Scanner,
    journal: Scanner,
}

impl Scanners {
    fn new(checks: &CheckSets, suppressed: &BTreeMap<String, String>) -> Scanners {
        Scanners {
            console: Scanner::with(checks.console.clone(), suppressed.clone()),
            output: Scanner::with(checks.output.clone(), suppressed.clone()),
            journal: Scanner::with(checks.journal.clone(), suppressed.clone()),
        }
    }

    /// The hits of every scope, one per check (the console's first).
    pub(super) fn finish(self) -> Vec<Hit> {
        fn from(hits: Vec<Hit>, log: &'static str) -> impl Iterator<Item = Hit> {
            hits.into_iter().map(move |mut h| {
                h.log = Some(log.to_string());
                h
            })
        }
        let mut hits: Vec<Hit> = from(self.console.finish(), "console.txt").collect();
        for h in
            from(self.journal.finish(), "journal.txt").chain(from(self.output.finish(), "output"))
        {
            if !hits.iter().any(|x| x.check == h.check) {
                hits.push(h);
            }
        }
        hits
    }
}

impl TestSink {
    fn create(
        dir: &Path,
        checks: &CheckSets,
        suppressed: &BTreeMap<String, String>,
        limit: u64,
    ) -> std::io::Result<TestSink> {
        Ok(TestSink {
            stdout: Log::create(&dir.join("stdout.txt"))?,
            stderr: Log::create(&dir.join("stderr.txt"))?,
            console: Log::create(&dir.join("console.txt"))?,
            journal: None,
            typed: None,
            dir: dir.to_path_buf(),
            scanners: Scanners::new(checks, suppressed),
            fatal: false,
            limit,
            overflow: None,
        })
    }
}

impl TestSink {
    /// Everything written so far on disk (matchers read the files; someone may tail them).
    pub(super) fn flush(&mut self) {
        for log in [&mut self.stdout, &mut self.stderr, &mut self.console]
            .into_iter()
            .chain(self.journal.as_mut())
            .chain(self.typed.as_mut())
        {
            let _ = log.file.flush();
        }
    }

    /// The log of `name` (made on first use).
    fn lazy<'a>(slot: &'a mut Option<Log>, dir: &Path, name: &str) -> Option<&'a mut Log> {
        if slot.is_none() {
            *slot = Log::create(&dir.join(name)).ok();
        }
        slot.as_mut()
    }
}

impl Sink for TestSink {
    fn step(&mut self, name: &str) {
        self.flush();
        self.scanners.console.set_step(name);
        self.scanners.output.set_step(name);
        self.scanners.journal.set_step(name);
    }

    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Flow {
        let s = &mut self.scanners;
        let limit = self.limit;
        let (name, fits) = match stream {
            Stream::Stdout => {
                s.output.feed(bytes);
                ("stdout.txt", self.stdout.write(bytes, limit))
            }
            Stream::Stderr => {
                s.output.feed(bytes);
                ("stderr.txt", self.stderr.write(bytes, limit))
            }
            Stream::Console => {
                self.fatal |= s.console.feed(bytes);
                ("console.txt", self.console.write(bytes, limit))
            }
            Stream::Input => (
                "typed.txt",
                Self::lazy(&mut self.typed, &self.dir, "typed.txt")
                    .is_none_or(|l| l.write(bytes, limit)),
            ),
            Stream::Journal => {
                self.fatal |= s.journal.feed(bytes);
                (
                    "journal.txt",
                    Self::lazy(&mut self.journal, &self.dir, "journal.txt")
                        .is_none_or(|l| l.write(bytes, limit)),
                )
            }
        };
        if !fits && self.overflow.is_none() {
            self.overflow = Some(name);
        }
        if self.fatal || self.overflow.is_some() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
}

/// One attempt: provision (a fresh working snapshot, a VM), run, check; the
/// instance is torn down when this returns.
fn attempt(
    desired: &Desired,
    sel: &Selected,
    checks: &CheckSets,
    out_dir: &Path,
    state: &StateDir,
    opts: &Options,
) -> (Attempt, Vec<Hit>) {
    let case = &sel.case;
    let t0 = Instant::now();
    let attempt = Attempt {
        result: Verdict::Fail,
        class: Some(Class::Infra),
        duration_ms: 0,
        reason: None,
        exit_status: None,
        accel: None,
        timeout_factor: None,
        fresh: None,
        fresh_note: None,
        phases: None,
    };
    if opts.cancel.load(Ordering::SeqCst) {
        return infra(attempt, t0, "cancelled before it started".into());
    }
    let limit = desired
        .model
        .settings
        .as_ref()
        .and_then(|s| s.log_limit)
        .map_or(DEFAULT_LOG_LIMIT, |s| s.0);
    let sink = match TestSink::create(out_dir, checks, &case.spec.skip_checks, limit) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("cannot write output files in {}: {e}", out_dir.display());
            return infra(attempt, t0, why);
        }
    };
    let new_sink = |dir: &Path| TestSink::create(dir, checks, &case.spec.skip_checks, limit);
    let outputs = Outputs {
        dir: out_dir,
        new_sink: &new_sink,
    };
    let ran = match run_on_instance(desired, case, sink, &outputs, state, opts, t0) {
        Ok(r) => r,
        Err(why) => return infra(attempt, t0, why),
    };
    let attempt = Attempt {
        accel: ran.facts.accel.map(str::to_string),
        timeout_factor: ran.facts.timeout_factor,
        fresh: ran.facts.fresh.map(str::to_string),
        fresh_note: ran.facts.fresh_note.clone(),
        phases: Some(ran.phases.clone()),
        duration_ms: t0.elapsed().as_millis() as u64,
        ..attempt
    };
    let verdict = judge(attempt, case, &ran, out_dir, limit);
    (verdict, ran.hits)
}

/// An attempt that never ran its test: infra, with why.
fn infra(mut a: Attempt, t0: Instant, reason: String) -> (Attempt, Vec<Hit>) {
    a.duration_ms = t0.elapsed().as_millis() as u64;
    a.reason = Some(reason);
    (a, Vec::new())
}

/// What running a test on its instance gave: how it ended, what the
/// instance said about itself, the phases' times, and the checks' hits.
pub(super) struct Ran {
    pub(super) outcome: std::result::Result<Exit, Interrupt>,
    pub(super) facts: platform::Facts,
    pub(super) phases: Phases,
    pub(super) fatal: bool,
    pub(super) overflow: Option<&'static str>,
    pub(super) hits: Vec<Hit>,
}

/// Where a test's output goes: its folder, and how to make a sink for
/// another folder (a cluster node's).
struct Outputs<'a> {
    dir: &'a Path,
    new_sink: &'a dyn Fn(&Path) -> std::io::Result<TestSink>,
}

/// Provision the case's instance, start it, run the test, tear it down
/// (its output through `sink`); an error says why nothing ran.
fn run_on_instance(
    desired: &Desired,
    case: &super::select::TestCase<'_>,
    mut sink: TestSink,
    outputs: &Outputs,
    state: &StateDir,
    opts: &Options,
    t0: Instant,
) -> std::result::Result<Ran, String> {
    let out_dir = outputs.dir;
    let target = match case.on {
        On::Host => Target::Host,
        On::Machine {
            name,
            machine,
            volume,
        } => Target::Machine {
            name,
            machine,
            volume,
            toolchain: case.toolchain.as_deref(),
            revision: opts.revisions.get(name).copied(),
        },
        On::Image { name, image } => Target::Image {
            name,
            image,
            tree: opts.image_trees.get(name).map(PathBuf::as_path),
        },
    };
    let provision = Provision {
        node: None,
        desired,
        state,
        clouds: Some(&opts.clouds),
        cancel: opts.cancel.clone(),
        log_dir: out_dir.to_path_buf(),
        isolate_network: false,
        suite: Some(&case.suite),
        fresh: desired
            .model
            .suite
            .get(&case.suite)
            .and_then(|s| s.fresh)
            .unwrap_or_default(),
    };
    let timeout = case
        .spec
        .timeout
        .unwrap_or(DEFAULT_TIMEOUT)
        .mul_f64(opts.timeout_multiplier);
    let step = step_of(desired, case, timeout, out_dir);
    if case.cluster.is_some() {
        let new_sink = outputs.new_sink;
        return super::cluster::run(&provision, case, target, step, sink, new_sink, t0);
    }
    let mut phases = Phases::default();
    let mut instance = platform::provision(&provision, case.executor, target)
        .map_err(|e| format!("cannot provision: {e}"))?;
    phases.provision_ms = t0.elapsed().as_millis() as u64;
    let t_start = Instant::now();
    let outcome = instance.start(&mut sink).and_then(|()| {
        phases.boot_ms = t_start.elapsed().as_millis() as u64;
        let t_run = Instant::now();
        let r = instance.run(&step, &mut sink);
        phases.run_ms = t_run.elapsed().as_millis() as u64;
        r
    });
    let facts = instance.facts();
    // an instance that boots inside `run` (a cloud instance launched with the
    // test as user data) says how long the boot took: count it as boot
    if let (0, Some(boot)) = (phases.boot_ms, facts.boot) {
        phases.boot_ms = boot.as_millis() as u64;
        phases.run_ms = phases.run_ms.saturating_sub(phases.boot_ms);
    }
    let t_down = Instant::now();
    drop(instance);
    sink.flush();
    phases.teardown_ms = t_down.elapsed().as_millis() as u64;
    Ok(Ran {
        outcome,
        facts,
        phases,
        fatal: sink.fatal,
        overflow: sink.overflow,
        hits: sink.scanners.finish(),
    })
}

/// The command of a test as its instance runs it: the suite's environment,
/// directory and files, the test's over them.
fn step_of(
    desired: &Desired,
    case: &super::select::TestCase<'_>,
    timeout: Duration,
    out_dir: &Path,
) -> Step {
    let suite = desired.model.suite.get(&case.suite);
    let t = &case.spec;
    let mut env: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in suite.iter().flat_map(|s| &s.env).chain(&t.env) {
        env.insert(k, v);
    }
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("RECONCILE_TEST".into(), case.name.clone()));
    let mut upload: BTreeMap<&str, &model::Upload> = BTreeMap::new();
    for (g, u) in suite.iter().flat_map(|s| &s.upload).chain(&t.upload) {
        upload.insert(g, u);
    }
    Step {
        name: case.name.clone(),
        argv: t.run.clone(),
        env,
        timeout: Some(timeout),
        cwd: t.cwd.clone().or_else(|| suite.and_then(|s| s.cwd.clone())),
        upload: upload
            .into_iter()
            .map(|(guest, u)| platform::Upload {
                guest: guest.to_string(),
                from: PathBuf::from(&u.path),
                mode: u.mode_bits().unwrap_or(0o644),
            })
            .collect(),
        collect: suite
            .iter()
            .flat_map(|s| &s.collect)
            .chain(&t.collect)
            .cloned()
            .collect(),
        collect_into: Some(out_dir.join("collected")),
    }
}

/// The verdict on what ran: a capped log, a fatal or failing check, a
/// timeout or stall, then the exit status and the `expect` matchers.
fn judge(
    attempt: Attempt,
    case: &super::select::TestCase<'_>,
    ran: &Ran,
    out_dir: &Path,
    limit: u64,
) -> Attempt {
    let factor = ran
        .facts
        .timeout_factor
        .map(|f| format!(" (×{f} under TCG)"))
        .unwrap_or_default();
    let hits = &ran.hits;
    let failing_check = hits
        .iter()
        .find(|h| h.suppressed.is_none() && h.severity >= Severity::Fail);
    let fail = |mut a: Attempt, class, reason: String| {
        a.class = Some(class);
        a.reason = Some(reason);
        a
    };
    match &ran.outcome {
        _ if ran.overflow.is_some() => fail(
            attempt,
            Class::Infra,
            format!(
                "{} reached its cap of {} (settings.log_limit): the test printed more than a test may keep; \
                 stopped there (raise log_limit if this much output is meant)",
                ran.overflow.unwrap_or("a log"),
                crate::config::units::show_size(limit)
            ),
        ),
        Err(Interrupt::Stopped) if ran.fatal => fail(
            attempt,
            Class::Check,
            format!("fatal console check: {}", describe(failing_check)),
        ),
        Err(Interrupt::TimedOut { what, after }) => fail(
            attempt,
            Class::Timeout,
            format!(
                "{what} timed out after {}{factor}",
                humantime::format_duration(*after)
            ),
        ),
        Err(i @ Interrupt::Stalled { .. }) => {
            fail(attempt, Class::Infra, format!("stall: {i}{factor}"))
        }
        Err(Interrupt::Refused(why)) => fail(attempt, Class::Test, why.clone()),
        Err(i) => fail(attempt, Class::Infra, i.to_string()),
        Ok(_) if failing_check.is_some() => fail(
            attempt,
            Class::Check,
            format!("console check: {}", describe(failing_check)),
        ),
        Ok(exit) => {
            let exit = *exit;
            let attempt = Attempt {
                exit_status: match exit {
                    Exit::Code(c) => Some(c),
                    Exit::Signal(_) => None,
                },
                ..attempt
            };
            let want = case.spec.expect.exit.unwrap_or(0);
            let mismatch = if exit != Exit::Code(want) {
                Some(format!("{exit}, expected exit status {want}"))
            } else {
                super::matchers::first_failure(&[
                    (
                        "stdout",
                        &case.spec.expect.stdout[..],
                        &out_dir.join("stdout.txt"),
                    ),
                    (
                        "stderr",
                        &case.spec.expect.stderr[..],
                        &out_dir.join("stderr.txt"),
                    ),
                    (
                        "console",
                        &case.spec.expect.console[..],
                        &out_dir.join("console.txt"),
                    ),
                ])
            };
            let warn = hits
                .iter()
                .find(|h| h.suppressed.is_none() && h.severity == Severity::Warn);
            match (mismatch, warn) {
                (Some(reason), _) => fail(attempt, Class::Test, reason),
                (None, Some(w)) => Attempt {
                    result: Verdict::Warn,
                    class: None,
                    reason: Some(format!("console check: {}", describe(Some(w)))),
                    ..attempt
                },
                (None, None) => Attempt {
                    result: Verdict::Pass,
                    class: None,
                    reason: None,
                    ..attempt
                },
            }
        }
    }
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
