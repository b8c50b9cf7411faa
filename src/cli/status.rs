use serde_json::json;

use super::Cli;
use crate::error::{exit, Result};
use crate::output::{escape, Printer, Style};
use crate::state::StateDir;
use crate::{apply, config};

pub fn run(cli: &Cli, p: &Printer) -> Result<i32> {
    let desired = config::load(&cli.file)?;
    let resources = apply::observe_all(&desired)?;
    let last = StateDir::existing(&desired.state_dir).last_apply();
    if p.json {
        p.json_doc(&json!({ "format_version": 1, "file": desired.path, "resources": resources, "last_apply": last }));
        return Ok(exit::OK);
    }
    if resources.is_empty() {
        p.out("Nothing declared or installed.");
    }
    for r in &resources {
        let addr = r["address"].as_str().unwrap_or("?");
        let path = r["path"]
            .as_str()
            .map(|s| config::display_name(std::path::Path::new(s)))
            .unwrap_or_default();
        let mut line = format!(
            "{} {} {}: {}",
            p.paint(Style::Bold, &escape(addr)),
            p.paint(Style::Dim, "→"),
            escape(&path),
            escape(r["state"].as_str().unwrap_or(""))
        );
        if let Some(at) = r["installed_at"].as_str() {
            line.push_str(&format!(" (since {at})"));
        }
        if r["declared"] == json!(false) {
            line.push_str(" [not declared; the next apply prunes it]");
        }
        p.out(&line);
    }
    match last {
        Some(l) => p.out(&format!(
            "Last apply: {} — {}, {} change(s), {} ms.",
            l.finished, l.result, l.changes, l.duration_ms
        )),
        None => p.out("Last apply: never."),
    }
    Ok(exit::OK)
}
