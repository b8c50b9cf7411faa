//! One printer decides what goes to the terminal: quiet/verbose, colour only on
//! a terminal and never with NO_COLOR, progress bars only on a terminal, and
//! nothing but the JSON document on stdout with `--json`.

use std::borrow::Cow;
use std::io::IsTerminal;

/// Text that came from disk or a log (a file name, an archive entry, a
/// console line), made safe to show on a terminal: control characters
/// (escape sequences, carriage returns, newlines, backspaces), C1 controls
/// and bidirectional overrides are shown as `\x1b`-style escapes, so a name
/// can neither rewrite the terminal nor fake a line of output.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 && unsafe_char(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A character a terminal would act on instead of showing.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text shown with its line structure (a file's snippet, a message of
/// several lines): [`escape`] for everything but newlines and tabs.
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| unsafe_char(c) && c != '\n' && c != '\t') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for part in line.split('\t').enumerate() {
            if part.0 > 0 {
                out.push('\t');
            }
            out.push_str(&escape(part.1));
        }
    }
    Cow::Owned(out)
}

/// `text` with every character a terminal would act on replaced by as many
/// `?` as it has bytes, so byte offsets into it (a diagnostic's span) stay
/// right: what a file's snippet shows. Newlines and tabs stay, and a
/// carriage return that ends a line.
pub fn printable_same_length(text: &str) -> Cow<'_, str> {
    let keep =
        |c: char, next: Option<char>| c == '\n' || c == '\t' || (c == '\r' && next == Some('\n'));
    let mut it = text.chars().peekable();
    let mut dirty = false;
    while let Some(c) = it.next() {
        if unsafe_char(c) && !keep(c, it.peek().copied()) {
            dirty = true;
            break;
        }
    }
    if !dirty {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        if unsafe_char(c) && !keep(c, it.peek().copied()) {
            out.extend(std::iter::repeat_n('?', c.len_utf8()));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Paths relative to the current directory when below it, absolute otherwise.
pub fn display_name(p: &std::path::Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.display().to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

/// What a command prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Clone)]
pub struct Printer {
    pub quiet: bool,
    pub verbose: bool,
    /// `--format json`: stdout carries one JSON document and nothing else.
    pub json: bool,
    /// `--format markdown`: stdout carries one Markdown document and nothing else.
    pub markdown: bool,
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
    pub fn new(quiet: bool, verbose: bool, format: Format, color: ColorChoice) -> Self {
        let json = format == Format::Json;
        let markdown = format == Format::Markdown;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => !no_color && std::io::stdout().is_terminal(),
        };
        let progress = !quiet && !json && !markdown && std::io::stderr().is_terminal();
        Printer {
            quiet,
            verbose,
            json,
            markdown,
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

    /// A result line on stdout (suppressed by `--format json|markdown`, which print their own document).
    pub fn out(&self, line: &str) {
        if self.text() {
            stdout(format_args!("{line}\n"));
        }
    }

    /// One item of a result (a change of a plan, a finished test) on stdout:
    /// left out by `-q`, which keeps only the summary line and errors.
    pub fn item(&self, line: &str) {
        if !self.quiet {
            self.out(line);
        }
    }

    /// A document on stdout as it is (Markdown, a man page).
    pub fn raw(&self, text: &str) {
        stdout(format_args!("{text}"));
    }

    /// Text for people on stdout (not JSON, not Markdown).
    pub fn text(&self) -> bool {
        !self.json && !self.markdown
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
        stdout(format_args!(
            "{}\n",
            serde_json::to_string_pretty(v).expect("json output serialises")
        ));
    }
}

/// Write to stdout. A reader that went away (`reconcile status --json | head
/// -1`) ends the process quietly with exit 0, as ripgrep does — never a
/// panic; any other write error ends it with exit 1.
pub fn stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let out = std::io::stdout();
    let mut lock = out.lock();
    if let Err(e) = lock.write_fmt(args).and_then(|()| lock.flush()) {
        gone(e);
    }
}

/// [`stdout`] for bytes (a command's output passed through).
pub fn stdout_bytes(bytes: &[u8]) {
    use std::io::Write;
    let out = std::io::stdout();
    let mut lock = out.lock();
    if let Err(e) = lock.write_all(bytes).and_then(|()| lock.flush()) {
        gone(e);
    }
}

fn gone(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn names_cannot_drive_the_terminal() {
        let hostile = "x\u{1b}]0;owned\u{7}\u{1b}[2K\r+ plugin.fake: in sync\nnext\u{202e}";
        let shown = escape(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert_eq!(
            shown,
            "x\\x1b]0;owned\\x07\\x1b[2K\\r+ plugin.fake: in sync\\nnext\\u{202e}"
        );
        assert!(matches!(
            escape("kolet_1.2.0 ✓"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
