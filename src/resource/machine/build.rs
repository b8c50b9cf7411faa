//! Making a revision: unpacking a source into a new subvolume (or directory),
//! receiving a `btrfs send` stream, staging a disk image, and committing
//! it into the volume as one journaled step.

use std::fs;
use std::path::Path;

use super::MachineResource;
use crate::backend::VolumeBackend;
use crate::config::model::{ArchiveFormat, Machine, MachineKind};
use crate::error::{Error, Result};
use crate::fsops::beneath::Beneath;
use crate::resource::recover::{begin_fs, Op, VolumeCommit};
use crate::resource::{ApplyContext, Context};
use crate::source::archive::Policy;
use crate::source::Artifact;
use crate::store::{disk, write_receipt, EntryKind, EntryReceipt};
use crate::{backend, fault, fsops, source};

impl MachineResource {
    pub(super) fn build_revision(&self, m: &Machine, cx: &mut ApplyContext) -> Result<()> {
        let mut said = Vec::new();
        let r = source::fresh_on_corrupt_cache(&mut said, || self.build_revision_once(m, cx));
        cx.said.extend(said);
        r
    }

    pub(super) fn build_revision_once(&self, m: &Machine, cx: &mut ApplyContext) -> Result<()> {
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
    pub(super) fn receive_revision(
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
    pub(super) fn parent_uuids(&self, parent: u32) -> Result<Vec<[u8; 16]>> {
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
    pub(super) fn receive_into(
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
    pub(super) fn stage_disk(&self, artifact: &Artifact, volume: &Beneath) -> Result<String> {
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

    /// Build a volume under a temporary name with `build` (given the opened
    /// machine directory and the staging name), seal it read-only and publish
    /// it as `name` (exchanging with the old one when replacing), journaled.
    pub(super) fn publish_volume(
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
}
