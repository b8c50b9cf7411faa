//! One TOML file into a typed fragment, reporting every problem of the file:
//! each top-level entry (`[plugin.x]`, `[[skip]]`…) is deserialised on its own
//! so one bad entry does not hide the next.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::model::DesiredFile;
use crate::diagnostic::Diagnostic;

/// Key and value spans of every key path in one file.
#[derive(Debug, Default, Clone)]
pub struct SpanIndex {
    map: HashMap<Vec<String>, (Range<usize>, Range<usize>)>,
}

impl SpanIndex {
    /// Span of the value at `path`, or of the nearest enclosing entry that exists.
    pub fn value(&self, path: &[String]) -> Option<Range<usize>> {
        self.nearest(path).map(|(_, v)| v)
    }

    /// Span of the key at `path` (for names), or the nearest enclosing one.
    pub fn key(&self, path: &[String]) -> Option<Range<usize>> {
        self.nearest(path).map(|(k, _)| k)
    }

    fn nearest(&self, path: &[String]) -> Option<(Range<usize>, Range<usize>)> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.map.get(&path[..n]).cloned())
    }

    fn build(&mut self, prefix: &mut Vec<String>, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            prefix.push(key.get_ref().to_string());
            self.map.insert(prefix.clone(), (key.span(), value.span()));
            self.build_value(prefix, value.get_ref());
            prefix.pop();
        }
    }

    fn build_value(&mut self, prefix: &mut Vec<String>, value: &DeValue<'_>) {
        match value {
            DeValue::Table(t) => self.build(prefix, t),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    prefix.push(i.to_string());
                    self.map.insert(prefix.clone(), (item.span(), item.span()));
                    self.build_value(prefix, item.get_ref());
                    prefix.pop();
                }
            }
            _ => {}
        }
    }
}

/// One parsed file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path as shown in diagnostics.
    pub name: String,
    pub text: Arc<String>,
    /// Built on first use: only a file with problems needs it.
    spans: std::sync::OnceLock<SpanIndex>,
    /// Where each line starts, built on first use like `spans`.
    lines: std::sync::OnceLock<Vec<usize>>,
    /// The text as a snippet shows it (see `diagnostic::printable`), on first use.
    shown: std::sync::OnceLock<Arc<String>>,
}

impl SourceFile {
    pub fn spans(&self) -> &SpanIndex {
        self.spans.get_or_init(|| {
            let mut index = SpanIndex::default();
            if let Ok(root) = DeTable::parse(self.text.as_str()) {
                index.build(&mut Vec::new(), root.get_ref());
            }
            index
        })
    }

    pub fn diagnostic(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        let at = match &span {
            Some(r) => {
                let starts = self
                    .lines
                    .get_or_init(|| crate::diagnostic::line_starts(&self.text));
                crate::diagnostic::line_column_indexed(&self.text, starts, r.start)
            }
            None => (1, 1),
        };
        let shown = self
            .shown
            .get_or_init(|| crate::diagnostic::printable(&self.text));
        Diagnostic::located(&self.name, shown, span, at, message, label, help)
    }
}

/// The result of parsing one file.
pub struct Parsed {
    pub file: SourceFile,
    pub fragment: DesiredFile,
    /// Entries that failed to deserialise (`plugin.x`): references to them are not reported again.
    pub broken: HashSet<String>,
    pub diagnostics: Vec<Diagnostic>,
}

const TOP_LEVEL: &[&str] = &[
    "version", "include", "settings", "volume", "machine", "image", "plugin", "cloud", "check",
    "suite", "skip", "run", "watch",
];

pub fn parse_file(name: &str, text: String) -> Parsed {
    let text = Arc::new(text);
    let file = SourceFile {
        name: name.to_string(),
        text: text.clone(),
        spans: std::sync::OnceLock::new(),
        lines: std::sync::OnceLock::new(),
        shown: std::sync::OnceLock::new(),
    };
    let mut diagnostics = Vec::new();
    let mut fragment = DesiredFile::default();
    let mut broken = HashSet::new();

    let (root, errors) = DeTable::parse_recoverable(text.as_str());
    if !errors.is_empty() {
        for e in errors {
            diagnostics.push(file.diagnostic(
                e.span(),
                format!("TOML syntax error: {}", first_line(e.message())),
                "here",
                Some("fix the syntax; see https://toml.io for the format".into()),
            ));
        }
        return Parsed {
            file,
            fragment,
            broken,
            diagnostics,
        };
    }

    let mut cx = EntryParser {
        file: &file,
        diagnostics: &mut diagnostics,
        broken: &mut broken,
    };
    for (key, value) in root.into_inner() {
        let k = key.get_ref().to_string();
        match k.as_str() {
            "version" => fragment.version = cx.one(&k, value),
            "include" => fragment.include = cx.one(&k, value).unwrap_or_default(),
            "settings" => fragment.settings = cx.one(&k, value),
            "run" => fragment.run = cx.one(&k, value),
            "watch" => fragment.watch = cx.one(&k, value),
            "volume" => fragment.volume = cx.map(&k, value),
            "machine" => fragment.machine = cx.map(&k, value),
            "image" => fragment.image = cx.map(&k, value),
            "plugin" => fragment.plugin = cx.map(&k, value),
            "cloud" => fragment.cloud = cx.map(&k, value),
            "check" => fragment.check = cx.map(&k, value),
            "suite" => fragment.suite = cx.map(&k, value),
            "skip" => fragment.skip = cx.list(&k, value),
            _ => cx.diagnostics.push(cx.file.diagnostic(
                Some(key.span()),
                format!("unknown key `{k}`"),
                "not a known top-level key",
                Some(format!("expected one of: {}", TOP_LEVEL.join(", "))),
            )),
        }
    }
    Parsed {
        file,
        fragment,
        broken,
        diagnostics,
    }
}

struct EntryParser<'a> {
    file: &'a SourceFile,
    diagnostics: &'a mut Vec<Diagnostic>,
    broken: &'a mut HashSet<String>,
}

impl EntryParser<'_> {
    fn one<T: DeserializeOwned>(&mut self, what: &str, value: Spanned<DeValue<'_>>) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.report(what, &e);
                None
            }
        }
    }

    fn map<T: DeserializeOwned>(
        &mut self,
        kind: &str,
        value: Spanned<DeValue<'_>>,
    ) -> BTreeMap<String, T> {
        let span = value.span();
        let mut out = BTreeMap::new();
        match value.into_inner() {
            DeValue::Table(table) => {
                for (name, entry) in table {
                    let name = name.get_ref().to_string();
                    let address = format!("{kind}.{name}");
                    if let Some(v) = self.one(&address, entry) {
                        out.insert(name, v);
                    } else {
                        self.broken.insert(address);
                    }
                }
            }
            other => self.diagnostics.push(self.file.diagnostic(
                Some(span),
                format!(
                    "`{kind}` must be a table of named entries, found {}",
                    other.type_str()
                ),
                "expected a table",
                Some(format!("write entries as [{kind}.NAME]")),
            )),
        }
        out
    }

    fn list<T: DeserializeOwned>(&mut self, kind: &str, value: Spanned<DeValue<'_>>) -> Vec<T> {
        let span = value.span();
        let mut out = Vec::new();
        match value.into_inner() {
            DeValue::Array(items) => {
                for item in items {
                    if let Some(v) = self.one(kind, item) {
                        out.push(v);
                    }
                }
            }
            other => self.diagnostics.push(self.file.diagnostic(
                Some(span),
                format!(
                    "`{kind}` must be an array of tables, found {}",
                    other.type_str()
                ),
                "expected an array",
                Some(format!("write entries as [[{kind}]]")),
            )),
        }
        out
    }

    fn report(&mut self, what: &str, e: &toml::de::Error) {
        let message = first_line(e.message());
        let help = if message.starts_with("unknown field") {
            Some(
                "remove the key or fix its spelling; `reconcile schema` lists every key"
                    .to_string(),
            )
        } else if message.starts_with("missing field") {
            Some("add the key; `reconcile schema` describes every entry".to_string())
        } else {
            None
        };
        self.diagnostics.push(self.file.diagnostic(
            e.span(),
            format!("in `{what}`: {message}"),
            "here",
            help,
        ));
    }
}

fn first_line(s: &str) -> String {
    s.trim()
        .lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_string()
}
