use serde_json::json;

use super::{Cli, StatusArgs};
use crate::error::{exit, Result};
use crate::output::{escape, Printer, Style};
use crate::state::StateDir;
use crate::{apply, config};

pub fn run(cli: &Cli, a: &StatusArgs, p: &Printer) -> Result<i32> {
    let remote = a.git.remote(cli);
    if let Some(r) = &remote {
        r.check()?;
    }
    let record = remote.as_ref().map(|r| r.record());
    // with --git: the applied commit, read from an export (the work tree never moves)
    let applied = record.as_ref().and_then(|r| r.applied.clone());
    let loaded = match (&remote, &applied) {
        (Some(r), Some(c)) => Some(crate::fleet::load_commit(r, c)),
        (Some(_), None) => Some(Err(crate::error::Error::Usage(
            "no commit has been applied yet".into(),
        ))),
        (None, _) => None,
    };
    let _export;
    let desired = match loaded {
        Some(l) => match l {
            Ok((d, tree)) => {
                _export = tree;
                d
            }
            // the record is still the host's report
            Err(e) => {
                if p.json {
                    p.json_doc(
                        &json!({ "format_version": 1, "git": record, "error": e.to_string() }),
                    );
                } else {
                    p.out(&format!(
                        "Git: {}",
                        escape(&serde_json::to_string(&record).unwrap_or_default())
                    ));
                    p.out(&format!(
                        "The applied commit's file does not load: {}",
                        escape(&e.to_string())
                    ));
                }
                return Ok(exit::OK);
            }
        },
        None => config::load_with(&cli.file, cli.load_options())?,
    };
    let resources = apply::observe_all(&desired)?;
    let state = StateDir::existing(&desired.state_dir);
    let last = state.last_apply();
    let tests = crate::harness::report::Report::load(&desired.state_dir.join("runs/latest/report.json"))
        .ok()
        .map(|r| json!({ "run": r.run, "finished": r.finished, "summary": r.summary, "incomplete": r.incomplete }));
    if p.json {
        p.json_doc(&json!({
            "format_version": 1,
            "host": desired.host,
            "file": desired.path,
            "git": record,
            "resources": resources,
            "last_apply": last,
            "last_tests": tests,
        }));
        return Ok(exit::OK);
    }
    if let Some(r) = &record {
        let c = |x: &Option<String>| {
            x.as_deref()
                .map(crate::fleet::git::short)
                .unwrap_or("none")
                .to_string()
        };
        p.out(&format!(
            "Git: {} {}: applied {}, fetched {}{}",
            escape(&r.url),
            escape(&r.reference),
            c(&r.applied),
            c(&r.fetched),
            r.last_error
                .as_deref()
                .map(|e| format!("; last error: {}", escape(e)))
                .unwrap_or_default()
        ));
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
