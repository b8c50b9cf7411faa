//! The page `watch --listen` serves at `/`: the resources by state, the
//! last converge and apply, the last test run with each failure linked to
//! the console line it was found on, and the commit in force. Plain HTML
//! with a little CSS; no script.

use std::fmt::Write;
use std::path::Path;

use crate::harness::report::Verdict;
use crate::ops::monitor::{State, View};

/// `<`, `>`, `&`, `"` and `'` as entities.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{text-align:left;padding:.2em .8em;border-bottom:1px solid #ddd}\
.ready,.pass{color:#1a7f37}.failed,.fail{color:#cf222e}.drifted,.warn,.pending{color:#9a6700}\
code{background:#f4f4f4;padding:0 .2em}pre{margin:0}\
.l{color:#888;user-select:none;padding-right:1em;text-align:right;display:inline-block;min-width:4em}\
:target{background:#fff3b0}";

fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    )
}

/// The page at `/`. `runs` is the runs directory the report's paths are under.
pub fn index(v: &View, runs: Option<&Path>) -> String {
    let mut h = head(&format!("reconcile on {}", v.host));
    let _ = write!(
        h,
        "<h1>reconcile on <code>{}</code></h1>\n<p>{} · reconcile {}",
        escape(&v.host),
        escape(&v.file.display().to_string()),
        escape(v.version)
    );
    if let Some(c) = &v.commit {
        let _ = write!(h, " · commit <code id=\"commit\">{}</code>", escape(c));
    }
    h.push_str("</p>\n<ul id=\"health\">");
    for (name, r) in [("alive", &v.healthy), ("ready", &v.ready)] {
        let _ = match r {
            Ok(()) => write!(h, "<li class=\"ready\">{name}</li>"),
            Err(why) => write!(h, "<li class=\"failed\">not {name}: {}</li>", escape(why)),
        };
    }
    h.push_str("</ul>\n");

    // resources by state
    let count = |s: State| v.resources.iter().filter(|r| r.state == s).count();
    let by_state: Vec<String> = State::ALL
        .iter()
        .filter(|s| count(**s) > 0)
        .map(|s| format!("{} {}", count(*s), s.name()))
        .collect();
    let _ = write!(
        h,
        "<h2>Resources</h2>\n<p id=\"by-state\">{}</p>\n<table id=\"resources\">\
         <thead><tr><th>resource</th><th>kind</th><th>state</th><th>why</th></tr></thead><tbody>\n",
        if by_state.is_empty() {
            "none yet".to_string()
        } else {
            by_state.join(", ")
        }
    );
    for r in &v.resources {
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"{s}\">{s}</td><td>{}</td></tr>",
            escape(&r.address),
            escape(&r.kind),
            escape(r.reason.as_deref().unwrap_or("")),
            s = r.state.name()
        );
    }
    h.push_str("</tbody></table>\n");

    h.push_str("<h2>Last converge</h2>\n<p id=\"last-converge\">");
    match &v.last_converge {
        None => h.push_str("none yet"),
        Some(c) => {
            let _ = write!(
                h,
                "<span class=\"{}\">{}</span> at {} ({}, {} changes, {} ms){}",
                if c.ok { "ready" } else { "failed" },
                if c.ok { "succeeded" } else { "failed" },
                escape(&c.finished),
                escape(&c.trigger),
                c.changes,
                c.ms,
                c.error
                    .as_deref()
                    .map(|e| format!(": {}", escape(e)))
                    .unwrap_or_default()
            );
        }
    }
    h.push_str("</p>\n");
    if let Some(a) = &v.last_apply {
        let _ = writeln!(
            h,
            "<p id=\"last-apply\">last apply: {} at {} ({} changes, {} ms)</p>",
            escape(&a.result),
            escape(&a.finished),
            a.changes,
            a.duration_ms
        );
    }

    h.push_str("<h2>Last test run</h2>\n");
    match &v.last_tests {
        None => h.push_str("<p id=\"last-tests\">none yet</p>\n"),
        Some(r) => {
            let s = &r.summary;
            let _ = writeln!(
                h,
                "<p id=\"last-tests\"><code>{}</code> finished {}: {} passed, {} failed, {} warned, {} skipped{}</p>",
                escape(&r.run),
                escape(&r.finished),
                s.pass,
                s.fail,
                s.warn,
                s.skip,
                if r.incomplete { " (incomplete)" } else { "" }
            );
            let failures: Vec<_> = r
                .tests
                .iter()
                .filter(|t| matches!(t.result, Verdict::Fail | Verdict::Warn))
                .collect();
            if !failures.is_empty() {
                h.push_str("<table id=\"failures\"><thead><tr><th>test</th><th>result</th><th>why</th></tr></thead><tbody>\n");
            }
            for t in &failures {
                let dir = runs.and_then(|runs| t.output.strip_prefix(runs).ok());
                let mut why = escape(t.reason.as_deref().unwrap_or(""));
                for hit in t.checks.iter().filter(|c| c.suppressed.is_none()) {
                    let log = match hit.log.as_deref() {
                        None | Some("console.txt") => "console.txt",
                        Some("output") => "stdout.txt",
                        Some(other) => other,
                    };
                    let text = format!(
                        "{} at {log}:{}: <code>{}</code>",
                        escape(&hit.check),
                        hit.line,
                        escape(&hit.excerpt)
                    );
                    let _ = match dir {
                        Some(d) => write!(
                            why,
                            "<br><a href=\"/runs/{}/{log}#L{}\">{text}</a>",
                            escape(&d.display().to_string()),
                            hit.line
                        ),
                        None => write!(why, "<br>{text}"),
                    };
                }
                let class = if t.result == Verdict::Fail {
                    "fail"
                } else {
                    "warn"
                };
                let _ = writeln!(
                    h,
                    "<tr><td><code>{}.{}</code></td><td class=\"{class}\">{class}</td><td>{why}</td></tr>",
                    escape(&t.suite),
                    escape(&t.name),
                );
            }
            if !failures.is_empty() {
                h.push_str("</tbody></table>\n");
            }
        }
    }
    h.push_str("<p><a href=\"/metrics\">metrics</a> · <a href=\"/status\">status</a> · <a href=\"/healthz\">healthz</a> · <a href=\"/readyz\">readyz</a></p>\n</body></html>\n");
    h
}

/// A log of a run, one anchor per line (`#L12`).
pub fn log(name: &str, text: &str) -> String {
    let mut h = head(name);
    let _ = writeln!(h, "<h1><code>{}</code></h1>", escape(name));
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let _ = writeln!(
            h,
            "<pre id=\"L{n}\"><a class=\"l\" href=\"#L{n}\">{n}</a>{}</pre>",
            escape(line)
        );
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_lines_get_anchors() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let page = log("console.txt", "one\n<script>two</script>\n");
        assert!(page.contains("<pre id=\"L2\"><a class=\"l\" href=\"#L2\">2</a>&lt;script&gt;two&lt;/script&gt;</pre>"), "{page}");
        assert!(!page.contains("<script>"));
    }
}
