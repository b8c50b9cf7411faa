//! Machines in build2's buildos layout, declared instead of typed by hand:
//!
//! ```text
//! <volume>/<m>/<m>-<rev>        read-only revision (btrfs subvolume or directory)
//! <volume>/<m>/<m>              symlink to the current revision, switched atomically
//! <volume>/<m>/<m>-<tc>         read-only bootstrapped snapshot per toolchain
//! <volume>/<m>/<m>-<tc>-<id>    writable working snapshots (tests, `reconcile exec`)
//! <volume>/<m>/.reconcile/      sidecar receipts (a read-only rootfs cannot carry one)
//! ```

pub mod working;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Action, ApplyContext, Change, Context, Observed, Resource};
use crate::backend::{self, VolumeBackend};
use crate::config::model::{Machine, MachineKind, Prune, Volume};
use crate::error::{Error, Result};
use crate::executor::{host::Host, namespace, Executor, Invocation, Outcome};
use crate::fsops::{self, digest::sha256_bytes};
use crate::source::{self, archive::Policy, Artifact, Location};
use crate::state::journal::{Op, VolumeCommit};
use crate::state::{fault, now_rfc3339};

pub const KIND: &str = "machine";
/// Sidecar receipts live here inside the machine directory.
pub const META_DIR: &str = ".reconcile";
const DEFAULT_BOOTSTRAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// What reconcile knows about one entry of a machine directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryReceipt {
    /// `revision`, `toolchain` or `working`
    pub kind: String,
    pub machine: String,
    /// The revision it is (or was built on).
    pub revision: u32,
    pub source_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_sha256: Option<String>,
    /// btrfs subvolume id or root inode of the volume it describes.
    pub id: u64,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<working::Owner>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    /// Our receipt, when it describes the volume that is there now.
    pub receipt: Option<EntryReceipt>,
}

/// What observe found in a machine directory.
pub struct MachineState {
    pub backend: &'static str,
    /// Name the `<m>` link points at.
    pub link: Option<String>,
    pub entries: BTreeMap<String, Entry>,
}

/// One step of converging a machine, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Build (or rebuild, when its source changed) the current revision.
    BuildRevision,
    SwitchLink,
    Bootstrap {
        toolchain: String,
    },
    Delete {
        name: String,
    },
}

pub struct MachineResource {
    address: String,
    name: String,
    volume: Volume,
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
            name: name.clone(),
            volume,
            desired: Some(m.clone()),
        }));
    }
    // machine directories no longer declared, in declared volumes
    for volume in cx.desired.model.volume.values() {
        let Ok(rd) = fs::read_dir(&volume.path) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let dir = Path::new(&volume.path).join(&name);
            if declared.contains(&dir) || fsops::is_staging_name(&name) || !dir.is_dir() {
                continue;
            }
            let ours = dir.join(META_DIR).is_dir();
            if ours || volume.prune == Prune::All {
                out.push(Box::new(MachineResource {
                    address: format!("{KIND}.{name}"),
                    name,
                    volume: volume.clone(),
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
        Path::new(&self.volume.path).join(&self.name)
    }
    fn entry_path(&self, entry: &str) -> PathBuf {
        self.dir().join(entry)
    }
    fn sidecar(&self, entry: &str) -> PathBuf {
        self.dir().join(META_DIR).join(format!("{entry}.json"))
    }
    fn rev_name(&self, rev: u32) -> String {
        format!("{}-{rev}", self.name)
    }
    fn tc_name(&self, tc: &str) -> String {
        format!("{}-{tc}", self.name)
    }
    fn backend(&self) -> Result<Box<dyn VolumeBackend>> {
        backend::for_volume(Path::new(&self.volume.path), self.volume.backend)
    }
    fn state<'o>(&self, o: &'o Observed) -> &'o MachineState {
        o.detail
            .downcast_ref::<MachineState>()
            .expect("machine observation")
    }

    /// The steps that make the machine match, with a reason each.
    fn steps(&self, st: &MachineState, cx: &Context) -> Result<Vec<(Step, Change)>> {
        let mut out = Vec::new();
        let mut push = |step, action, reason: String| out.push((step, Change { action, reason }));
        let live = working::live_bases(st);

        let Some(m) = &self.desired else {
            // an undeclared machine: every entry goes, unless a live working snapshot needs it
            if self.volume.prune == Prune::None {
                return Ok(vec![]);
            }
            for e in st.entries.values() {
                if e.receipt.is_none() && self.volume.prune != Prune::All {
                    continue;
                }
                if live.contains_key(&e.name) {
                    continue;
                }
                push(
                    Step::Delete {
                        name: e.name.clone(),
                    },
                    Action::Delete,
                    format!("{} of a machine no longer declared", e.name),
                );
            }
            return Ok(out);
        };

        let want_src = cx.fetcher.expected_digest(&m.source)?;
        let cur = self.rev_name(m.revision);
        let mut rebuilt = false;
        match st.entries.get(&cur) {
            None => {
                rebuilt = true;
                push(
                    Step::BuildRevision,
                    Action::Create,
                    format!(
                        "revision {} missing (build from {})",
                        m.revision,
                        Location::of(&m.source).describe()
                    ),
                )
            }
            Some(Entry {
                receipt: Some(r), ..
            }) if r.source_sha256 != want_src => {
                rebuilt = true;
                push(
                    Step::BuildRevision,
                    Action::Replace,
                    format!(
                        "revision {} source sha256 {}… ≠ declared {}…",
                        m.revision,
                        super::receipt::short(&r.source_sha256),
                        super::receipt::short(&want_src)
                    ),
                )
            }
            // ours and current, or made by hand (buildos-style) and used as it is
            Some(_) => {}
        }
        if st.link.as_deref() != Some(cur.as_str()) {
            let reason = match st.link.as_deref().and_then(|l| l.rsplit('-').next()) {
                Some(old) => format!("current revision {old} → {}", m.revision),
                None => format!("link {} → {cur} missing", self.name),
            };
            push(Step::SwitchLink, Action::Update, reason);
        }
        for (tc, t) in &m.toolchain {
            let name = self.tc_name(tc);
            let want = bootstrap_digest(&t.bootstrap);
            let reason = match st.entries.get(&name).and_then(|e| e.receipt.as_ref()) {
                None if st.entries.contains_key(&name) && self.volume.prune != Prune::All => {
                    return Err(Error::Foreign {
                        address: self.address.clone(),
                        path: self.entry_path(&name),
                    })
                }
                None => Some((Action::Create, format!("toolchain {tc} not bootstrapped"))),
                Some(r) if r.revision != m.revision || rebuilt || r.source_sha256 != want_src => {
                    Some((
                        Action::Update,
                        format!(
                            "toolchain {tc} built on revision {}, current is {}",
                            r.revision, m.revision
                        ),
                    ))
                }
                Some(r) if r.bootstrap_sha256.as_deref() != Some(want.as_str()) => Some((
                    Action::Update,
                    format!("toolchain {tc} bootstrap command changed"),
                )),
                Some(_) => None,
            };
            if let Some((action, reason)) = reason {
                push(
                    Step::Bootstrap {
                        toolchain: tc.clone(),
                    },
                    action,
                    reason,
                );
            }
        }
        if self.volume.prune == Prune::None {
            return Ok(out);
        }

        // deletions: stale working snapshots, undeclared toolchains, revisions beyond keep, strays
        let mut older: Vec<(u32, &Entry)> = Vec::new();
        for e in st.entries.values() {
            if e.name == cur || live.contains_key(&e.name) {
                continue;
            }
            let r = e.receipt.as_ref();
            match r.map(|r| r.kind.as_str()) {
                Some("working") => {
                    let owner = r.and_then(|r| r.owner.as_ref()).map(|o| o.pid).unwrap_or(0);
                    push(
                        Step::Delete {
                            name: e.name.clone(),
                        },
                        Action::Delete,
                        format!(
                            "stale working snapshot {} (owner pid {owner} is gone)",
                            e.name
                        ),
                    );
                }
                Some("toolchain") => {
                    let tc = r.and_then(|r| r.toolchain.clone()).unwrap_or_default();
                    if !m.toolchain.contains_key(&tc) {
                        push(
                            Step::Delete {
                                name: e.name.clone(),
                            },
                            Action::Delete,
                            format!("toolchain {tc} not declared any more"),
                        );
                    }
                }
                Some(_) => older.push((r.map(|r| r.revision).unwrap_or(0), e)),
                None => match revision_of(&self.name, &e.name) {
                    // a hand-made revision counts toward `keep` only under buildos behaviour
                    Some(rev) if self.volume.prune == Prune::All => older.push((rev, e)),
                    _ if self.volume.prune == Prune::All
                        && !m.toolchain.contains_key(
                            e.name.trim_start_matches(&format!("{}-", self.name)),
                        ) =>
                    {
                        push(
                            Step::Delete {
                                name: e.name.clone(),
                            },
                            Action::Delete,
                            format!("stray {} (prune = \"all\")", e.name),
                        )
                    }
                    _ => {}
                },
            }
        }
        older.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (i, (rev, e)) in older.iter().enumerate() {
            if i < m.keep as usize {
                continue;
            }
            if live.values().any(|base| base.as_str() == e.name) {
                continue;
            }
            if live_revisions(st, &live).contains(rev) {
                continue;
            }
            push(
                Step::Delete {
                    name: e.name.clone(),
                },
                Action::Delete,
                format!("revision {rev} beyond keep = {}", m.keep),
            );
        }
        Ok(out)
    }

    fn build_revision(&self, m: &Machine, cx: &mut ApplyContext) -> Result<()> {
        let be = self.backend()?;
        let artifact = cx.cx.fetcher.fetch(&m.source)?;
        let src_sha = match &artifact {
            Artifact::File { sha256, .. } => sha256.clone(),
            Artifact::Dir { .. } => cx.cx.fetcher.expected_digest(&m.source)?,
        };
        let name = self.rev_name(m.revision);
        let limit = cx.cx.desired.extract_limit;
        let strip = m.source.strip_components.unwrap_or(0);
        let kind = m.kind;
        self.publish_volume(cx, be.as_ref(), &name, |staging| {
            be.create(staging).map_err(|e| Error::io(staging, e))?;
            match (kind, &artifact) {
                (MachineKind::Rootfs, Artifact::Dir { path }) => {
                    backend::dir::copy_tree(path, staging).map_err(|e| Error::io(staging, e))?;
                }
                (MachineKind::Rootfs, a) => {
                    source::unpack(a, staging, "rootfs", strip, limit, Policy { rootfs: true })?;
                }
                (MachineKind::Disk, Artifact::File { path, name, .. }) => {
                    let file = if name.ends_with(".qcow2") {
                        "disk.qcow2"
                    } else {
                        "disk.img"
                    };
                    reflink_copy::reflink_or_copy(path, staging.join(file))
                        .map_err(|e| Error::io(staging, e))?;
                }
                (MachineKind::Disk, Artifact::Dir { .. }) => {
                    return Err(Error::Resource {
                        address: self.address.clone(),
                        reason: "a disk machine needs a file source (a raw or qcow2 image)".into(),
                    })
                }
            }
            fault::point(&self.address, "stage-partial");
            Ok(EntryReceipt {
                kind: "revision".into(),
                machine: self.name.clone(),
                revision: m.revision,
                source_sha256: src_sha.clone(),
                toolchain: None,
                bootstrap_sha256: None,
                id: 0,
                created: now_rfc3339(),
                owner: None,
            })
        })
    }

    fn bootstrap(&self, m: &Machine, tc: &str, cx: &mut ApplyContext) -> Result<()> {
        let be = self.backend()?;
        let t = &m.toolchain[tc];
        let base = self.entry_path(&self.rev_name(m.revision));
        let src_sha = cx.cx.fetcher.expected_digest(&m.source)?;
        let name = self.tc_name(tc);
        let timeout = t
            .timeout
            .as_deref()
            .and_then(|d| humantime::parse_duration(d).ok())
            .unwrap_or(DEFAULT_BOOTSTRAP_TIMEOUT);
        let use_namespace = nix::unistd::geteuid().is_root();
        if !use_namespace && be.name() == "btrfs" {
            namespace::require_root().map_err(|e| Error::Resource {
                address: self.address.clone(),
                reason: e.to_string(),
            })?;
        }
        self.publish_volume(cx, be.as_ref(), &name, |staging| {
            be.snapshot(&base, staging, false).map_err(|e| Error::io(staging, e))?;
            fault::point(&self.address, "stage-partial");
            let inv = Invocation { argv: t.bootstrap.clone(), timeout: Some(timeout), ..Default::default() };
            let mut output = Vec::new();
            let mut keep = |_s, chunk: &[u8]| {
                output.extend_from_slice(chunk);
                if output.len() > 64 << 10 {
                    output.drain(..output.len() - (64 << 10));
                }
            };
            let finished = if use_namespace {
                let ns = namespace::Namespace { root: staging.to_path_buf(), hostname: name.clone(), isolate_network: false };
                ns.run(&inv, &mut keep)
            } else {
                Host { root: Some(staging.to_path_buf()) }.run(&inv, &mut keep)
            }
            .map_err(|e| Error::Resource { address: self.address.clone(), reason: format!("toolchain {tc}: cannot run the bootstrap: {e}") })?;
            if finished.outcome != Outcome::Exited(0) {
                let text = String::from_utf8_lossy(&output);
                let tail: Vec<&str> = text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
                return Err(Error::Resource {
                    address: self.address.clone(),
                    reason: format!(
                        "toolchain {tc}: bootstrap failed ({}); the previous {name} stays. Its output:\n{}",
                        finished.outcome,
                        tail.join("\n")
                    ),
                });
            }
            Ok(EntryReceipt {
                kind: "toolchain".into(),
                machine: self.name.clone(),
                revision: m.revision,
                source_sha256: src_sha.clone(),
                toolchain: Some(tc.to_string()),
                bootstrap_sha256: Some(bootstrap_digest(&t.bootstrap)),
                id: 0,
                created: now_rfc3339(),
                owner: None,
            })
        })
    }

    /// Build a volume under a temporary name with `build`, seal it read-only and
    /// publish it as `name` (exchanging with the old one when replacing), journaled.
    fn publish_volume(
        &self,
        cx: &mut ApplyContext,
        be: &dyn VolumeBackend,
        name: &str,
        build: impl FnOnce(&Path) -> Result<EntryReceipt>,
    ) -> Result<()> {
        let target = self.entry_path(name);
        let sidecar = self.sidecar(name);
        fs::create_dir_all(sidecar.parent().expect("sidecar dir"))
            .map_err(|e| Error::io(&sidecar, e))?;
        let txn = cx.journal.begin(&self.address, |id| Op::Volume {
            target: target.clone(),
            staging: fsops::staging_path(&target, id),
            retired: fsops::retired_path(&target, id),
            sidecar: sidecar.clone(),
        })?;
        let staging = fsops::staging_path(&target, &txn.id);
        let retired = fsops::retired_path(&target, &txn.id);
        cx.journal.step(&txn, "stage")?;
        let built = build(&staging).and_then(|mut receipt| {
            fsops::sync_tree(&staging).map_err(|e| Error::io(&staging, e))?;
            be.set_readonly(&staging, true)
                .map_err(|e| Error::io(&staging, e))?;
            receipt.id = be.id(&staging).map_err(|e| Error::io(&staging, e))?;
            Ok(receipt)
        });
        let receipt = match built {
            Ok(r) => r,
            Err(e) => {
                let _ = backend::remove_any(&staging);
                cx.journal.done(txn)?;
                return Err(e);
            }
        };
        let value = serde_json::to_value(&receipt).expect("receipt serialises");
        let commit = VolumeCommit {
            id: receipt.id,
            receipt: value.clone(),
        };
        cx.journal.step_with(
            &txn,
            "commit",
            Some(serde_json::to_value(&commit).expect("commit serialises")),
        )?;
        // a new name is placed with RENAME_NOREPLACE, an existing one exchanged in one step
        let previous = fsops::publish(&staging, &target, &retired).map_err(|e| {
            let _ = backend::remove_any(&staging);
            Error::io(&target, e)
        })?;
        cx.journal.step(&txn, "receipt")?;
        let bytes = serde_json::to_vec_pretty(&value).expect("receipt serialises");
        fsops::write_atomic(&sidecar, &bytes).map_err(|e| Error::io(&sidecar, e))?;
        cx.journal.step(&txn, "cleanup")?;
        if let fsops::Previous::At(old) = previous {
            backend::remove_any(&old).map_err(|e| Error::io(&old, e))?;
        }
        cx.journal.done(txn)
    }

    fn delete(&self, entry: &str, cx: &mut ApplyContext) -> Result<()> {
        super::publish::remove_dir(cx.journal, &self.address, &self.entry_path(entry))?;
        let _ = fs::remove_file(self.sidecar(entry));
        Ok(())
    }

    /// Leftovers that need no journal: temporary links and receipts of entries that are gone.
    fn tidy(&self, st: &MachineState) {
        let dir = self.dir();
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!(".{}{}link-", self.name, fsops::STAGING_MARK)) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        if let Ok(rd) = fs::read_dir(dir.join(META_DIR)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(entry) = n.strip_suffix(".json") {
                    if !st.entries.contains_key(entry) && !dir.join(entry).exists() {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
    }
}

/// `linux-gcc-3` → 3 for machine `linux-gcc`.
pub fn revision_of(machine: &str, entry: &str) -> Option<u32> {
    entry.strip_prefix(machine)?.strip_prefix('-')?.parse().ok()
}

/// Revisions that live working snapshots were made from.
fn live_revisions(st: &MachineState, live: &BTreeMap<String, String>) -> BTreeSet<u32> {
    live.keys()
        .filter_map(|w| {
            st.entries
                .get(w)
                .and_then(|e| e.receipt.as_ref())
                .map(|r| r.revision)
        })
        .collect()
}

/// Observe a machine directory: entries, which of them carry a receipt that
/// still describes them (same volume id), and the current link.
pub fn observe_dir(dir: &Path, machine: &str, backend_name: &'static str) -> Result<MachineState> {
    let mut st = MachineState {
        backend: backend_name,
        link: None,
        entries: BTreeMap::new(),
    };
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(st),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == META_DIR || fsops::is_staging_name(&name) {
            continue;
        }
        if name == machine {
            st.link = fs::read_link(e.path())
                .ok()
                .map(|t| t.to_string_lossy().into_owned());
            continue;
        }
        let receipt = fs::read(dir.join(META_DIR).join(format!("{name}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice::<EntryReceipt>(&b).ok())
            // a receipt describes the volume only while the ids match (a working
            // snapshot's receipt is written before the snapshot exists)
            .filter(|r| r.kind == "working" || backend::volume_id(&e.path()).ok() == Some(r.id));
        st.entries.insert(name.clone(), Entry { name, receipt });
    }
    Ok(st)
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
        let st = observe_dir(&self.dir(), &self.name, be.name())?;
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
                e.receipt.as_ref().is_some_and(|r| r.kind == "revision")
                    || revision_of(&self.name, &e.name).is_some()
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
            detail: Box::new(st),
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
        self.tidy(st);
        fs::create_dir_all(self.dir()).map_err(|e| Error::io(self.dir(), e))?;
        cx.roots.add(KIND, Path::new(&self.volume.path));
        for (step, _) in self.steps(st, cx.cx)? {
            match (&step, &self.desired) {
                (Step::BuildRevision, Some(m)) => self.build_revision(m, cx)?,
                (Step::SwitchLink, Some(m)) => {
                    let link = self.entry_path(&self.name);
                    fsops::switch_symlink(Path::new(&self.rev_name(m.revision)), &link)
                        .map_err(|e| Error::io(&link, e))?
                }
                (Step::Bootstrap { toolchain }, Some(m)) => self.bootstrap(m, toolchain, cx)?,
                (Step::Delete { name }, _) => self.delete(name, cx)?,
                _ => {}
            }
        }
        if self.desired.is_none() {
            // the whole machine is gone when nothing is left in it but the link and receipts
            let remaining = observe_dir(&self.dir(), &self.name, "any")?;
            if remaining.entries.is_empty() {
                let _ = fs::remove_file(self.entry_path(&self.name));
                let _ = fs::remove_dir_all(self.dir().join(META_DIR));
                let _ = fs::remove_dir(self.dir());
            }
        }
        Ok(())
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        vec![self.dir()]
    }

    fn status(&self, observed: &Observed) -> serde_json::Value {
        let st = self.state(observed);
        let entries: Vec<serde_json::Value> = st
            .entries
            .values()
            .map(|e| json!({ "name": e.name, "owned": e.receipt.is_some(), "receipt": e.receipt }))
            .collect();
        json!({
            "address": self.address,
            "path": self.dir(),
            "declared": self.desired.is_some(),
            "declared_revision": self.desired.as_ref().map(|m| m.revision),
            "state": observed.summary,
            "backend": st.backend,
            "current": st.link,
            "entries": entries,
        })
    }
}
