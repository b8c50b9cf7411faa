use super::Cli;
use crate::error::{exit, Result};
use crate::ops::validate::{self, Validated, ValidationDoc};
use crate::output::Printer;
use crate::render::text;

pub fn run(cli: &Cli, p: &Printer) -> Result<i32> {
    match validate::validate(&cli.file, cli.load_options())? {
        Validated::Valid {
            path,
            files,
            digest,
        } => {
            if p.json {
                p.json_doc(&ValidationDoc {
                    format_version: 1,
                    valid: true,
                    file: &path,
                    diagnostics: Vec::new(),
                });
            } else {
                p.out(&format!(
                    "{} is valid ({files} file(s), sha256 {}…).",
                    crate::output::display_name(&path),
                    &digest[..digest.len().min(12)]
                ));
            }
            Ok(exit::OK)
        }
        Validated::Invalid(path, diags) => {
            if p.json {
                p.json_doc(&ValidationDoc {
                    format_version: 1,
                    valid: false,
                    file: &path,
                    diagnostics: diags.iter().map(|d| d.record()).collect(),
                });
            } else {
                text::diagnostics(p, &diags);
                eprintln!(
                    "{} {} problem(s) in {}",
                    p.paint(crate::output::Style::Error, "error:"),
                    diags.len(),
                    crate::output::display_name(&path)
                );
            }
            Ok(exit::ERROR)
        }
    }
}
