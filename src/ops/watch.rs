//! `watch`: keep a host converged: apply once, then converge again on a change to the
//! desired file (watched through its parent directory, since editors save by
//! rename), on drift in a managed tree (the resources' watch paths), on SIGHUP,
//! and on a periodic resync that catches what events miss. An invalid edit is
//! reported and the last good file stays in force. SIGTERM/SIGINT finish the
//! resource in progress and stop. The lock is held only while applying.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use super::apply::{converge_then_test, run_tests_after, Progress};
use super::monitor::{self, Monitor};
use super::systemd::Systemd;
use crate::apply;
use crate::config::{self, lockfile, Desired, Diagnostic};
use crate::error::{Error, Result};
use crate::fsops::{digest::StatIndex, STAGING_MARK};
use crate::resource::{self, Context};
use crate::state::StateDir;

#[derive(Debug, Clone)]
pub struct Options {
    pub file: PathBuf,
    pub interval: Duration,
    pub debounce: Duration,
    /// How long a converge waits for another apply holding the lock.
    pub lock_timeout: Duration,
    /// Pull the file from git (fetched every `interval` and on SIGHUP) instead of watching `file`.
    pub git: Option<crate::fleet::git::Remote>,
    /// How `file` is taken (`--hostname`).
    pub load: config::LoadOptions,
    /// What the loop records of itself (`--listen` serves it; systemd's watchdog asks it).
    pub monitor: Arc<Monitor>,
}

/// What watch reports, in order. Rendering is the caller's.
#[derive(serde::Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event<'a> {
    /// `--listen`: the front door is open (before the first converge).
    Listening {
        url: String,
    },
    Started {
        file: &'a Path,
        resources: usize,
    },
    /// The desired file (or an include, or the lock file) changed and was reloaded.
    Changed {
        files: &'a [PathBuf],
    },
    /// Files of the git checkout were changed by hand: put back as the
    /// applied commit has them (`reverted`), never read.
    CheckoutDrift {
        paths: &'a [PathBuf],
        reverted: &'a [PathBuf],
    },
    /// A managed path changed under us.
    Drift {
        addresses: &'a [String],
        paths: &'a [PathBuf],
    },
    Planned {
        addresses: &'a [String],
        changes: usize,
        trigger: &'a str,
    },
    Applied {
        addresses: &'a [String],
        changes: usize,
        #[serde(rename = "ms", serialize_with = "millis")]
        took: Duration,
    },
    InvalidConfig {
        #[serde(serialize_with = "records")]
        diagnostics: &'a [Diagnostic],
    },
    Error {
        message: String,
    },
    Stopped {
        signal: &'a str,
    },
    /// A commit of the git remote is now in force (`from`: the one before).
    Commit {
        commit: &'a str,
        from: Option<&'a str>,
    },
    /// Resources that drifted and whose `drift = "warn"` leaves them so: reported, not repaired.
    DriftKept {
        addresses: &'a [String],
    },
    /// A candidate's promotion gate: promoted, or kept beside the current revision.
    Gate {
        #[serde(flatten)]
        gate: &'a super::promote::Gate,
    },
    /// The `[run]` tests ran after a converge (`[watch] test = true`).
    Tested {
        run: &'a str,
        pass: usize,
        fail: usize,
        warn: usize,
        skip: usize,
    },
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

fn records<S: serde::Serializer>(d: &&[Diagnostic], s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(d.len()))?;
    for x in d.iter() {
        seq.serialize_element(&x.record())?;
    }
    seq.end()
}

enum Trigger {
    Fs { paths: Vec<PathBuf>, rescan: bool },
    FsErrors(Vec<String>),
    Reload,
    Stop(&'static str),
}

pub fn run(opts: &Options, on: &mut dyn FnMut(Event)) -> Result<()> {
    let (mut desired, pulled) = first_load(opts, on)?;
    opts.monitor.desired(&desired);
    if let Some(c) = &pulled {
        opts.monitor.commit(c);
    }
    let systemd = Systemd::start(opts.monitor.clone());
    let (tx, rx) = mpsc::channel::<Trigger>();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_thread(tx.clone(), stop.clone())?;
    let mut debouncer = fs_events(opts, tx.clone())?;
    let mut watched: BTreeMap<PathBuf, RecursiveMode> = BTreeMap::new();

    sync_watches(&mut debouncer, &mut watched, &desired, opts, on);
    converge(&desired, None, "start", opts, &stop, on);
    if let (Some(remote), Some(commit)) = (&opts.git, &pulled) {
        note_first_commit(remote, commit, on);
    }
    // a remote that fails is asked again after longer and longer pauses (up to 8 intervals)
    let mut fetch_failures = 0u32;
    // what is managed (addresses, paths), refreshed after every converge: events are
    // mapped to resources without scanning the managed trees again
    let (_, mut managed) = sync_watches(&mut debouncer, &mut watched, &desired, opts, on);
    // started = converged once and watching everything that exists
    on(Event::Started {
        file: &desired.path,
        resources: managed.len(),
    });
    systemd.ready();

    let mut next_resync = Instant::now() + opts.interval;
    loop {
        // an idle loop wakes up now and then to show it is alive
        let wake = next_resync.min(Instant::now() + opts.monitor.beat_period());
        let trigger = match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(t) => t,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < next_resync => {
                opts.monitor.beat();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                next_resync = Instant::now() + opts.interval;
                if opts.git.is_some() {
                    let ok = fetch(&mut desired, opts, &stop, on);
                    fetch_failures = if ok { 0 } else { fetch_failures + 1 };
                    next_resync = Instant::now() + opts.interval * 2u32.pow(fetch_failures.min(3));
                }
                converge(&desired, None, "resync", opts, &stop, on);
                managed = sync_watches(&mut debouncer, &mut watched, &desired, opts, on).1;
                systemd.status();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        };
        match trigger {
            Trigger::Stop(signal) => {
                systemd.stopping();
                on(Event::Stopped { signal });
                return Ok(());
            }
            Trigger::Reload if opts.git.is_some() => {
                // SIGHUP: fetch now
                if fetch(&mut desired, opts, &stop, on) {
                    fetch_failures = 0;
                }
            }
            Trigger::Reload => reload(&mut desired, &[], opts, &stop, on),
            Trigger::FsErrors(errors) => {
                on(Event::Error {
                    message: format!("watcher: {}; resyncing", errors.join("; ")),
                });
                converge(&desired, None, "rescan", opts, &stop, on);
            }
            Trigger::Fs { paths, rescan } => {
                on_fs_events(&mut desired, &managed, paths, rescan, opts, &stop, on)
            }
        }
        if stop.load(Ordering::SeqCst) {
            systemd.stopping();
            on(Event::Stopped { signal: "SIGTERM" });
            return Ok(());
        }
        systemd.status();
        let (added, now) = sync_watches(&mut debouncer, &mut watched, &desired, opts, on);
        managed = now;
        if added {
            // a tree appeared (a first install into a new root): whatever changed in it
            // before the watch was in place is caught by looking once more
            converge(&desired, None, "new-watch", opts, &stop, on);
        }
    }
}

/// The file to start from; in git mode the last good commit (or a fresh
/// fetch) and the commit it is — a host with nothing applied yet and an
/// unreachable remote has nothing to keep.
fn first_load(opts: &Options, on: &mut dyn FnMut(Event)) -> Result<(Desired, Option<String>)> {
    Ok(match &opts.git {
        Some(remote) => {
            let f = crate::fleet::pull_and_load(remote)?;
            if let Some(nt) = &f.not_taken {
                said_not_taken(nt, &f.commit, on);
            }
            (f.desired, Some(f.commit))
        }
        None => (config::load_with(&opts.file, opts.load.clone())?, None),
    })
}

/// The commit the first converge applied: said when it is new, recorded.
fn note_first_commit(remote: &crate::fleet::git::Remote, commit: &str, on: &mut dyn FnMut(Event)) {
    let from = remote.record().applied;
    if from.as_deref() != Some(commit) {
        on(Event::Commit {
            commit,
            from: from.as_deref(),
        });
    }
    if let Err(e) = remote.note_applied(commit) {
        on(Event::Error {
            message: e.to_string(),
        });
    }
}

/// Filesystem events, debounced, as triggers on `tx`.
fn fs_events(
    opts: &Options,
    fs_tx: mpsc::Sender<Trigger>,
) -> Result<Debouncer<RecommendedWatcher, RecommendedCache>> {
    new_debouncer(
        opts.debounce,
        Some(opts.debounce / 2),
        move |r: DebounceEventResult| {
            let _ = fs_tx.send(match r {
                Ok(events) => {
                    let rescan = events.iter().any(|e| e.need_rescan());
                    // reads (open, access, close-nowrite) change nothing; observing would otherwise re-trigger itself
                    let mut paths: Vec<PathBuf> = events
                        .into_iter()
                        .filter(|e| !e.event.kind.is_access())
                        .flat_map(|e| e.event.paths)
                        .collect();
                    paths.sort();
                    paths.dedup();
                    if paths.is_empty() && !rescan {
                        return;
                    }
                    Trigger::Fs { paths, rescan }
                }
                Err(errors) => Trigger::FsErrors(errors.iter().map(|e| e.to_string()).collect()),
            });
        },
    )
    .map_err(|e| Error::State {
        path: opts.file.clone(),
        reason: format!("cannot watch: {e}"),
    })
}

/// Changed paths: an edit of the git checkout is put back, a change of the
/// file (or its includes, lock file, suite directories) reloads it, a change
/// of a managed tree is drift and converges what it touched.
fn on_fs_events(
    desired: &mut Desired,
    managed: &[(String, PathBuf)],
    paths: Vec<PathBuf>,
    rescan: bool,
    opts: &Options,
    stop: &Arc<AtomicBool>,
    on: &mut dyn FnMut(Event),
) {
    let mut paths: Vec<PathBuf> = paths
        .into_iter()
        .filter(|p| !ignored(p, desired, opts))
        .collect();
    if let Some(remote) = &opts.git {
        // the checkout is read only as committed: an edit there is drift of
        // the checkout (put back), never a reload; managed roots inside it
        // are drift of what they hold
        let repo = remote.repo();
        let (checkout, rest): (Vec<PathBuf>, Vec<PathBuf>) = paths.into_iter().partition(|p| {
            p.starts_with(&repo) && !managed.iter().any(|(_, loc)| p.starts_with(loc))
        });
        if !checkout.is_empty() {
            guard_checkout(desired, opts, &checkout, on);
        }
        paths = rest;
    }
    let config_files = config_files(desired);
    let suite_dirs = suite_dirs(desired);
    // the file, its includes and lock file, and the suites' test directories
    // (an executable added there is a test the reloaded file has)
    let changed: Vec<PathBuf> = paths
        .iter()
        .filter(|p| config_files.contains(*p) || p.parent().is_some_and(|d| suite_dirs.contains(d)))
        .cloned()
        .collect();
    if rescan {
        // the kernel queue overflowed: events were lost, look at everything
        on(Event::Error {
            message: "watcher queue overflowed; rescanning everything".into(),
        });
        converge(desired, None, "rescan", opts, stop, on);
    } else if !changed.is_empty() {
        reload(desired, &changed, opts, stop, on);
    } else if !paths.is_empty() {
        match affected(managed, &paths) {
            addresses if !addresses.is_empty() => {
                // our own commits show up as events too; only a plan with changes is drift
                let mut drifted = |e: Event| {
                    if let Event::Planned { addresses, .. } = &e {
                        on(Event::Drift {
                            addresses,
                            paths: &paths,
                        });
                    }
                    on(e)
                };
                converge(desired, Some(&addresses), "drift", opts, stop, &mut drifted);
            }
            _ => {}
        }
    }
}

fn spawn_signal_thread(tx: mpsc::Sender<Trigger>, stop: Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM]).map_err(|e| {
            Error::State {
                path: PathBuf::from("/"),
                reason: format!("cannot handle signals: {e}"),
            }
        })?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let t = match sig {
                SIGHUP => Trigger::Reload,
                SIGINT => Trigger::Stop("SIGINT"),
                _ => Trigger::Stop("SIGTERM"),
            };
            if matches!(t, Trigger::Stop(_)) {
                // an apply in progress stops after the resource it is on
                stop.store(true, Ordering::SeqCst);
            }
            if tx.send(t).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Git mode: fetch; a new commit that may be applied and whose file is valid
/// is loaded and converged, and recorded as applied. False when the remote
/// could not be reached (the caller backs off).
fn fetch(
    desired: &mut Desired,
    opts: &Options,
    stop: &Arc<AtomicBool>,
    on: &mut dyn FnMut(Event),
) -> bool {
    use crate::fleet::Pulled;
    let Some(remote) = &opts.git else {
        return true;
    };
    // hand edits first: a file added where sources are read would refuse every new commit
    guard_checkout(desired, opts, &[], on);
    match crate::fleet::pull(remote) {
        Ok(Pulled::Same { .. }) => true,
        Ok(Pulled::New {
            desired: new,
            commit,
            from,
        }) => {
            let files = new.files.clone();
            *desired = *new;
            opts.monitor.desired(desired);
            opts.monitor.commit(&commit);
            on(Event::Commit {
                commit: &commit,
                from: from.as_deref(),
            });
            on(Event::Changed { files: &files });
            converge(desired, None, "git", opts, stop, on);
            if let Err(e) = remote.note_applied(&commit) {
                on(Event::Error {
                    message: e.to_string(),
                });
            }
            true
        }
        Ok(Pulled::Kept { commit, not_taken }) => {
            said_not_taken(&not_taken, &commit, on);
            !not_taken.unreachable
        }
        Err(e) => {
            on(Event::Error {
                message: format!("{e}; retrying later"),
            });
            false
        }
    }
}

/// A commit not taken: its diagnostics, then why, and that the last good state stays.
fn said_not_taken(nt: &crate::fleet::NotTaken, kept: &str, on: &mut dyn FnMut(Event)) {
    if !nt.diagnostics.is_empty() {
        on(Event::InvalidConfig {
            diagnostics: &nt.diagnostics,
        });
    }
    let retry = if nt.unreachable {
        ", retrying later"
    } else {
        ""
    };
    on(Event::Error {
        message: format!(
            "{}; keeping the last good state ({}){retry}",
            nt.why,
            crate::fleet::git::short(kept)
        ),
    });
}

/// Git mode: the checkout's files where the desired state reads must be as
/// the applied commit has them. What was edited by hand is put back (tracked
/// files restored, files added where sources are read removed) and said as
/// drift of the checkout. False when it could not be put back (no converge then).
fn guard_checkout(
    desired: &Desired,
    opts: &Options,
    seen: &[PathBuf],
    on: &mut dyn FnMut(Event),
) -> bool {
    let Some(remote) = &opts.git else {
        return true;
    };
    let edits = match crate::fleet::hand_edits(remote, desired) {
        Ok(e) => e,
        Err(e) => {
            on(Event::Error {
                message: e.to_string(),
            });
            return false;
        }
    };
    if edits.is_empty() {
        return true;
    }
    match crate::fleet::revert_hand_edits(remote, desired)
        .and_then(|left| remote.remove_untracked(&left).map(|()| left))
    {
        Ok(_) => {
            let paths: Vec<PathBuf> = if seen.is_empty() {
                edits.iter().map(|e| remote.repo().join(e)).collect()
            } else {
                seen.to_vec()
            };
            on(Event::CheckoutDrift {
                paths: &paths,
                reverted: &edits,
            });
            true
        }
        Err(e) => {
            on(Event::Error {
                message: format!("the checkout was changed by hand and cannot be put back: {e}"),
            });
            false
        }
    }
}

fn reload(
    desired: &mut Desired,
    changed: &[PathBuf],
    opts: &Options,
    stop: &Arc<AtomicBool>,
    on: &mut dyn FnMut(Event),
) {
    match config::load_with(&opts.file, opts.load.clone()) {
        Ok(new) => {
            let files: Vec<PathBuf> = if changed.is_empty() {
                new.files.clone()
            } else {
                changed.to_vec()
            };
            let same = new.digest == desired.digest;
            *desired = new;
            opts.monitor.desired(desired);
            if !same {
                on(Event::Changed { files: &files });
            }
            converge(desired, None, "config", opts, stop, on);
        }
        // the last good file stays in force
        Err(Error::Invalid(diagnostics)) => on(Event::InvalidConfig {
            diagnostics: &diagnostics,
        }),
        Err(e) => on(Event::Error {
            message: format!("{e}; keeping the last good file"),
        }),
    }
}

fn converge(
    desired: &Desired,
    only: Option<&[String]>,
    trigger: &str,
    opts: &Options,
    stop: &Arc<AtomicBool>,
    on: &mut dyn FnMut(Event),
) {
    if stop.load(Ordering::SeqCst) {
        return;
    }
    // git mode: nothing edited by hand in the checkout is ever applied
    if !guard_checkout(desired, opts, &[], on) {
        return;
    }
    let started = Instant::now();
    let targets = only
        .map(|a| {
            a.iter()
                .filter_map(|x| glob::Pattern::new(&glob::Pattern::escape(x)).ok())
                .collect()
        })
        .unwrap_or_default();
    let aopts = apply::Options {
        targets,
        lock_timeout: Some(opts.lock_timeout),
        command: format!("reconcile watch ({trigger})"),
        // a stop signal lets the resource in progress finish, then ends the converge
        cancel: Some(stop.clone()),
        ..Default::default()
    };
    let tests = desired
        .model
        .watch
        .as_ref()
        .filter(|w| w.test)
        .and_then(|_| run_tests_after(desired, stop.clone(), true));
    let monitor = &opts.monitor;
    monitor.converging();
    let mut planned: Vec<String> = Vec::new();
    let mut plan: Option<crate::plan::Plan> = None;
    let mut applied: Vec<String> = Vec::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut gates: Vec<super::promote::Gate> = Vec::new();
    let mut changes = 0;
    let mut said_applied = false;
    // the state dir of this converge, opened once for it and its tests
    let state = match StateDir::create(&desired.state_dir) {
        Ok(s) => s,
        Err(e) => {
            on(Event::Error {
                message: e.to_string(),
            });
            monitor.converged(&monitor::Outcome {
                trigger,
                error: Some(e.to_string()),
                took: started.elapsed(),
                ..Default::default()
            });
            return;
        }
    };
    let result = converge_then_test(desired, &state, &aopts, tests, false, &mut |e| {
        monitor.beat();
        match e {
            Progress::Apply(apply::Event::Planned(p)) => {
                planned = p
                    .resources
                    .iter()
                    .filter(|r| !r.changes.is_empty() && !r.drift_warn)
                    .map(|r| r.address.clone())
                    .collect();
                changes = p.summary.changes;
                plan = Some(p.clone());
                if !planned.is_empty() {
                    on(Event::Planned {
                        addresses: &planned,
                        changes,
                        trigger,
                    });
                }
            }
            Progress::Apply(apply::Event::Failed { address, error }) => {
                failed.push((address.to_string(), error.to_string()));
                on(Event::Error {
                    message: format!("{address}: {error}"),
                })
            }
            Progress::Apply(apply::Event::Recovered(r)) => on(Event::Error {
                message: format!("recovered {} ({})", r.address, r.outcome),
            }),
            Progress::Apply(apply::Event::Applied { address, .. }) => {
                applied.push(address.to_string())
            }
            Progress::Apply(apply::Event::Applying { .. }) => {}
            // the tests start once everything is applied: say so first
            Progress::Test(_) if !said_applied => {
                said_applied = true;
                on(Event::Applied {
                    addresses: &applied,
                    changes,
                    took: started.elapsed(),
                });
            }
            Progress::Test(_) => {}
            Progress::Gate(super::promote::GateEvent::Done(gate)) => {
                gates.push(gate.clone());
                on(Event::Gate { gate })
            }
            Progress::Gate(_) => {}
        }
    });
    let mut error = None;
    match result {
        Ok(report) => {
            if !said_applied && !applied.is_empty() {
                on(Event::Applied {
                    addresses: &applied,
                    changes: report.changes,
                    took: started.elapsed(),
                });
            }
            changes = report.changes;
            if let Some(r) = &report.tests {
                monitor.tested(
                    r.summary.pass,
                    r.summary.fail,
                    r.summary.warn,
                    r.summary.skip,
                );
                on(Event::Tested {
                    run: &r.run,
                    pass: r.summary.pass,
                    fail: r.summary.fail,
                    warn: r.summary.warn,
                    skip: r.summary.skip,
                });
            }
        }
        Err(e) => {
            error = Some(e.to_string());
            on(Event::Error {
                message: e.to_string(),
            })
        }
    }
    let drifted: Vec<String> = plan
        .iter()
        .flat_map(|p| &p.resources)
        .filter(|r| r.drift_warn)
        .map(|r| r.address.clone())
        .collect();
    if !drifted.is_empty() {
        on(Event::DriftKept {
            addresses: &drifted,
        });
    }
    // applied, and every change it made put back something changed outside reconcile
    let repaired: Vec<String> = plan
        .iter()
        .flat_map(|p| &p.resources)
        .filter(|r| applied.contains(&r.address) && r.changes.iter().all(|c| c.drift))
        .map(|r| r.address.clone())
        .collect();
    monitor.converged(&monitor::Outcome {
        plan: plan.as_ref(),
        applied: &applied,
        repaired: &repaired,
        failed: &failed,
        drifted: &drifted,
        gates: &gates,
        whole: only.is_none(),
        changes,
        error,
        trigger,
        took: started.elapsed(),
    });
}

/// Paths watch must not react to: reconcile's own staging names, the state
/// dir, and in git mode the repository's own files (a fetch writes there).
fn ignored(p: &Path, desired: &Desired, opts: &Options) -> bool {
    p.starts_with(&desired.state_dir)
        || p.to_string_lossy().contains(STAGING_MARK)
        || opts
            .git
            .as_ref()
            .is_some_and(|r| p.starts_with(r.repo().join(".git")))
}

/// The suites' test directories (read with the file).
fn suite_dirs(desired: &Desired) -> BTreeSet<PathBuf> {
    desired
        .model
        .suite
        .values()
        .filter_map(|s| s.dir.as_ref().map(PathBuf::from))
        .collect()
}

fn config_files(desired: &Desired) -> BTreeSet<PathBuf> {
    let mut set: BTreeSet<PathBuf> = desired.files.iter().cloned().collect();
    set.insert(lockfile::path_for(&desired.path));
    set
}

/// The resources of the desired state (observe-free: just their addresses and paths).
fn resources(desired: &Desired) -> Result<Vec<Box<dyn resource::Resource>>> {
    let state = StateDir::existing(&desired.state_dir);
    let index = StatIndex::ephemeral();
    let cx = Context::new(desired, &state, &index, false, false);
    resource::all(&cx)
}

/// Addresses of the resources whose paths contain (or lie under) one of `paths`.
fn affected(managed: &[(String, PathBuf)], paths: &[PathBuf]) -> Vec<String> {
    let hit: BTreeSet<&String> = managed
        .iter()
        .filter(|(_, loc)| {
            paths
                .iter()
                .any(|p| p.starts_with(loc) || loc.starts_with(p))
        })
        .map(|(address, _)| address)
        .collect();
    hit.into_iter().cloned().collect()
}

/// Watch the config files' directories and every managed tree that exists now.
/// Returns whether a recursive watch was added, and every resource's (address, location).
fn sync_watches(
    debouncer: &mut Debouncer<RecommendedWatcher, RecommendedCache>,
    watched: &mut BTreeMap<PathBuf, RecursiveMode>,
    desired: &Desired,
    opts: &Options,
    on: &mut dyn FnMut(Event),
) -> (bool, Vec<(String, PathBuf)>) {
    let mut added = false;
    let mut managed = Vec::new();
    let mut want: BTreeMap<PathBuf, RecursiveMode> = BTreeMap::new();
    match &opts.git {
        // the whole checkout: an edit anywhere in it is put back
        Some(remote) => {
            want.insert(remote.repo(), RecursiveMode::Recursive);
        }
        None => {
            for f in config_files(desired) {
                if let Some(dir) = f.parent() {
                    want.insert(dir.to_path_buf(), RecursiveMode::NonRecursive);
                }
            }
            for d in suite_dirs(desired).into_iter().filter(|d| d.is_dir()) {
                want.insert(d, RecursiveMode::NonRecursive);
            }
        }
    }
    match resources(desired) {
        Err(e) => on(Event::Error {
            message: e.to_string(),
        }),
        Ok(rs) => {
            for r in rs {
                managed.push((r.address().to_string(), r.location()));
                for p in r.watch_paths() {
                    if p.exists() {
                        want.insert(p, RecursiveMode::Recursive);
                    }
                }
            }
        }
    }
    // a recursive watch covers everything below it
    let recursive: Vec<PathBuf> = want
        .iter()
        .filter(|(_, m)| **m == RecursiveMode::Recursive)
        .map(|(p, _)| p.clone())
        .collect();
    want.retain(|p, _| !recursive.iter().any(|r| p != r && p.starts_with(r)));

    let stale: Vec<PathBuf> = watched
        .iter()
        .filter(|(p, m)| want.get(*p) != Some(m))
        .map(|(p, _)| p.clone())
        .collect();
    for p in stale {
        let _ = debouncer.unwatch(&p);
        watched.remove(&p);
    }
    for (p, mode) in want {
        if watched.contains_key(&p) {
            continue;
        }
        match debouncer.watch(&p, mode) {
            Ok(()) => {
                added |= mode == RecursiveMode::Recursive;
                watched.insert(p, mode);
            }
            Err(e) => on(Event::Error {
                message: format!("cannot watch {}: {e}", p.display()),
            }),
        }
    }
    (added, managed)
}
