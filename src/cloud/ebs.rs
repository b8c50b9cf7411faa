//! EBS direct APIs (REST-JSON, binary block bodies): write a snapshot block
//! by block, complete it with the aggregate checksum, read it back.

use base64::Engine;
use sha2::{Digest, Sha256};

use super::client::{Api, Body, CallError};
use super::query::encode;

/// EBS direct's block size: 512 KiB.
pub const BLOCK: usize = 512 << 10;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn json_of(r: &super::client::Response, call: &str) -> Result<serde_json::Value, CallError> {
    serde_json::from_slice(&r.body).map_err(|e| CallError {
        code: "malformed answer".into(),
        message: format!("{call} answered with no JSON: {e}"),
        request_id: r.header("x-amzn-requestid").map(str::to_string),
        status: Some(r.status),
        attempts: 1,
    })
}

/// One block as `ListSnapshotBlocks` lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub index: u64,
    pub token: String,
}

impl Api {
    /// A new snapshot of `size_gib` GiB, tagged; its id.
    pub fn start_snapshot(
        &self,
        size_gib: u64,
        description: &str,
        client_token: &str,
        tags: &[(String, String)],
    ) -> Result<String, CallError> {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Tag<'a> {
            key: &'a str,
            value: &'a str,
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct StartSnapshot<'a> {
            volume_size: u64,
            description: &'a str,
            client_token: &'a str,
            timeout: u32,
            tags: Vec<Tag<'a>>,
        }
        let body = serde_json::to_value(StartSnapshot {
            volume_size: size_gib,
            description,
            client_token,
            timeout: 60,
            tags: tags.iter().map(|(k, v)| Tag { key: k, value: v }).collect(),
        })
        .expect("a request serialises");
        let r = self.send(
            "ebs",
            "POST",
            "/snapshots",
            &[],
            Body::Json(body.to_string()),
        )?;
        let v = json_of(&r, "StartSnapshot")?;
        v.get("SnapshotId")
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .ok_or_else(|| CallError {
                code: "malformed answer".into(),
                message: "StartSnapshot answered without SnapshotId".into(),
                request_id: r.header("x-amzn-requestid").map(str::to_string),
                status: Some(r.status),
                attempts: 1,
            })
    }

    /// Write block `index` (exactly [`BLOCK`] bytes) with its SHA-256.
    pub fn put_block(
        &self,
        snapshot: &str,
        index: u64,
        data: &[u8],
        sha: &[u8; 32],
    ) -> Result<(), CallError> {
        let headers = [
            ("x-amz-data-length", data.len().to_string()),
            ("x-amz-checksum", b64(sha)),
            ("x-amz-checksum-algorithm", "SHA256".to_string()),
        ];
        let path = format!("/snapshots/{}/blocks/{index}", encode(snapshot));
        self.send(
            "ebs",
            "PUT",
            &path,
            &headers,
            Body::Bytes(data, crate::fsops::digest::to_hex(sha)),
        )
        .map(|_| ())
    }

    /// Seal the snapshot: how many blocks were written and the LINEAR
    /// aggregate checksum (SHA-256 over the blocks' SHA-256s in index order).
    pub fn complete_snapshot(
        &self,
        snapshot: &str,
        changed: u64,
        aggregate: &[u8; 32],
    ) -> Result<String, CallError> {
        let headers = [
            ("x-amz-changedblockscount", changed.to_string()),
            ("x-amz-checksum", b64(aggregate)),
            ("x-amz-checksum-algorithm", "SHA256".to_string()),
            ("x-amz-checksum-aggregation-method", "LINEAR".to_string()),
        ];
        let path = format!("/snapshots/completion/{}", encode(snapshot));
        let r = self.send("ebs", "POST", &path, &headers, Body::Empty)?;
        Ok(json_of(&r, "CompleteSnapshot")?
            .get("Status")
            .and_then(|s| s.as_str())
            .unwrap_or("")
            .to_string())
    }

    /// Every written block of a snapshot (all pages).
    pub fn list_blocks(&self, snapshot: &str) -> Result<Vec<Listed>, CallError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut path = format!("/snapshots/{}/blocks?maxResults=10000", encode(snapshot));
            if let Some(t) = &next {
                path.push_str(&format!("&pageToken={}", encode(t)));
            }
            let r = self.send("ebs", "GET", &path, &[], Body::Empty)?;
            let v = json_of(&r, "ListSnapshotBlocks")?;
            for b in v
                .get("Blocks")
                .and_then(|b| b.as_array())
                .into_iter()
                .flatten()
            {
                out.push(Listed {
                    index: b.get("BlockIndex").and_then(|i| i.as_u64()).unwrap_or(0),
                    token: b
                        .get("BlockToken")
                        .and_then(|t| t.as_str())
                        .unwrap_or("")
                        .to_string(),
                });
            }
            next = v
                .get("NextToken")
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        out.sort_by_key(|b| b.index);
        Ok(out)
    }

    /// One block's bytes, checked against the checksum the service returns with it.
    pub fn get_block(&self, snapshot: &str, b: &Listed) -> Result<Vec<u8>, CallError> {
        let path = format!(
            "/snapshots/{}/blocks/{}?blockToken={}",
            encode(snapshot),
            b.index,
            encode(&b.token)
        );
        let r = self.send("ebs", "GET", &path, &[], Body::Empty)?;
        if let Some(sum) = r.header("x-amz-checksum") {
            let got = b64(&Sha256::digest(&r.body));
            if got != sum {
                return Err(CallError {
                    code: "checksum".into(),
                    message: format!(
                        "block {} read back with sha256 {got}, stored {sum}",
                        b.index
                    ),
                    request_id: r.header("x-amzn-requestid").map(str::to_string),
                    status: Some(r.status),
                    attempts: 1,
                });
            }
        }
        Ok(r.body)
    }
}

/// The LINEAR aggregate of block checksums, in block index order.
pub fn linear_aggregate(shas: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for s in shas {
        h.update(s);
    }
    h.finalize().into()
}
