//! The house as ARCHITECTURE.md draws it: every `crate::` path in `src/`
//! mapped to the top-level module it names, and each edge checked against
//! the table of which module may import which. An import that points up
//! the table fails this test with its file, line and name; so does a circle
//! between modules (which an upward edge would be needed for).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Floors from the bottom; a module may import every module of a lower
/// floor listed in its row (its own floor's `same` entries too).
const GROUND: &[&str] = &["fsops", "process", "output", "fault", "diagnostic"];

/// (module, what it may import besides the ground floor).
const TABLE: &[(&str, &[&str])] = &[
    ("fsops", &[]),
    ("process", &[]),
    ("output", &[]),
    ("fault", &[]),
    ("diagnostic", &["output"]),
    ("error", &["diagnostic"]),
    ("config", &["error"]),
    ("state", &["error"]),
    ("source", &["config", "error"]),
    ("backend", &["config", "error"]),
    ("cloud", &["config", "error"]),
    ("schema", &["config", "error"]),
    ("store", &["state", "backend", "source", "config", "error"]),
    (
        "platform",
        &["store", "cloud", "state", "config", "error", "backend"],
    ),
    (
        "resource",
        &[
            "platform", "store", "backend", "cloud", "source", "state", "config", "error",
        ],
    ),
    ("harness", &["platform", "state", "config", "error"]),
    ("fleet", &["config", "state", "error"]),
    ("plan", &["resource", "config", "error"]),
    ("apply", &["plan", "resource", "state", "config", "error"]),
    (
        "ops",
        &[
            "apply", "plan", "resource", "harness", "fleet", "platform", "store", "state",
            "source", "backend", "cloud", "schema", "config", "error",
        ],
    ),
    (
        "render",
        &["ops", "plan", "harness", "resource", "config", "error"],
    ),
    // watch's front door (`--listen`): reads what ops records, renders with render
    ("serve", &["ops", "render", "error"]),
    (
        "cli",
        &[
            "ops", "render", "serve", "error", "schema", "config", "fleet", "harness",
        ],
    ),
];

/// What `cli` may name of the engine below `ops` (argument types only).
const CLI_ITEMS: &[&str] = &[
    "config::LoadOptions",
    "config::model::Scope",
    "fleet::git::Remote",
    "fleet::git::default_dir",
    "harness::select::Partition",
];

/// Roots that may name anything (the binary's entry, the library's root, test helpers).
const FREE: &[&str] = &["main", "lib", "testing"];

/// A path's text with comments and string literals blanked out (lines kept).
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'/', Some(b'/')) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
                i += 2;
            }
            (b'"', _) => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    if i < b.len() && b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            (b'r', Some(b'#')) | (b'r', Some(b'"'))
                if i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') =>
            {
                // a raw string: r"…" or r#"…"#
                let mut j = i + 1;
                let mut hashes = 0;
                while j < b.len() && b[j] == b'#' {
                    hashes += 1;
                    j += 1;
                }
                if j < b.len() && b[j] == b'"' {
                    let close: Vec<u8> = std::iter::once(b'"')
                        .chain(std::iter::repeat_n(b'#', hashes))
                        .collect();
                    j += 1;
                    while j < b.len() && !b[j..].starts_with(&close) {
                        if b[j] == b'\n' {
                            out.push('\n');
                        }
                        j += 1;
                    }
                    i = j + close.len();
                    out.push_str("\"\"");
                } else {
                    out.push(b[i] as char);
                    i += 1;
                }
            }
            (b'\'', _) => {
                // a char literal ('x', '\n') or a lifetime ('a): copied through
                out.push('\'');
                i += 1;
            }
            (c, _) => {
                let ch = text[i..].chars().next().expect("a char");
                if c < 0x80 {
                    out.push(c as char);
                    i += 1;
                } else {
                    out.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
    }
    out
}

/// Every `crate::…` path in `code`: (line, the path's segments as far as
/// they are written, e.g. `config::model::Scope`).
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        from = at + 7;
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `some_crate::` is another crate
        }
        let mut prefix = Vec::new();
        expand(&code[from..], &mut prefix, &mut |path| {
            out.push((line_of(at), path))
        });
    }
    out
}

/// The paths a `use` tree starting at `rest` names (prefix: segments so far).
fn expand(rest: &str, prefix: &mut Vec<String>, emit: &mut dyn FnMut(String)) -> usize {
    let ident = |s: &str| -> usize {
        s.char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map_or(s.len(), |(i, _)| i)
    };
    let mut pos = 0;
    let start = prefix.len();
    loop {
        let s = &rest[pos..];
        let t = s.trim_start();
        pos += s.len() - t.len();
        if let Some(inner) = t.strip_prefix('{') {
            pos += 1;
            let mut used = 0;
            loop {
                let n = expand(&inner[used..], prefix, emit);
                used += n;
                let tail = inner[used..].trim_start();
                used = inner.len() - tail.len();
                if let Some(after) = tail.strip_prefix(',') {
                    used = inner.len() - after.len();
                    if after.trim_start().starts_with('}') {
                        used = inner.len() - after.trim_start().len() + 1;
                        break;
                    }
                } else {
                    if tail.starts_with('}') {
                        used += 1;
                    }
                    break;
                }
            }
            pos += used;
            prefix.truncate(start);
            return pos;
        }
        let n = ident(t);
        if n == 0 {
            break;
        }
        prefix.push(t[..n].to_string());
        pos += n;
        if rest[pos..].starts_with("::") {
            pos += 2;
            continue;
        }
        break;
    }
    if prefix.len() > start || !prefix.is_empty() {
        emit(prefix.join("::"));
    }
    prefix.truncate(start);
    pos
}

fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .expect("a path")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// (file, line, from-module, path) of every import the table forbids, and the module graph.
fn violations(src: &Path) -> (Vec<String>, BTreeMap<String, BTreeSet<String>>) {
    let allowed: BTreeMap<&str, &[&str]> = TABLE.iter().copied().collect();
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap();
        let from = module_of(rel);
        let text = code(&fs::read_to_string(f).unwrap());
        for (line, path) in crate_paths(&text) {
            let to = path.split("::").next().unwrap_or("").to_string();
            if to == from || to.is_empty() || to == "self" || to == "super" {
                continue;
            }
            if !allowed.contains_key(to.as_str()) && !FREE.contains(&to.as_str()) {
                continue; // a macro or a name at the crate root (`crate::Result`): not a module
            }
            graph.entry(from.clone()).or_default().insert(to.clone());
            if FREE.contains(&from.as_str()) {
                continue;
            }
            let ok = to == "testing"
                || match allowed.get(from.as_str()) {
                    None => false,
                    Some(row) => {
                        (GROUND.contains(&to.as_str()) && !GROUND.contains(&from.as_str()))
                            || row.contains(&to.as_str())
                    }
                };
            let item_ok = from != "cli"
                || ["ops", "render", "serve", "error", "schema", "output"].contains(&to.as_str())
                || CLI_ITEMS
                    .iter()
                    .any(|i| path == *i || path.starts_with(&format!("{i}::")));
            if !ok || !item_ok {
                bad.push(format!(
                    "src/{}:{line}: `{from}` imports `crate::{path}`",
                    rel.display()
                ));
            }
        }
    }
    (bad, graph)
}

/// Circles in the module graph (each once, as the modules on it).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components
    struct T<'g> {
        g: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(t: &mut T<'g>, v: &'g str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.g.get(v) {
            for w in ws {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let l = t.low[w].min(t.low[v]);
                    t.low.insert(v, l);
                } else if t.on.contains(w) {
                    let l = t.index[w].min(t.low[v]);
                    t.low.insert(v, l);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: Vec<&str> = graph.keys().map(String::as_str).collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn every_import_points_down_the_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (bad, graph) = violations(&src);
    let modules: BTreeSet<String> = fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| module_of(Path::new(&e.file_name())))
        .collect();
    for m in &modules {
        assert!(
            TABLE.iter().any(|(t, _)| t == m) || FREE.contains(&m.as_str()),
            "src/{m} is not in the table of tests/architecture.rs: give it its floor"
        );
    }
    assert!(
        bad.is_empty(),
        "{} import(s) the table (ARCHITECTURE.md) forbids:\n{}",
        bad.len(),
        bad.join("\n")
    );
    let c = circles(&graph);
    assert!(c.is_empty(), "modules that import each other: {c:?}");
}

#[test]
fn the_reader_sees_every_form_of_a_crate_path() {
    let text = code(
        "use crate::config::{self, model::Scope, Desired};\nuse crate::{a::b, c};\n// crate::comment\nlet x = \"crate::string\";\nlet y = crate::d::e(1);\nmy_crate::f();\nuse crate::{\n    g::{h, i::j},\n    k,\n};\n",
    );
    let paths: Vec<String> = crate_paths(&text).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        paths,
        vec![
            "config::self",
            "config::model::Scope",
            "config::Desired",
            "a::b",
            "c",
            "d::e",
            "g::h",
            "g::i::j",
            "k",
        ]
    );
    let lines: Vec<usize> = crate_paths(&text).into_iter().map(|(l, _)| l).collect();
    assert_eq!(lines, vec![1, 1, 1, 2, 2, 5, 7, 7, 7]);
    // a forbidden edge is reported with its file and line
    let dir = std::env::temp_dir().join(format!("arch-{}", std::process::id()));
    fs::create_dir_all(dir.join("config")).unwrap();
    fs::write(
        dir.join("config/mod.rs"),
        "\n\nuse crate::harness::matchers::Matcher;\n",
    )
    .unwrap();
    let (bad, _) = violations(&dir);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(
        bad,
        vec!["src/config/mod.rs:3: `config` imports `crate::harness::matchers::Matcher`"]
    );
}
