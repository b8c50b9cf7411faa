//! The results of a run and their three renderings: `report.json` (versioned,
//! schema from these types), `junit.xml` (classname = suite) and `results.tap`
//! (TAP version 14 with YAML diagnostics). Per test: `result.json`.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::checks::Hit;
use crate::error::{Error, Result};
use crate::fsops;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
    Warn,
    Skip,
}

/// Why a test failed (the classes `retries` names in the file).
pub use crate::config::model::FailureClass as Class;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    pub result: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// `kvm` or `tcg` when the test ran in a VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// Every timeout was multiplied by this (QEMU under TCG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_factor: Option<f64>,
    /// How the VM was made fresh: `restore` (a booted snapshot loaded onto
    /// a new overlay) or `boot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh: Option<String>,
    /// Why the booted snapshot was made anew, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh_note: Option<String>,
    /// Where the time went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
}

/// Where an attempt's time went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Phases {
    /// Making the working snapshot (overlay) and preparing the platform.
    pub provision_ms: u64,
    /// From starting the VM to its prompt (0 without a VM).
    pub boot_ms: u64,
    /// The command itself.
    pub run_ms: u64,
    /// Killing what still runs and deleting the working snapshot.
    pub teardown_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TestResult {
    pub name: String,
    pub suite: String,
    pub result: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub duration_ms: u64,
    pub attempts: Vec<Attempt>,
    pub checks: Vec<Hit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The netboot image it booted (PXE tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// Digests the test ran on (the machine's source).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub digests: std::collections::BTreeMap<String, String>,
    /// Directory with stdout.txt, stderr.txt, console.txt and result.json.
    pub output: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    pub pass: usize,
    pub fail: usize,
    pub warn: usize,
    pub skip: usize,
}

/// `report.json`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Report {
    pub format_version: u32,
    pub reconcile_version: String,
    pub run: String,
    pub started: String,
    pub finished: String,
    /// The run's wall time, measured (the timestamps are to the second).
    #[serde(default)]
    pub duration_ms: u64,
    /// Interrupted (Ctrl-C): tests not run are missing and running ones are marked infra.
    pub incomplete: bool,
    pub summary: Summary,
    pub tests: Vec<TestResult>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.summary.fail > 0
    }

    pub fn load(path: &Path) -> Result<Report> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::State {
            path: path.into(),
            reason: format!("not a report: {e}"),
        })
    }

    /// Write report.json, junit.xml and results.tap into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let w = |name: &str, bytes: &[u8]| {
            fsops::write_atomic(&dir.join(name), bytes).map_err(|e| Error::io(dir.join(name), e))
        };
        w(
            "report.json",
            &serde_json::to_vec_pretty(self).expect("report serialises"),
        )?;
        w("junit.xml", self.junit().as_bytes())?;
        w("results.tap", self.tap().as_bytes())
    }

    pub fn junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Report as JReport, TestCase, TestCaseStatus, TestSuite};
        let mut report = JReport::new("reconcile");
        let mut suites: std::collections::BTreeMap<&str, Vec<&TestResult>> = Default::default();
        for t in &self.tests {
            suites.entry(t.suite.as_str()).or_default().push(t);
        }
        for (suite, tests) in suites {
            let mut ts = TestSuite::new(suite);
            for t in tests {
                let status = match t.result {
                    Verdict::Pass | Verdict::Warn => TestCaseStatus::success(),
                    Verdict::Skip => {
                        let mut s = TestCaseStatus::skipped();
                        if let Some(r) = &t.reason {
                            s.set_message(r.as_str());
                        }
                        s
                    }
                    Verdict::Fail => {
                        let kind = if t.class == Some(Class::Infra) {
                            NonSuccessKind::Error
                        } else {
                            NonSuccessKind::Failure
                        };
                        let mut s = TestCaseStatus::non_success(kind);
                        s.set_message(t.reason.clone().unwrap_or_default());
                        s.set_type(t.class.map(Class::key).unwrap_or("test"));
                        let hits: Vec<String> = t
                            .checks
                            .iter()
                            .map(|h| format!("{}:{}: {}: {}", h.check, h.line, h.count, h.excerpt))
                            .collect();
                        s.set_description(format!(
                            "{}\noutput: {}",
                            hits.join("\n"),
                            t.output.display()
                        ));
                        s
                    }
                };
                let name = t
                    .name
                    .strip_prefix(&format!("{}.", t.suite))
                    .unwrap_or(&t.name)
                    .to_string();
                let mut tc = TestCase::new(name, status);
                tc.set_classname(t.suite.as_str());
                tc.set_time(std::time::Duration::from_millis(t.duration_ms));
                ts.add_test_case(tc);
            }
            report.add_test_suite(ts);
        }
        report.to_string().expect("junit serialises")
    }

    /// TAP version 14 with a YAML diagnostics block per test.
    pub fn tap(&self) -> String {
        let mut out = format!("TAP version 14\n1..{}\n", self.tests.len());
        for (i, t) in self.tests.iter().enumerate() {
            let n = i + 1;
            let desc = t.name.replace('#', "\\#");
            match t.result {
                Verdict::Skip => out.push_str(&format!(
                    "ok {n} - {desc} # SKIP {}\n",
                    one_line(t.reason.as_deref().unwrap_or("skipped"))
                )),
                Verdict::Pass => out.push_str(&format!("ok {n} - {desc}\n")),
                Verdict::Warn => out.push_str(&format!("ok {n} - {desc}\n")),
                Verdict::Fail => out.push_str(&format!("not ok {n} - {desc}\n")),
            }
            out.push_str("  ---\n");
            out.push_str(&format!(
                "  result: {:?}\n",
                format!("{:?}", t.result).to_uppercase()
            ));
            out.push_str(&format!("  duration_ms: {}\n", t.duration_ms));
            out.push_str(&format!("  attempts: {}\n", t.attempts.len()));
            if let Some(c) = t.class {
                out.push_str(&format!("  class: {}\n", c.key()));
            }
            if let Some(r) = &t.reason {
                out.push_str(&format!("  message: {}\n", yaml_str(r)));
            }
            if let Some(m) = &t.machine {
                out.push_str(&format!("  machine: {}\n", yaml_str(m)));
            }
            if !t.checks.is_empty() {
                out.push_str("  checks:\n");
                for h in &t.checks {
                    out.push_str(&format!(
                        "    - check: {}\n      line: {}\n      count: {}\n      excerpt: {}\n",
                        yaml_str(&h.check),
                        h.line,
                        h.count,
                        yaml_str(&h.excerpt)
                    ));
                }
            }
            out.push_str(&format!(
                "  output: {}\n",
                yaml_str(&t.output.display().to_string())
            ));
            out.push_str("  ...\n");
        }
        out
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").replace('#', "\\#")
}

/// A YAML scalar in double quotes (JSON string syntax is valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

/// The JSON Schema of report.json.
pub fn schema() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(Report)).expect("schema serialises")
}
