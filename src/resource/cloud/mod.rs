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
//!
//! Here: the resource (observe, diff, status); the publish and retire steps
//! in [`publish`]; the journal's two kinds and their recovery in [`recover`].
//! What a cloud holds is read once per run through `cloud::inventory`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use super::{
    Action, ApplyContext, Candidate, Change, Context, Detail, KindStatus, Observed, Resource,
    ResourceStatus,
};
use crate::cloud::ec2::{Image, Snapshot};
use crate::cloud::{TAG_DIGEST, TAG_MACHINE, TAG_REVISION, TAG_SNAPSHOT, TAG_STATE};
use crate::config::model::{Machine, MachineKind};
use crate::error::{Error, Result};
use crate::fsops::digest::sha256_bytes;
use crate::store::{EntryKind, MachineDir};

mod publish;
mod recover;

pub use crate::cloud::inventory::{Clouds, Inventory};
pub use recover::Recovery;

pub const KIND: &str = "cloud";
const PUBLISH_KIND: &str = "cloud-publish";
const RETIRE_KIND: &str = "cloud-retire";
const RECORD_VERSION: u32 = 1;
/// How long a completing snapshot is waited for.
const COMPLETION_LIMIT: Duration = Duration::from_secs(60 * 60);

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
        let gated = model.cloud.get(cname).is_some_and(|c| c.promote.is_some());
        let held = if gated {
            rollbacks(&inv.images, model)
        } else {
            BTreeSet::new()
        };
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
                || held.contains(&(machine.clone(), rev))
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

/// Behind a gate, what retention keeps besides the declared revisions: the
/// image that is launched (`current`) until another one is, and while the
/// declared revision is still a candidate, the `keep` newest revisions
/// before the current one (its rollback): a candidate counts like a
/// revision, but never pushes those out.
fn rollbacks(images: &[Image], model: &crate::config::DesiredFile) -> BTreeSet<(String, u32)> {
    let mut out = BTreeSet::new();
    let rev = |i: &Image| i.tags.get(TAG_REVISION).and_then(|r| r.parse::<u32>().ok());
    let current = |i: &Image| i.tags.get(TAG_STATE).is_some_and(|s| s == "current");
    for (name, m) in &model.machine {
        let ours: Vec<&Image> = images
            .iter()
            .filter(|i| i.tags.get(TAG_MACHINE) == Some(name))
            .collect();
        let Some(current) = ours
            .iter()
            .filter(|i| current(i))
            .filter_map(|i| rev(i))
            .max()
        else {
            continue;
        };
        out.insert((name.clone(), current));
        if current == m.revision {
            continue;
        }
        let mut older: Vec<u32> = ours
            .iter()
            .filter_map(|i| rev(i))
            .filter(|r| *r < current)
            .collect();
        older.sort_unstable_by(|a, b| b.cmp(a));
        older.dedup();
        for r in older.into_iter().take(m.keep as usize) {
            out.insert((name.clone(), r));
        }
    }
    out
}

impl CloudImage {
    fn state<'o>(&self, o: &'o Observed) -> &'o CloudState {
        match &o.detail {
            Detail::Cloud(c) => c,
            _ => unreachable!("a cloud image observes a cloud"),
        }
    }

    /// In a cloud with a gate, the image of the declared revision is a
    /// candidate until it is tagged `current`: the candidate, when it is one.
    fn candidate(&self, st: &CloudState, cx: &Context) -> Option<Candidate> {
        let want = self.desired.as_ref()?;
        let gate = cx.desired.model.cloud.get(&self.cloud)?.promote.as_ref()?;
        if want.machine.revision != self.revision {
            return None;
        }
        let current = st.images.iter().any(|i| {
            i.tags.get(TAG_DIGEST) == Some(&want.digest)
                && i.state != "failed"
                && i.tags.get(TAG_STATE).map(String::as_str) == Some("current")
        });
        if current {
            return None;
        }
        Some(Candidate::new(
            cx,
            &self.address,
            &self.machine,
            format!("image of revision {}", self.revision),
            self.revision,
            &want.digest,
            &gate.after,
        ))
    }

    /// Behind a gate, once the declared revision's image is current: other
    /// images of the machine still tagged `current` (a switch interrupted
    /// between its two tags), which become `previous`.
    fn also_current(&self, st: &CloudState, cx: &Context) -> Result<Vec<Image>> {
        let Some(want) = &self.desired else {
            return Ok(vec![]);
        };
        let gated = cx
            .desired
            .model
            .cloud
            .get(&self.cloud)
            .is_some_and(|c| c.promote.is_some());
        let is_current = |i: &Image| i.tags.get(TAG_STATE).map(String::as_str) == Some("current");
        let mine: Vec<&Image> = st
            .images
            .iter()
            .filter(|i| i.tags.get(TAG_DIGEST) == Some(&want.digest) && is_current(i))
            .collect();
        if !gated || want.machine.revision != self.revision || mine.is_empty() {
            return Ok(vec![]);
        }
        let inv = cx.clouds.inventory(cx.desired, &self.cloud)?;
        Ok(inv
            .images
            .iter()
            .filter(|i| {
                i.tags.get(TAG_MACHINE) == Some(&self.machine)
                    && is_current(i)
                    && !mine.iter().any(|m| m.id == i.id)
            })
            .cloned()
            .collect())
    }

    /// The available image of this revision with the wanted digest, as the cloud lists it now.
    fn published(&self, cx: &Context) -> Result<Option<Image>> {
        let Some(want) = &self.desired else {
            return Ok(None);
        };
        cx.clouds.forget(&self.cloud);
        let inv = cx.clouds.inventory(cx.desired, &self.cloud)?;
        Ok(inv
            .images
            .iter()
            .find(|i| {
                self.mine(&i.tags)
                    && i.tags.get(TAG_DIGEST) == Some(&want.digest)
                    && i.state != "failed"
            })
            .cloned())
    }

    /// Tag an image and its snapshot `reconcile:state = state`.
    fn tag_state(&self, cx: &Context, image: &Image, state: &str) -> Result<()> {
        let api = cx.clouds.api(cx.desired, &self.cloud)?;
        let mut ids = vec![image.id.as_str()];
        if let Some(s) = image.tags.get(TAG_SNAPSHOT) {
            ids.push(s.as_str());
        }
        api.create_tags(&ids, &[(TAG_STATE.to_string(), state.to_string())])
            .map_err(|e| crate::cloud::error(&api, "ec2", "CreateTags", e))
    }

    fn mine(&self, tags: &BTreeMap<String, String>) -> bool {
        tags.get(TAG_MACHINE) == Some(&self.machine)
            && tags.get(TAG_REVISION).map(String::as_str)
                == Some(self.revision.to_string().as_str())
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

    fn diff(&self, observed: &Observed, cx: &Context) -> Result<Vec<Change>> {
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
        .and_then(|mut out: Vec<Change>| {
            if let Some(c) = self.candidate(st, cx) {
                out.push(Change::new(Action::Update, c.reason()).held(c));
            }
            for old in self.also_current(st, cx)? {
                out.push(Change::new(
                    Action::Update,
                    format!(
                        "{} (revision {}) is current too, left by an interrupted switch: it becomes previous",
                        old.id,
                        old.tags.get(TAG_REVISION).map(String::as_str).unwrap_or("?")
                    ),
                ));
            }
            Ok(out)
        })
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
        self.retire(&stale_images, &stale_snapshots, cx)?;
        for old in self.also_current(&st, cx.cx)? {
            self.tag_state(cx.cx, &old, "previous")?;
        }
        if let Some(c) = self.candidate(&st, cx.cx) {
            // registered (now or before): tagged a candidate, and held
            if let Some(image) = self.published(cx.cx)? {
                if image.tags.get(TAG_STATE).map(String::as_str) != Some("candidate") {
                    self.tag_state(cx.cx, &image, "candidate")?;
                }
            }
            cx.held.push(c);
        }
        Ok(())
    }

    /// The candidate becomes what is launched: tagged `current` first, then
    /// the image that was current tagged `previous`. A kill in between leaves
    /// two current images, and the executor launches the newest of them: it
    /// is never left with none.
    fn promote(&self, c: &Candidate, cx: &mut ApplyContext) -> Result<()> {
        let image = self.published(cx.cx)?.ok_or_else(|| Error::Resource {
            address: self.address.clone(),
            reason: format!("the {} is not published any more", c.what),
        })?;
        crate::fault::point(&self.address, "switch");
        self.tag_state(cx.cx, &image, "current")?;
        crate::fault::point(&self.address, "switched");
        let inv = cx.cx.clouds.inventory(cx.cx.desired, &self.cloud)?;
        for old in inv.images.iter().filter(|i| {
            i.id != image.id
                && i.tags.get(TAG_MACHINE) == Some(&self.machine)
                && i.tags.get(TAG_STATE).map(String::as_str) == Some("current")
        }) {
            self.tag_state(cx.cx, old, "previous")?;
        }
        cx.cx.clouds.forget(&self.cloud);
        Ok(())
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
