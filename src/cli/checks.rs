use std::io::BufReader;

use serde_json::json;

use super::{ChecksArgs, Cli};
use crate::config::model::Severity;
use crate::error::{exit, Error, Result};
use crate::harness::checks;
use crate::output::{escape, Printer, Style};

/// Scan log files with the built-in and declared console checks.
pub fn run(_cli: &Cli, a: &ChecksArgs, p: &Printer) -> Result<i32> {
    let declared = match &a.config {
        Some(f) => crate::config::load(f)?.model.check,
        None => Default::default(),
    };
    let all = checks::all(&declared);
    let mut failing = false;
    let mut docs = Vec::new();
    for log in &a.logs {
        let f = std::fs::File::open(log).map_err(|e| Error::io(log, e))?;
        let mut hits = checks::scan_reader(&all, a.scope, BufReader::with_capacity(1 << 20, f))
            .map_err(|e| Error::io(log, e))?;
        // in log order, as a reader goes through the log
        hits.sort_by_key(|h| h.line);
        failing |= checks::failing(&hits);
        for h in &hits {
            let sev = format!("{:?}", h.severity).to_lowercase();
            let style = if h.severity >= Severity::Fail {
                Style::Delete
            } else {
                Style::Update
            };
            p.out(&format!(
                "{}:{}: {} ({}, {} hit(s)): {}",
                escape(&log.display().to_string()),
                h.line,
                p.paint(style, &escape(&h.check)),
                sev,
                h.count,
                escape(&h.excerpt)
            ));
        }
        docs.push(json!({ "file": log, "hits": hits }));
    }
    if p.json {
        p.json_doc(&json!({ "format_version": 1, "logs": docs, "failing": failing }));
    }
    Ok(if failing {
        exit::TESTS_FAILED
    } else {
        exit::OK
    })
}
