//! Publishing a revision (a journaled `cloud-publish`: snapshot, blocks,
//! completion, registration, tags) and retiring one (`cloud-retire`).

use super::recover::{recover_publish, step_data, PublishIntent, RetireIntent};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CloudImage, Wanted, COMPLETION_LIMIT, PUBLISH_KIND, RECORD_VERSION, RETIRE_KIND};
use crate::cloud;
use crate::cloud::ec2::Registration;
use crate::cloud::{error as cloud_error, Api};
use crate::config::model::Firmware;
use crate::error::{Error, Result};
use crate::fsops::digest::sha256_bytes;
use crate::resource::ApplyContext;
use crate::store::{disk, EntryKind};

impl CloudImage {
    /// Publish the revision: a journaled `cloud-publish` transaction.
    pub(super) fn publish(&self, want: &Wanted, cx: &mut ApplyContext) -> Result<()> {
        let layout = self
            .layout
            .as_ref()
            .expect("a wanted revision has its machine");
        let api = cx.cx.clouds.api(cx.cx.desired, &self.cloud)?;
        let entry = layout.entry_path(&layout.rev_name(self.revision));
        // the revision as stored now (the machine's changes were applied first)
        let st = layout.observe(layout.backend().map(|b| b.name()).unwrap_or("dir"))?;
        let stored = st
            .entries
            .get(&layout.rev_name(self.revision))
            .and_then(|e| e.receipt.as_ref())
            .filter(|r| r.kind == EntryKind::Revision)
            .ok_or_else(|| Error::Resource {
                address: self.address.clone(),
                reason: format!(
                    "revision {} of machine {} is not stored locally (was machine.{} applied?)",
                    self.revision, self.machine, self.machine
                ),
            })?;
        let digest = stored.source_sha256.clone();
        let (image, format) = disk::image_in(&entry).map_err(|e| Error::io(&entry, e))?;
        let token = sha256_bytes(
            format!(
                "{}\0{}\0{}\0{digest}",
                self.cloud, self.machine, self.revision
            )
            .as_bytes(),
        )[..32]
            .to_string();
        let mut intent = PublishIntent {
            cloud: self.cloud.clone(),
            machine: self.machine.clone(),
            revision: self.revision,
            token,
            name: String::new(),
            digest: digest.clone(),
        };
        let txn = cx
            .journal
            .begin_kind(&self.address, PUBLISH_KIND, RECORD_VERSION, |id| {
                intent.name = image_name(&self.machine, self.revision, &digest, id);
                serde_json::to_value(&intent).expect("intent serialises")
            })?;
        let raw = Raw::of(&image, format, &cx.cx.state.root, &intent.token)?;
        let result = self.publish_steps(&api, &intent, raw.path(), want, cx, &txn);
        drop(raw);
        match result {
            Ok(()) => cx.journal.done(txn),
            Err(e) => {
                // undo (or finish) now, as recovery would; if that fails too the
                // journal keeps the transaction for the next run
                if recover_publish(&api, &intent).is_ok() {
                    cx.journal.done(txn)?;
                }
                cx.cx.clouds.forget(&self.cloud);
                Err(e)
            }
        }
    }

    fn publish_steps(
        &self,
        api: &Api,
        intent: &PublishIntent,
        raw: &Path,
        want: &Wanted,
        cx: &mut ApplyContext,
        txn: &crate::state::journal::Txn,
    ) -> Result<()> {
        let call = |doing: &str, e| cloud_error(api, "ebs", doing, e);
        let size = std::fs::metadata(raw).map_err(|e| Error::io(raw, e))?.len();
        let tags = intent.tags(None);
        cx.journal.step(txn, "start")?;
        let snapshot = api
            .start_snapshot(
                cloud::upload::volume_gib(size),
                &format!("reconcile {} revision {}", self.machine, self.revision),
                &intent.token,
                &tags,
            )
            .map_err(|e| call("StartSnapshot", e))?;
        cx.journal
            .step_with(txn, "started", Some(step_data("snapshot", &snapshot)))?;
        cx.journal.step(txn, "upload")?;
        let in_flight = cx
            .cx
            .desired
            .model
            .cloud
            .get(&self.cloud)
            .and_then(|c| c.uploads_in_flight)
            .unwrap_or(8) as usize;
        let report = cloud::upload::put_blocks(
            api,
            &snapshot,
            raw,
            in_flight,
            cx.cx.fetcher.progress,
            Some(&self.address),
            None,
        )?;
        cx.said.push(report.summary());
        cx.journal.step(txn, "complete")?;
        api.complete_snapshot(&snapshot, report.blocks_sent, &report.aggregate)
            .map_err(|e| call("CompleteSnapshot", e))?;
        cx.journal.step(txn, "wait")?;
        wait_completed(api, &snapshot)?;
        cx.journal.step(txn, "register")?;
        let machine = &want.machine;
        let boot_mode = match machine.vm.as_ref().map(|v| v.firmware) {
            Some(Firmware::Uefi) => "uefi",
            _ => "legacy-bios",
        };
        let all_tags = intent.tags(Some(&snapshot));
        let image = api
            .register_image(&Registration {
                name: &intent.name,
                description: &format!(
                    "reconcile machine {} revision {}",
                    self.machine, self.revision
                ),
                snapshot: &snapshot,
                architecture: ec2_arch(machine.arch.as_deref()),
                boot_mode,
                tags: &all_tags,
            })
            .map_err(|e| cloud_error(api, "ec2", "RegisterImage", e))?;
        cx.journal
            .step_with(txn, "registered", Some(step_data("image", &image)))?;
        cx.journal.step(txn, "tag")?;
        api.create_tags(&[&image, &snapshot], &all_tags)
            .map_err(|e| cloud_error(api, "ec2", "CreateTags", e))?;
        cx.cx.clouds.forget(&self.cloud);
        Ok(())
    }

    /// Deregister images and delete snapshots: a journaled `cloud-retire`.
    pub(super) fn retire(
        &self,
        images: &[String],
        snapshots: &[String],
        cx: &mut ApplyContext,
    ) -> Result<()> {
        if images.is_empty() && snapshots.is_empty() {
            return Ok(());
        }
        let api = cx.cx.clouds.api(cx.cx.desired, &self.cloud)?;
        let intent = RetireIntent {
            cloud: self.cloud.clone(),
            images: images.to_vec(),
            snapshots: snapshots.to_vec(),
        };
        let txn = cx
            .journal
            .begin_kind(&self.address, RETIRE_KIND, RECORD_VERSION, |_| {
                serde_json::to_value(&intent).expect("intent serialises")
            })?;
        cx.journal.step(&txn, "deregister")?;
        for i in images {
            api.deregister_image(i)
                .map_err(|e| cloud_error(&api, "ec2", &format!("DeregisterImage {i}"), e))?;
        }
        cx.journal.step(&txn, "delete")?;
        for s in snapshots {
            api.delete_snapshot(s)
                .map_err(|e| cloud_error(&api, "ec2", &format!("DeleteSnapshot {s}"), e))?;
        }
        cx.cx.clouds.forget(&self.cloud);
        cx.journal.done(txn)
    }
}

/// An AMI name unique to the publish transaction (AMI names are unique per
/// account and region): registering it twice fails, and recovery finds the
/// image of an interrupted publish by it.
pub(super) fn image_name(machine: &str, revision: u32, digest: &str, txn: &str) -> String {
    format!(
        "{}{}",
        image_name_prefix(machine, revision, digest),
        &sha256_bytes(txn.as_bytes())[..8]
    )
}

pub(super) fn image_name_prefix(machine: &str, revision: u32, digest: &str) -> String {
    format!(
        "reconcile-{machine}-r{revision}-{}-",
        &digest[..digest.len().min(16)]
    )
}

pub(super) fn ec2_arch(arch: Option<&str>) -> &'static str {
    match arch {
        Some("aarch64" | "arm64") => "arm64",
        _ => "x86_64",
    }
}

pub(super) fn wait_completed(api: &Api, snapshot: &str) -> Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        let state = api
            .snapshot_state(snapshot)
            .map_err(|e| cloud_error(api, "ec2", "DescribeSnapshots", e))?;
        match state.as_deref() {
            Some("completed") => return Ok(()),
            Some("error") => {
                return Err(Error::Cloud {
                    cloud: api.cloud.clone(),
                    endpoint: api.endpoint("ec2"),
                    reason: format!("snapshot {snapshot} ended in state error"),
                })
            }
            None => {
                return Err(Error::Cloud {
                    cloud: api.cloud.clone(),
                    endpoint: api.endpoint("ec2"),
                    reason: format!("snapshot {snapshot} disappeared while completing"),
                })
            }
            _ if started.elapsed() > COMPLETION_LIMIT => {
                return Err(Error::Cloud {
                    cloud: api.cloud.clone(),
                    endpoint: api.endpoint("ec2"),
                    reason: format!("snapshot {snapshot} still not completed after an hour"),
                })
            }
            _ => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The disk as raw bytes: the revision's raw image itself, or a sparse raw
/// copy of a qcow2 (in the state dir, removed when dropped).
pub(super) enum Raw {
    Image(PathBuf),
    Converted(PathBuf),
}

impl Raw {
    fn of(image: &Path, format: disk::DiskFormat, state_root: &Path, token: &str) -> Result<Raw> {
        if format == disk::DiskFormat::Raw {
            return Ok(Raw::Image(image.to_path_buf()));
        }
        let tmp = state_root.join(format!("upload-{token}.raw"));
        let _ = std::fs::remove_file(&tmp);
        let out = std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
            .arg(image)
            .arg(&tmp)
            .output()
            .map_err(|e| Error::Resource {
                address: image.display().to_string(),
                reason: format!("cannot run qemu-img to read the qcow2 image: {e}"),
            })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Resource {
                address: image.display().to_string(),
                reason: format!(
                    "qemu-img convert failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(Raw::Converted(tmp))
    }

    fn path(&self) -> &Path {
        match self {
            Raw::Image(p) | Raw::Converted(p) => p,
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Raw::Converted(p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}
