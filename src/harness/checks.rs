//! Console checks: kola's list of badness (kernel panic, oops, emergency shell,
//! segfault…) plus `[check.*]` from the file, scanned over a stream line by line
//! with line numbers. At most one report per check (with a hit count and the
//! first excerpt); a `fatal` hit can stop a test at once.

use std::collections::BTreeMap;
use std::io::{self, BufRead};

use regex::bytes::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

use crate::config::model::{Check, Scope, Severity};

/// (name, regex, severity)
pub const BUILTIN: &[(&str, &str, Severity)] = &[
    (
        "emergency shell",
        r"(?:You are in emergency mode|Entering emergency mode|Dropping to debug shell)",
        Severity::Fatal,
    ),
    (
        "kernel panic",
        r"Kernel panic - not syncing",
        Severity::Fatal,
    ),
    (
        "kernel oops",
        r"\bOops: [0-9a-fx]+ \[#\d+\]|\bOops(?:: | - )",
        Severity::Fail,
    ),
    (
        "kernel BUG",
        r"\bBUG: (?:unable to handle|kernel NULL pointer|soft lockup|scheduling while atomic|Bad page|KASAN)",
        Severity::Fail,
    ),
    (
        "kernel warning",
        r"WARNING: CPU: \d+ PID: \d+ at ",
        Severity::Fail,
    ),
    (
        "offline device I/O",
        r"rejecting I/O to offline device",
        Severity::Fail,
    ),
    (
        "ext4 delayed allocation failure",
        r"EXT4-fs \([^)]+\): Delayed block allocation failed",
        Severity::Fail,
    ),
    (
        "GRUB magic broken",
        r"alloc magic is broken at",
        Severity::Fail,
    ),
    (
        "Go panic",
        r"^(?:panic: |fatal error: |goroutine \d+ \[running\]:)",
        Severity::Fail,
    ),
    (
        "segfault",
        r"segfault at [0-9a-f]+ ip [0-9a-f]+ sp [0-9a-f]+ error",
        Severity::Fail,
    ),
    (
        "core dump",
        r"(?:dumped core|Process \d+ \(.+\) of user \d+ dumped core)",
        Severity::Fail,
    ),
    (
        "oom-killer",
        r"(?:invoked oom-killer|Out of memory: Killed process)",
        Severity::Fail,
    ),
    ("ordering cycle", r"Ordering cycle found", Severity::Fail),
    (
        "hung task",
        r"INFO: task .+ blocked for more than \d+ seconds",
        Severity::Warn,
    ),
    (
        "RCU stall",
        r"rcu: INFO: rcu_\w+ (?:self-)?detected stall",
        Severity::Fail,
    ),
];

#[derive(Debug, Clone)]
pub struct ConsoleCheck {
    pub name: String,
    pub regex: Regex,
    pub severity: Severity,
    pub scope: Scope,
}

/// Every check: built-in first, then the file's (a declared check may reuse a built-in name to override it).
pub fn all(declared: &BTreeMap<String, Check>) -> Vec<ConsoleCheck> {
    let mut out: Vec<ConsoleCheck> = BUILTIN
        .iter()
        .filter(|(name, ..)| !declared.contains_key(*name))
        .map(|(name, re, sev)| ConsoleCheck {
            name: name.to_string(),
            regex: Regex::new(&format!("(?m){re}")).expect("built-in check regex"),
            severity: *sev,
            scope: Scope::Any,
        })
        .collect();
    for (name, c) in declared {
        out.push(ConsoleCheck {
            name: name.clone(),
            regex: Regex::new(&c.regex).expect("validated regex"),
            severity: c.severity,
            scope: c.scope,
        });
    }
    out
}

/// One check's report for one test or log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Hit {
    pub check: String,
    pub severity: Severity,
    pub count: u64,
    /// 1-based line of the first hit.
    pub line: u64,
    pub excerpt: String,
    /// The step running when it first hit (the test's name, or a bootstrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Why it does not count, when the test suppressed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<String>,
}

/// A streaming scanner: feed bytes, get hits with line numbers.
/// The checks of one scope, compiled once and shared by every test's scanner.
pub struct CheckSet {
    checks: Vec<ConsoleCheck>,
    /// All checks as one alternation: one pass finds the few lines worth a closer look.
    any: Regex,
    set: RegexSet,
}

impl CheckSet {
    /// Checks whose scope covers `scope` (console also stands for the combined
    /// output of executors that have no console).
    pub fn new(checks: &[ConsoleCheck], scope: Scope) -> std::sync::Arc<CheckSet> {
        let checks: Vec<ConsoleCheck> = checks
            .iter()
            .filter(|c| scope == Scope::Any || c.scope == Scope::Any || c.scope == scope)
            .cloned()
            .collect();
        let set = RegexSet::new(checks.iter().map(|c| c.regex.as_str())).expect("checks compile");
        let alternation: Vec<String> = checks
            .iter()
            .map(|c| format!("(?:{})", c.regex.as_str()))
            .collect();
        let any = if alternation.is_empty() {
            Regex::new(r"[^\s\S]").expect("never matches")
        } else {
            Regex::new(&format!("(?m){}", alternation.join("|"))).expect("checks compile")
        };
        std::sync::Arc::new(CheckSet { checks, any, set })
    }
}

pub struct Scanner {
    compiled: std::sync::Arc<CheckSet>,
    suppressed: BTreeMap<String, String>,
    hits: BTreeMap<usize, Hit>,
    line: u64,
    partial: Vec<u8>,
    step: Option<String>,
    fatal: bool,
}

impl Scanner {
    /// Checks whose scope covers `scope` (console also stands for the combined
    /// output of executors that have no console).
    pub fn new(
        checks: &[ConsoleCheck],
        scope: Scope,
        suppressed: BTreeMap<String, String>,
    ) -> Scanner {
        Scanner::with(CheckSet::new(checks, scope), suppressed)
    }

    pub fn with(
        compiled: std::sync::Arc<CheckSet>,
        suppressed: BTreeMap<String, String>,
    ) -> Scanner {
        Scanner {
            compiled,
            suppressed,
            hits: BTreeMap::new(),
            line: 0,
            partial: Vec::new(),
            step: None,
            fatal: false,
        }
    }

    pub fn set_step(&mut self, step: &str) {
        self.step = Some(step.to_string());
    }

    /// Feed a chunk; returns true once a non-suppressed `fatal` check has hit.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let mut rest = chunk;
        if !self.partial.is_empty() {
            let Some(i) = memchr::memchr(b'\n', rest) else {
                self.partial.extend_from_slice(rest);
                return self.fatal;
            };
            self.partial.extend_from_slice(&rest[..i]);
            let line = std::mem::take(&mut self.partial);
            self.scan_line(&line);
            rest = &rest[i + 1..];
        }
        let Some(last) = memchr::memrchr(b'\n', rest) else {
            self.partial.extend_from_slice(rest);
            return self.fatal;
        };
        // whole lines in bulk: one search over the region; only lines with a match are split out
        let region = &rest[..=last];
        let mut pos = 0;
        while pos < region.len() {
            let Some(m) = self.compiled.any.find_at(region, pos) else {
                self.line += memchr::memchr_iter(b'\n', &region[pos..]).count() as u64;
                break;
            };
            let start =
                memchr::memrchr(b'\n', &region[pos..m.start()]).map_or(pos, |i| pos + i + 1);
            let end = m.start()
                + memchr::memchr(b'\n', &region[m.start()..])
                    .expect("the region ends with a newline");
            self.line += memchr::memchr_iter(b'\n', &region[pos..start]).count() as u64;
            self.scan_line(&region[start..end]);
            pos = end + 1;
        }
        self.partial.extend_from_slice(&rest[last + 1..]);
        self.fatal
    }

    /// Scan the last line if it had no newline; returns the hits in check order.
    pub fn finish(mut self) -> Vec<Hit> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.scan_line(&line);
        }
        self.hits.into_values().collect()
    }

    fn scan_line(&mut self, line: &[u8]) {
        self.line += 1;
        // one pass over the line for all checks; most lines match nothing
        let matched = self.compiled.set.matches(line);
        if !matched.matched_any() {
            return;
        }
        for idx in matched.iter() {
            let c = &self.compiled.checks[idx];
            let suppressed = self.suppressed.get(&c.name).cloned();
            if c.severity == Severity::Fatal && suppressed.is_none() {
                self.fatal = true;
            }
            let line_no = self.line;
            let step = self.step.clone();
            self.hits
                .entry(idx)
                .and_modify(|h| h.count += 1)
                .or_insert_with(|| Hit {
                    check: c.name.clone(),
                    severity: c.severity,
                    count: 1,
                    line: line_no,
                    excerpt: excerpt(line),
                    step,
                    suppressed,
                });
        }
    }
}

fn excerpt(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    let s = s.trim_end_matches('\r').trim();
    let mut out: String = s.chars().take(200).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// Scan a whole reader (for `reconcile checks`).
pub fn scan_reader(
    checks: &[ConsoleCheck],
    scope: Scope,
    mut r: impl BufRead,
) -> io::Result<Vec<Hit>> {
    let mut s = Scanner::new(checks, scope, BTreeMap::new());
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        s.feed(buf);
        r.consume(n);
    }
    Ok(s.finish())
}

/// Does any hit fail a test (fail or fatal, not suppressed)?
pub fn failing(hits: &[Hit]) -> bool {
    hits.iter()
        .any(|h| h.suppressed.is_none() && h.severity >= Severity::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Vec<Hit> {
        scan_reader(&all(&BTreeMap::new()), Scope::Console, text.as_bytes()).unwrap()
    }

    #[test]
    fn line_numbers_counts_and_first_excerpt() {
        let hits = scan("boot\n[  1.0] Kernel panic - not syncing: VFS\nok\n[ 2.0] Kernel panic - not syncing: again\n");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].check, "kernel panic");
        assert_eq!(hits[0].line, 2);
        assert_eq!(hits[0].count, 2);
        assert!(hits[0].excerpt.contains("VFS"));
    }

    #[test]
    fn near_misses_do_not_hit() {
        let hits = scan("Command line: BOOT_IMAGE=/vmlinuz root=/dev/vda1 panic=10 oops=panic\nsystemd[1]: Started Coredump Socket.\nkernel: Booting paravirtualized kernel\n");
        assert!(hits.is_empty(), "{hits:?}");
    }

    #[test]
    fn chunks_split_lines_anywhere() {
        let checks = all(&BTreeMap::new());
        let mut s = Scanner::new(&checks, Scope::Console, BTreeMap::new());
        for chunk in ["a\nsegfault at 0 ip 4", "01000 sp 7ffd error 4 in x\n", "b"] {
            s.feed(chunk.as_bytes());
        }
        let hits = s.finish();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].line, 2);
    }

    #[test]
    fn fatal_is_reported_unless_suppressed() {
        let checks = all(&BTreeMap::new());
        let mut s = Scanner::new(&checks, Scope::Console, BTreeMap::new());
        assert!(s.feed(b"You are in emergency mode.\n"));
        let mut s = Scanner::new(
            &checks,
            Scope::Console,
            [("emergency shell".to_string(), "expected".to_string())].into(),
        );
        assert!(!s.feed(b"You are in emergency mode.\n"));
        assert!(!failing(&s.finish()));
    }
}
