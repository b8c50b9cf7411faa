//! The EC2 Query calls reconcile makes: images, snapshots, tags, instances.

use std::collections::BTreeMap;

use super::client::{Api, Body, CallError};
use super::query::form;
use super::xml;

const VERSION: &str = "2016-11-15";

/// A machine image as `DescribeImages` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub state: String,
    pub tags: BTreeMap<String, String>,
    /// Snapshots of its block device mapping.
    pub snapshots: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub id: String,
    pub state: String,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    pub id: String,
    pub state: String,
    pub image: String,
    pub tags: BTreeMap<String, String>,
}

/// What `RegisterImage` needs.
pub struct Registration<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub snapshot: &'a str,
    pub architecture: &'a str,
    /// `legacy-bios` or `uefi`.
    pub boot_mode: &'a str,
    pub tags: &'a [(String, String)],
}

/// What `RunInstances` needs.
pub struct Launch<'a> {
    pub image: &'a str,
    pub instance_type: &'a str,
    pub user_data: &'a [u8],
    pub client_token: &'a str,
    pub tags: &'a [(String, String)],
}

impl Api {
    /// One EC2 Query call; the parsed answer.
    fn ec2(&self, action: &str, params: &[(String, String)]) -> Result<String, CallError> {
        let mut all: Vec<(&str, &str)> = vec![("Action", action), ("Version", VERSION)];
        all.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let r = self.send("ec2", "POST", "/", &[], Body::Form(form(&all)))?;
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }

    /// Images owned by this account that carry the tag key `tag`.
    pub fn describe_images(&self, tag: &str) -> Result<Vec<Image>, CallError> {
        let text = self.ec2(
            "DescribeImages",
            &[
                p("Owner.1", "self"),
                p("Filter.1.Name", "tag-key"),
                p("Filter.1.Value.1", tag),
            ],
        )?;
        images_of(&text)
    }

    /// Images owned by this account named `name` (AMI names are unique per account and region).
    pub fn images_named(&self, name: &str) -> Result<Vec<Image>, CallError> {
        let text = self.ec2(
            "DescribeImages",
            &[
                p("Owner.1", "self"),
                p("Filter.1.Name", "name"),
                p("Filter.1.Value.1", name),
            ],
        )?;
        images_of(&text)
    }

    /// Snapshots owned by this account with `tag` = `value` (any value when None).
    pub fn describe_snapshots(
        &self,
        tag: &str,
        value: Option<&str>,
    ) -> Result<Vec<Snapshot>, CallError> {
        let params = match value {
            None => vec![
                p("Owner.1", "self"),
                p("Filter.1.Name", "tag-key"),
                p("Filter.1.Value.1", tag),
            ],
            Some(v) => vec![
                p("Owner.1", "self"),
                p("Filter.1.Name", &format!("tag:{tag}")),
                p("Filter.1.Value.1", v),
            ],
        };
        let text = self.ec2("DescribeSnapshots", &params)?;
        let doc = doc(&text)?;
        let Some(set) = xml::child(doc.root(), "snapshotSet") else {
            return Ok(vec![]);
        };
        Ok(xml::children(set, "item")
            .map(|i| Snapshot {
                id: xml::own(i, "snapshotId").unwrap_or_default(),
                state: xml::own(i, "status").unwrap_or_default(),
                tags: xml::tags(i),
            })
            .collect())
    }

    /// The state of one snapshot (`pending`, `completed`, `error`), None when it is gone.
    pub fn snapshot_state(&self, id: &str) -> Result<Option<String>, CallError> {
        let text = match self.ec2("DescribeSnapshots", &[p("SnapshotId.1", id)]) {
            Ok(t) => t,
            Err(e) if e.code.starts_with("InvalidSnapshot.NotFound") => return Ok(None),
            Err(e) => return Err(e),
        };
        let doc = doc(&text)?;
        Ok(xml::child(doc.root(), "snapshotSet")
            .and_then(|s| xml::children(s, "item").next())
            .and_then(|i| xml::own(i, "status")))
    }

    pub fn register_image(&self, r: &Registration) -> Result<String, CallError> {
        let mut params = vec![
            p("Name", r.name),
            p("Description", r.description),
            p("Architecture", r.architecture),
            p("VirtualizationType", "hvm"),
            p("RootDeviceName", "/dev/xvda"),
            p("EnaSupport", "true"),
            p("BootMode", r.boot_mode),
            p("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
            p("BlockDeviceMapping.1.Ebs.SnapshotId", r.snapshot),
            p("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
            p("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ];
        params.extend(tag_spec(1, "image", r.tags));
        let text = self.ec2("RegisterImage", &params)?;
        let doc = doc(&text)?;
        xml::text(doc.root(), "imageId").ok_or_else(|| missing("RegisterImage", "imageId"))
    }

    pub fn create_tags(
        &self,
        resources: &[&str],
        tags: &[(String, String)],
    ) -> Result<(), CallError> {
        let mut params = Vec::new();
        for (i, r) in resources.iter().enumerate() {
            params.push(p(&format!("ResourceId.{}", i + 1), r));
        }
        for (i, (k, v)) in tags.iter().enumerate() {
            params.push(p(&format!("Tag.{}.Key", i + 1), k));
            params.push(p(&format!("Tag.{}.Value", i + 1), v));
        }
        self.ec2("CreateTags", &params).map(|_| ())
    }

    /// Deregister an image; one that is already gone is not an error.
    pub fn deregister_image(&self, id: &str) -> Result<(), CallError> {
        match self.ec2("DeregisterImage", &[p("ImageId", id)]) {
            Err(e) if e.code.starts_with("InvalidAMIID") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Delete a snapshot; one that is already gone is not an error.
    pub fn delete_snapshot(&self, id: &str) -> Result<(), CallError> {
        match self.ec2("DeleteSnapshot", &[p("SnapshotId", id)]) {
            Err(e) if e.code.starts_with("InvalidSnapshot.NotFound") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    pub fn run_instance(&self, l: &Launch) -> Result<String, CallError> {
        use base64::Engine;
        let mut params = vec![
            p("ImageId", l.image),
            p("InstanceType", l.instance_type),
            p("MinCount", "1"),
            p("MaxCount", "1"),
            p("ClientToken", l.client_token),
            p(
                "UserData",
                &base64::engine::general_purpose::STANDARD.encode(l.user_data),
            ),
            p("InstanceInitiatedShutdownBehavior", "terminate"),
        ];
        params.extend(tag_spec(1, "instance", l.tags));
        let text = self.ec2("RunInstances", &params)?;
        let doc = doc(&text)?;
        xml::text(doc.root(), "instanceId").ok_or_else(|| missing("RunInstances", "instanceId"))
    }

    /// Instances with the tag key `tag` that are not terminated.
    pub fn instances_tagged(&self, tag: &str) -> Result<Vec<Instance>, CallError> {
        let text = self.ec2(
            "DescribeInstances",
            &[
                p("Filter.1.Name", "tag-key"),
                p("Filter.1.Value.1", tag),
                p("Filter.2.Name", "instance-state-name"),
                p("Filter.2.Value.1", "pending"),
                p("Filter.2.Value.2", "running"),
                p("Filter.2.Value.3", "stopping"),
                p("Filter.2.Value.4", "stopped"),
            ],
        )?;
        let doc = doc(&text)?;
        let mut out = Vec::new();
        for inst in doc
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "instancesSet")
            .flat_map(|s| xml::children(s, "item"))
        {
            out.push(Instance {
                id: xml::own(inst, "instanceId").unwrap_or_default(),
                state: xml::child(inst, "instanceState")
                    .and_then(|s| xml::own(s, "name"))
                    .unwrap_or_default(),
                image: xml::own(inst, "imageId").unwrap_or_default(),
                tags: xml::tags(inst),
            });
        }
        Ok(out)
    }

    /// The state of one instance; None when it is unknown.
    pub fn instance_state(&self, id: &str) -> Result<Option<String>, CallError> {
        let text = match self.ec2("DescribeInstances", &[p("InstanceId.1", id)]) {
            Ok(t) => t,
            Err(e) if e.code.starts_with("InvalidInstanceID") => return Ok(None),
            Err(e) => return Err(e),
        };
        let doc = doc(&text)?;
        Ok(xml::child(doc.root(), "instanceState").and_then(|s| xml::own(s, "name")))
    }

    pub fn terminate_instance(&self, id: &str) -> Result<(), CallError> {
        match self.ec2("TerminateInstances", &[p("InstanceId.1", id)]) {
            Err(e) if e.code.starts_with("InvalidInstanceID.NotFound") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The instance's console output so far (decoded).
    pub fn console_output(&self, id: &str) -> Result<Vec<u8>, CallError> {
        use base64::Engine;
        let text = self.ec2(
            "GetConsoleOutput",
            &[p("InstanceId", id), p("Latest", "true")],
        )?;
        let doc = doc(&text)?;
        let out = xml::text(doc.root(), "output").unwrap_or_default();
        let cleaned: String = out.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(cleaned.as_bytes())
            .map_err(|e| CallError {
                code: "GetConsoleOutput".into(),
                message: format!("console output is not base64: {e}"),
                request_id: None,
                status: Some(200),
                attempts: 1,
            })
    }
}

fn p(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn tag_spec(n: usize, kind: &str, tags: &[(String, String)]) -> Vec<(String, String)> {
    if tags.is_empty() {
        return vec![];
    }
    let mut out = vec![p(&format!("TagSpecification.{n}.ResourceType"), kind)];
    for (i, (k, v)) in tags.iter().enumerate() {
        out.push(p(&format!("TagSpecification.{n}.Tag.{}.Key", i + 1), k));
        out.push(p(&format!("TagSpecification.{n}.Tag.{}.Value", i + 1), v));
    }
    out
}

fn doc(text: &str) -> Result<roxmltree::Document<'_>, CallError> {
    roxmltree::Document::parse(text).map_err(|e| CallError {
        code: "malformed answer".into(),
        message: format!("not XML: {e}"),
        request_id: None,
        status: Some(200),
        attempts: 1,
    })
}

fn missing(action: &str, what: &str) -> CallError {
    CallError {
        code: "malformed answer".into(),
        message: format!("{action} answered without {what}"),
        request_id: None,
        status: Some(200),
        attempts: 1,
    }
}

fn images_of(text: &str) -> Result<Vec<Image>, CallError> {
    let doc = doc(text)?;
    let Some(set) = xml::child(doc.root(), "imagesSet") else {
        return Ok(vec![]);
    };
    Ok(xml::children(set, "item")
        .map(|i| Image {
            id: xml::own(i, "imageId").unwrap_or_default(),
            name: xml::own(i, "name").unwrap_or_default(),
            state: xml::own(i, "imageState").unwrap_or_default(),
            tags: xml::tags(i),
            snapshots: i
                .descendants()
                .filter(|n| n.is_element() && n.tag_name().name() == "snapshotId")
                .filter_map(|n| n.text().map(str::to_string))
                .collect(),
        })
        .collect())
}
