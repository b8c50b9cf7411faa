use serde_json::json;

use super::{render, Cli};
use crate::config;
use crate::error::{exit, Error, Result};
use crate::output::Printer;

pub fn run(cli: &Cli, p: &Printer) -> Result<i32> {
    match config::load_with(&cli.file, cli.load_options()) {
        Ok(d) => {
            if p.json {
                p.json_doc(&json!({ "format_version": 1, "valid": true, "file": d.path, "diagnostics": [] }));
            } else {
                p.out(&format!(
                    "{} is valid ({} file(s), sha256 {}…).",
                    config::display_name(&d.path),
                    d.files.len(),
                    crate::fsops::digest::short(&d.digest)
                ));
            }
            Ok(exit::OK)
        }
        Err(Error::Invalid(diags)) => {
            if p.json {
                let records: Vec<_> = diags.iter().map(|d| d.record()).collect();
                p.json_doc(&json!({ "format_version": 1, "valid": false, "file": cli.file, "diagnostics": records }));
            } else {
                render::diagnostics(p, &diags);
                eprintln!(
                    "{} {} problem(s) in {}",
                    p.paint(crate::output::Style::Error, "error:"),
                    diags.len(),
                    cli.file.display()
                );
            }
            Ok(exit::ERROR)
        }
        Err(e) => Err(e),
    }
}
