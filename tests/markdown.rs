//! The Markdown of plan, apply and test on fixed inputs, compared with the
//! goldens under tests/golden/ (they are the UI: review them as such;
//! `RECONCILE_BLESS=1` rewrites them), a plan of 5,000 changes cut to fit a
//! comment, and hostile names that must not break out of their code block or
//! inject HTML.

use std::fs;
use std::path::Path;

use reconcile::harness::report::Report;
use reconcile::ops::apply::{ApplyReport, ApplyResult, Step};
use reconcile::plan::Plan;
use reconcile::render::markdown;

fn golden(name: &str, now: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var("RECONCILE_BLESS").is_ok_and(|v| v == "1") {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, now).unwrap();
    }
    let want = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == now,
        "{name} differs from the golden (review it, then `RECONCILE_BLESS=1 cargo test --test markdown`):\n--- golden\n{want}\n--- now\n{now}"
    );
}

fn change(action: &str, reason: &str) -> serde_json::Value {
    serde_json::json!({ "action": action, "reason": reason })
}

fn resource(address: &str, path: &str, changes: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({ "address": address, "path": path, "fingerprint": "f", "changes": changes })
}

/// A plan of `resources`, its summary counted as reconcile counts it: each
/// resource once, by what its changes add up to, and the changes apart.
fn plan_of(resources: Vec<serde_json::Value>, unchanged: usize) -> Plan {
    use reconcile::resource::{Action, Change};
    let (mut c, mut u, mut r, mut d, mut n) = (0, 0, 0, 0, 0);
    for res in &resources {
        let changes: Vec<Change> = serde_json::from_value(res["changes"].clone()).unwrap();
        n += changes.len();
        match reconcile::plan::resource_action(true, &changes) {
            Some(Action::Create) => c += 1,
            Some(Action::Update) => u += 1,
            Some(Action::Replace) => r += 1,
            Some(Action::Delete) => d += 1,
            None => {}
        }
    }
    serde_json::from_value(serde_json::json!({
        "format_version": 1,
        "reconcile_version": "0.1.0",
        "desired": { "file": "/farm/reconcile.toml", "sha256": "00" },
        "resources": resources,
        "summary": { "create": c, "update": u, "replace": r, "delete": d, "unchanged": unchanged, "changes": n }
    }))
    .unwrap()
}

fn fixed_plan() -> Plan {
    let mut kolet = change("update", "version 1.1.0 → 1.2.0");
    kolet["from"] = "1.1.0".into();
    kolet["to"] = "1.2.0".into();
    plan_of(
        vec![
            resource(
                "cloud.ec2-dev.machine.kit@3",
                "ec2-dev:kit@3",
                vec![change("create", "not published")],
            ),
            resource(
                "image.bookworm-amd64-install",
                "/srv/tftp/amd64/generic/bookworm/install",
                vec![change(
                    "replace",
                    "linux sha256 1231a5e7… ≠ declared 9f3e0c11…",
                )],
            ),
            resource(
                "machine.linux-gcc",
                "/build/machines/linux-gcc",
                vec![
                    change(
                        "create",
                        "revision 4 missing (build from images/linux-gcc-4.tar.zst)",
                    ),
                    change("update", "current revision 3 → 4"),
                    change("delete", "revision 1 beyond keep = 2"),
                ],
            ),
            resource("plugin.kolet", "/srv/plugins/kolet", vec![kolet]),
            resource(
                "plugin.old",
                "/srv/plugins/old",
                vec![change("delete", "not declared any more (owned)")],
            ),
            resource("plugin.same", "/srv/plugins/same", vec![]),
        ],
        1_198,
    )
}

fn fixed_report() -> Report {
    serde_json::from_value(serde_json::json!({
        "format_version": 1,
        "reconcile_version": "0.1.0",
        "run": "20261126T010000Z-42",
        "started": "2026-11-26T01:00:00Z",
        "finished": "2026-11-26T01:00:12Z",
        "incomplete": false,
        "summary": { "pass": 3, "fail": 2, "warn": 1, "skip": 1 },
        "tests": [
            { "name": "smoke.boot", "suite": "smoke", "result": "FAIL", "class": "check",
              "reason": "fatal console check: kernel panic (line 57, 1 hit(s)): Kernel panic - not syncing",
              "duration_ms": 9000, "attempts": [], "output": "/runs/smoke.boot",
              "checks": [
                { "check": "kernel warning", "severity": "warn", "count": 1, "line": 12, "excerpt": "WARNING: CPU: 0 PID: 1", "log": "console.txt" },
                { "check": "kernel panic", "severity": "fatal", "count": 1, "line": 57, "excerpt": "Kernel panic - not syncing: VFS: Unable to mount root fs", "log": "console.txt" }
              ] },
            { "name": "smoke.uname", "suite": "smoke", "result": "FAIL", "class": "test",
              "reason": "exit status 1, expected exit status 0", "duration_ms": 40, "attempts": [], "checks": [], "output": "/runs/smoke.uname" },
            { "name": "smoke.ok", "suite": "smoke", "result": "PASS", "duration_ms": 30, "attempts": [], "checks": [], "output": "/runs/smoke.ok" }
        ]
    }))
    .unwrap()
}

#[test]
fn plan_markdown_matches_its_golden() {
    let full = "the saved plan `plan.json`";
    golden("plan.md", &markdown::plan(&fixed_plan(), full));
    golden(
        "plan-no-changes.md",
        &markdown::plan(&plan_of(vec![], 1_200), full),
    );
}

#[test]
fn apply_markdown_matches_its_golden() {
    let report = ApplyReport {
        format_version: 1,
        result: ApplyResult::Failed,
        changes: 6,
        failed: vec!["plugin.old".into()],
        drift_kept: vec![],
        gates: vec![],
        events: vec![
            Step::Recovered {
                address: "plugin.kolet".into(),
                outcome: "rolled back",
                step: "exchange".into(),
            },
            Step::Applied {
                address: "cloud.ec2-dev.machine.kit@3".into(),
                ms: 2_930,
                said: vec!["uploaded 131 of 2048 blocks (1917 zero blocks skipped, 93.6%), 65.5 MiB in 1.75 s".into()],
            },
            Step::Applied {
                address: "plugin.kolet".into(),
                ms: 12,
                said: vec![],
            },
            Step::Failed {
                address: "plugin.old".into(),
                error: "plugin.old: /srv/plugins/old: Permission denied (os error 13)".into(),
                help: None,
            },
        ],
        took_ms: 3_412,
        plan: Some(fixed_plan()),
        tests: Some(fixed_report()),
    };
    golden(
        "apply.md",
        &markdown::apply(&report, "`reconcile plan --format json`"),
    );
}

#[test]
fn test_markdown_matches_its_golden() {
    golden("test.md", &markdown::test(&fixed_report()));
}

/// Lines outside fenced code blocks, and every fenced block's lines (fence
/// tracking as CommonMark does it: a closing fence is at least as long as
/// the opening one and has nothing after it).
fn split_fences(md: &str) -> (Vec<&str>, Vec<Vec<&str>>) {
    let mut outside = Vec::new();
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    let mut open: Option<usize> = None;
    for line in md.lines() {
        let ticks = line.chars().take_while(|&c| c == '`').count();
        match open {
            None if ticks >= 3 => {
                open = Some(ticks);
                blocks.push(Vec::new());
            }
            None => outside.push(line),
            Some(n) if ticks >= n && line[ticks..].trim().is_empty() => open = None,
            Some(_) => blocks.last_mut().unwrap().push(line),
        }
    }
    assert!(open.is_none(), "a code block was left open:\n{md}");
    (outside, blocks)
}

#[test]
fn a_plan_of_5000_changes_is_cut_at_a_resource_boundary_and_says_what_was_left_out() {
    let resources: Vec<_> = (0..5_000)
        .map(|i| {
            resource(
                &format!("plugin.p{i:05}"),
                &format!("/srv/plugins/p{i:05}"),
                vec![change(
                    "create",
                    &format!("not installed (version 1.0.{i})"),
                )],
            )
        })
        .collect();
    let plan = plan_of(resources, 0);
    let md = markdown::plan(&plan, "the saved plan `plan.json`");
    assert!(
        md.chars().count() < markdown::LIMIT,
        "{} characters",
        md.chars().count()
    );
    let (outside, blocks) = split_fences(&md);
    assert_eq!(blocks.len(), 1);
    let shown = blocks[0].len();
    assert!(shown > 100 && shown < 5_000, "{shown} shown");
    // whole resources only, in order, none repeated
    for (i, line) in blocks[0].iter().enumerate() {
        assert_eq!(
            *line,
            format!("+ plugin.p{i:05} → /srv/plugins/p{i:05}: not installed (version 1.0.{i})")
        );
    }
    let note = outside
        .iter()
        .find(|l| l.contains("not shown"))
        .expect("a note on what was cut");
    assert!(
        note.contains(&format!(
            "{} more change(s) in {} resource(s) not shown",
            markdown::thousands(5_000 - shown),
            markdown::thousands(5_000 - shown)
        )),
        "{note}"
    );
    assert!(note.contains("`plan.json`"), "{note}");
    assert!(
        outside[0].starts_with("**Plan:** +5000 ~0 -0 ±0, 0 in sync"),
        "{}",
        outside[0]
    );
    assert_eq!(
        md.matches("<details").count(),
        md.matches("</details>").count()
    );
}

#[test]
fn hostile_names_stay_inside_their_code_block_and_inject_no_html() {
    let hostile = [
        "plugin.a```\n</details><script>alert(1)</script>",
        "plugin.b</details>",
        "plugin.c````",
        "plugin.d<img src=x onerror=alert(1)>",
    ];
    let plan = plan_of(
        hostile
            .iter()
            .map(|a| {
                resource(
                    a,
                    "/srv/```/x",
                    vec![change(
                        "create",
                        "not installed\n```\n<script>x</script> | `y`",
                    )],
                )
            })
            .collect(),
        0,
    );
    let md = markdown::plan(&plan, "`reconcile plan --format json`");
    let (outside, blocks) = split_fences(&md);
    for line in &outside {
        assert!(
            !line.contains("<script") && !line.contains("<img"),
            "HTML outside a code block: {line}\n{md}"
        );
        let tag = line.trim();
        assert!(
            !tag.contains("</details>") || tag == "</details>",
            "a stray </details> outside a code block: {line}\n{md}"
        );
    }
    let inside: Vec<&str> = blocks.iter().flatten().copied().collect();
    assert_eq!(
        inside.len(),
        hostile.len(),
        "one line per change, no line broken out: {md}"
    );
    for (line, name) in inside.iter().zip(hostile) {
        let first = name.lines().next().unwrap();
        assert!(line.starts_with(&format!("+ {first}")), "{line}");
    }
    assert_eq!(
        md.matches("<details").count(),
        md.matches("</details>").count() - 2,
        "{md}"
    );

    // a test report's names and reasons are table cells: nothing gets out
    let mut report = fixed_report();
    report.tests[1].name = "smoke.</details><script>|x|`".into();
    report.tests[1].reason = Some("exit 1 | <b>bold</b>\n| forged | row |".into());
    let md = markdown::test(&report);
    assert!(
        !md.contains("<script") && !md.contains("<b>") && !md.contains("</details>"),
        "{md}"
    );
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| <code>")).collect();
    assert_eq!(rows.len(), 2, "{md}");
    for r in rows {
        assert_eq!(r.matches(" | ").count(), 2, "a cell broke the table: {r}");
    }
}
