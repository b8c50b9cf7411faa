//! The resource contract every kind of object follows, used by `plan`, `apply`,
//! `status` and `watch` alike: observe (read only, into [`Observed`] with a
//! typed [`Detail`]), diff (desired vs observed into [`Change`]s with
//! reasons), apply (atomic steps through the journal), report its state
//! (a typed [`ResourceStatus`], what `status` prints), and name the paths
//! `watch` follows.
//!
//! Each kind also recovers its own interrupted transactions: [`recover`]
//! holds the filesystem ones (publish, volume commits), `cloud` its uploads,
//! and [`recoveries`] lists them all for `apply`.
//!
//! A new kind is one module here plus one line in [`all`] (and, when it
//! journals a kind of transaction of its own, one in [`recoveries`]).

#[cfg(feature = "cloud")]
pub mod cloud;
pub mod image;
pub mod machine;
pub mod plugin;
pub mod publish;
pub mod receipt;
pub mod recover;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::model::DriftMode;
use crate::config::Desired;
use crate::error::Result;
use crate::source::Fetcher;
use crate::state::journal::Journal;
use crate::state::{Roots, StateDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
    Replace,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Delete => "-",
            Action::Replace => "±",
        }
    }
}

/// One change a plan proposes, with a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub action: Action,
    pub reason: String,
    /// What is there now (a version, a digest, a link target), when one value says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// What it becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// It puts back what was changed outside reconcile (the desired state
    /// did not change): drift, which `drift = "warn"` only reports.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drift: bool,
    /// A candidate of a promotion gate: the switch waits for its suites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
}

/// A candidate waiting behind a promotion gate, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The resource it is a candidate of (`machine.deb`, `image.bookworm`).
    pub address: String,
    /// The machine or image name.
    pub name: String,
    /// What is tested and switched in: `revision 3`, `content 1a2b3c4d…`.
    pub what: String,
    /// A machine's candidate revision (0 for an image).
    pub revision: u32,
    pub state: CandidateState,
    /// The suites it must pass.
    pub after: Vec<String>,
    /// What it is tested as (see `state::candidates::Tested::inputs`).
    pub inputs: String,
    /// The run of the last test, and what failed in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

impl Candidate {
    /// The candidate of `address` built as `identity` (a revision and its
    /// source, an image's content), gated by `after`, with how its last test
    /// went when that test was of the same inputs (the identity and the
    /// suites as they are declared now).
    pub fn new(
        cx: &Context,
        address: &str,
        name: &str,
        what: String,
        revision: u32,
        identity: &str,
        after: &[String],
    ) -> Candidate {
        let mut text = format!("{identity}\n");
        for s in after {
            let suite = cx.desired.model.suite.get(s);
            let dir_tests = cx.desired.dir_tests.get(s);
            text.push_str(&serde_json::to_string(&(s, suite, dir_tests)).unwrap_or_default());
            text.push('\n');
        }
        let inputs = crate::fsops::digest::sha256_bytes(text.as_bytes());
        let last = cx
            .state
            .candidates()
            .remove(address)
            .filter(|t| t.inputs == inputs);
        Candidate {
            address: address.to_string(),
            name: name.to_string(),
            what,
            revision,
            state: CandidateState::of(last.as_ref().map(|t| t.verdict)),
            after: after.to_vec(),
            inputs,
            run: last.as_ref().map(|t| t.run.clone()),
            failed: last.map(|t| t.failed).unwrap_or_default(),
        }
    }

    /// `candidate revision 3: not tested (promoted after smoke)`, `… failed
    /// smoke.boot at <run>`, `… passed smoke at <run>, switching`.
    pub fn reason(&self) -> String {
        let after = self.after.join(", ");
        let run = self.run.as_deref().unwrap_or("?");
        let what = &self.what;
        match self.state {
            CandidateState::NotTested => {
                format!("candidate {what}: not tested (promoted after {after})")
            }
            CandidateState::Failed => format!(
                "candidate {what}: failed {} at {run}; not tested again until it changes (apply --retest)",
                self.failed.join(", ")
            ),
            CandidateState::Passed => {
                format!("candidate {what}: passed {after} at {run}, switching")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CandidateState {
    /// Built (or to be built), its suites not run on it yet (or its inputs changed since).
    NotTested,
    /// Its suites failed on it, as it is now: not tested again unless `--retest`.
    Failed,
    /// Its suites passed: the switch is what is left (after a crash, say).
    Passed,
}

impl CandidateState {
    /// Where the last test of the same candidate (if any) left it.
    pub fn of(verdict: Option<crate::state::candidates::Verdict>) -> CandidateState {
        use crate::state::candidates::Verdict;
        match verdict {
            None => CandidateState::NotTested,
            Some(Verdict::Failed) => CandidateState::Failed,
            Some(Verdict::Passed) => CandidateState::Passed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CandidateState::NotTested => "not-tested",
            CandidateState::Failed => "failed",
            CandidateState::Passed => "passed",
        }
    }
}

impl Change {
    pub fn new(action: Action, reason: String) -> Change {
        Change {
            action,
            reason,
            from: None,
            to: None,
            drift: false,
            candidate: None,
        }
    }

    /// The same change, holding a candidate behind its gate.
    pub fn held(mut self, c: Candidate) -> Change {
        self.candidate = Some(c);
        self
    }

    /// The same change, marked as repairing drift.
    pub fn drift(mut self) -> Change {
        self.drift = true;
        self
    }

    /// The same change, saying what it moves from and to.
    pub fn between(mut self, from: impl Into<String>, to: impl Into<String>) -> Change {
        self.from = Some(from.into());
        self.to = Some(to.into());
        self
    }
}

/// What observe found: a fingerprint (saved plans compare it) and the
/// kind's own state, typed.
pub struct Observed {
    pub fingerprint: String,
    /// One-line state for `status`.
    pub summary: String,
    pub detail: Detail,
}

/// Each kind's observed state.
pub enum Detail {
    /// A published directory (plugins, netboot images).
    Dir(publish::DirState),
    Machine(crate::store::MachineState),
    #[cfg(feature = "cloud")]
    Cloud(cloud::CloudState),
}

impl Detail {
    /// Whether any of the resource is there (a plan creates one that is not).
    pub fn exists(&self) -> bool {
        match self {
            Detail::Dir(d) => !matches!(d, publish::DirState::Absent),
            Detail::Machine(m) => m.link.is_some() || !m.entries.is_empty(),
            #[cfg(feature = "cloud")]
            Detail::Cloud(c) => !c.images.is_empty() || !c.snapshots.is_empty(),
        }
    }
}

/// The clouds of a run, shared by the resources and the tests after them.
pub use crate::platform::Clouds;

/// Read-only inputs of observe and diff.
pub struct Context<'a> {
    pub desired: &'a Desired,
    pub state: &'a StateDir,
    pub fetcher: Fetcher<'a>,
    pub roots: Roots,
    /// Re-hash everything instead of trusting stat keys.
    pub verify: bool,
    /// Managed roots opened once for the run.
    pub dirs: crate::fsops::beneath::OpenRoots,
    /// Clouds connected to (and read) once for the run.
    #[cfg(feature = "cloud")]
    pub clouds: std::sync::Arc<cloud::Clouds>,
}

impl<'a> Context<'a> {
    pub fn new(
        desired: &'a Desired,
        state: &'a StateDir,
        index: &'a crate::fsops::digest::StatIndex,
        progress: bool,
        verify: bool,
    ) -> Self {
        Context {
            desired,
            state,
            fetcher: Fetcher::new(state.cache_dir(), index, &desired.lock, progress, verify),
            roots: state.roots(),
            verify,
            dirs: Default::default(),
            #[cfg(feature = "cloud")]
            clouds: Default::default(),
        }
    }
}

/// What apply may use besides the context.
pub struct ApplyContext<'a, 'b> {
    pub cx: &'b Context<'a>,
    pub journal: &'b mut Journal,
    /// Roots published into (saved so prune finds undeclared objects later).
    pub roots: &'b mut Roots,
    /// What the resource has to say about what it did (one line each), shown
    /// with its `done` line: an upload's blocks and throughput.
    pub said: Vec<String>,
    /// Candidates built and held behind their promotion gates: the caller
    /// tests them, then switches them in with [`Resource::promote`].
    pub held: Vec<Candidate>,
}

impl<'a, 'b> ApplyContext<'a, 'b> {
    pub fn new(cx: &'b Context<'a>, journal: &'b mut Journal, roots: &'b mut Roots) -> Self {
        ApplyContext {
            cx,
            journal,
            roots,
            said: Vec::new(),
            held: Vec::new(),
        }
    }
}

/// What `status` shows of one resource (and `status --json` prints).
#[derive(Debug, Clone, Serialize)]
pub struct ResourceStatus {
    pub address: String,
    pub path: PathBuf,
    /// False for something installed earlier and no longer declared (the next apply prunes it).
    pub declared: bool,
    /// One line: `1.2.0 installed`, `revision 3 current`…
    pub state: String,
    #[serde(flatten)]
    pub kind: KindStatus,
}

impl ResourceStatus {
    /// When what is there was installed, for kinds that install a tree.
    pub fn installed_at(&self) -> Option<&str> {
        match &self.kind {
            KindStatus::Plugin { installed, .. } => {
                installed.as_ref().map(|i| i.tree.installed_at.as_str())
            }
            KindStatus::Image { installed } => installed.as_ref().map(|i| i.installed_at.as_str()),
            _ => None,
        }
    }
}

/// The facts of each kind.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum KindStatus {
    Plugin {
        declared_version: Option<String>,
        #[serde(flatten)]
        installed: Option<PluginInstalled>,
    },
    Image {
        #[serde(flatten)]
        installed: Option<TreeInstalled>,
    },
    Machine {
        declared_revision: Option<u32>,
        backend: &'static str,
        /// The revision the `<m>` link points at.
        current: Option<String>,
        entries: Vec<EntryStatus>,
    },
    #[cfg(feature = "cloud")]
    Cloud {
        cloud: String,
        endpoint: String,
        /// Where the credentials came from (never the credentials).
        credentials: String,
        machine: String,
        revision: u32,
        images: Vec<crate::cloud::ec2::Image>,
        snapshots: Vec<crate::cloud::ec2::Snapshot>,
    },
}

/// A published tree as its receipt describes it.
#[derive(Debug, Clone, Serialize)]
pub struct TreeInstalled {
    pub installed_at: String,
    pub source: receipt::ReceiptSource,
    pub files: usize,
    pub drift: Vec<receipt::Drift>,
}

impl TreeInstalled {
    pub fn of(r: &receipt::Receipt, drift: &[receipt::Drift]) -> TreeInstalled {
        TreeInstalled {
            installed_at: r.installed_at.clone(),
            source: r.source.clone(),
            files: r.file_count(),
            drift: drift.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PluginInstalled {
    pub installed_version: Option<String>,
    pub bin: Option<String>,
    #[serde(flatten)]
    pub tree: TreeInstalled,
}

/// One entry of a machine directory.
#[derive(Debug, Clone, Serialize)]
pub struct EntryStatus {
    pub name: String,
    /// Made by reconcile (it has a receipt).
    pub owned: bool,
    pub receipt: Option<crate::store::EntryReceipt>,
}

pub trait Resource: Send + Sync {
    /// `plugin.kolet`
    fn address(&self) -> &str;
    /// Where it lives, shown beside the address.
    fn location(&self) -> PathBuf;
    fn observe(&self, cx: &Context) -> Result<Observed>;
    fn diff(&self, observed: &Observed, cx: &Context) -> Result<Vec<Change>>;
    /// Make the world match; called only when diff returned changes.
    fn apply(&self, observed: &Observed, cx: &mut ApplyContext) -> Result<()>;
    /// Paths whose change may mean drift.
    fn watch_paths(&self) -> Vec<PathBuf>;
    /// What `status` shows of it.
    fn status(&self, observed: &Observed) -> ResourceStatus;
    /// Resources whose changes must be applied before this one's (addresses);
    /// when one of them fails, this one is not applied.
    fn depends_on(&self) -> Vec<String> {
        Vec::new()
    }
    /// What is done about drift: repaired (the default) or only reported.
    fn drift_mode(&self) -> DriftMode {
        DriftMode::Repair
    }
    /// Switch a candidate that passed its gate in: one atomic, journaled step.
    fn promote(&self, candidate: &Candidate, _cx: &mut ApplyContext) -> Result<()> {
        Err(crate::error::Error::Resource {
            address: self.address().to_string(),
            reason: format!("has no promotion gate (revision {})", candidate.revision),
        })
    }
}

/// The recoveries of every kind of transaction resources make: the
/// filesystem's (inside the managed roots) and the cloud's.
pub struct Recoveries<'a> {
    fs: recover::FsRecover,
    #[cfg(feature = "cloud")]
    cloud: cloud::Recovery<'a>,
    #[cfg(not(feature = "cloud"))]
    _desired: std::marker::PhantomData<&'a Desired>,
}

impl Recoveries<'_> {
    pub fn kinds(&self) -> Vec<&dyn crate::state::journal::Recover> {
        vec![
            &self.fs,
            #[cfg(feature = "cloud")]
            &self.cloud.publish,
            #[cfg(feature = "cloud")]
            &self.cloud.retire,
        ]
    }
}

pub fn recoveries<'a>(desired: &'a Desired, state: &StateDir) -> Recoveries<'a> {
    Recoveries {
        fs: recover::FsRecover {
            roots: managed_roots(desired, state),
        },
        #[cfg(feature = "cloud")]
        cloud: cloud::Recovery::new(desired),
        #[cfg(not(feature = "cloud"))]
        _desired: std::marker::PhantomData,
    }
}

/// Every directory reconcile manages objects in: the plugin dirs, TFTP roots
/// and volumes the file declares, and the roots it recorded publishing into
/// (where pruned objects may still be). The journal may name nothing else.
pub fn managed_roots(desired: &Desired, state: &StateDir) -> Vec<PathBuf> {
    let m = &desired.model;
    let mut roots: std::collections::BTreeSet<PathBuf> = m
        .plugin
        .values()
        .map(|p| PathBuf::from(p.dir()))
        .chain(m.image.values().map(|i| PathBuf::from(&i.root)))
        .chain(m.volume.values().map(|v| PathBuf::from(&v.path)))
        .collect();
    let recorded = state.roots();
    for kind in [plugin::KIND, image::KIND, machine::KIND] {
        roots.extend(recorded.of(kind).cloned());
    }
    roots.into_iter().collect()
}

/// Every resource the desired state implies, including owned objects that are
/// no longer declared (to be pruned).
pub fn all(cx: &Context) -> Result<Vec<Box<dyn Resource>>> {
    let mut out: Vec<Box<dyn Resource>> = Vec::new();
    out.extend(plugin::resources(cx)?);
    out.extend(image::resources(cx)?);
    out.extend(machine::resources(cx)?);
    #[cfg(feature = "cloud")]
    out.extend(cloud::resources(cx)?);
    Ok(out)
}
