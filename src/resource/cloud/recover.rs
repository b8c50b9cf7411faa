//! The journal's cloud kinds: what a publish or a retire was about to do,
//! and how an interrupted one is finished or undone.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::publish::image_name_prefix;
use super::{Clouds, KIND, PUBLISH_KIND, RECORD_VERSION, RETIRE_KIND};
use crate::cloud::{
    error as cloud_error, Api, TAG_DIGEST, TAG_MACHINE, TAG_REVISION, TAG_SNAPSHOT, TAG_TOKEN,
};
use crate::config::Desired;
use crate::error::{Error, Result};
use crate::state::journal::{Open, Recover};

/// What a `cloud-publish` transaction is about to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishIntent {
    pub(super) cloud: String,
    pub(super) machine: String,
    pub(super) revision: u32,
    pub(super) digest: String,
    /// Derived from cloud, machine, revision and digest: a retry reuses it.
    pub(super) token: String,
    /// The image's name (unique per account and region).
    pub(super) name: String,
}

impl PublishIntent {
    pub(super) fn tags(&self, snapshot: Option<&str>) -> Vec<(String, String)> {
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
pub(super) struct RetireIntent {
    pub(super) cloud: String,
    pub(super) images: Vec<String>,
    pub(super) snapshots: Vec<String>,
}

/// What a publish step records: the id it produced (`{"snapshot": "snap-…"}`).
pub(super) fn step_data(key: &str, id: &str) -> serde_json::Value {
    serde_json::Value::Object(
        [(key.to_string(), serde_json::Value::from(id))]
            .into_iter()
            .collect(),
    )
}

/// Finish or undo a publish: an image registered under the transaction's
/// name gets its tags (forward); otherwise every snapshot carrying the
/// transaction's token is deleted (back).
pub(super) fn recover_publish(api: &Api, intent: &PublishIntent) -> Result<&'static str> {
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

pub(super) fn intent<T: for<'de> Deserialize<'de>>(
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
