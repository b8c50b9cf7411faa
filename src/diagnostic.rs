//! Diagnostics for anything the user wrote: a message, the file, a labelled
//! span and a hint, rendered by miette (or as JSON for `--json`).

use std::ops::Range;
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};
use serde::Serialize;

use crate::output::{escape, escape_lines, printable_same_length};

/// One problem found in the desired-state file.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
pub struct Diagnostic {
    pub message: String,
    #[source_code]
    source_code: NamedSource<Arc<String>>,
    #[label("{label}")]
    span: Option<SourceSpan>,
    label: String,
    #[help]
    pub help: Option<String>,
    /// 1-based line and column of the span start.
    pub line: usize,
    pub column: usize,
    pub file: String,
}

/// The location-free parts of a diagnostic, as printed by `validate --json`.
#[derive(Debug, Serialize)]
pub struct DiagnosticRecord<'a> {
    pub file: &'a str,
    pub line: usize,
    pub column: usize,
    pub message: &'a str,
    pub help: Option<&'a str>,
}

impl Diagnostic {
    pub fn new(
        file: &str,
        text: &Arc<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> Self {
        let span = span.map(|r| {
            let start = r.start.min(text.len());
            let end = r.end.clamp(start, text.len());
            start..end
        });
        let (line, column) = match &span {
            Some(r) => line_column(text, r.start),
            None => (1, 1),
        };
        Self::located(
            file,
            &printable(text),
            span,
            (line, column),
            message,
            label,
            help,
        )
    }

    /// A diagnostic whose line and column are already known (from a file's
    /// line index). `text` is what its snippet shows: [`printable`] of the file.
    pub fn located(
        file: &str,
        text: &Arc<String>,
        span: Option<Range<usize>>,
        (line, column): (usize, usize),
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> Self {
        let shown = text.clone();
        let file = escape(file).into_owned();
        Diagnostic {
            message: escape_lines(&message.into()).into_owned(),
            source_code: NamedSource::new(&file, shown),
            span: span.map(|r| SourceSpan::new(r.start.into(), r.end - r.start)),
            label: escape(&label.into()).into_owned(),
            help: help.map(|h| escape_lines(&h).into_owned()),
            line,
            column,
            file,
        }
    }

    /// A problem with a file as a whole (cannot be read, an include that matches nothing…).
    pub fn whole_file(file: &str, message: impl Into<String>, help: Option<String>) -> Self {
        Self::new(file, &Arc::new(String::new()), None, message, "", help)
    }

    pub fn record(&self) -> DiagnosticRecord<'_> {
        DiagnosticRecord {
            file: &self.file,
            line: self.line,
            column: self.column,
            message: &self.message,
            help: self.help.as_deref(),
        }
    }
}

/// What a file's snippet shows: the text with everything a terminal would act
/// on replaced, byte for byte (spans into it stay right). The same text when
/// it holds nothing of the kind.
pub fn printable(text: &Arc<String>) -> Arc<String> {
    match printable_same_length(text) {
        std::borrow::Cow::Borrowed(_) => text.clone(),
        std::borrow::Cow::Owned(t) => Arc::new(t),
    }
}

/// Byte offsets where each line of `text` starts.
pub fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1))
        .collect()
}

/// [`line_column`] with the file's line index: a binary search, then the
/// characters of one line — linear in the number of diagnostics, not quadratic.
pub fn line_column_indexed(text: &str, starts: &[usize], offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let line = starts.partition_point(|&s| s <= offset).max(1);
    let column = text[starts[line - 1]..offset].chars().count() + 1;
    (line, column)
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // 'é' is two bytes: the column counts characters
        assert_eq!(line_column(text, 9), (2, 3));
        let starts = line_starts(text);
        for offset in 0..=text.len() {
            assert_eq!(
                line_column_indexed(text, &starts, offset),
                line_column(text, offset),
                "offset {offset}"
            );
        }
    }
}
