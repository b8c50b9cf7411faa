//! Candidates of promotion gates (`promote = { after = [...] }`): a new
//! revision built beside the current one, switched in only once its suites
//! passed on it. One record per resource in `candidates.json`: what was
//! tested (a digest of its inputs), how it went and in which run. A failed
//! candidate is not tested again until its inputs change (or `--retest`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StateDir;
use crate::error::Result;

const CANDIDATES: &str = "candidates.json";

/// How a candidate's gate went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    Failed,
}

/// The last test of one resource's candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tested {
    pub revision: u32,
    /// What it was tested as (revision, source, the gate suites): a digest.
    pub inputs: String,
    pub verdict: Verdict,
    /// The test run (`runs/<run>/`).
    pub run: String,
    /// The tests that failed, `suite.test`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    pub at: String,
}

/// By address.
pub type Candidates = BTreeMap<String, Tested>;

impl StateDir {
    /// The candidates' records (none when the file is missing or unreadable:
    /// a candidate is then tested again, which is always safe).
    pub fn candidates(&self) -> Candidates {
        self.read_file(CANDIDATES)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Change the records (the caller holds the apply lock); written only when they changed.
    pub fn update_candidates(&self, change: impl FnOnce(&mut Candidates)) -> Result<()> {
        let before = self.candidates();
        let mut after = before.clone();
        change(&mut after);
        if after == before {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&after).expect("candidates serialise");
        self.write_file(CANDIDATES, &bytes)
    }
}
