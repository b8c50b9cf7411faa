//! Observe every resource, diff it against the desired state, and produce a
//! plan: data only. Rendering lives in `cli/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::model::DriftMode;
use crate::error::{Error, Result};
use crate::resource::{Action, Change, Context, Observed, Resource};

pub const FORMAT_VERSION: u32 = 1;

/// A plan as printed with `--json` and saved with `--out`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    pub reconcile_version: String,
    pub desired: DesiredRef,
    /// Every resource observed, in address order, with its fingerprint and changes.
    pub resources: Vec<ResourcePlan>,
    pub summary: Summary,
    /// Declared for other hosts, left out on this one: the host and each resource with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_for_host: Vec<NotForHost>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotForHost {
    pub address: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesiredRef {
    pub file: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourcePlan {
    pub address: String,
    pub path: PathBuf,
    pub fingerprint: String,
    /// What happens to the resource as a whole (none when it is in sync):
    /// `create` when it does not exist yet, whatever its changes are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    pub changes: Vec<Change>,
    /// Its changes are all drift and its `drift = "warn"`: reported, not applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drift_warn: bool,
}

impl ResourcePlan {
    /// The resource's action: as planned, or (a plan written by hand or
    /// by an older release) from its changes alone.
    pub fn action(&self) -> Option<Action> {
        self.action.or_else(|| resource_action(true, &self.changes))
    }
}

/// What a resource's changes add up to: `create` for one that does not
/// exist, `delete` when every change deletes, `replace` when one
/// replaces, otherwise `update`.
pub fn resource_action(exists: bool, changes: &[Change]) -> Option<Action> {
    if changes.is_empty() {
        None
    } else if !exists || changes.iter().all(|c| c.action == Action::Create) {
        Some(Action::Create)
    } else if changes.iter().all(|c| c.action == Action::Delete) {
        Some(Action::Delete)
    } else if changes.iter().any(|c| c.action == Action::Replace) {
        Some(Action::Replace)
    } else {
        Some(Action::Update)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
/// Resources by what happens to them (each counted once), and the
/// changes they make (a new machine is 1 resource to create, with 2 changes:
/// its revision and its link).
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub delete: usize,
    pub unchanged: usize,
    /// Every change of every resource.
    #[serde(default)]
    pub changes: usize,
}

impl Summary {
    /// Resources that change.
    pub fn changing(&self) -> usize {
        self.create + self.update + self.replace + self.delete
    }

    /// The changes, worth saying beside the resources only when a resource
    /// makes more than one (a plan saved by an older release counts none).
    pub fn changes_beyond_resources(&self) -> Option<usize> {
        (self.changes > self.changing()).then_some(self.changes)
    }
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.summary.changing() > 0
    }

    pub fn load(path: &Path) -> Result<Plan> {
        let bytes = crate::config::read_file(path)
            .map(String::into_bytes)
            .map_err(|e| Error::BadPlan {
                path: path.into(),
                reason: e.to_string(),
            })?;
        let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| Error::BadPlan {
            path: path.into(),
            reason: format!("not a reconcile plan: {e}"),
        })?;
        if plan.format_version != FORMAT_VERSION {
            return Err(Error::BadPlan {
                path: path.into(),
                reason: format!(
                    "plan format {} is not {FORMAT_VERSION}",
                    plan.format_version
                ),
            });
        }
        Ok(plan)
    }

    /// Why `self` (saved) no longer describes the world `now` observed; empty when it still does.
    pub fn staleness(&self, now: &Plan) -> Vec<String> {
        let mut why = Vec::new();
        if self.desired.sha256 != now.desired.sha256 {
            why.push(format!(
                "the desired-state file changed since the plan was made (sha256 {}… → {}…)",
                crate::fsops::digest::short(&self.desired.sha256),
                crate::fsops::digest::short(&now.desired.sha256)
            ));
        }
        let then: BTreeMap<&str, &str> = self
            .resources
            .iter()
            .map(|r| (r.address.as_str(), r.fingerprint.as_str()))
            .collect();
        let current: BTreeMap<&str, &str> = now
            .resources
            .iter()
            .map(|r| (r.address.as_str(), r.fingerprint.as_str()))
            .collect();
        for (addr, fp) in &current {
            match then.get(addr) {
                None => why.push(format!("{addr} appeared since the plan was made")),
                Some(old) if old != fp => {
                    why.push(format!("{addr} changed since the plan was made"))
                }
                _ => {}
            }
        }
        for addr in then.keys().filter(|a| !current.contains_key(*a)) {
            why.push(format!("{addr} disappeared since the plan was made"));
        }
        why
    }
}

/// One resource with what observe found and what diff proposes.
pub struct Planned {
    pub resource: Box<dyn Resource>,
    pub observed: Observed,
    pub changes: Vec<Change>,
}

impl Planned {
    /// Drift only, and the resource only reports drift: nothing to apply.
    pub fn drift_warn(&self) -> bool {
        !self.changes.is_empty()
            && self.changes.iter().all(|c| c.drift)
            && self.resource.drift_mode() == DriftMode::Warn
    }
}

/// Observe (in parallel) and diff every resource; resources not matched by
/// `targets` (glob patterns over addresses) are left out.
/// Observe and diff every resource, on as many threads as there are CPUs
/// (at most 8): each takes the next resource from a shared counter, so no
/// thread waits on another and none spins when the work runs out. Results
/// keep the resources' order; the first error (in that order) is returned.
fn observe_in_parallel(resources: Vec<Box<dyn Resource>>, cx: &Context) -> Result<Vec<Planned>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let one = |resource: Box<dyn Resource>| -> Result<Planned> {
        let observed = resource.observe(cx)?;
        let changes = resource.diff(&observed, cx)?;
        Ok(Planned {
            resource,
            observed,
            changes,
        })
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(resources.len());
    if threads <= 1 {
        return resources.into_iter().map(one).collect();
    }
    let slots: Vec<Mutex<Option<Box<dyn Resource>>>> =
        resources.into_iter().map(|r| Mutex::new(Some(r))).collect();
    let results: Vec<Mutex<Option<Result<Planned>>>> =
        slots.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= slots.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                let resource = slots[i]
                    .lock()
                    .unwrap()
                    .take()
                    .expect("each slot is taken once");
                let r = one(resource);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                *results[i].lock().unwrap() = Some(r);
            });
        }
    });
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        match r.into_inner().unwrap() {
            Some(Ok(p)) => out.push(p),
            Some(Err(e)) => return Err(e),
            // left when an earlier-taken resource failed: its error follows
            None => {}
        }
    }
    Ok(out)
}

/// `--target` patterns a user gave must each match a resource of this host
/// (watch's own targets, the addresses it saw drift in, need not: one may
/// have gone with a reload).
pub fn require_matched(resources: &[Box<dyn Resource>], targets: &[glob::Pattern]) -> Result<()> {
    let unmatched: Vec<String> = targets
        .iter()
        .filter(|t| !resources.iter().any(|r| t.matches(r.address())))
        .map(|t| format!("`{}`", t.as_str()))
        .collect();
    if unmatched.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "--target {} matches no resource of this host; `reconcile status` lists them",
        unmatched.join(", ")
    )))
}

pub fn make(
    resources: Vec<Box<dyn Resource>>,
    cx: &Context,
    targets: &[glob::Pattern],
) -> Result<(Plan, Vec<Planned>)> {
    let mut resources: Vec<_> = resources
        .into_iter()
        .filter(|r| targets.is_empty() || targets.iter().any(|t| t.matches(r.address())))
        .collect();
    resources.sort_by(|a, b| a.address().cmp(b.address()));
    let planned = observe_in_parallel(resources, cx)?;
    let mut summary = Summary::default();
    let actions: Vec<Option<Action>> = planned
        .iter()
        .map(|p| resource_action(p.observed.detail.exists(), &p.changes))
        .collect();
    for (p, action) in planned.iter().zip(&actions) {
        summary.changes += p.changes.len();
        match action {
            None => summary.unchanged += 1,
            Some(Action::Create) => summary.create += 1,
            Some(Action::Update) => summary.update += 1,
            Some(Action::Replace) => summary.replace += 1,
            Some(Action::Delete) => summary.delete += 1,
        }
    }
    let plan = Plan {
        format_version: FORMAT_VERSION,
        reconcile_version: env!("CARGO_PKG_VERSION").into(),
        desired: DesiredRef {
            file: cx.desired.path.clone(),
            sha256: cx.desired.digest.clone(),
        },
        resources: planned
            .iter()
            .zip(actions)
            .map(|(p, action)| ResourcePlan {
                address: p.resource.address().to_string(),
                path: p.resource.location(),
                fingerprint: p.observed.fingerprint.clone(),
                action,
                changes: p.changes.clone(),
                drift_warn: p.drift_warn(),
            })
            .collect(),
        summary,
        host: Some(cx.desired.host.clone()),
        not_for_host: cx
            .desired
            .not_for_host
            .iter()
            .map(|(address, reason)| NotForHost {
                address: address.clone(),
                reason: reason.clone(),
            })
            .collect(),
    };
    Ok((plan, planned))
}
