//! EC2-compatible clouds: a small EC2 Query + EBS direct client on the
//! official SigV4 signer (the full SDK costs minutes of build time for a
//! dozen calls), credentials from the standard chain, and uploading a disk
//! as a snapshot block by block. Built with the default-on `cloud` feature.

pub mod client;
pub mod creds;
pub mod ebs;
pub mod ec2;
pub mod inventory;
pub mod query;
pub mod upload;
pub mod xml;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use client::{Api, CallError};

use crate::config::model::Cloud;
use crate::error::{Error, Result};

/// Tags on everything reconcile makes in a cloud.
pub const TAG_MACHINE: &str = "reconcile:machine";
pub const TAG_REVISION: &str = "reconcile:revision";
pub const TAG_DIGEST: &str = "reconcile:digest";
pub const TAG_SNAPSHOT: &str = "reconcile:snapshot";
/// In a cloud with a promotion gate: `candidate` (published, its gate not
/// passed), `current` (what is launched), `previous` (current before it).
pub const TAG_STATE: &str = "reconcile:state";
/// The publish transaction's client token, on the snapshot from its start.
pub const TAG_TOKEN: &str = "reconcile:token";
/// On instances the cloud executor launches: the run they belong to.
pub const TAG_RUN: &str = "reconcile:run";

/// Connect timeout and read timeout of every call.
pub const TIMEOUTS: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(60));

/// A failed call as reconcile reports it: which cloud, which endpoint, what for.
pub fn error(api: &Api, service: &str, doing: &str, e: CallError) -> Error {
    Error::Cloud {
        cloud: api.cloud.clone(),
        endpoint: api.endpoint(service),
        reason: format!("{doing}: {e}"),
    }
}

/// Connect to the cloud `name` of the desired-state file: its endpoint and
/// region, credentials from the standard chain.
pub fn connect(name: &str, cloud: &Cloud) -> Result<Api> {
    let endpoint = cloud.endpoint.as_deref();
    // the web identity token goes to STS, never to the EC2 endpoint
    let creds = creds::resolve(
        cloud.profile.as_deref(),
        &cloud.region,
        cloud.sts_endpoint.as_deref(),
        &creds::Env::process(),
    )
    .map_err(|reason| Error::Cloud {
        cloud: name.to_string(),
        endpoint: endpoint
            .map(str::to_string)
            .unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com", cloud.region)),
        reason: reason.to_string(),
    })?;
    Ok(Api::new(name, &cloud.region, endpoint, creds, TIMEOUTS))
}

/// The clouds of one run, each connected on first use and shared after.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<BTreeMap<String, Arc<Api>>>,
}

impl Sessions {
    pub fn get(&self, name: &str, cloud: &Cloud) -> Result<Arc<Api>> {
        if let Some(a) = self.open.lock().unwrap().get(name) {
            return Ok(a.clone());
        }
        let api = Arc::new(connect(name, cloud)?);
        self.open
            .lock()
            .unwrap()
            .insert(name.to_string(), api.clone());
        Ok(api)
    }
}
