//! Machine revisions published to EC2-compatible clouds: one resource per
//! (cloud, machine, revision), addressed `cloud.<cloud>.machine.<m>@<rev>`.
//!
//! Every revision a disk machine keeps locally (the current one and `keep`
//! older ones) is published to each cloud in its `clouds` as an image backed
//! by one snapshot, both tagged `reconcile:machine`, `reconcile:revision`,
//! `reconcile:digest` (the revision's content digest) and
//! `reconcile:snapshot`. The plan reads each cloud once per run
//! (`DescribeImages` and `DescribeSnapshots` by tag) and compares.
//!
//! A publish is a journaled transaction of its own kind (`cloud-publish`):
//! snapshot started (tagged with the transaction's token), blocks written,
//! completed, waited for, registered under a name unique to the revision and
//! its digest, tagged. Recovery finds the image by that name (then it
//! finishes the tagging) or else deletes every snapshot carrying the token:
//! never two images for one revision, never an image of an incomplete
//! snapshot. Retiring (`cloud-retire`) deregisters, then deletes snapshots.
//! Images without reconcile's tags are never looked at.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    Action, ApplyContext, Change, Context, Detail, KindStatus, Observed, Resource, ResourceStatus,
};
use crate::cloud::ec2::{Image, Registration, Snapshot};
use crate::cloud::{
    self, error as cloud_error, Api, Sessions, TAG_DIGEST, TAG_MACHINE, TAG_REVISION, TAG_SNAPSHOT,
    TAG_TOKEN,
};
use crate::config::model::{Firmware, Machine, MachineKind};
use crate::config::Desired;
use crate::error::{Error, Result};
use crate::fsops::digest::sha256_bytes;
use crate::state::journal::{Open, Recover};
use crate::store::{disk, EntryKind, MachineDir};

pub const KIND: &str = "cloud";
const PUBLISH_KIND: &str = "cloud-publish";
const RETIRE_KIND: &str = "cloud-retire";
const RECORD_VERSION: u32 = 1;
/// How long a completing snapshot is waited for.
const COMPLETION_LIMIT: Duration = Duration::from_secs(60 * 60);

/// What one cloud holds that reconcile made, read once per run.
#[derive(Debug, Default)]
pub struct Inventory {
    pub images: Vec<Image>,
    pub snapshots: Vec<Snapshot>,
}

/// The clouds of a run: connections and inventories, made on first use.
#[derive(Default)]
pub struct Clouds {
    pub sessions: Sessions,
    inventories: Mutex<BTreeMap<String, Arc<Inventory>>>,
}

impl Clouds {
    pub fn api(&self, desired: &Desired, name: &str) -> Result<Arc<Api>> {
        let cloud = desired.model.cloud.get(name).ok_or_else(|| {
            Error::Usage(format!(
                "cloud `{name}` is not declared in the desired-state file"
            ))
        })?;
        self.sessions.get(name, cloud)
    }

    /// Everything tagged `reconcile:machine` in the cloud.
    pub fn inventory(&self, desired: &Desired, name: &str) -> Result<Arc<Inventory>> {
        if let Some(i) = self.inventories.lock().unwrap().get(name) {
            return Ok(i.clone());
        }
        let api = self.api(desired, name)?;
        let images = api
            .describe_images(TAG_MACHINE)
            .map_err(|e| cloud_error(&api, "ec2", "DescribeImages", e))?;
        let snapshots = api
            .describe_snapshots(TAG_MACHINE, None)
            .map_err(|e| cloud_error(&api, "ec2", "DescribeSnapshots", e))?;
        let inv = Arc::new(Inventory { images, snapshots });
        self.inventories
            .lock()
            .unwrap()
            .insert(name.to_string(), inv.clone());
        Ok(inv)
    }

    /// Forget what was read (an apply changed the cloud).
    pub fn forget(&self, name: &str) {
        self.inventories.lock().unwrap().remove(name);
    }
}

/// What observe found for one revision in one cloud.
#[derive(Debug, Clone, Default)]
pub struct CloudState {
    /// Images tagged with this machine and revision (normally one).
    pub images: Vec<Image>,
    /// Snapshots tagged with this machine and revision.
    pub snapshots: Vec<Snapshot>,
    /// Where the cloud answers and where the credentials came from (never the credentials).
    pub endpoint: String,
    pub credentials: String,
}

/// What a revision should be published as.
#[derive(Debug, Clone)]
struct Wanted {
    digest: String,
    machine: Machine,
}

pub struct CloudImage {
    address: String,
    cloud: String,
    machine: String,
    revision: u32,
    /// None: published by reconcile but not wanted any more (`why` says why).
    desired: Option<Wanted>,
    why: String,
    layout: Option<MachineDir>,
    /// Set when the declaration asks for something reconcile will not do
    /// (publishing a root filesystem): observing it fails with this reason.
    refused: Option<String>,
}

fn address(cloud: &str, machine: &str, revision: u32) -> String {
    format!("{KIND}.{cloud}.machine.{machine}@{revision}")
}

/// The revisions a machine keeps locally and their content digests: the
/// current one (as declared: it may not be built yet) and the `keep` most
/// recent older ones reconcile stored.
fn kept_revisions(cx: &Context, m: &Machine, layout: &MachineDir) -> Result<Vec<(u32, String)>> {
    let backend = layout.backend().map(|b| b.name()).unwrap_or("dir");
    let st = layout.observe(backend)?;
    let mut older: Vec<(u32, String)> = st
        .entries
        .values()
        .filter_map(|e| e.receipt.as_ref())
        .filter(|r| r.kind == EntryKind::Revision && r.revision != m.revision)
        .map(|r| (r.revision, r.source_sha256.clone()))
        .collect();
    older.sort_by_key(|r| std::cmp::Reverse(r.0));
    older.truncate(m.keep as usize);
    let current = cx.fetcher.expected_digest(&m.source)?;
    let mut out = vec![(m.revision, current)];
    out.extend(older);
    Ok(out)
}

pub fn resources(cx: &Context) -> Result<Vec<Box<dyn Resource>>> {
    let model = &cx.desired.model;
    let mut out: Vec<Box<dyn Resource>> = Vec::new();
    let mut wanted: BTreeSet<(String, String, u32)> = BTreeSet::new();
    for (mname, m) in &model.machine {
        if m.clouds.is_empty() {
            continue;
        }
        if m.kind != MachineKind::Disk {
            // a cloud boots disk images: a tree has nothing to boot from
            for c in &m.clouds {
                out.push(Box::new(CloudImage {
                    address: address(c, mname, m.revision),
                    cloud: c.clone(),
                    machine: mname.clone(),
                    revision: m.revision,
                    desired: None,
                    why: String::new(),
                    layout: None,
                    refused: Some(format!(
                        "machine {mname} is a root filesystem; only disk machines are published to a cloud \
                         (give it kind = \"disk\" and a raw or qcow2 source, or drop `clouds`)"
                    )),
                }));
            }
            continue;
        }
        let Some(volume) = model.volume.get(&m.volume) else {
            continue;
        };
        let layout = MachineDir::new(volume, mname);
        for (rev, digest) in kept_revisions(cx, m, &layout)? {
            for c in &m.clouds {
                wanted.insert((c.clone(), mname.clone(), rev));
                out.push(Box::new(CloudImage {
                    address: address(c, mname, rev),
                    cloud: c.clone(),
                    machine: mname.clone(),
                    revision: rev,
                    desired: Some(Wanted {
                        digest: digest.clone(),
                        machine: m.clone(),
                    }),
                    why: String::new(),
                    layout: Some(layout.clone()),
                    refused: None,
                }));
            }
        }
    }
    // what reconcile published that is not wanted any more, in every declared cloud
    for cname in model.cloud.keys() {
        let inv = cx.clouds.inventory(cx.desired, cname)?;
        let mut seen: BTreeSet<(String, u32)> = BTreeSet::new();
        for tags in inv
            .images
            .iter()
            .map(|i| &i.tags)
            .chain(inv.snapshots.iter().map(|s| &s.tags))
        {
            let (Some(machine), Some(rev)) = (
                tags.get(TAG_MACHINE),
                tags.get(TAG_REVISION).and_then(|r| r.parse::<u32>().ok()),
            ) else {
                continue;
            };
            if wanted.contains(&(cname.clone(), machine.clone(), rev))
                || !seen.insert((machine.clone(), rev))
            {
                continue;
            }
            let why = match model.machine.get(machine) {
                Some(m) if m.clouds.contains(cname) => {
                    format!("revision {rev} beyond keep = {}", m.keep)
                }
                Some(_) => {
                    format!("machine {machine} is not published to {cname} any more (owned)")
                }
                None => "not declared any more (owned)".to_string(),
            };
            out.push(Box::new(CloudImage {
                address: address(cname, machine, rev),
                cloud: cname.clone(),
                machine: machine.clone(),
                revision: rev,
                desired: None,
                why,
                layout: None,
                refused: None,
            }));
        }
    }
    Ok(out)
}

impl CloudImage {
    fn state<'o>(&self, o: &'o Observed) -> &'o CloudState {
        match &o.detail {
            Detail::Cloud(c) => c,
            _ => unreachable!("a cloud image observes a cloud"),
        }
    }

    fn mine(&self, tags: &BTreeMap<String, String>) -> bool {
        tags.get(TAG_MACHINE) == Some(&self.machine)
            && tags.get(TAG_REVISION).map(String::as_str)
                == Some(self.revision.to_string().as_str())
    }

    /// Publish the revision: a journaled `cloud-publish` transaction.
    fn publish(&self, want: &Wanted, cx: &mut ApplyContext) -> Result<()> {
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
    fn retire(&self, images: &[String], snapshots: &[String], cx: &mut ApplyContext) -> Result<()> {
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
fn image_name(machine: &str, revision: u32, digest: &str, txn: &str) -> String {
    format!(
        "{}{}",
        image_name_prefix(machine, revision, digest),
        &sha256_bytes(txn.as_bytes())[..8]
    )
}

fn image_name_prefix(machine: &str, revision: u32, digest: &str) -> String {
    format!(
        "reconcile-{machine}-r{revision}-{}-",
        &digest[..digest.len().min(16)]
    )
}

fn ec2_arch(arch: Option<&str>) -> &'static str {
    match arch {
        Some("aarch64" | "arm64") => "arm64",
        _ => "x86_64",
    }
}

fn wait_completed(api: &Api, snapshot: &str) -> Result<()> {
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
enum Raw {
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

impl Resource for CloudImage {
    fn address(&self) -> &str {
        &self.address
    }

    fn location(&self) -> PathBuf {
        PathBuf::from(format!("{}:{}@{}", self.cloud, self.machine, self.revision))
    }

    fn observe(&self, cx: &Context) -> Result<Observed> {
        if let Some(reason) = &self.refused {
            return Err(Error::Resource {
                address: self.address.clone(),
                reason: reason.clone(),
            });
        }
        let inv = cx.clouds.inventory(cx.desired, &self.cloud)?;
        let api = cx.clouds.api(cx.desired, &self.cloud)?;
        let st = CloudState {
            endpoint: api.endpoint("ec2"),
            credentials: api.credential_source().to_string(),
            images: inv
                .images
                .iter()
                .filter(|i| self.mine(&i.tags))
                .cloned()
                .collect(),
            snapshots: inv
                .snapshots
                .iter()
                .filter(|s| self.mine(&s.tags))
                .cloned()
                .collect(),
        };
        let mut fp = String::new();
        for i in &st.images {
            fp.push_str(&format!("{} {} {:?}\n", i.id, i.state, i.tags));
        }
        for s in &st.snapshots {
            fp.push_str(&format!("{} {} {:?}\n", s.id, s.state, s.tags));
        }
        let summary = match st.images.first() {
            None => "not published".to_string(),
            Some(i) => format!(
                "published as {} (digest {})",
                i.id,
                crate::fsops::digest::short(
                    i.tags.get(TAG_DIGEST).map(String::as_str).unwrap_or("?")
                )
            ),
        };
        Ok(Observed {
            fingerprint: sha256_bytes(fp.as_bytes()),
            summary,
            detail: Detail::Cloud(st),
        })
    }

    fn diff(&self, observed: &Observed, _cx: &Context) -> Result<Vec<Change>> {
        let st = self.state(observed);
        let change = |action, reason: String| Ok(vec![Change::new(action, reason)]);
        let Some(want) = &self.desired else {
            return if st.images.is_empty() && st.snapshots.is_empty() {
                Ok(vec![])
            } else {
                change(Action::Delete, self.why.clone())
            };
        };
        let matching: Vec<&Image> = st
            .images
            .iter()
            .filter(|i| i.tags.get(TAG_DIGEST) == Some(&want.digest) && i.state != "failed")
            .collect();
        match (st.images.first(), matching.first()) {
            (None, _) => change(Action::Create, "not published".into()),
            (Some(i), None) => {
                let has = i.tags.get(TAG_DIGEST).map(String::as_str).unwrap_or("none");
                Ok(vec![Change::new(
                    Action::Replace,
                    format!(
                        "digest differs: {} has {}…, the revision is {}…",
                        i.id,
                        crate::fsops::digest::short(has),
                        crate::fsops::digest::short(&want.digest)
                    ),
                )
                .between(has, want.digest.as_str())])
            }
            (Some(_), Some(_)) if st.images.len() > 1 => change(
                Action::Update,
                format!(
                    "{} images for one revision: the extra ones go",
                    st.images.len()
                ),
            ),
            _ => Ok(vec![]),
        }
    }

    fn apply(&self, observed: &Observed, cx: &mut ApplyContext) -> Result<()> {
        let st = self.state(observed).clone();
        let Some(want) = &self.desired else {
            let images: Vec<String> = st.images.iter().map(|i| i.id.clone()).collect();
            let snapshots = snapshots_of(&st, &st.images);
            return self.retire(&images, &snapshots, cx);
        };
        let keep: Option<&Image> = st
            .images
            .iter()
            .find(|i| i.tags.get(TAG_DIGEST) == Some(&want.digest) && i.state != "failed");
        if keep.is_none() {
            self.publish(want, cx)?;
        }
        // what no longer describes the revision: other images, their snapshots
        let stale: Vec<&Image> = st
            .images
            .iter()
            .filter(|i| Some(i.id.as_str()) != keep.map(|k| k.id.as_str()))
            .collect();
        let stale_images: Vec<String> = stale.iter().map(|i| i.id.clone()).collect();
        let stale_snapshots = snapshots_of(&st, &stale.into_iter().cloned().collect::<Vec<_>>());
        self.retire(&stale_images, &stale_snapshots, cx)
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        vec![]
    }

    fn status(&self, observed: &Observed) -> ResourceStatus {
        let st = self.state(observed);
        ResourceStatus {
            address: self.address.clone(),
            path: self.location(),
            declared: self.desired.is_some(),
            state: observed.summary.clone(),
            kind: KindStatus::Cloud {
                cloud: self.cloud.clone(),
                endpoint: st.endpoint.clone(),
                credentials: st.credentials.clone(),
                machine: self.machine.clone(),
                revision: self.revision,
                images: st.images.clone(),
                snapshots: st.snapshots.clone(),
            },
        }
    }

    fn depends_on(&self) -> Vec<String> {
        vec![format!("{}.{}", super::machine::KIND, self.machine)]
    }
}

/// The snapshots to delete with `images`: the ones they name (by tag or
/// mapping) and the snapshots of this revision no image names (left by an
/// interrupted publish) — only ever snapshots that carry reconcile's tags
/// (an endpoint may answer with a mapping of its own), and none another
/// image of the revision still uses.
fn snapshots_of(st: &CloudState, images: &[Image]) -> Vec<String> {
    let tagged: BTreeSet<&str> = st.snapshots.iter().map(|s| s.id.as_str()).collect();
    let named = |i: &Image| -> Vec<String> {
        i.tags
            .get(TAG_SNAPSHOT)
            .into_iter()
            .chain(i.snapshots.iter())
            .filter(|s| tagged.contains(s.as_str()))
            .cloned()
            .collect()
    };
    let gone: BTreeSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
    let used_by_others: BTreeSet<String> = st
        .images
        .iter()
        .filter(|i| !gone.contains(i.id.as_str()))
        .flat_map(named)
        .collect();
    let named_by_any: BTreeSet<String> = st.images.iter().flat_map(named).collect();
    let mut out: BTreeSet<String> = images.iter().flat_map(named).collect();
    out.extend(
        tagged
            .iter()
            .filter(|s| !named_by_any.contains(**s))
            .map(|s| s.to_string()),
    );
    out.retain(|s| !used_by_others.contains(s));
    out.into_iter().collect()
}

/// What a `cloud-publish` transaction is about to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishIntent {
    cloud: String,
    machine: String,
    revision: u32,
    digest: String,
    /// Derived from cloud, machine, revision and digest: a retry reuses it.
    token: String,
    /// The image's name (unique per account and region).
    name: String,
}

impl PublishIntent {
    fn tags(&self, snapshot: Option<&str>) -> Vec<(String, String)> {
        let mut t = vec![
            (TAG_MACHINE.to_string(), self.machine.clone()),
            (TAG_REVISION.to_string(), self.revision.to_string()),
            (TAG_DIGEST.to_string(), self.digest.clone()),
            (TAG_TOKEN.to_string(), self.token.clone()),
        ];
        if let Some(s) = snapshot {
            t.push((TAG_SNAPSHOT.to_string(), s.to_string()));
        }
        t
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireIntent {
    cloud: String,
    images: Vec<String>,
    snapshots: Vec<String>,
}

/// What a publish step records: the id it produced (`{"snapshot": "snap-…"}`).
fn step_data(key: &str, id: &str) -> serde_json::Value {
    serde_json::Value::Object(
        [(key.to_string(), serde_json::Value::from(id))]
            .into_iter()
            .collect(),
    )
}

/// Finish or undo a publish: an image registered under the transaction's
/// name gets its tags (forward); otherwise every snapshot carrying the
/// transaction's token is deleted (back).
fn recover_publish(api: &Api, intent: &PublishIntent) -> Result<&'static str> {
    let ec2 = |doing: &str, e| cloud_error(api, "ec2", doing, e);
    let images = api
        .images_named(&intent.name)
        .map_err(|e| ec2("DescribeImages", e))?;
    let snapshots = api
        .describe_snapshots(TAG_TOKEN, Some(&intent.token))
        .map_err(|e| ec2("DescribeSnapshots", e))?;
    if let Some(image) = images.first() {
        let ours = |id: &String| snapshots.iter().any(|s| &s.id == id);
        let snapshot = image
            .tags
            .get(TAG_SNAPSHOT)
            .filter(|s| ours(s))
            .or_else(|| image.snapshots.iter().find(|s| ours(s)))
            .cloned()
            .or_else(|| snapshots.first().map(|s| s.id.clone()));
        let mut resources = vec![image.id.as_str()];
        if let Some(s) = &snapshot {
            resources.push(s);
        }
        api.create_tags(&resources, &intent.tags(snapshot.as_deref()))
            .map_err(|e| ec2("CreateTags", e))?;
        // snapshots of retried attempts that no image uses
        for s in snapshots
            .iter()
            .filter(|s| Some(&s.id) != snapshot.as_ref())
        {
            api.delete_snapshot(&s.id)
                .map_err(|e| ec2("DeleteSnapshot", e))?;
        }
        return Ok("rolled forward");
    }
    for s in &snapshots {
        api.delete_snapshot(&s.id)
            .map_err(|e| ec2("DeleteSnapshot", e))?;
    }
    Ok("rolled back")
}

/// Recovery of the cloud kinds, connecting to the clouds the desired state declares.
pub struct Recovery<'a> {
    pub publish: PublishRecovery<'a>,
    pub retire: RetireRecovery<'a>,
}

impl<'a> Recovery<'a> {
    pub fn new(desired: &'a Desired) -> Self {
        let clouds = Arc::new(Clouds::default());
        Recovery {
            publish: PublishRecovery {
                desired,
                clouds: clouds.clone(),
            },
            retire: RetireRecovery { desired, clouds },
        }
    }
}

pub struct PublishRecovery<'a> {
    desired: &'a Desired,
    clouds: Arc<Clouds>,
}

pub struct RetireRecovery<'a> {
    desired: &'a Desired,
    clouds: Arc<Clouds>,
}

fn intent<T: for<'de> Deserialize<'de>>(
    open: &Open,
    desired: &Desired,
    cloud: impl Fn(&T) -> &str,
) -> std::result::Result<T, String> {
    if open.version != RECORD_VERSION {
        return Err(format!(
            "has a {} record of version {}",
            open.kind, open.version
        ));
    }
    let i: T = serde_json::from_value(open.intent.clone())
        .map_err(|e| format!("has a {} record reconcile never writes ({e})", open.kind))?;
    let c = cloud(&i);
    if !desired.model.cloud.contains_key(c) {
        return Err(format!(
            "names cloud `{c}`, which the desired-state file does not declare (declare it again to let reconcile clean up there)"
        ));
    }
    Ok(i)
}

impl Recover for PublishRecovery<'_> {
    fn kind(&self) -> &'static str {
        PUBLISH_KIND
    }

    fn check(&self, open: &Open) -> std::result::Result<(), String> {
        let i: PublishIntent = intent(open, self.desired, |i: &PublishIntent| &i.cloud)?;
        let prefix = image_name_prefix(&i.machine, i.revision, &i.digest);
        if !i.name.starts_with(&prefix)
            || i.name.len() != prefix.len() + 8
            || !open.address.starts_with(&format!("{KIND}.{}.", i.cloud))
        {
            return Err("names an image or address its transaction would not".into());
        }
        Ok(())
    }

    fn recover(&self, open: &Open) -> Result<&'static str> {
        let i: PublishIntent =
            intent(open, self.desired, |i: &PublishIntent| &i.cloud).map_err(Error::Usage)?;
        let api = self.clouds.api(self.desired, &i.cloud)?;
        recover_publish(&api, &i)
    }
}

impl Recover for RetireRecovery<'_> {
    fn kind(&self) -> &'static str {
        RETIRE_KIND
    }

    fn check(&self, open: &Open) -> std::result::Result<(), String> {
        intent(open, self.desired, |i: &RetireIntent| &i.cloud).map(|_: RetireIntent| ())
    }

    fn recover(&self, open: &Open) -> Result<&'static str> {
        let i: RetireIntent =
            intent(open, self.desired, |i: &RetireIntent| &i.cloud).map_err(Error::Usage)?;
        let api = self.clouds.api(self.desired, &i.cloud)?;
        // only what carries reconcile's tags is touched, even when the journal says otherwise
        let ours = api
            .describe_images(TAG_MACHINE)
            .map_err(|e| cloud_error(&api, "ec2", "DescribeImages", e))?;
        for id in i
            .images
            .iter()
            .filter(|id| ours.iter().any(|o| &o.id == *id))
        {
            api.deregister_image(id)
                .map_err(|e| cloud_error(&api, "ec2", "DeregisterImage", e))?;
        }
        let snaps = api
            .describe_snapshots(TAG_MACHINE, None)
            .map_err(|e| cloud_error(&api, "ec2", "DescribeSnapshots", e))?;
        for id in i
            .snapshots
            .iter()
            .filter(|id| snaps.iter().any(|o| &o.id == *id))
        {
            api.delete_snapshot(id)
                .map_err(|e| cloud_error(&api, "ec2", "DeleteSnapshot", e))?;
        }
        Ok("rolled forward")
    }
}
