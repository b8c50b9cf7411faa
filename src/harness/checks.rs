//! Console checks: kola's list of badness (kernel panic, oops, emergency shell,
//! segfault…) plus `[check.*]` from the file, scanned over a stream line by line
//! with line numbers. At most one report per check (with a hit count and the
//! first excerpt); a `fatal` hit can stop a test at once.

use std::collections::BTreeMap;
use std::io::{self, BufRead};

use regex::bytes::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

use crate::config::model::{Check, Scope, Severity};

/// A built-in check: every pattern of kola's `consoleChecks` (harness.go),
/// taken as kola writes it so every line kola flags is flagged here too, some
/// widened with patterns of the same failure kola does not know.
pub struct Builtin {
    pub name: &'static str,
    pub regex: &'static str,
    pub severity: Severity,
    /// Hits needed before it reports (kola's bonding check: ten of them).
    pub count: u32,
}

const fn check(name: &'static str, regex: &'static str, severity: Severity) -> Builtin {
    Builtin {
        name,
        regex,
        severity,
        count: 1,
    }
}

pub const BUILTIN: &[Builtin] = &[
    check(
        "emergency shell",
        r"Press Enter for emergency shell|Starting Emergency Shell|You are in emergency mode|Entering emergency mode|Dropping to debug shell",
        Severity::Fatal,
    ),
    check("dracut fatal", r"Refusing to continue", Severity::Fatal),
    check(
        "kernel panic",
        r"Kernel panic - not syncing: (.*)",
        Severity::Fatal,
    ),
    check("kernel oops", r"Oops:", Severity::Fail),
    check(
        "kernel BUG",
        r"\bBUG: (?:unable to handle|kernel NULL pointer|soft lockup|scheduling while atomic|Bad page|KASAN)",
        Severity::Fail,
    ),
    check(
        "kernel warning",
        r"WARNING: CPU: \d+ PID: \d+ at (.+)",
        Severity::Fail,
    ),
    check(
        "offline device I/O",
        r"rejecting I/O to offline device",
        Severity::Fail,
    ),
    check(
        "CoreOS static network agent failure",
        r"Failed to start CoreOS Static Network Agent",
        Severity::Fail,
    ),
    Builtin {
        // kola: (?s:link status up for interface [^,]+, enabling it in [0-9]+ ms.*?){10}
        // over the whole console, i.e. ten such lines anywhere
        name: "excessive bonding link status messages",
        regex: r"link status up for interface [^,]+, enabling it in [0-9]+ ms",
        severity: Severity::Fail,
        count: 10,
    },
    // kola's pattern ends `… with max blocks \d+ with (error \d+)`; every line it matches matches this
    check(
        "ext4 delayed allocation failure",
        r"EXT4-fs \([^)]+\): Delayed block allocation failed",
        Severity::Fail,
    ),
    check(
        "GRUB magic broken",
        r"((alloc|free) magic) (is )?broken",
        Severity::Fail,
    ),
    check(
        "Ignition fetch cancellation race",
        r"ignition\[[0-9]+\]: failed to fetch config: context canceled",
        Severity::Fail,
    ),
    check(
        "initrd-cleanup.service terminated",
        r"initrd-cleanup\.service: Main process exited, code=killed, status=15/TERM",
        Severity::Fail,
    ),
    check(
        "bad page table",
        r"mm/pgtable-generic.c:\d+: bad (p.d|pte)",
        Severity::Fail,
    ),
    check(
        "Go panic",
        r"panic: (.*)|^fatal error: |^goroutine \d+ \[running\]:",
        Severity::Fail,
    ),
    check(
        "segfault",
        r"SIGSEGV|=11/SEGV|segfault at [0-9a-f]+ ip [0-9a-f]+ sp [0-9a-f]+ error",
        Severity::Fail,
    ),
    check("core dump", r"[Cc]ore dump|dumped core", Severity::Fail),
    check(
        "oom-killer",
        r"invoked oom-killer|Out of memory: Killed process",
        Severity::Fail,
    ),
    check("ordering cycle", r"Ordering cycle found", Severity::Fail),
    check(
        "hung task",
        r"INFO: task .+ blocked for more than \d+ seconds",
        Severity::Warn,
    ),
    check(
        "RCU stall",
        r"rcu: INFO: rcu_\w+ (?:self-)?detected stall",
        Severity::Fail,
    ),
    // systemd's own failure lines, which kola's list misses (its core dumps
    // are caught above: `systemd-coredump[…]: Process N (x) of user U dumped core.`)
    check(
        "systemd unit failed to start",
        r"Failed to start (.+)",
        Severity::Warn,
    ),
    check(
        "systemd unit failed",
        r"[Ff]ailed with result '([^']+)'",
        Severity::Warn,
    ),
];

#[derive(Debug, Clone)]
pub struct ConsoleCheck {
    pub name: String,
    pub regex: Regex,
    pub severity: Severity,
    pub scope: Scope,
    /// Hits needed before it reports.
    pub count: u32,
    /// The regex is matched against this many lines at once (joined by `\n`).
    pub lines: u32,
}

/// Every check: built-in first, then the file's (a declared check may reuse a built-in name to override it).
pub fn all(declared: &BTreeMap<String, Check>) -> Vec<ConsoleCheck> {
    let mut out: Vec<ConsoleCheck> = BUILTIN
        .iter()
        .filter(|b| !declared.contains_key(b.name))
        .map(|b| ConsoleCheck {
            name: b.name.to_string(),
            regex: Regex::new(&format!("(?m){}", b.regex)).expect("built-in check regex"),
            severity: b.severity,
            scope: Scope::Any,
            count: b.count,
            lines: 1,
        })
        .collect();
    for (name, c) in declared {
        out.push(ConsoleCheck {
            name: name.clone(),
            regex: Regex::new(&c.regex).expect("validated regex"),
            severity: c.severity,
            scope: c.scope,
            count: c.count.unwrap_or(1).max(1),
            lines: c.lines.unwrap_or(1).max(1),
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
    /// The log it was found in (`console.txt`, `journal.txt`, `output` for stdout and stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

/// The checks of one scope, compiled once and shared by every test's scanner.
pub struct CheckSet {
    checks: Vec<ConsoleCheck>,
    /// Checks of one line: all of them as one alternation, so one pass over a
    /// chunk finds the few lines worth a closer look, then a set to tell which.
    single: Vec<usize>,
    any: Regex,
    set: RegexSet,
    /// Checks over several lines, each matched against a window of the last lines.
    multi: Vec<usize>,
    window: usize,
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
        let (multi, single): (Vec<usize>, Vec<usize>) =
            (0..checks.len()).partition(|&i| checks[i].lines > 1);
        let set = RegexSet::new(single.iter().map(|&i| checks[i].regex.as_str()))
            .expect("checks compile");
        let alternation: Vec<String> = single
            .iter()
            .map(|&i| format!("(?:{})", checks[i].regex.as_str()))
            .collect();
        let any = if alternation.is_empty() {
            Regex::new(r"[^\s\S]").expect("never matches")
        } else {
            Regex::new(&format!("(?m){}", alternation.join("|"))).expect("checks compile")
        };
        let window = multi
            .iter()
            .map(|&i| checks[i].lines as usize)
            .max()
            .unwrap_or(0);
        std::sync::Arc::new(CheckSet {
            checks,
            single,
            any,
            set,
            multi,
            window,
        })
    }
}

/// The most of one line a scanner keeps (and checks): a console line is cut
/// at 1 MiB by the driver, which passes on its end too; output lines of any
/// length are checked on their first this many bytes.
pub const MAX_SCANNED_LINE: usize = (1 << 20) + (16 << 10);

/// A streaming scanner: feed bytes, get hits with line numbers.
pub struct Scanner {
    compiled: std::sync::Arc<CheckSet>,
    suppressed: BTreeMap<String, String>,
    hits: BTreeMap<usize, Hit>,
    line: u64,
    partial: Vec<u8>,
    /// The last lines, for checks over several lines.
    recent: std::collections::VecDeque<Vec<u8>>,
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
            recent: std::collections::VecDeque::new(),
            step: None,
            fatal: false,
        }
    }

    pub fn set_step(&mut self, step: &str) {
        self.step = Some(step.to_string());
    }

    /// Keep `bytes` of the current, unterminated line: at most
    /// [`MAX_SCANNED_LINE`] of it (a line without end is scanned on its head).
    fn keep(&mut self, bytes: &[u8]) {
        let room = MAX_SCANNED_LINE.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Feed a chunk; returns true once a non-suppressed `fatal` check has hit.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let mut rest = chunk;
        if !self.partial.is_empty() {
            let Some(i) = memchr::memchr(b'\n', rest) else {
                self.keep(rest);
                return self.fatal;
            };
            self.keep(&rest[..i]);
            let line = std::mem::take(&mut self.partial);
            self.scan_line(&line);
            rest = &rest[i + 1..];
        }
        let Some(last) = memchr::memrchr(b'\n', rest) else {
            self.keep(rest);
            return self.fatal;
        };
        let region = &rest[..=last];
        if self.compiled.multi.is_empty() {
            self.scan_region(region);
        } else {
            // checks over several lines see every line
            for line in region[..region.len() - 1].split(|b| *b == b'\n') {
                self.scan_line(line);
            }
        }
        self.keep(&rest[last + 1..]);
        self.fatal
    }

    /// Whole lines in bulk: one search over the region; only lines with a match are split out.
    fn scan_region(&mut self, region: &[u8]) {
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
    }

    /// Scan the last line if it had no newline; returns the hits that reached
    /// their count, in check order.
    pub fn finish(mut self) -> Vec<Hit> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.scan_line(&line);
        }
        let compiled = self.compiled.clone();
        self.hits
            .into_iter()
            .filter(|(i, h)| h.count >= compiled.checks[*i].count as u64)
            .map(|(_, h)| h)
            .collect()
    }

    fn scan_line(&mut self, line: &[u8]) {
        self.line += 1;
        let compiled = self.compiled.clone();
        // one pass over the line for all checks; most lines match nothing
        if compiled.any.is_match(line) {
            for i in compiled.set.matches(line).iter() {
                self.record(compiled.single[i], line);
            }
        }
        if compiled.multi.is_empty() {
            return;
        }
        self.recent.push_back(line.to_vec());
        while self.recent.len() > compiled.window {
            self.recent.pop_front();
        }
        for &idx in &compiled.multi {
            let n = (compiled.checks[idx].lines as usize).min(self.recent.len());
            let lines: Vec<&[u8]> = self
                .recent
                .iter()
                .skip(self.recent.len() - n)
                .map(Vec::as_slice)
                .collect();
            let joined = lines.join(&b'\n');
            let newest = joined.len() - line.len();
            // a match counts once: on the line where it ends
            if compiled.checks[idx]
                .regex
                .find_iter(&joined)
                .any(|m| m.end() > newest || (m.end() == newest && line.is_empty()))
            {
                self.record(idx, line);
            }
        }
    }

    fn record(&mut self, idx: usize, line: &[u8]) {
        let c = &self.compiled.checks[idx];
        let suppressed = self.suppressed.get(&c.name).cloned();
        let (line_no, step) = (self.line, self.step.clone());
        let hit = self
            .hits
            .entry(idx)
            .and_modify(|h| h.count += 1)
            .or_insert_with(|| Hit {
                check: c.name.clone(),
                severity: c.severity,
                count: 1,
                line: line_no,
                excerpt: excerpt(line),
                step,
                suppressed: suppressed.clone(),
                log: None,
            });
        if c.severity == Severity::Fatal && suppressed.is_none() && hit.count >= c.count as u64 {
            self.fatal = true;
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
    fn systemd_failures_kola_misses_are_caught_as_warnings_and_core_dumps_fail() {
        let journal = "Dec 03 17:00:01.123456 kit systemd[1]: Failed to start broken.service - A unit that fails.\n\
            Dec 03 17:00:01.123500 kit systemd[1]: broken.service: Failed with result 'exit-code'.\n\
            Dec 03 17:00:02.000000 kit systemd-coredump[321]: Process 300 (crasher) of user 0 dumped core.\n";
        let hits = scan(journal);
        let by: BTreeMap<&str, &Hit> = hits.iter().map(|h| (h.check.as_str(), h)).collect();
        assert_eq!(by["systemd unit failed to start"].severity, Severity::Warn);
        assert_eq!(by["systemd unit failed to start"].line, 1);
        assert_eq!(by["systemd unit failed"].severity, Severity::Warn);
        assert_eq!(by["systemd unit failed"].line, 2);
        assert_eq!(by["core dump"].severity, Severity::Fail);
        assert_eq!(by["core dump"].line, 3);
        assert!(failing(&hits));
        // the unit lines alone warn and do not fail
        assert!(!failing(&scan(
            &journal.lines().take(2).collect::<Vec<_>>().join("\n")
        )));
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

    /// kola's `consoleChecks` (mantle v0.13.0 harness.go) verbatim, each with
    /// the check of ours that must flag whatever it flags. dracut's "Refusing
    /// to continue" is kola's later addition.
    const KOLA: &[(&str, &str)] = &[
        (
            "Press Enter for emergency shell|Starting Emergency Shell|You are in emergency mode",
            "emergency shell",
        ),
        ("Refusing to continue", "dracut fatal"),
        ("Kernel panic - not syncing: (.*)", "kernel panic"),
        ("Oops:", "kernel oops"),
        (r"WARNING: CPU: \d+ PID: \d+ at (.+)", "kernel warning"),
        ("rejecting I/O to offline device", "offline device I/O"),
        (
            "Failed to start CoreOS Static Network Agent",
            "CoreOS static network agent failure",
        ),
        (
            r"EXT4-fs \([^)]+\): Delayed block allocation failed for inode \d+ at logical offset \d+ with max blocks \d+ with (error \d+)",
            "ext4 delayed allocation failure",
        ),
        ("((alloc|free) magic) (is )?broken", "GRUB magic broken"),
        (
            "ignition\\[[0-9]+\\]: failed to fetch config: context canceled",
            "Ignition fetch cancellation race",
        ),
        (
            "initrd-cleanup\\.service: Main process exited, code=killed, status=15/TERM",
            "initrd-cleanup.service terminated",
        ),
        ("mm/pgtable-generic.c:\\d+: bad (p.d|pte)", "bad page table"),
        ("panic: (.*)", "Go panic"),
        ("SIGSEGV|=11/SEGV", "segfault"),
        ("[Cc]ore dump", "core dump"),
    ];
    const KOLA_BONDING: &str =
        "(?s:link status up for interface [^,]+, enabling it in [0-9]+ ms.*?){10}";
    const CORPUS: &str = include_str!("../../tests/fixtures/console/kola-parity.log");
    const NEAR_MISSES: &str = include_str!("../../tests/fixtures/console/kola-near-misses.log");

    fn names(hits: &[Hit]) -> std::collections::BTreeSet<String> {
        hits.iter().map(|h| h.check.clone()).collect()
    }

    #[test]
    fn every_line_kola_flags_is_flagged() {
        let kola: Vec<(regex::Regex, &str)> = KOLA
            .iter()
            .map(|(re, ours)| (regex::Regex::new(re).unwrap(), *ours))
            .collect();
        let mut covered = std::collections::BTreeSet::new();
        for line in CORPUS.lines().chain(NEAR_MISSES.lines()) {
            let ours = names(&scan(&format!("{line}\n")));
            for (re, name) in &kola {
                if re.is_match(line) {
                    covered.insert(*name);
                    assert!(
                        ours.contains(*name),
                        "kola flags {line:?} as {name}; we found {ours:?}"
                    );
                }
            }
        }
        // the corpus exercises every kola pattern
        assert_eq!(covered.len(), KOLA.len(), "{covered:?}");
    }

    #[test]
    fn near_misses_flag_nothing_here_or_in_kola() {
        for line in NEAR_MISSES.lines() {
            for (re, _) in KOLA {
                assert!(
                    !regex::Regex::new(re).unwrap().is_match(line),
                    "kola flags {line:?}"
                );
            }
        }
        assert_eq!(scan(NEAR_MISSES), vec![]);
    }

    #[test]
    fn ten_bonding_messages_anywhere_flag_like_kolas_multi_line_regex() {
        let kola = regex::Regex::new(KOLA_BONDING).unwrap();
        let line = "bond0: link status up for interface eth0, enabling it in 200 ms\n";
        for n in [9, 10, 12] {
            // spread out, with other lines between, as kola's `.*?` allows
            let text: String = (0..n).map(|i| format!("{line}other line {i}\n")).collect();
            let ours = scan(&text);
            let hit = ours
                .iter()
                .find(|h| h.check == "excessive bonding link status messages");
            assert_eq!(kola.is_match(&text), n >= 10);
            assert_eq!(hit.is_some(), n >= 10, "{n} messages: {ours:?}");
            if let Some(h) = hit {
                assert_eq!(h.count, n as u64);
                assert_eq!(h.line, 1);
            }
        }
        assert!(kola.is_match(CORPUS));
        assert!(names(&scan(CORPUS)).contains("excessive bonding link status messages"));
    }

    fn declared(
        regex: &str,
        count: Option<u32>,
        lines: Option<u32>,
        severity: Severity,
    ) -> BTreeMap<String, Check> {
        [(
            "mine".to_string(),
            Check {
                regex: regex.into(),
                severity,
                scope: Scope::Console,
                count,
                lines,
            },
        )]
        .into()
    }

    #[test]
    fn checks_over_several_lines_match_across_them_once() {
        let checks = all(&declared(
            r"(?s)BUG: Bad page state.*\nCall Trace:",
            None,
            Some(3),
            Severity::Fail,
        ));
        let mut s = Scanner::new(&checks, Scope::Console, BTreeMap::new());
        // split across chunks, with the two halves three lines apart (too far) and then two apart
        for chunk in [
            "BUG: Bad page state\na\nb\nCall",
            " Trace:\nx\nBUG: Bad page state\ny\nCall Trace:\nz\n",
        ] {
            s.feed(chunk.as_bytes());
        }
        let hits = s.finish();
        let h = hits
            .iter()
            .find(|h| h.check == "mine")
            .expect("multi-line hit");
        assert_eq!((h.line, h.count), (8, 1), "{h:?}");
        assert_eq!(h.excerpt, "Call Trace:");
    }

    #[test]
    fn a_fatal_check_with_a_count_stops_only_at_its_count() {
        let checks = all(&declared("flap", Some(3), None, Severity::Fatal));
        let mut s = Scanner::new(&checks, Scope::Console, BTreeMap::new());
        assert!(!s.feed(b"flap\nflap\n"));
        assert!(s.feed(b"ok\nflap\n"));
        let hits = s.finish();
        assert_eq!((hits[0].line, hits[0].count), (1, 3));
    }

    #[test]
    fn a_line_without_end_is_scanned_on_its_first_mebibyte_and_memory_stays_bounded() {
        let checks = all(&BTreeMap::new());
        let mut s = Scanner::new(&checks, Scope::Console, BTreeMap::new());
        s.feed(b"Kernel panic - not syncing: early ");
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..50 {
            s.feed(&chunk);
            assert!(s.partial.len() <= MAX_SCANNED_LINE, "{}", s.partial.len());
        }
        s.feed(b"\nsegfault at 0 ip 0 sp 0 error 4\n");
        let hits = s.finish();
        let names: Vec<&str> = hits.iter().map(|h| h.check.as_str()).collect();
        assert_eq!(names, vec!["kernel panic", "segfault"]);
        assert_eq!((hits[0].line, hits[1].line), (1, 2));
        assert!(hits[0].excerpt.len() < 4096);
    }
}
