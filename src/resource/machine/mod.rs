//! Machines in build2's buildos layout, declared instead of typed by hand:
//!
//! ```text
//! <volume>/<m>/<m>-<rev>        read-only revision (btrfs subvolume or directory)
//! <volume>/<m>/<m>              symlink to the current revision, switched atomically
//! <volume>/<m>/<m>-<tc>         read-only bootstrapped snapshot per toolchain
//! <volume>/<m>/<m>-<tc>-<id>    writable working snapshots (tests, `reconcile exec`)
//! <volume>/<m>/.reconcile/      sidecar receipts (a read-only rootfs cannot carry one)
//! ```

use crate::config::model::ArchiveFormat;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{
    Action, ApplyContext, Change, Context, EntryStatus, KindStatus, Observed, Resource,
    ResourceStatus,
};
use crate::backend::{self, VolumeBackend};
use crate::config::model::{Executor, Machine, MachineKind, Prune, Volume};
use crate::error::{Error, Result};
use crate::fault;
use crate::fsops::beneath::{self, Beneath};
use crate::fsops::{self, digest::sha256_bytes};
use crate::platform::{self, Provision, Target};
use crate::process::{Interrupt, Tail};
use crate::resource::recover::{begin_fs, Op, VolumeCommit};
use crate::source::{self, archive::Policy, Artifact, Location};
use crate::state::now_rfc3339;
use crate::store::disk;
use crate::store::working::live_bases;
use crate::store::{
    observe_dir, revision_of, write_receipt, Entry, EntryKind, EntryReceipt, MachineDir,
    MachineState,
};

pub const KIND: &str = "machine";
const DEFAULT_BOOTSTRAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

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

    /// The steps that make the machine match, with a reason each (a switch of
    /// the current revision says from which to which).
    fn steps(&self, st: &MachineState, cx: &Context) -> Result<Vec<(Step, Change)>> {
        let mut out = self.steps_with_reasons(st, cx)?;
        if let (Some(m), Some(old)) = (
            &self.desired,
            st.link.as_deref().and_then(|l| l.rsplit('-').next()),
        ) {
            for (_, c) in out
                .iter_mut()
                .filter(|(s, _)| matches!(s, Step::SwitchLink))
            {
                c.from = Some(old.to_string());
                c.to = Some(m.revision.to_string());
            }
        }
        Ok(out)
    }

    fn steps_with_reasons(&self, st: &MachineState, cx: &Context) -> Result<Vec<(Step, Change)>> {
        let dir = self.layout.existing().ok().flatten();
        let live = live_bases(dir.as_ref(), st);
        let Some(m) = &self.desired else {
            return Ok(self.undeclared_steps(st, &live));
        };
        let want_src = cx.fetcher.expected_digest(&m.source)?;
        let mut out = Steps::default();
        let rebuilt = self.revision_steps(m, st, &want_src, &mut out);
        let rebuilding = self.toolchain_steps(m, st, &want_src, rebuilt, &mut out)?;
        if self.volume().prune != Prune::None {
            self.deletion_steps(m, st, &live, &rebuilding, &mut out);
        }
        Ok(out.0)
    }

    /// An undeclared machine: every entry goes, unless a live working
    /// snapshot needs it (none under `prune = "none"`).
    fn undeclared_steps(
        &self,
        st: &MachineState,
        live: &BTreeMap<String, String>,
    ) -> Vec<(Step, Change)> {
        let mut out = Steps::default();
        if self.volume().prune == Prune::None {
            return out.0;
        }
        let backing = self.backing(st, live, &[]);
        for e in st.entries.values() {
            if e.receipt.is_none() && self.volume().prune != Prune::All {
                continue;
            }
            if live.contains_key(&e.name) || backing.contains(&e.name) {
                continue;
            }
            out.delete(
                &e.name,
                format!("{} of a machine no longer declared", e.name),
            );
        }
        out.0
    }

    /// The current revision: built when missing or made from another
    /// source, then the link switched to it. Whether it is (re)built.
    fn revision_steps(
        &self,
        m: &Machine,
        st: &MachineState,
        want_src: &str,
        out: &mut Steps,
    ) -> bool {
        let cur = self.rev_name(m.revision);
        let mut rebuilt = false;
        match st.entries.get(&cur) {
            None => {
                rebuilt = true;
                out.push(
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
                out.push(
                    Step::BuildRevision,
                    Action::Replace,
                    format!(
                        "revision {} source sha256 {}… ≠ declared {}…",
                        m.revision,
                        super::receipt::short(&r.source_sha256),
                        super::receipt::short(want_src)
                    ),
                )
            }
            // ours and current, or made by hand (buildos-style) and used as it is
            Some(_) => {}
        }
        if st.link.as_deref() != Some(cur.as_str()) {
            let reason = match st.link.as_deref().and_then(|l| l.rsplit('-').next()) {
                Some(old) => format!("current revision {old} → {}", m.revision),
                None => format!("link {} → {cur} missing", self.name()),
            };
            out.push(Step::SwitchLink, Action::Update, reason);
        }
        rebuilt
    }

    /// Each declared toolchain bootstrapped on the current revision with its
    /// current command. The snapshots being (re)made.
    fn toolchain_steps(
        &self,
        m: &Machine,
        st: &MachineState,
        want_src: &str,
        rebuilt: bool,
        out: &mut Steps,
    ) -> Result<BTreeSet<String>> {
        let mut rebuilding: BTreeSet<String> = BTreeSet::new();
        for (tc, t) in &m.toolchain {
            let name = self.tc_name(tc);
            let want = bootstrap_digest(&t.bootstrap);
            let reason = match st.entries.get(&name).and_then(|e| e.receipt.as_ref()) {
                None if st.entries.contains_key(&name) && self.volume().prune != Prune::All => {
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
                rebuilding.insert(name);
                out.push(
                    Step::Bootstrap {
                        toolchain: tc.clone(),
                    },
                    action,
                    reason,
                );
            }
        }
        Ok(rebuilding)
    }

    /// What goes: stale working snapshots, undeclared toolchains, revisions
    /// beyond `keep`, strays (`prune = "all"`) — never what a live working
    /// snapshot or a staying toolchain reads through.
    fn deletion_steps(
        &self,
        m: &Machine,
        st: &MachineState,
        live: &BTreeMap<String, String>,
        rebuilding: &BTreeSet<String>,
        out: &mut Steps,
    ) {
        let cur = self.rev_name(m.revision);
        let staying: Vec<&str> = m
            .toolchain
            .keys()
            .map(|tc| self.tc_name(tc))
            .filter(|n| !rebuilding.contains(n))
            .filter_map(|n| st.entries.get_key_value(&n).map(|(k, _)| k.as_str()))
            .collect();
        let backing = self.backing(st, live, &staying);
        let mut older: Vec<(u32, &Entry)> = Vec::new();
        for e in st.entries.values() {
            if e.name == cur || live.contains_key(&e.name) || backing.contains(&e.name) {
                continue;
            }
            let r = e.receipt.as_ref();
            match r.map(|r| r.kind) {
                Some(EntryKind::Working) => {
                    let owner = r.and_then(|r| r.owner.as_ref()).map(|o| o.pid).unwrap_or(0);
                    out.delete(
                        &e.name,
                        format!(
                            "stale working snapshot {} (owner pid {owner} is gone)",
                            e.name
                        ),
                    );
                }
                Some(EntryKind::Toolchain) => {
                    let tc = r.and_then(|r| r.toolchain.clone()).unwrap_or_default();
                    if !m.toolchain.contains_key(&tc) {
                        out.delete(&e.name, format!("toolchain {tc} not declared any more"));
                    }
                }
                Some(EntryKind::Revision) => older.push((r.map(|r| r.revision).unwrap_or(0), e)),
                None => match revision_of(self.name(), &e.name) {
                    // a hand-made revision counts toward `keep` only under buildos behaviour
                    Some(rev) if self.volume().prune == Prune::All => older.push((rev, e)),
                    _ if self.volume().prune == Prune::All
                        && !m.toolchain.contains_key(
                            e.name.trim_start_matches(&format!("{}-", self.name())),
                        ) =>
                    {
                        out.delete(&e.name, format!("stray {} (prune = \"all\")", e.name))
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
            if live_revisions(st, live).contains(rev) {
                continue;
            }
            out.delete(&e.name, format!("revision {rev} beyond keep = {}", m.keep));
        }
    }

    /// Entries some overlay that stays still reads through: the backing chains
    /// of live working snapshots and of `staying` toolchain snapshots (disk
    /// machines; a btrfs or directory snapshot needs nothing it was made from).
    fn backing(
        &self,
        st: &MachineState,
        live: &BTreeMap<String, String>,
        staying: &[&str],
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<String> = live
            .keys()
            .map(String::as_str)
            .chain(staying.iter().copied())
            .map(str::to_string)
            .collect();
        while let Some(entry) = todo.pop() {
            if let Some(base) = disk::backing_entry(&self.entry_path(&entry)) {
                if st.entries.contains_key(&base) && out.insert(base.clone()) {
                    todo.push(base);
                }
            }
        }
        out
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

    fn build_revision(&self, m: &Machine, cx: &mut ApplyContext) -> Result<()> {
        let mut said = Vec::new();
        let r = source::fresh_on_corrupt_cache(&mut said, || self.build_revision_once(m, cx));
        cx.said.extend(said);
        r
    }

    fn build_revision_once(&self, m: &Machine, cx: &mut ApplyContext) -> Result<()> {
        let be = self.backend()?;
        let artifact = cx.cx.fetcher.fetch(&m.source)?;
        if let Artifact::File {
            format: ArchiveFormat::BtrfsSend,
            ..
        } = &artifact
        {
            return self.receive_revision(m, &artifact, be.as_ref(), cx);
        }
        let name = self.rev_name(m.revision);
        let limit = cx.cx.desired.extract_limit;
        let strip = m.source.strip_components.unwrap_or(0);
        let kind = m.kind;
        self.publish_volume(cx, be.as_ref(), &name, |dir, staging| {
            let io = |e: std::io::Error| Error::io(dir.shown(staging), e);
            be.create(dir, staging).map_err(io)?;
            let volume = dir.open_dir(staging).map_err(io)?;
            let source_sha = match (kind, &artifact) {
                (MachineKind::Rootfs, a) => {
                    source::unpack(a, &volume, "rootfs", strip, limit, Policy { rootfs: true })?
                        .sha256
                }
                (MachineKind::Disk, Artifact::File { .. }) => {
                    self.stage_disk(&artifact, &volume)?
                }
                (MachineKind::Disk, Artifact::Dir { .. }) => {
                    return Err(Error::Resource {
                        address: self.address.clone(),
                        reason: "a disk machine needs a file source (a raw or qcow2 image)".into(),
                    })
                }
            };
            fault::point(&self.address, "stage-partial");
            Ok(self.receipt(EntryKind::Revision, m, source_sha))
        })
    }

    /// A revision from a `btrfs send` stream: received (`btrfs receive`) into
    /// a directory under the transaction's retired name, the subvolume it
    /// made renamed to the staging name, then published like any revision.
    /// An incremental stream needs its parent revision kept here.
    fn receive_revision(
        &self,
        m: &Machine,
        artifact: &Artifact,
        be: &dyn VolumeBackend,
        cx: &mut ApplyContext,
    ) -> Result<()> {
        let Artifact::File { sha256, .. } = artifact else {
            unreachable!("a stream is a file");
        };
        let refuse = |reason: String| Error::Resource {
            address: self.address.clone(),
            reason,
        };
        if be.name() != "btrfs" {
            return Err(refuse(
                "a btrfs-send source is received into a btrfs volume; this volume uses the dir backend \
                 (put the volume on btrfs, or use a tar archive or a directory as the source)"
                    .into(),
            ));
        }
        if m.kind != MachineKind::Rootfs {
            return Err(refuse(
                "a btrfs-send source makes a root-filesystem machine (kind = \"rootfs\")".into(),
            ));
        }
        // an incremental stream's parent: this machine's revision N, and no
        // other subvolume (the UUIDs the stream may name, from the subvolume
        // that is there, which must be the one its receipt recorded)
        let parent = match m.source.parent {
            None => None,
            Some(parent) => Some((parent, self.parent_uuids(parent)?)),
        };
        let name = self.rev_name(m.revision);
        // received first, in a scratch directory of its own transaction (a kill
        // mid-receive leaves only that, which recovery deletes with the
        // half-made subvolume in it), then moved into the revision's staging
        let dir = self.layout.open()?;
        let scratch_target = self.entry_path(&format!("{name}.receive"));
        let txn = begin_fs(cx.journal, &self.address, |id| Op::Publish {
            target: scratch_target.clone(),
            staging: fsops::staging_path(&scratch_target, id),
            retired: fsops::retired_path(&scratch_target, id),
        })?;
        let scratch = fsops::staging_name(Path::new(&format!("{name}.receive")), &txn.id);
        cx.journal.step(&txn, "stage")?;
        let received = self.receive_into(&dir, &scratch, artifact, parent.as_ref(), be, cx.cx);
        let made = match received {
            Ok(made) => made,
            Err(e) => {
                let _ = backend::remove_in(&dir, &scratch);
                cx.journal.done(txn)?;
                return Err(e);
            }
        };
        let subvolume = scratch.join(&made);
        let published = self.publish_volume(cx, be, &name, |dir, staging| {
            dir.rename(&subvolume, staging)
                .map_err(|e| Error::io(dir.shown(staging), e))?;
            Ok(self.receipt(EntryKind::Revision, m, sha256.clone()))
        });
        let _ = backend::remove_in(&dir, &scratch);
        cx.journal.done(txn)?;
        published
    }

    /// The UUIDs an incremental stream against revision `parent` may name:
    /// the received UUID of that subvolume (when it was received itself) and
    /// its own, read from the subvolume and checked against its receipt.
    fn parent_uuids(&self, parent: u32) -> Result<Vec<[u8; 16]>> {
        let refuse = |reason: String| Error::Resource {
            address: self.address.clone(),
            reason,
        };
        let dir = self.layout.open()?;
        let name = self.rev_name(parent);
        if dir.try_stat(Path::new(&name)).ok().flatten().is_none() {
            return Err(refuse(format!(
                "the stream is incremental against revision {parent}, which is not kept here \
                 ({name} is missing): apply revision {parent} first, or use a full stream"
            )));
        }
        let u = crate::backend::btrfs::uuids(&dir, Path::new(&name))
            .map_err(|e| Error::io(dir.shown(Path::new(&name)), e))?;
        let text = crate::backend::btrfs::uuid_text;
        if let Some(recorded) = crate::store::read_receipt(&dir, &name).and_then(|r| r.uuid) {
            if recorded != text(&u.uuid) {
                return Err(refuse(format!(
                    "{name} is not the subvolume its receipt describes (UUID {} there, {recorded} recorded): \
                     it was replaced by hand; remove it and apply revision {parent} again",
                    text(&u.uuid)
                )));
            }
        }
        Ok([u.received, u.uuid]
            .into_iter()
            .filter(|x| *x != [0; 16])
            .collect())
    }

    /// `btrfs receive` the stream into the new directory `scratch` (checked
    /// on its way in, see `backend::send`); returns the name of the
    /// subvolume made, writable (a read-only subvolume cannot move to another
    /// directory; the flag alone changes, the received UUID an incremental
    /// stream finds its parent by stays; publishing makes it read-only again).
    fn receive_into(
        &self,
        dir: &Beneath,
        scratch: &Path,
        artifact: &Artifact,
        parent: Option<&(u32, Vec<[u8; 16]>)>,
        be: &dyn VolumeBackend,
        cx: &Context,
    ) -> Result<String> {
        let Artifact::File {
            path,
            sha256,
            cached,
            ..
        } = artifact
        else {
            unreachable!("a stream is a file");
        };
        let io = |e: std::io::Error| Error::io(dir.shown(scratch), e);
        dir.create_dir(scratch, 0o700).map_err(io)?;
        let copies = cx.state.tmp_dir()?;
        let address = self.address.clone();
        let into = dir.shown(scratch);
        let made = crate::store::send::receive(
            &crate::store::send::Receive {
                file: path,
                sha256,
                private: *cached,
                scratch: &copies,
                into: &into,
                limit: cx.desired.extract_limit,
                parent: parent.map(|(_, u)| u.clone()),
            },
            || fault::point(&address, "receive-partial"),
        )
        .map_err(|r| match r {
            crate::store::send::Refused::Digest { actual } => {
                source::mismatch(path, sha256, actual, *cached, "nothing was received")
            }
            crate::store::send::Refused::Stream(why) => Error::Resource {
                address: self.address.clone(),
                reason: format!(
                    "refusing the btrfs send stream {}: {why}; nothing was kept",
                    path.display()
                ),
            },
            crate::store::send::Refused::Failed(why) => Error::Resource {
                address: self.address.clone(),
                reason: why,
            },
        })?;
        if let Some((rev, allowed)) = parent {
            // receive looks its parent up by UUID on the whole filesystem: the
            // snapshot it made must come from this machine's revision
            let got = crate::backend::btrfs::uuids(dir, &scratch.join(&made)).map_err(io)?;
            let ours = self.entry_path(&self.rev_name(*rev));
            let want = *allowed.last().expect("a subvolume has a UUID");
            if got.parent != want {
                return Err(Error::Resource {
                    address: self.address.clone(),
                    reason: format!(
                        "btrfs receive took its parent from another subvolume with the same UUID \
                         (made from {}, not from {}): more than one subvolume on this filesystem \
                         was received from that stream; nothing was kept",
                        crate::backend::btrfs::uuid_text(&got.parent),
                        ours.display()
                    ),
                });
            }
        }
        be.set_readonly(dir, &scratch.join(&made), false)
            .map_err(io)?;
        Ok(made)
    }

    /// Copy a disk image into the staged revision — reflinked where the
    /// filesystem can, copied otherwise — then check what was staged: its
    /// digest (the bytes installed, not the ones checked earlier) and its
    /// format, told apart by content, a qcow2 self-contained.
    fn stage_disk(&self, artifact: &Artifact, volume: &Beneath) -> Result<String> {
        let Artifact::File {
            path,
            sha256,
            cached,
            ..
        } = artifact
        else {
            unreachable!("a disk source is a file");
        };
        let tmp = Path::new("disk.staged");
        let io = |e: std::io::Error| Error::io(volume.shown(tmp), e);
        let from = fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut to = volume.create_file(tmp, 0o644).map_err(io)?;
        let actual = if crate::backend::btrfs::clone_file(&from, &to).is_ok() {
            crate::fsops::digest::sha256_reader(volume.open_file(tmp).map_err(io)?)
                .map_err(io)?
                .0
        } else {
            let mut r = source::archive::HashingReader::new(&from);
            std::io::copy(&mut r, &mut to).map_err(io)?;
            r.finish().map_err(io)?.0
        };
        if actual != *sha256 {
            return Err(source::mismatch(path, sha256, actual, *cached, "as staged"));
        }
        let format = disk::check_source(&volume.shown(tmp)).map_err(|reason| Error::Resource {
            address: self.address.clone(),
            reason,
        })?;
        volume
            .rename(tmp, Path::new(format.file_name()))
            .map_err(io)?;
        Ok(actual)
    }

    /// Bootstrap a toolchain snapshot: a snapshot of the current revision (a
    /// qcow2 overlay of it, for a disk machine), the bootstrap run inside it
    /// (namespaces as root, the host otherwise; over the serial console of a
    /// VM for a disk machine, which is then shut down cleanly), sealed read-only.
    fn bootstrap(&self, m: &Machine, tc: &str, cx: &mut ApplyContext) -> Result<()> {
        let be = self.backend()?;
        let t = &m.toolchain[tc];
        let base_name = self.rev_name(m.revision);
        let base = self.entry_path(&base_name);
        let src_sha = cx.cx.fetcher.expected_digest(&m.source)?;
        let name = self.tc_name(tc);
        let timeout = t.timeout.unwrap_or(DEFAULT_BOOTSTRAP_TIMEOUT);
        let executor = match m.kind {
            MachineKind::Disk => Executor::Qemu,
            MachineKind::Rootfs if nix::unistd::geteuid().is_root() => Executor::Namespace,
            MachineKind::Rootfs if be.name() == "btrfs" => {
                return Err(Error::Resource {
                    address: self.address.clone(),
                    reason: platform::namespace::require_root()
                        .expect_err("not root")
                        .to_string(),
                })
            }
            MachineKind::Rootfs => Executor::Host,
        };
        let provision = Provision {
            desired: cx.cx.desired,
            state: cx.cx.state,
            // an apply finishes the step in progress when interrupted
            cancel: Arc::new(AtomicBool::new(false)),
            log_dir: cx.cx.state.vm_log_dir(&format!("{}.{tc}", self.address)),
            isolate_network: false,
            suite: None,
        };
        let failed = |what: String, tail: &Tail| Error::Resource {
            address: self.address.clone(),
            reason: format!(
                "toolchain {tc}: {what}; the previous {name} stays. Its output:\n{}",
                tail.lines(20)
            ),
        };
        self.publish_volume(cx, be.as_ref(), &name, |dir, staging_name| {
            let staging = &dir.shown(staging_name);
            match m.kind {
                MachineKind::Rootfs => be.snapshot(dir, Path::new(&base_name), staging_name, false),
                MachineKind::Disk => be.create(dir, staging_name).and_then(|()| {
                    let (image, format) = disk::image_in(&base)?;
                    disk::create_overlay(staging, &image, format).map(|_| ())
                }),
            }
            .map_err(|e| Error::io(staging, e))?;
            fault::point(&self.address, "stage-partial");
            let mut instance = platform::provision(
                &provision,
                executor,
                Target::Staging {
                    machine: self.name(),
                    root: staging,
                },
            )?;
            let step = platform::Step {
                name: format!("bootstrap {tc}"),
                argv: t.bootstrap.clone(),
                env: Vec::new(),
                timeout: Some(timeout),
            };
            let mut tail = Tail::default();
            let ran = instance
                .start(&mut tail)
                .and_then(|()| instance.run(&step, &mut tail));
            match ran {
                Ok(exit) if exit.success() => {}
                Ok(exit) => return Err(failed(format!("bootstrap failed ({exit})"), &tail)),
                Err(i) => return Err(failed(format!("bootstrap did not finish: {i}"), &tail)),
            }
            fault::point(&self.address, "bootstrapped");
            instance
                .shutdown(&mut tail)
                .map_err(|i: Interrupt| failed(format!("clean shutdown failed: {i}"), &tail))?;
            drop(instance);
            if m.kind == MachineKind::Disk {
                // what the overlay holds now is the toolchain: nothing writes to it again
                let overlay = staging.join(disk::OVERLAY);
                fs::set_permissions(
                    &overlay,
                    std::os::unix::fs::PermissionsExt::from_mode(0o444),
                )
                .map_err(|e| Error::io(&overlay, e))?;
            }
            Ok(EntryReceipt {
                toolchain: Some(tc.to_string()),
                bootstrap_sha256: Some(bootstrap_digest(&t.bootstrap)),
                ..self.receipt(EntryKind::Toolchain, m, src_sha.clone())
            })
        })
    }

    /// Build a volume under a temporary name with `build` (given the opened
    /// machine directory and the staging name), seal it read-only and publish
    /// it as `name` (exchanging with the old one when replacing), journaled.
    fn publish_volume(
        &self,
        cx: &mut ApplyContext,
        be: &dyn VolumeBackend,
        name: &str,
        build: impl FnOnce(&Beneath, &Path) -> Result<EntryReceipt>,
    ) -> Result<()> {
        let dir = self.layout.open()?;
        let target = self.entry_path(name);
        let sidecar = self.sidecar(name);
        let txn = begin_fs(cx.journal, &self.address, |id| Op::Volume {
            target: target.clone(),
            staging: fsops::staging_path(&target, id),
            retired: fsops::retired_path(&target, id),
            sidecar: sidecar.clone(),
        })?;
        let staging = fsops::staging_name(Path::new(name), &txn.id);
        let retired = fsops::retired_name(Path::new(name), &txn.id);
        let io = |e: std::io::Error| Error::io(dir.shown(&staging), e);
        cx.journal.step(&txn, "stage")?;
        let built = build(&dir, &staging).and_then(|mut receipt| {
            fsops::sync_tree(&dir.open_dir(&staging).map_err(io)?).map_err(io)?;
            be.set_readonly(&dir, &staging, true).map_err(io)?;
            receipt.id = be.id(&dir, &staging).map_err(io)?;
            if be.name() == "btrfs" {
                // what an incremental stream against this revision must name
                let u = crate::backend::btrfs::uuids(&dir, &staging).map_err(io)?;
                let text = crate::backend::btrfs::uuid_text;
                receipt.uuid = Some(text(&u.uuid));
                receipt.received_uuid = (u.received != [0; 16]).then(|| text(&u.received));
            }
            Ok(receipt)
        });
        let receipt = match built {
            Ok(r) => r,
            Err(e) => {
                let _ = backend::remove_in(&dir, &staging);
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
        let previous = fsops::publish(&dir, &staging, Path::new(name), &retired).map_err(|e| {
            let _ = backend::remove_in(&dir, &staging);
            Error::io(&target, e)
        })?;
        cx.journal.step(&txn, "receipt")?;
        write_receipt(&dir, name, &receipt).map_err(|e| Error::io(&sidecar, e))?;
        cx.journal.step(&txn, "cleanup")?;
        if let fsops::Previous::At(old) = previous {
            backend::remove_in(&dir, &old).map_err(|e| Error::io(dir.shown(&old), e))?;
        }
        cx.journal.done(txn)
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

/// Revisions that live working snapshots were made from.
/// A machine's steps as they are planned, each with its change.
#[derive(Default)]
struct Steps(Vec<(Step, Change)>);

impl Steps {
    fn push(&mut self, step: Step, action: Action, reason: String) {
        self.0.push((step, Change::new(action, reason)));
    }

    fn delete(&mut self, name: &str, reason: String) {
        self.push(
            Step::Delete {
                name: name.to_string(),
            },
            Action::Delete,
            reason,
        );
    }
}

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
        for (step, _) in self.steps(st, cx.cx)? {
            match (&step, &self.desired) {
                (Step::BuildRevision, Some(m)) => self.build_revision(m, cx)?,
                (Step::SwitchLink, Some(m)) => {
                    let link = Path::new(self.name());
                    fsops::switch_symlink(&dir, Path::new(&self.rev_name(m.revision)), link)
                        .map_err(|e| Error::io(self.layout.link(), e))?
                }
                (Step::Bootstrap { toolchain }, Some(m)) => self.bootstrap(m, toolchain, cx)?,
                (Step::Delete { name }, _) => self.delete(name, cx)?,
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
