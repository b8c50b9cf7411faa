//! What one run reads of each cloud: a connection per cloud and, once, the
//! images and snapshots reconcile made there (shared by every resource and
//! the cloud executor of the run).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::ec2::{Image, Snapshot};
use super::{error as cloud_error, Api, Sessions, TAG_MACHINE};
use crate::config::Desired;
use crate::error::{Error, Result};

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

impl std::fmt::Debug for Clouds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clouds").finish_non_exhaustive()
    }
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
