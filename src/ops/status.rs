//! `status`: what is installed, the last apply and the last test run, and
//! with git the commits — observed, typed.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Remote;
use crate::config::{self, Desired, LoadOptions};
use crate::error::{Error, Result};
use crate::fleet::git::Record;
use crate::fsops::digest::StatIndex;
use crate::harness::report::{Report, Summary};
use crate::resource::{self, CandidateState, Context, ResourceStatus};
use crate::state::candidates::Tested;
use crate::state::{LastApply, StateDir};

/// What `status` reports (and `status --json` prints).
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub format_version: u32,
    pub host: String,
    pub file: PathBuf,
    pub git: Option<Record>,
    pub resources: Vec<ResourceStatus>,
    pub last_apply: Option<LastApply>,
    pub last_tests: Option<LastTests>,
    /// Booted snapshots kept for `fresh = "restore"`.
    pub booted: Vec<BootedSnapshot>,
    /// Revisions built behind promotion gates and not current yet.
    pub candidates: Vec<CandidateStatus>,
}

/// A candidate: a machine's declared revision, built (or to be built) and
/// not switched in yet, and how its gate went.
#[derive(Debug, Serialize)]
pub struct CandidateStatus {
    pub address: String,
    /// A machine's candidate revision (0 for an image's candidate tree).
    pub revision: u32,
    /// `not-tested`, `failed`, or `passed` (switched in by the next apply).
    pub state: CandidateState,
    pub after: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// A booted snapshot: a machine revision saved just booted.
#[derive(Debug, Serialize)]
pub struct BootedSnapshot {
    pub machine: String,
    pub revision: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<String>,
    pub path: PathBuf,
    /// Bytes on disk: the frozen overlay and the saved state.
    pub bytes: u64,
    pub created: String,
    pub qemu: String,
}

/// The last test run, in short.
#[derive(Debug, Serialize)]
pub struct LastTests {
    pub run: String,
    pub finished: String,
    pub summary: Summary,
    pub incomplete: bool,
}

/// With git, the applied commit's file may not load (nothing applied yet, a
/// commit being checked): the record is still the host's report.
#[derive(Debug, Serialize)]
pub struct Unloadable {
    pub format_version: u32,
    pub git: Option<Record>,
    pub error: String,
}

pub enum Status {
    Report(Box<StatusReport>),
    Unloadable(Box<Unloadable>),
}

/// The status of `file`, or with `git` of the applied commit (read from an
/// export: the work tree never moves; nothing is fetched).
pub fn status(file: &Path, git: Option<&Remote>, opts: LoadOptions) -> Result<Status> {
    if let Some(r) = git {
        r.check()?;
    }
    let record = git.map(Remote::record);
    let _export;
    let desired = match git {
        Some(r) => {
            let loaded = match record.as_ref().and_then(|rec| rec.applied.clone()) {
                Some(c) => crate::fleet::load_commit(r, &c),
                None => Err(Error::Usage("no commit has been applied yet".into())),
            };
            match loaded {
                Ok((d, tree)) => {
                    _export = tree;
                    d
                }
                Err(e) => {
                    return Ok(Status::Unloadable(Box::new(Unloadable {
                        format_version: 1,
                        git: record,
                        error: e.to_string(),
                    })))
                }
            }
        }
        None => config::load_with(file, opts)?,
    };
    report(&desired, record).map(|r| Status::Report(Box::new(r)))
}

/// The status of a loaded desired state (`watch --listen` serves it at `/status`).
pub fn report(desired: &Desired, record: Option<Record>) -> Result<StatusReport> {
    let state = StateDir::existing(&desired.state_dir);
    let tests = Report::load(&desired.state_dir.join("runs/latest/report.json"))
        .ok()
        .map(|r| LastTests {
            run: r.run,
            finished: r.finished,
            summary: r.summary,
            incomplete: r.incomplete,
        });
    let resources = observe_all(desired, &state)?;
    let candidates = candidates(desired, &state, &resources);
    Ok(StatusReport {
        format_version: 1,
        host: desired.host.clone(),
        file: desired.path.clone(),
        git: record,
        resources,
        last_apply: state.last_apply(),
        last_tests: tests,
        booted: crate::platform::qemu::booted::list(&state.booted_dir())
            .into_iter()
            .map(|(path, m, bytes)| BootedSnapshot {
                machine: m.machine,
                revision: m.revision,
                toolchain: m.toolchain,
                path,
                bytes,
                created: m.created,
                qemu: m.qemu,
            })
            .collect(),
        candidates,
    })
}

impl CandidateStatus {
    fn of(address: String, revision: u32, after: &[String], record: Option<&Tested>) -> Self {
        CandidateStatus {
            address,
            revision,
            state: CandidateState::of(record.map(|t| t.verdict)),
            after: after.to_vec(),
            run: record.map(|t| t.run.clone()),
            failed: record.map(|t| t.failed.clone()).unwrap_or_default(),
        }
    }
}

/// Machines with a gate whose declared revision is not the current one.
fn candidates(
    desired: &Desired,
    state: &StateDir,
    resources: &[ResourceStatus],
) -> Vec<CandidateStatus> {
    let records = state.candidates();
    let mut out = Vec::new();
    for (name, m) in &desired.model.machine {
        let Some(p) = &m.promote else { continue };
        let address = format!("machine.{name}");
        let current = resources
            .iter()
            .find(|r| r.address == address)
            .and_then(|r| match &r.kind {
                crate::resource::KindStatus::Machine { current, .. } => current.clone(),
                _ => None,
            });
        if current.as_deref() == Some(format!("{name}-{}", m.revision).as_str()) {
            continue;
        }
        let record = records.get(&address).filter(|t| t.revision == m.revision);
        out.push(CandidateStatus::of(address, m.revision, &p.after, record));
    }
    // clouds: an image tagged a candidate
    for r in resources {
        let crate::resource::KindStatus::Cloud {
            cloud,
            revision,
            images,
            ..
        } = &r.kind
        else {
            continue;
        };
        let Some(p) = desired
            .model
            .cloud
            .get(cloud)
            .and_then(|c| c.promote.as_ref())
        else {
            continue;
        };
        if !images
            .iter()
            .any(|i| i.tags.get(crate::cloud::TAG_STATE).map(String::as_str) == Some("candidate"))
        {
            continue;
        }
        let record = records.get(&r.address).filter(|t| t.revision == *revision);
        out.push(CandidateStatus::of(
            r.address.clone(),
            *revision,
            &p.after,
            record,
        ));
    }
    // images: a candidate tree waits beside the published one
    for (name, img) in &desired.model.image {
        let Some(p) = &img.promote else { continue };
        if !crate::fsops::candidate_path(&img.target()).is_dir() {
            continue;
        }
        let address = format!("image.{name}");
        let record = records.get(&address);
        out.push(CandidateStatus::of(address, 0, &p.after, record));
    }
    out
}

/// Observe every resource (read-only) and give each one's status, by address.
pub fn observe_all(desired: &Desired, state: &StateDir) -> Result<Vec<ResourceStatus>> {
    let index = StatIndex::ephemeral();
    let cx = Context::new(desired, state, &index, false, false);
    let mut out = Vec::new();
    for r in resource::all(&cx)? {
        let o = r.observe(&cx)?;
        out.push(r.status(&o));
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(out)
}
