//! Write-ahead journal. Each transition is recorded (and fsynced) before it
//! happens. Every mutating command first recovers: it reads the journal and
//! hands each transaction without `done` to the recovery of its kind, which
//! looks at the world to decide whether the commit happened and rolls forward
//! or back.
//!
//! The journal itself knows no kind: a transaction's `begin` record carries
//! its kind, a record version and the kind's intent, opaque here ([`Recover`]).
//! Each resource kind recovers its own transactions (`resource::recover` the
//! filesystem ones, the cloud resource its publishes and retirements), and
//! checks every record before anything is done for any of them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use super::StateDir;
use crate::error::{Error, Result};
use crate::fault;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    txn: String,
    address: String,
    step: String,
    /// On `begin`: whose recovery the transaction is (`fs`, `cloud-publish`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// On `begin`: the version of the kind's intent record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<u32>,
    /// On `begin`: what the transaction is about to do, in the kind's own terms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    intent: Option<serde_json::Value>,
    /// On a step: what recovery needs to finish it (an id the step produced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    /// Fields of a record written before kinds existed (a filesystem [`Op`]
    /// flattened into the `begin` record); read, never written.
    #[serde(flatten, skip_serializing)]
    legacy: serde_json::Map<String, serde_json::Value>,
}

/// The kind of records written before kinds existed: filesystem operations
/// flattened into the `begin` record (`resource::recover` reads them).
pub const LEGACY_KIND: &str = "fs";

/// An interrupted transaction as recovery sees it.
#[derive(Debug, Clone)]
pub struct Open {
    /// Line of its `begin` record (for messages).
    pub line: usize,
    pub txn: String,
    pub address: String,
    pub kind: String,
    pub version: u32,
    pub intent: serde_json::Value,
    /// The last step recorded (`begin` when none).
    pub last_step: String,
    /// Data recorded with steps, by step name.
    pub data: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Finishing or undoing one kind of interrupted transaction.
pub trait Recover {
    fn kind(&self) -> &'static str;
    /// Refuse a record this kind would never have written, before anything is
    /// done for any transaction of the journal.
    fn check(&self, open: &Open) -> std::result::Result<(), String>;
    /// Finish or undo it; `rolled forward` or `rolled back`.
    fn recover(&self, open: &Open) -> Result<&'static str>;
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

/// One open transaction.
pub struct Txn {
    pub id: String,
    pub address: String,
}

/// What recovery did with an interrupted transaction.
#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    pub address: String,
    pub txn: String,
    /// `rolled forward` or `rolled back`.
    pub outcome: &'static str,
    pub last_step: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn new_txn_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{}-{}",
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Journal {
    /// Open the journal of `state`, recovering interrupted transactions first,
    /// each by its kind's recovery.
    pub fn open_and_recover(
        state: &StateDir,
        kinds: &[&dyn Recover],
    ) -> Result<(Journal, Vec<Recovered>)> {
        let path = state.journal_path();
        let recovered = recover(state, kinds)?;
        let file = state
            .open()?
            .open_rw(Path::new(super::JOURNAL), true, 0o600)
            .map_err(|e| Error::io(&path, e))?;
        if !recovered.is_empty() || file.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            file.set_len(0).map_err(|e| Error::io(&path, e))?;
            file.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        Ok((Journal { path, file }, recovered))
    }

    fn write(&mut self, rec: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(rec).expect("journal record serialises");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Record the start of a transaction of `kind` (recovered by that kind's
    /// [`Recover`]) with its intent; `intent` receives the transaction id.
    pub fn begin_kind(
        &mut self,
        address: &str,
        kind: &str,
        version: u32,
        intent: impl FnOnce(&str) -> serde_json::Value,
    ) -> Result<Txn> {
        let txn = Txn {
            id: new_txn_id(),
            address: address.to_string(),
        };
        let intent = intent(&txn.id);
        self.write(&Record {
            txn: txn.id.clone(),
            address: address.into(),
            step: "begin".into(),
            kind: Some(kind.into()),
            v: Some(version),
            intent: Some(intent),
            data: None,
            legacy: Default::default(),
        })?;
        fault::point(address, "begin");
        Ok(txn)
    }

    /// Record that `step` is about to happen.
    pub fn step(&mut self, txn: &Txn, step: &str) -> Result<()> {
        self.step_with(txn, step, None)
    }

    /// Record a step together with what recovery needs to finish it.
    pub fn step_with(
        &mut self,
        txn: &Txn,
        step: &str,
        data: Option<serde_json::Value>,
    ) -> Result<()> {
        self.write(&Record {
            txn: txn.id.clone(),
            address: txn.address.clone(),
            step: step.into(),
            kind: None,
            v: None,
            intent: None,
            data,
            legacy: Default::default(),
        })?;
        fault::point(&txn.address, step);
        Ok(())
    }

    pub fn done(&mut self, txn: Txn) -> Result<()> {
        self.step(&txn, "done")
    }

    /// Empty the journal once every transaction in it is done.
    pub fn clear(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

/// Finish or undo every transaction the journal of `state` left open, each
/// by the recovery of its kind.
pub fn recover(state: &StateDir, kinds: &[&dyn Recover]) -> Result<Vec<Recovered>> {
    let path = state.journal_path();
    let Some(bytes) = state.read_file(super::JOURNAL) else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8_lossy(&bytes);
    // A torn last line (killed mid-write) does not parse and is ignored: its step never happened.
    let records: Vec<(usize, Record)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| serde_json::from_str(l).ok().map(|r| (i + 1, r)))
        .collect();
    let refuse = |line: usize, txn: &str, address: &str, why: String| Error::State {
        path: path.clone(),
        reason: format!(
            "line {line} (transaction {txn}, {address}) {why}; refusing to recover. \
             If reconcile did not write this journal, move it away and run again"
        ),
    };
    let mut open: Vec<Open> = Vec::new();
    for (line, r) in records {
        match r.step.as_str() {
            "begin" => {
                let (kind, intent) = match (r.kind, r.intent) {
                    (Some(kind), Some(intent)) => (kind, intent),
                    // the previous release's filesystem record: the op is the record itself
                    (None, None) if r.legacy.contains_key("op") => {
                        (LEGACY_KIND.to_string(), serde_json::Value::Object(r.legacy))
                    }
                    _ => {
                        return Err(refuse(
                            line,
                            &r.txn,
                            &r.address,
                            "has a begin record without a kind and intent".into(),
                        ))
                    }
                };
                open.push(Open {
                    line,
                    txn: r.txn,
                    address: r.address,
                    kind,
                    version: r.v.unwrap_or(1),
                    intent,
                    last_step: "begin".into(),
                    data: Default::default(),
                })
            }
            "done" => open.retain(|o| o.txn != r.txn),
            step => {
                if let Some(o) = open.iter_mut().find(|o| o.txn == r.txn) {
                    o.last_step = step.to_string();
                    if let Some(d) = r.data {
                        o.data.insert(step.to_string(), d);
                    }
                }
            }
        }
    }
    // every record is checked before anything is done for any of them
    let mut checked: Vec<(&Open, &dyn Recover)> = Vec::new();
    for o in &open {
        let Some(k) = kinds.iter().find(|k| k.kind() == o.kind) else {
            return Err(refuse(
                o.line,
                &o.txn,
                &o.address,
                format!(
                    "is a `{}` transaction, which this build of reconcile cannot recover",
                    o.kind
                ),
            ));
        };
        k.check(o)
            .map_err(|why| refuse(o.line, &o.txn, &o.address, why))?;
        checked.push((o, *k));
    }
    let mut out = Vec::new();
    for (o, k) in checked {
        let outcome = k.recover(o).map_err(|e| Error::State {
            path: path.clone(),
            reason: format!("recovering {} (transaction {}): {e}", o.address, o.txn),
        })?;
        out.push(Recovered {
            address: o.address.clone(),
            txn: o.txn.clone(),
            outcome,
            last_step: o.last_step.clone(),
        });
    }
    Ok(out)
}
