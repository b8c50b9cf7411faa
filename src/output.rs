//! One printer decides what goes to the terminal: quiet/verbose, colour only on
//! a terminal and never with NO_COLOR, progress bars only on a terminal, and
//! nothing but the JSON document on stdout with `--json`.

use std::io::IsTerminal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct Printer {
    pub quiet: bool,
    pub verbose: bool,
    pub json: bool,
    color: bool,
    progress: bool,
}

#[derive(Clone, Copy)]
pub enum Style {
    Create,
    Update,
    Delete,
    Bold,
    Dim,
    Error,
    Warn,
}

impl Printer {
    pub fn new(quiet: bool, verbose: bool, json: bool, color: ColorChoice) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => !no_color && std::io::stdout().is_terminal(),
        };
        let progress = !quiet && !json && std::io::stderr().is_terminal();
        Printer {
            quiet,
            verbose,
            json,
            color,
            progress,
        }
    }

    pub fn progress(&self) -> bool {
        self.progress
    }

    pub fn color(&self) -> bool {
        self.color
    }

    pub fn paint(&self, style: Style, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match style {
            Style::Create => "32",
            Style::Update => "33",
            Style::Delete => "31",
            Style::Bold => "1",
            Style::Dim => "2",
            Style::Error => "1;31",
            Style::Warn => "1;33",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// A result line on stdout (suppressed by `--json`, which prints its own document).
    pub fn out(&self, line: &str) {
        if !self.json {
            println!("{line}");
        }
    }

    /// Progress and narration on stderr (suppressed by `-q`).
    pub fn info(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    pub fn detail(&self, line: &str) {
        if self.verbose && !self.quiet {
            eprintln!("{line}");
        }
    }

    pub fn warn(&self, line: &str) {
        eprintln!("{} {line}", self.paint(Style::Warn, "warning:"));
    }

    pub fn json_doc(&self, v: &impl serde::Serialize) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).expect("json output serialises")
        );
    }
}
