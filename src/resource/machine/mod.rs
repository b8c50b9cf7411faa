//! Machines in build2's buildos layout, declared instead of typed by hand:
//!
//! ```text
//! <volume>/<m>/<m>-<rev>        read-only revision (btrfs subvolume or directory)
//! <volume>/<m>/<m>              symlink to the current revision, switched atomically
//! <volume>/<m>/<m>-<tc>         read-only bootstrapped snapshot per toolchain
//! <volume>/<m>/<m>-<tc>-<id>    writable working snapshots (tests, `reconcile exec`)
//! <volume>/<m>/.reconcile/      sidecar receipts (a read-only rootfs cannot carry one)
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{
    ApplyContext, Candidate, Change, Context, EntryStatus, KindStatus, Observed, Resource,
    ResourceStatus,
};
use crate::backend::VolumeBackend;
use crate::config::model::{Machine, Prune, Volume};
use crate::error::{Error, Result};
use crate::fault;
use crate::fsops::beneath::{self, Beneath};
use crate::fsops::{self, digest::sha256_bytes};
use crate::state::now_rfc3339;
use crate::store::{observe_dir, revision_of, EntryKind, EntryReceipt, MachineDir, MachineState};

mod bootstrap;
mod build;
mod plan;

pub const KIND: &str = "machine";
const DEFAULT_BOOTSTRAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// One step of converging a machine, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Build (or rebuild, when its source changed) the current revision.
    BuildRevision,
    SwitchLink,
    /// A candidate held behind its promotion gate: the caller tests it, then
    /// switches the link with `promote`.
    Promote,
    Bootstrap {
        toolchain: String,
    },
    Delete {
        name: String,
    },
}

pub struct MachineResource {
    address: String,
    layout: MachineDir,
    /// None: a machine directory reconcile made that is no longer declared.
    desired: Option<Machine>,
}

pub fn resources(cx: &Context) -> Result<Vec<Box<dyn Resource>>> {
    let mut out: Vec<Box<dyn Resource>> = Vec::new();
    let mut declared: BTreeSet<PathBuf> = BTreeSet::new();
    for (name, m) in &cx.desired.model.machine {
        let volume = cx
            .desired
            .model
            .volume
            .get(&m.volume)
            .cloned()
            .expect("validated: the volume is declared");
        declared.insert(Path::new(&volume.path).join(name));
        out.push(Box::new(MachineResource {
            address: format!("{KIND}.{name}"),
            layout: MachineDir::new(&volume, name),
            desired: Some(m.clone()),
        }));
    }
    // machine directories no longer declared, in declared volumes (real
    // directories only: a symlink in a volume is never taken for a machine)
    for volume in cx.desired.model.volume.values() {
        let Ok(root) = Beneath::open(Path::new(&volume.path)) else {
            continue;
        };
        let Ok(entries) = root.entries() else {
            continue;
        };
        for (name, kind) in entries {
            let name = name.to_string_lossy().into_owned();
            let dir = Path::new(&volume.path).join(&name);
            if kind != beneath::Kind::Dir
                || declared.contains(&dir)
                || fsops::is_staging_name(&name)
            {
                continue;
            }
            let meta = Path::new(&name).join(crate::store::META_DIR);
            let ours = root
                .try_stat(&meta)
                .ok()
                .flatten()
                .is_some_and(|s| s.kind == beneath::Kind::Dir);
            if ours || volume.prune == Prune::All {
                out.push(Box::new(MachineResource {
                    address: format!("{KIND}.{name}"),
                    layout: MachineDir::new(volume, &name),
                    desired: None,
                }));
            }
        }
    }
    Ok(out)
}

pub fn bootstrap_digest(argv: &[String]) -> String {
    sha256_bytes(argv.join("\0").as_bytes())
}

impl MachineResource {
    fn dir(&self) -> PathBuf {
        self.layout.dir()
    }
    fn entry_path(&self, entry: &str) -> PathBuf {
        self.layout.entry_path(entry)
    }
    fn sidecar(&self, entry: &str) -> PathBuf {
        self.layout.sidecar(entry)
    }
    fn rev_name(&self, rev: u32) -> String {
        self.layout.rev_name(rev)
    }
    fn tc_name(&self, tc: &str) -> String {
        self.layout.tc_name(tc)
    }
    fn name(&self) -> &str {
        &self.layout.name
    }
    fn volume(&self) -> &Volume {
        &self.layout.volume
    }
    fn backend(&self) -> Result<Box<dyn VolumeBackend>> {
        self.layout.backend()
    }
    fn state<'o>(&self, o: &'o Observed) -> &'o MachineState {
        match &o.detail {
            super::Detail::Machine(m) => m,
            _ => unreachable!("a machine resource observes a machine"),
        }
    }

    /// The receipt of an entry made now from the declared revision (its id is filled in when published).
    fn receipt(&self, kind: EntryKind, m: &Machine, source_sha256: String) -> EntryReceipt {
        EntryReceipt {
            kind,
            machine: self.name().to_string(),
            revision: m.revision,
            source_sha256,
            toolchain: None,
            bootstrap_sha256: None,
            id: 0,
            created: now_rfc3339(),
            owner: None,
            kept: false,
            uuid: None,
            received_uuid: None,
        }
    }

    fn delete(&self, entry: &str, cx: &mut ApplyContext) -> Result<()> {
        let volume = self.layout.open_volume()?;
        let rel = Path::new(self.name()).join(entry);
        super::publish::remove_dir(cx.journal, &self.address, &volume, &rel)?;
        if let Ok(dir) = self.layout.open() {
            let _ = dir.remove_file(&crate::store::sidecar_rel(entry));
        }
        Ok(())
    }

    /// Leftovers that need no journal: temporary links and receipts of entries that are gone.
    fn tidy(&self, dir: &Beneath, st: &MachineState) {
        let link_tmp = format!(".{}{}link-", self.name(), fsops::STAGING_MARK);
        for (name, kind) in dir.entries().unwrap_or_default() {
            if kind == beneath::Kind::Symlink && name.to_string_lossy().starts_with(&link_tmp) {
                let _ = dir.remove_file(Path::new(&name));
            }
        }
        let Ok(meta) = dir.open_dir(Path::new(crate::store::META_DIR)) else {
            return;
        };
        for (name, _) in meta.entries().unwrap_or_default() {
            let n = name.to_string_lossy();
            if let Some(entry) = n.strip_suffix(".json") {
                let gone = dir.try_stat(Path::new(entry)).ok().flatten().is_none();
                if !st.entries.contains_key(entry) && gone {
                    let _ = meta.remove_file(Path::new(&name));
                }
            }
        }
    }
}

impl Resource for MachineResource {
    fn address(&self) -> &str {
        &self.address
    }

    fn location(&self) -> PathBuf {
        self.dir()
    }

    fn observe(&self, _cx: &Context) -> Result<Observed> {
        let be = self.backend()?;
        let st = self.layout.observe(be.name())?;
        let mut fp = format!("link={:?}\n", st.link);
        for e in st.entries.values() {
            fp.push_str(&format!(
                "{} {}\n",
                e.name,
                e.receipt
                    .as_ref()
                    .map(|r| serde_json::to_string(r).unwrap_or_default())
                    .unwrap_or_default()
            ));
        }
        let revisions: Vec<String> = st
            .entries
            .values()
            .filter(|e| {
                e.receipt
                    .as_ref()
                    .is_some_and(|r| r.kind == EntryKind::Revision)
                    || revision_of(self.name(), &e.name).is_some()
            })
            .map(|e| e.name.clone())
            .collect();
        let summary = match &st.link {
            Some(l) => format!(
                "current {l} ({} revision(s), {})",
                revisions.len(),
                be.name()
            ),
            None => format!("no current revision ({})", be.name()),
        };
        Ok(Observed {
            fingerprint: sha256_bytes(fp.as_bytes()),
            summary,
            detail: super::Detail::Machine(st),
        })
    }

    fn diff(&self, observed: &Observed, cx: &Context) -> Result<Vec<Change>> {
        Ok(self
            .steps(self.state(observed), cx)?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    fn apply(&self, observed: &Observed, cx: &mut ApplyContext) -> Result<()> {
        let st = self.state(observed);
        let dir = self.layout.open()?;
        self.tidy(&dir, st);
        cx.roots.add(KIND, Path::new(&self.volume().path));
        for (step, change) in self.steps(st, cx.cx)? {
            match (&step, &self.desired) {
                (Step::BuildRevision, Some(m)) => self.build_revision(m, cx)?,
                (Step::SwitchLink, Some(m)) => {
                    let link = Path::new(self.name());
                    fsops::switch_symlink(&dir, Path::new(&self.rev_name(m.revision)), link)
                        .map_err(|e| Error::io(self.layout.link(), e))?
                }
                (Step::Bootstrap { toolchain }, Some(m)) => self.bootstrap(m, toolchain, cx)?,
                (Step::Delete { name }, _) => self.delete(name, cx)?,
                (Step::Promote, Some(_)) => {
                    if let Some(c) = change.candidate.clone() {
                        cx.held.push(c);
                    }
                }
                _ => {}
            }
        }
        if self.desired.is_none() {
            // the whole machine is gone when nothing is left in it but the link and receipts
            let remaining = observe_dir(&dir, self.name(), "any")?;
            if remaining.entries.is_empty() {
                let _ = dir.remove_file(Path::new(self.name()));
                let _ = dir.remove_tree(Path::new(crate::store::META_DIR));
                if let Ok(volume) = self.layout.open_volume() {
                    let _ = volume.remove_dir(Path::new(self.name()));
                }
            }
        }
        Ok(())
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        vec![self.dir()]
    }

    /// The link moves to the candidate: one rename of a symlink, so a kill
    /// at any moment leaves the old revision current or the new one, never
    /// neither (fault points `switch` and `switched` on either side).
    fn promote(&self, c: &Candidate, _cx: &mut ApplyContext) -> Result<()> {
        let gone = |reason: String| Error::Resource {
            address: self.address.clone(),
            reason,
        };
        match &self.desired {
            Some(m) if m.revision == c.revision => {}
            Some(m) => {
                return Err(gone(format!(
                    "candidate revision {} is not the declared revision {} any more",
                    c.revision, m.revision
                )))
            }
            None => return Err(gone("is not declared any more".into())),
        }
        let dir = self.layout.open()?;
        let rev = self.rev_name(c.revision);
        if dir.try_stat(Path::new(&rev)).ok().flatten().is_none() {
            return Err(gone(format!("candidate revision {} is gone", c.revision)));
        }
        fault::point(&self.address, "switch");
        fsops::switch_symlink(&dir, Path::new(&rev), Path::new(self.name()))
            .map_err(|e| Error::io(self.layout.link(), e))?;
        fault::point(&self.address, "switched");
        Ok(())
    }

    fn status(&self, observed: &Observed) -> ResourceStatus {
        let st = self.state(observed);
        ResourceStatus {
            address: self.address.clone(),
            path: self.dir(),
            declared: self.desired.is_some(),
            state: observed.summary.clone(),
            kind: KindStatus::Machine {
                declared_revision: self.desired.as_ref().map(|m| m.revision),
                backend: st.backend,
                current: st.link.clone(),
                entries: st
                    .entries
                    .values()
                    .map(|e| EntryStatus {
                        name: e.name.clone(),
                        owned: e.receipt.is_some(),
                        receipt: e.receipt.clone(),
                    })
                    .collect(),
            },
        }
    }
}
