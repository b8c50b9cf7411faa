//! `plan`: observe and diff, write nothing outside the state dir (but the
//! saved plan when asked); for one host, or for several hosts of one file.

use std::path::{Path, PathBuf};

use super::{Loaded, NotTaken, Remote};
use crate::apply::Observations;
use crate::config::{self, LoadOptions};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::state::StateDir;

/// What `reconcile plan` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub verify: bool,
    /// Resource address patterns (`--target`).
    pub targets: Vec<String>,
    pub locked: bool,
    /// Save the plan here (`apply PLAN` applies exactly it or refuses).
    pub out: Option<PathBuf>,
}

/// A plan, and what it observed (a one-shot command may leave that to the
/// operating system at exit instead of freeing it piece by piece).
pub struct Planned {
    pub plan: Plan,
    pub observations: Observations,
}

/// The plan of the loaded desired state; saved to `req.out` when asked.
pub fn plan(loaded: &Loaded, req: &Request) -> Result<Planned> {
    let desired = &loaded.desired;
    if req.locked {
        desired.require_locked()?;
    }
    let state = StateDir::create(&desired.state_dir)?;
    let (plan, observations) =
        crate::apply::dry_run(desired, &state, req.verify, &super::targets(&req.targets)?)?;
    if let Some(out) = &req.out {
        let bytes = serde_json::to_vec_pretty(&plan).expect("plan serialises");
        crate::fsops::write_atomic(out, &bytes).map_err(|e| Error::io(out, e))?;
    }
    Ok(Planned { plan, observations })
}

/// Each host's plan of one file (or of one commit of a remote), for review:
/// nothing saved. The commit previewed and what was not taken, with git.
pub struct Hosts {
    pub plans: Vec<(String, Planned)>,
    pub commit: Option<String>,
    pub not_taken: Option<NotTaken>,
}

pub fn hosts(file: &Path, git: Option<&Remote>, hosts: &[String], req: &Request) -> Result<Hosts> {
    if req.out.is_some() {
        return Err(Error::Usage(
            "--out saves one host's plan: give one --hostname".into(),
        ));
    }
    let preview = git.map(crate::fleet::preview).transpose()?;
    let mut plans = Vec::new();
    for host in hosts {
        let desired = match (git, &preview) {
            (Some(r), Some(pv)) => crate::fleet::load_export(r, &pv.tree, Some(host.clone()))?,
            _ => config::load_with(
                file,
                LoadOptions {
                    hostname: Some(host.clone()),
                    ..Default::default()
                },
            )?,
        };
        let state = StateDir::create(&desired.state_dir)?;
        let (plan, observations) =
            crate::apply::dry_run(&desired, &state, req.verify, &super::targets(&req.targets)?)?;
        plans.push((host.clone(), Planned { plan, observations }));
    }
    let (commit, not_taken) = match preview {
        Some(pv) => (Some(pv.commit), pv.not_taken),
        None => (None, None),
    };
    Ok(Hosts {
        plans,
        commit,
        not_taken,
    })
}

/// One host's plan as `plan --hostname … --format json` prints it.
#[derive(serde::Serialize)]
pub struct HostPlan<'a> {
    pub host: &'a str,
    pub plan: &'a Plan,
}

impl Hosts {
    pub fn doc(&self) -> Vec<HostPlan<'_>> {
        self.plans
            .iter()
            .map(|(h, planned)| HostPlan {
                host: h,
                plan: &planned.plan,
            })
            .collect()
    }
}
