//! What `watch` shows of itself while it runs for months: the metrics
//! `/metrics` serves, whether the loop is alive (`/healthz`) and whether the
//! last converge succeeded (`/readyz`), each resource's state as the last
//! converge left it, and the desired state in force (`/status` observes it
//! on request). The loop records; the front door (`serve`) reads.
//!
//! Metrics follow Flux's conventions and keep cardinality low: labels are
//! a result, a kind and a state, never a resource's address.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::status::{self, StatusReport};
use super::Remote;
use crate::config::Desired;
use crate::error::Result;
use crate::harness::report::Report;
use crate::plan::Plan;
use crate::resource::CandidateState;
use crate::state::{now_rfc3339, LastApply, StateDir};

/// The states a candidate is counted in while it is held.
const HELD: [CandidateState; 2] = [CandidateState::NotTested, CandidateState::Failed];

/// Converge durations: 10 ms to about 3 hours (a converge that builds a machine).
const BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 10800.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindState {
    kind: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommitLabel {
    commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type HistogramFamily = Family<ResultLabel, Histogram, fn() -> Histogram>;

struct Metrics {
    duration: HistogramFamily,
    converges: Family<ResultLabel, Counter>,
    resources: Family<KindState, Gauge>,
    drift_repairs: Family<KindLabel, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    tests: Family<ResultLabel, Counter>,
    git: Family<CommitLabel, Gauge>,
    candidates: Family<StateLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Largest log the page shows.
const MAX_LOG: u64 = 16 << 20;

/// A resource as the last converge that planned it left it.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceState {
    pub address: String,
    pub kind: String,
    pub state: State,
    /// The first planned change, or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// In sync, or its changes were applied.
    Ready,
    /// Its apply failed.
    Failed,
    /// It drifted and its `drift = "warn"` leaves it so.
    Drifted,
    /// Changes planned and not applied (the converge stopped first).
    Pending,
}

impl State {
    pub const ALL: [State; 4] = [State::Ready, State::Failed, State::Drifted, State::Pending];

    pub fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Failed => "failed",
            State::Drifted => "drifted",
            State::Pending => "pending",
        }
    }
}

/// The last converge, in short.
#[derive(Debug, Clone, Serialize)]
pub struct Converged {
    pub finished: String,
    pub trigger: String,
    pub ok: bool,
    pub changes: usize,
    pub ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one converge did, as the loop saw it.
#[derive(Default)]
pub struct Outcome<'a> {
    pub trigger: &'a str,
    /// The plan, when it got that far.
    pub plan: Option<&'a Plan>,
    /// Addresses applied; of them, those whose changes all repaired drift.
    pub applied: &'a [String],
    pub repaired: &'a [String],
    /// (address, error) of each resource that failed.
    pub failed: &'a [(String, String)],
    /// Addresses left drifted by `drift = "warn"`.
    pub drifted: &'a [String],
    /// The candidates' gates that ran.
    pub gates: &'a [super::promote::Gate],
    /// Whether the plan covered every resource (not a drift converge of a few).
    pub whole: bool,
    pub changes: usize,
    pub error: Option<String>,
    pub took: Duration,
}

struct Inner {
    beat: Instant,
    converging: bool,
    last: Option<Converged>,
    resources: BTreeMap<String, ResourceState>,
    desired: Option<Arc<Desired>>,
    commit: Option<String>,
    /// Candidates held, by address: `not-tested` or `failed`.
    candidates: BTreeMap<String, CandidateState>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("stall", &self.stall)
            .finish()
    }
}

pub struct Monitor {
    registry: Registry,
    metrics: Metrics,
    inner: Mutex<Inner>,
    stall: Duration,
    git: Option<Remote>,
}

/// What the page at `/` shows.
#[derive(Debug, Serialize)]
pub struct View {
    pub version: &'static str,
    pub host: String,
    pub file: PathBuf,
    pub commit: Option<String>,
    pub healthy: std::result::Result<(), String>,
    pub ready: std::result::Result<(), String>,
    pub last_converge: Option<Converged>,
    pub last_apply: Option<LastApply>,
    pub resources: Vec<ResourceState>,
    pub last_tests: Option<Report>,
}

impl Monitor {
    /// A monitor for a loop that is unhealthy once it makes no progress for `stall`.
    pub fn new(stall: Duration, git: Option<Remote>) -> Monitor {
        let mut registry = Registry::default();
        let metrics = Metrics {
            duration: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            converges: Family::default(),
            resources: Family::default(),
            drift_repairs: Family::default(),
            last_success: Gauge::default(),
            tests: Family::default(),
            git: Family::default(),
            candidates: Family::default(),
        };
        registry.register(
            "reconcile_converge_duration_seconds",
            "How long converges took, by result",
            metrics.duration.clone(),
        );
        registry.register(
            "reconcile_converge",
            "Converges, by result",
            metrics.converges.clone(),
        );
        registry.register(
            "reconcile_resources",
            "Resources by kind and by the state the last converge left them in",
            metrics.resources.clone(),
        );
        registry.register(
            "reconcile_drift_repairs",
            "Resources put back after drift, by kind",
            metrics.drift_repairs.clone(),
        );
        registry.register(
            "reconcile_last_success_timestamp_seconds",
            "When the last converge that succeeded finished (Unix time)",
            metrics.last_success.clone(),
        );
        registry.register(
            "reconcile_tests",
            "Tests run after converges, by result",
            metrics.tests.clone(),
        );
        registry.register(
            "reconcile_candidates",
            "Candidates held behind promotion gates, by state",
            metrics.candidates.clone(),
        );
        for state in HELD {
            let _ = metrics.candidates.get_or_create(&StateLabel {
                state: state.name(),
            });
        }
        registry.register(
            "reconcile_git_info",
            "The commit in force (git mode)",
            metrics.git.clone(),
        );
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("reconcile_build_info", "The running release", build);
        // every series exists from the start, so rate() and alerts see a 0 first
        for result in ["success", "failure"] {
            let l = ResultLabel { result };
            let _ = metrics.converges.get_or_create(&l);
            let _ = metrics.duration.get_or_create(&l);
        }
        for result in ["pass", "fail", "warn", "skip"] {
            let _ = metrics.tests.get_or_create(&ResultLabel { result });
        }
        Monitor {
            registry,
            metrics,
            inner: Mutex::new(Inner {
                beat: Instant::now(),
                converging: false,
                last: None,
                resources: BTreeMap::new(),
                desired: None,
                commit: None,
                candidates: BTreeMap::new(),
            }),
            stall,
            git,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // a panic elsewhere must not take the front door down with it
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How often an idle loop must wake up to stay healthy.
    pub fn beat_period(&self) -> Duration {
        (self.stall / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
    }

    /// The loop made progress (woke up idle, or a converge reported something).
    pub fn beat(&self) {
        self.inner().beat = Instant::now();
    }

    /// The desired state now in force (after the first load and every reload).
    pub fn desired(&self, d: &Desired) {
        self.inner().desired = Some(Arc::new(d.clone()));
    }

    pub fn commit(&self, commit: &str) {
        self.metrics.git.clear();
        self.metrics
            .git
            .get_or_create(&CommitLabel {
                commit: commit.to_string(),
            })
            .set(1);
        self.inner().commit = Some(commit.to_string());
    }

    pub fn converging(&self) {
        let mut i = self.inner();
        i.converging = true;
        i.beat = Instant::now();
    }

    /// Record a converge: the metrics, the resources' states, readiness.
    pub fn converged(&self, o: &Outcome) {
        let result = if o.error.is_none() && o.failed.is_empty() {
            "success"
        } else {
            "failure"
        };
        let l = ResultLabel { result };
        self.metrics.converges.get_or_create(&l).inc();
        self.metrics
            .duration
            .get_or_create(&l)
            .observe(o.took.as_secs_f64());
        for a in o.repaired {
            self.metrics
                .drift_repairs
                .get_or_create(&KindLabel { kind: kind_of(a) })
                .inc();
        }
        let mut i = self.inner();
        i.converging = false;
        i.beat = Instant::now();
        let finished = now_rfc3339();
        if result == "success" {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            self.metrics.last_success.set(now.as_secs_f64());
        }
        if let Some(plan) = o.plan {
            if o.whole {
                i.resources.clear();
            }
            for r in &plan.resources {
                let state = if o.failed.iter().any(|(a, _)| a == &r.address) {
                    State::Failed
                } else if o.drifted.contains(&r.address) {
                    State::Drifted
                } else if r.changes.is_empty() || o.applied.contains(&r.address) {
                    State::Ready
                } else {
                    State::Pending
                };
                let reason = match state {
                    State::Failed => o
                        .failed
                        .iter()
                        .find(|(a, _)| a == &r.address)
                        .map(|(_, e)| e.clone()),
                    State::Ready => None,
                    _ => r.changes.first().map(|c| c.reason.clone()),
                };
                i.resources.insert(
                    r.address.clone(),
                    ResourceState {
                        address: r.address.clone(),
                        kind: kind_of(&r.address),
                        state,
                        reason,
                    },
                );
            }
            self.metrics.resources.clear();
            for r in i.resources.values() {
                let _ = self.metrics.drift_repairs.get_or_create(&KindLabel {
                    kind: r.kind.clone(),
                });
                self.metrics
                    .resources
                    .get_or_create(&KindState {
                        kind: r.kind.clone(),
                        state: r.state.name(),
                    })
                    .inc();
            }
        }
        for g in o.gates {
            use super::promote::GateResult;
            match g.result {
                GateResult::Promoted => i.candidates.remove(&g.address),
                GateResult::Failed => i
                    .candidates
                    .insert(g.address.clone(), CandidateState::Failed),
                GateResult::Interrupted => i
                    .candidates
                    .insert(g.address.clone(), CandidateState::NotTested),
            };
        }
        for state in HELD {
            let n = i.candidates.values().filter(|s| **s == state).count();
            self.metrics
                .candidates
                .get_or_create(&StateLabel {
                    state: state.name(),
                })
                .set(n as i64);
        }
        i.last = Some(Converged {
            finished,
            trigger: o.trigger.to_string(),
            ok: result == "success",
            changes: o.changes,
            ms: o.took.as_millis(),
            error: o
                .error
                .clone()
                .or_else(|| o.failed.first().map(|(a, e)| format!("{a}: {e}"))),
        });
    }

    /// The tests run after a converge.
    pub fn tested(&self, pass: usize, fail: usize, warn: usize, skip: usize) {
        for (result, n) in [
            ("pass", pass),
            ("fail", fail),
            ("warn", warn),
            ("skip", skip),
        ] {
            self.metrics
                .tests
                .get_or_create(&ResultLabel { result })
                .inc_by(n as u64);
        }
    }

    /// Alive: the loop made progress within the stall limit.
    pub fn healthy(&self) -> std::result::Result<(), String> {
        let i = self.inner();
        let quiet = i.beat.elapsed();
        if quiet <= self.stall {
            return Ok(());
        }
        let doing = if i.converging {
            "a converge has reported nothing"
        } else {
            "the loop has not woken up"
        };
        Err(format!(
            "{doing} for {} (the limit is {}, --stall)",
            humantime::format_duration(Duration::from_secs(quiet.as_secs())),
            humantime::format_duration(self.stall)
        ))
    }

    /// Ready: the last converge succeeded.
    pub fn ready(&self) -> std::result::Result<(), String> {
        match &self.inner().last {
            None => Err("not converged yet".into()),
            Some(c) if c.ok => Ok(()),
            Some(c) => Err(format!(
                "the last converge ({}, {}) failed: {}",
                c.trigger,
                c.finished,
                c.error.as_deref().unwrap_or("?")
            )),
        }
    }

    /// One line for systemd's STATUS=: the last converge and the drift left.
    pub fn status_line(&self) -> String {
        let i = self.inner();
        let drifted = i
            .resources
            .values()
            .filter(|r| r.state == State::Drifted)
            .count();
        let failed = i
            .resources
            .values()
            .filter(|r| r.state == State::Failed)
            .count();
        let last = match &i.last {
            None => "not converged yet".to_string(),
            Some(c) if c.ok => format!("converged at {} ({} changes)", c.finished, c.changes),
            Some(c) => format!("converge failed at {}", c.finished),
        };
        format!(
            "{last}; {} resources, {drifted} drifted, {failed} failed",
            i.resources.len()
        )
    }

    /// The exposition: OpenMetrics when the scraper asks for it, else
    /// Prometheus text 0.0.4 (promtool, curl). Returns (content type, body).
    pub fn metrics(&self, openmetrics: bool) -> (&'static str, String) {
        let mut out = String::new();
        // writing into a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if openmetrics {
            (
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                out,
            )
        } else {
            (
                "text/plain; version=0.0.4; charset=utf-8",
                to_text_format(&out),
            )
        }
    }

    /// `status --json` of the desired state in force, observed now.
    pub fn status(&self) -> Result<Option<StatusReport>> {
        let Some(desired) = self.inner().desired.clone() else {
            return Ok(None);
        };
        let record = self.git.as_ref().map(Remote::record);
        status::report(&desired, record).map(Some)
    }

    /// The state dir's runs directory, where the page's links lead.
    pub fn runs_dir(&self) -> Option<PathBuf> {
        let i = self.inner();
        i.desired.as_ref().map(|d| d.state_dir.join("runs"))
    }

    /// A file of a test run (a log the page links to), read beneath the
    /// runs directory without following a symlink out of it.
    pub fn run_file(&self, rel: &std::path::Path) -> std::io::Result<Vec<u8>> {
        let runs = self.runs_dir().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no desired state loaded yet")
        })?;
        crate::fsops::beneath::components(rel)?;
        crate::fsops::beneath::Beneath::open(&runs)?.read(rel, MAX_LOG)
    }

    pub fn view(&self) -> View {
        let healthy = self.healthy();
        let ready = self.ready();
        let i = self.inner();
        let (host, file, state_dir) = match &i.desired {
            Some(d) => (d.host.clone(), d.path.clone(), Some(d.state_dir.clone())),
            None => (String::new(), PathBuf::new(), None),
        };
        let mut resources: Vec<ResourceState> = i.resources.values().cloned().collect();
        // the ones that need a look first
        resources.sort_by_key(|r| (std::cmp::Reverse(r.state != State::Ready), r.state));
        View {
            version: env!("CARGO_PKG_VERSION"),
            host,
            file,
            commit: i.commit.clone(),
            healthy,
            ready,
            last_converge: i.last.clone(),
            last_apply: state_dir
                .as_ref()
                .and_then(|s| StateDir::existing(s).last_apply()),
            resources,
            last_tests: state_dir
                .and_then(|s| Report::load(&s.join("runs/latest/report.json")).ok()),
        }
    }
}

/// `plugin.tool` → `plugin`.
fn kind_of(address: &str) -> String {
    address.split('.').next().unwrap_or(address).to_string()
}

/// OpenMetrics text as Prometheus text 0.0.4: a counter's family is named
/// with its `_total` sample, and there is no `# EOF` or `# UNIT`.
fn to_text_format(om: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for line in om.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
        {
            counters.push(name);
        }
    }
    let mut out = String::with_capacity(om.len() + 16 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        match meta {
            Some(p) => {
                let rest = &line[p.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(&name) {
                    out.push_str(&format!("{p}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_sample_in_the_text_format() {
        let m = Monitor::new(Duration::from_secs(60), None);
        m.tested(3, 1, 0, 2);
        let (_, om) = m.metrics(true);
        assert!(om.contains("# TYPE reconcile_tests counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        let (ty, text) = m.metrics(false);
        assert!(ty.starts_with("text/plain; version=0.0.4"));
        assert!(
            text.contains("# TYPE reconcile_tests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP reconcile_tests_total Tests run"),
            "{text}"
        );
        assert!(
            text.contains("reconcile_tests_total{result=\"fail\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        // a histogram keeps its name
        assert!(
            text.contains("# TYPE reconcile_converge_duration_seconds histogram\n"),
            "{text}"
        );
    }

    #[test]
    fn health_follows_the_beat_and_readiness_the_last_converge() {
        let m = Monitor::new(Duration::from_millis(50), None);
        assert!(m.healthy().is_ok());
        assert_eq!(m.ready().unwrap_err(), "not converged yet");
        std::thread::sleep(Duration::from_millis(120));
        let e = m.healthy().unwrap_err();
        assert!(e.contains("the loop has not woken up"), "{e}");
        m.beat();
        assert!(m.healthy().is_ok());
        let failed = [("plugin.a".to_string(), "boom".to_string())];
        m.converged(&Outcome {
            trigger: "start",
            plan: None,
            applied: &[],
            repaired: &[],
            failed: &failed,
            drifted: &[],
            gates: &[],
            whole: true,
            changes: 1,
            error: None,
            took: Duration::from_millis(3),
        });
        let e = m.ready().unwrap_err();
        assert!(e.contains("plugin.a: boom"), "{e}");
        let (_, text) = m.metrics(false);
        assert!(
            text.contains("reconcile_converge_total{result=\"failure\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("reconcile_converge_total{result=\"success\"} 0\n"),
            "{text}"
        );
    }
}
