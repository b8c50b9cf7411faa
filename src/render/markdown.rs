//! Markdown for review: the shape reviewers know from Atlantis and Terraform
//! pull-request comments. One summary line first, then a `<details>` block
//! per resource kind holding a `diff` listing (`+` create, `-` delete, `!`
//! update or replace) with reasons; `apply` adds what was done and how long,
//! `test` a table and each failure's class and first check hit.
//!
//! Everything that comes from disk or a log (names, reasons, excerpts) is
//! made inert: control characters are escaped (no line of it can start a
//! fence), code blocks are fenced with more backticks than they contain, and
//! text outside code blocks is HTML-escaped. A document stays under
//! [`LIMIT`] characters (GitHub's comment limit): a plan is cut at a resource
//! boundary and says how many changes were left out and where the full plan is.

use std::fmt::Write as _;

use crate::harness::report::{Report, TestResult, Verdict};
use crate::ops::apply::{ApplyReport, ApplyResult, Step};
use crate::output::escape;
use crate::plan::{Plan, ResourcePlan};
use crate::resource::Action;

/// GitHub's limit for a comment body (characters).
pub const LIMIT: usize = 65_536;
/// Kept free for the closing lines and the note on what was cut.
const RESERVE: usize = 1_024;
/// Plans with at most this many changes show their blocks open.
const OPEN_UP_TO: usize = 20;

/// `1,198`
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Text for HTML (and Markdown) outside code blocks: it can open no tag,
/// entity, code span or emphasis, and break no table.
pub fn inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in escape(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '|' => out.push_str("&#124;"),
            '`' => out.push_str("&#96;"),
            '*' | '_' | '[' | ']' | '\\' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A fence longer than any run of backticks in `body`.
fn fence(body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

fn code_block(out: &mut String, lang: &str, body: &str) {
    let f = fence(body);
    let _ = write!(out, "{f}{lang}\n{body}{f}\n");
}

fn symbol(a: Action) -> &'static str {
    match a {
        Action::Create => "+",
        Action::Delete => "-",
        Action::Update | Action::Replace => "!",
    }
}

/// `+2 ~1 -0 ±0`
fn counts(create: usize, update: usize, delete: usize, replace: usize) -> String {
    format!("+{create} ~{update} -{delete} ±{replace}")
}

/// The diff lines of one resource.
fn resource_lines(r: &ResourcePlan) -> String {
    let mut s = String::new();
    let location = crate::output::display_name(&r.path);
    for c in &r.changes {
        let replace = if c.action == Action::Replace {
            "replace: "
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "{} {} → {}: {replace}{}{}",
            symbol(c.action),
            escape(&r.address),
            escape(&location),
            escape(&c.reason),
            if r.drift_warn {
                super::text::DRIFT_KEPT
            } else {
                ""
            }
        );
    }
    s
}

/// The kind of a resource: `plugin`, `image`, `machine`, `cloud`.
fn kind(address: &str) -> &str {
    address.split('.').next().unwrap_or(address)
}

/// The per-kind `<details>` blocks of a plan, within `budget` characters.
/// Returns (markdown, changes left out, resources left out).
fn plan_blocks(plan: &Plan, budget: usize) -> (String, usize, usize) {
    let open = if plan.summary.changing() <= OPEN_UP_TO {
        " open"
    } else {
        ""
    };
    let changed: Vec<&ResourcePlan> = plan
        .resources
        .iter()
        .filter(|r| !r.changes.is_empty())
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i < changed.len() {
        let k = kind(&changed[i].address);
        let group: Vec<&ResourcePlan> = changed[i..]
            .iter()
            .take_while(|r| kind(&r.address) == k)
            .copied()
            .collect();
        let (mut c, mut u, mut d, mut r) = (0, 0, 0, 0);
        for action in group.iter().filter_map(|r| r.action()) {
            match action {
                Action::Create => c += 1,
                Action::Update => u += 1,
                Action::Delete => d += 1,
                Action::Replace => r += 1,
            }
        }
        let mut body = String::new();
        let mut body_fence = 3;
        let mut shown = 0;
        let head = format!(
            "<details{open}><summary><b>{}</b>: {}</summary>\n\n",
            inline(k),
            counts(c, u, d, r)
        );
        for res in &group {
            let lines = resource_lines(res);
            // the block's frame costs head + fences (a fence can grow with the body) + closing
            let fence_len = body_fence.max(fence(&lines).len());
            let frame = head.len() + 2 * (fence_len + 8) + 16;
            if out.len() + frame + body.len() + lines.len() > budget {
                break;
            }
            body.push_str(&lines);
            body_fence = fence_len;
            shown += 1;
        }
        if shown > 0 {
            out.push_str(&head);
            code_block(&mut out, "diff", &body);
            out.push_str("\n</details>\n\n");
        }
        if shown < group.len() {
            let rest = &changed[i + shown..];
            let left: usize = rest.iter().map(|r| r.changes.len()).sum();
            return (out, left, rest.len());
        }
        i += group.len();
    }
    (out, 0, 0)
}

/// The note for what a cut left out.
fn cut_note(changes: usize, resources: usize, full: &str) -> String {
    format!(
        "> **{} more change(s) in {} resource(s) not shown** (a comment holds {} characters). The full plan: {}.\n",
        thousands(changes),
        thousands(resources),
        thousands(LIMIT),
        full
    )
}

/// The summary line of a plan: `+2 ~1 -0 ±0 (4 changes), 1,198 in sync` (resources
/// by action, then their changes) or `No changes, 1,200 in sync`.
pub fn plan_summary(plan: &Plan) -> String {
    let s = &plan.summary;
    if s.changing() == 0 {
        format!("No changes, {} in sync", thousands(s.unchanged))
    } else {
        // resources by action, then the changes they make when those are more
        let changes = s
            .changes_beyond_resources()
            .map(|n| format!(" ({} changes)", thousands(n)))
            .unwrap_or_default();
        format!(
            "{}{changes}, {} in sync",
            counts(s.create, s.update, s.delete, s.replace),
            thousands(s.unchanged)
        )
    }
}

/// `reconcile plan --format markdown`. `full` says where the whole plan is
/// when this one has to be cut (`the saved plan \`plan.json\``).
pub fn plan(plan: &Plan, full: &str) -> String {
    let mut out = match &plan.host {
        Some(h) if !plan.not_for_host.is_empty() => {
            format!("**Plan** for {}: {}\n\n", inline(h), plan_summary(plan))
        }
        _ => format!("**Plan:** {}\n\n", plan_summary(plan)),
    };
    let (blocks, left, resources) = plan_blocks(plan, LIMIT - RESERVE);
    out.push_str(&blocks);
    if !plan.not_for_host.is_empty() && out.len() + RESERVE * 2 < LIMIT {
        let mut body = String::new();
        for n in &plan.not_for_host {
            let line = format!("{}: {}\n", escape(&n.address), escape(&n.reason));
            if out.len() + body.len() + line.len() + RESERVE * 2 > LIMIT {
                break;
            }
            body.push_str(&line);
        }
        let _ = write!(
            out,
            "<details><summary><b>not for this host</b>: {}</summary>\n\n",
            thousands(plan.not_for_host.len())
        );
        code_block(&mut out, "text", &body);
        out.push_str("\n</details>\n\n");
    }
    if left > 0 {
        out.push_str(&cut_note(left, resources, full));
    }
    out
}

/// `reconcile apply --format markdown`: the result, what was planned, what
/// was done (and how long), and the tests when they ran.
pub fn apply(r: &ApplyReport, full: &str) -> String {
    let applied = r
        .events
        .iter()
        .filter(|e| matches!(e, Step::Applied { .. }))
        .count();
    let took = duration(r.took_ms as u64);
    let headline = match r.result {
        ApplyResult::Converged if r.changes == 0 => format!("converged in {took}, no changes"),
        ApplyResult::Converged => format!(
            "converged in {took}: {} change(s) to {applied} resource(s)",
            thousands(r.changes)
        ),
        ApplyResult::Failed => format!(
            "failed in {took}: {} resource(s) failed ({}), the others converged",
            thousands(r.failed.len()),
            inline(&r.failed.join(", "))
                .chars()
                .take(500)
                .collect::<String>()
        ),
        ApplyResult::Interrupted => {
            format!("interrupted after {took}: stopped after the resource in progress")
        }
    };
    let mut out = format!("**Apply:** {headline}\n\n");
    for g in &r.gates {
        use crate::ops::promote::GateResult;
        let _ = match g.result {
            GateResult::Promoted => writeln!(
                out,
                "**Promoted:** {} {} after {}\n",
                inline(&g.address),
                inline(&g.candidate),
                inline(&g.after.join(", "))
            ),
            _ => writeln!(
                out,
                "**Not promoted:** {}\n",
                inline(&super::text::gate_failure(g))
            ),
        };
    }
    if !r.drift_kept.is_empty() {
        let _ = writeln!(
            out,
            "**Drifted and left so** (`drift = \"warn\"`): {}\n",
            inline(&r.drift_kept.join(", "))
        );
    }
    // what was done first: it is short, and it is what happened
    let mut done = String::new();
    for e in &r.events {
        match e {
            Step::Recovered {
                address,
                outcome,
                step,
            } => {
                let _ = writeln!(
                    done,
                    "! {}: recovered: interrupted at `{}`, {outcome}",
                    escape(address),
                    escape(step)
                );
            }
            Step::Applied { address, ms, said } => {
                let _ = writeln!(done, "+ {}: done in {ms} ms", escape(address));
                for line in said {
                    let _ = writeln!(done, "  {}", escape(line));
                }
            }
            Step::Failed { address, error, .. } => {
                let _ = writeln!(done, "- {}: failed: {}", escape(address), escape(error));
            }
        }
    }
    let tests = r.tests.as_ref().map(test).unwrap_or_default();
    if !done.is_empty() {
        let mut block = String::from("<details open><summary><b>done</b></summary>\n\n");
        code_block(&mut block, "diff", &done);
        block.push_str("\n</details>\n\n");
        if out.len() + block.len() + tests.len() + RESERVE < LIMIT {
            out.push_str(&block);
        } else {
            out.push_str("> What was done is too long for a comment: see `reconcile apply --format json`.\n\n");
        }
    }
    if let Some(plan) = &r.plan {
        let _ = write!(out, "**Planned:** {}\n\n", plan_summary(plan));
        let budget = LIMIT.saturating_sub(out.len() + tests.len() + RESERVE);
        let (blocks, left, resources) = plan_blocks(plan, budget);
        out.push_str(&blocks);
        if left > 0 {
            out.push_str(&cut_note(left, resources, full));
        }
    }
    out.push_str(&tests);
    out
}

/// The first thing that failed a test: its first counting check hit
/// (`console.txt:57 kernel panic …`), else its reason.
fn first_failure(t: &TestResult) -> String {
    let hit = t
        .checks
        .iter()
        .find(|h| h.suppressed.is_none() && h.severity >= crate::config::model::Severity::Fail);
    match hit {
        Some(h) => format!(
            "{}:{} {}: {}",
            h.log.as_deref().unwrap_or("console.txt"),
            h.line,
            h.check,
            h.excerpt.chars().take(200).collect::<String>()
        ),
        None => t
            .reason
            .clone()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect(),
    }
}

/// `67 ms` under a second, `12.3 s` above.
fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// A report's wall time from its timestamps (a report without `duration_ms`).
fn run_seconds(r: &Report) -> Option<f64> {
    let a = humantime::parse_rfc3339(&r.started).ok()?;
    let b = humantime::parse_rfc3339(&r.finished).ok()?;
    Some(b.duration_since(a).ok()?.as_secs_f64())
}

/// `reconcile test --format markdown`: the counts, then each failure.
pub fn test(r: &Report) -> String {
    let s = &r.summary;
    let verdict = if r.incomplete {
        "interrupted"
    } else if r.failed() {
        "failed"
    } else {
        "passed"
    };
    let took = match r.duration_ms {
        0 => run_seconds(r)
            .map(|t| format!("{t:.1} s"))
            .unwrap_or_else(|| "?".into()),
        ms => duration(ms),
    };
    let mut out = format!(
        "**Tests:** {verdict}: {} passed, {} warned, {} failed, {} skipped in {took}\n\n",
        thousands(s.pass),
        thousands(s.warn),
        thousands(s.fail),
        thousands(s.skip)
    );
    out.push_str("| passed | failed | warned | skipped | duration |\n|---:|---:|---:|---:|---:|\n");
    let _ = write!(
        out,
        "| {} | {} | {} | {} | {took} |\n\n",
        thousands(s.pass),
        thousands(s.fail),
        thousands(s.warn),
        thousands(s.skip)
    );
    let failed: Vec<&TestResult> = r
        .tests
        .iter()
        .filter(|t| t.result == Verdict::Fail)
        .collect();
    if !failed.is_empty() {
        out.push_str("| failed test | class | first failure |\n|---|---|---|\n");
        let mut shown = 0;
        for t in &failed {
            let class = t.class.map(|c| c.key()).unwrap_or_default();
            let row = format!(
                "| <code>{}</code> | {} | <code>{}</code> |\n",
                inline(&t.name),
                inline(class),
                inline(&first_failure(t))
            );
            if out.len() + row.len() + RESERVE > LIMIT / 2 {
                break;
            }
            out.push_str(&row);
            shown += 1;
        }
        if shown < failed.len() {
            let _ = writeln!(
                out,
                "\n> {} more failed test(s) not shown: see the report (`report.json`, `junit.xml`).",
                thousands(failed.len() - shown)
            );
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1198), "1,198");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn a_fence_outlasts_the_backticks_inside() {
        assert_eq!(fence("plain"), "```");
        assert_eq!(fence("a ```` b"), "`````");
    }

    #[test]
    fn inline_text_opens_nothing() {
        let s = inline("</details><script>alert(1)</script> | `x` *y*\n");
        assert!(
            !s.contains('<') && !s.contains('>') && !s.contains('`') && !s.contains('|'),
            "{s}"
        );
        assert!(!s.contains('\n'), "{s}");
    }
}
