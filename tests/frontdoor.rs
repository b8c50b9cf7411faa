//! The front door: the command line as a user meets it on day one, each
//! promise checked by running the real binary on a copy of the quickstart
//! (no root, no btrfs, no network).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// A fresh copy of `examples/` in a scratch dir; commands run in it with
/// `-f quickstart.toml`.
struct Quick {
    farm: Farm,
}

impl Quick {
    fn new() -> Quick {
        let farm = Farm::new();
        copy_examples(farm.dir.path());
        Quick { farm }
    }

    fn dir(&self) -> &Path {
        self.farm.dir.path()
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["-f", "quickstart.toml"];
        all.extend_from_slice(args);
        self.farm.run(&all)
    }
}

/// Run `args` with stdout a pipe whose reader is already gone: every write
/// fails with EPIPE, as with `| head -1` once head has exited.
fn with_closed_stdout(q: &Quick, args: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new(BIN);
    c.current_dir(q.dir())
        .args(["-f", "quickstart.toml"])
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The subcommands `--help` lists (a name at the indent; wrapped lines go deeper).
fn commands_of(help: &str) -> Vec<String> {
    help.split("Commands:\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn a_closed_stdout_ends_quietly_never_with_a_panic() {
    let q = Quick::new();
    q.run(&["apply", "-q"]).expect(0);
    let log = q.farm.write("console.txt", "booting\n".repeat(20_000));
    let log = log.to_str().unwrap();
    for args in [
        &["status", "--json"][..],
        &["status"],
        &["plan"],
        &["plan", "--json"],
        &["schema"],
        &["test", "--list"],
        &["checks", log],
        &["validate", "--json"],
        &["man"],
    ] {
        let (code, stderr) = with_closed_stdout(&q, args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn usage_errors_exit_64_and_2_only_means_changes() {
    let q = Quick::new();
    for args in [
        &["--bogus"][..],
        &["plan", "--format", "wat"],
        &["status", "--format", "markdown"],
        &["validate", "--format", "markdown"],
        &["apply", "--lock-timeout", "soon"],
        &["test", "--timeout-multiplier", "0"],
        &["test", "["],
        &["plan", "--target", "["],
        &["export", "kolet"],
        &["help"],
        &[],
        &["--hostname", "a", "--hostname", "b", "status"],
    ] {
        let r = q.run(args);
        assert_eq!(r.code, Some(64), "{args:?}\n{}", r.all());
        assert!(r.stderr.contains("error"), "{args:?}: {}", r.stderr);
    }
    // markdown where it works
    let r = q.run(&["status", "--format", "markdown"]);
    assert!(
        r.stderr.contains("[possible values: text, json]"),
        "{}",
        r.stderr
    );
    // help and version are not errors
    for args in [&["--help"][..], &["plan", "--help"], &["--version"]] {
        q.run(args).expect(0);
    }
    // a plan with changes is the one exit 2
    q.run(&["plan"]).expect(2);
}

#[test]
fn help_and_man_pages_list_every_command_with_its_exit_codes() {
    let q = Quick::new();
    let help = q.run(&["--help"]);
    help.expect(0);
    assert!(help.stdout.contains("\n  man "), "{}", help.stdout);
    assert!(!help.stdout.contains("\n  help "), "{}", help.stdout);
    assert!(
        help.stdout.contains("   64  usage error"),
        "{}",
        help.stdout
    );
    let commands = commands_of(&help.stdout);
    assert!(commands.len() >= 14, "{commands:?}");
    for c in &commands {
        let h = q.run(&[c, "--help"]);
        h.expect(0);
        assert!(
            h.stdout.contains("Exit status:\n") && h.stdout.contains("   64  usage error"),
            "{c} --help:\n{}",
            h.stdout
        );
        let words = h.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        let markdown = words.contains("possible values: text, json, markdown");
        assert_eq!(
            markdown,
            ["plan", "apply", "test"].contains(&c.as_str()),
            "{c} --help:\n{}",
            h.stdout
        );
    }
    // plan previews, status only reads: neither words its git flags as apply's
    let plan = q.run(&["plan", "--help"]).stdout;
    assert!(plan.contains("--verify-signatures") && !plan.contains("Apply only commits"));
    let status = q.run(&["status", "--help"]).stdout;
    assert!(!status.contains("--allow-rewind") && !status.contains("--verify-signatures"));
    // one page per command, each linked from the main page, each with the
    // version and an EXIT STATUS section
    let dir = q.farm.path("man");
    fs::create_dir(&dir).unwrap();
    q.farm
        .run(&["man", "--dir", dir.to_str().unwrap()])
        .expect(0);
    let main = fs::read_to_string(dir.join("reconcile.1")).unwrap();
    let version = format!("\"reconcile {}\"", env!("CARGO_PKG_VERSION"));
    let mut pages: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    pages.sort();
    assert_eq!(pages.len(), commands.len() + 1, "{pages:?}");
    for c in &commands {
        let page = dir.join(format!("reconcile-{c}.1"));
        let roff = fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(
            main.contains(&format!("reconcile\\-{c}(1)")),
            "{c} not linked"
        );
        assert!(roff.contains(".SH \"EXIT STATUS\""), "{c}: {roff}");
        assert!(
            roff.lines()
                .any(|l| l.starts_with(".TH") && l.contains(&version)),
            "{c}"
        );
    }
    assert!(main.contains(".SH \"EXIT STATUS\"") && main.contains(&version));
}

#[test]
fn hints_are_commands_that_work_when_pasted() {
    let q = Quick::new();
    // after plan --out: the apply that takes it, with -f
    let r = q.run(&["plan", "--out", "p.json"]);
    r.expect(2);
    assert!(
        r.stderr
            .contains("`reconcile -f quickstart.toml apply p.json`"),
        "{}",
        r.stderr
    );
    // a stale plan: the plan to make again, with -f and the same file
    let toml = fs::read_to_string(q.farm.path("quickstart.toml")).unwrap();
    q.farm.write(
        "quickstart.toml",
        toml.replace("revision = 1", "revision = 2"),
    );
    let r = q.run(&["apply", "p.json"]);
    r.expect(1);
    assert!(
        r.stderr
            .contains("`reconcile -f quickstart.toml plan --out p.json` again"),
        "{}",
        r.stderr
    );
    // the hint for an invalid file validates that file
    q.farm
        .write("bad.toml", "version = 1\n[plugin.x]\nversion = 3\n");
    let r = q.farm.run(&["-f", "bad.toml", "plan"]);
    r.expect(1);
    assert!(
        r.stderr.contains("`reconcile -f bad.toml validate`"),
        "{}",
        r.stderr
    );
    // spawn of a root filesystem: a shell by exec, the way this user can run it
    let r = q.run(&["spawn", "qs"]);
    r.expect(1);
    let exec = if is_root() {
        "`reconcile -f quickstart.toml exec qs -- sh`"
    } else {
        "`reconcile -f quickstart.toml exec --host qs -- sh`"
    };
    assert!(r.stderr.contains(exec), "{}", r.stderr);
    // checks keeps no journal: its errors never send the user to one
    let r = q.run(&["checks", "no-such.log"]);
    r.expect(1);
    assert!(r.stderr.contains("no-such.log"), "{}", r.stderr);
    assert!(!r.stderr.contains("journal"), "{}", r.stderr);
}

#[test]
fn checks_reads_the_checks_of_the_file_given_with_f() {
    let q = Quick::new();
    let toml = fs::read_to_string(q.farm.path("quickstart.toml")).unwrap();
    q.farm.write(
        "quickstart.toml",
        format!("{toml}\n[check.boom]\nregex = \"BOOM happened\"\nseverity = \"fail\"\n"),
    );
    q.farm.write("console.txt", "ok\nBOOM happened here\n");
    let r = q.run(&["checks", "console.txt"]);
    r.expect(4);
    assert!(r.stdout.contains("boom"), "{}", r.all());
    // without -f no file is read: the log is clean by the built-in checks
    q.farm.run(&["checks", "console.txt"]).expect(0);
}

#[test]
fn a_selector_that_matches_nothing_is_an_error_naming_it() {
    let q = Quick::new();
    for (args, named) in [
        (&["plan", "--target", "plugn.*"][..], "`plugn.*`"),
        (&["apply", "--target", "plugn.*"], "`plugn.*`"),
        (&["test", "--suite", "nosuch"], "`nosuch`"),
        (&["test", "--tag", "nosuch"], "`nosuch`"),
    ] {
        let r = q.run(args);
        assert_eq!(r.code, Some(1), "{args:?}\n{}", r.all());
        assert!(r.stderr.contains(named), "{args:?}: {}", r.stderr);
    }
    assert!(
        !q.farm.path("plugins").exists(),
        "an unmatched apply touched nothing"
    );
    // an excluded tag no test has excludes nothing
    let r = q.run(&["test", "--list", "--tag", "!nosuch"]);
    r.expect(0);
    assert!(r.stdout.contains("smoke.os-release"), "{}", r.stdout);
    // a target that matches is taken
    q.run(&["plan", "--target", "plugin.*"]).expect(2);
}

#[test]
fn the_plan_counts_resources_and_changes_apart_with_paths_one_way() {
    let q = Quick::new();
    let r = q.run(&["plan"]);
    r.expect(2);
    // a new machine is one resource to create with two changes (revision, link)
    assert!(
        r.stdout.contains(
            "Plan: 4 to create, 0 to update, 0 to replace, 0 to delete (5 changes); 0 unchanged."
        ),
        "{}",
        r.stdout
    );
    let doc: serde_json::Value = serde_json::from_str(&q.run(&["plan", "--json"]).stdout).unwrap();
    assert_eq!(doc["summary"]["create"], 4, "{doc}");
    assert_eq!(doc["summary"]["update"], 0, "{doc}");
    assert_eq!(doc["summary"]["changes"], 5, "{doc}");
    let machine = doc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "machine.qs")
        .unwrap();
    assert_eq!(machine["action"], "create", "{machine}");
    assert_eq!(machine["changes"].as_array().unwrap().len(), 2, "{machine}");
    // every path relative to where the command runs, the same way
    let abs = q.dir().to_str().unwrap();
    assert!(!r.stdout.contains(abs), "{}", r.stdout);
    assert!(r.stdout.contains("build from src/rootfs"), "{}", r.stdout);
    // a revision bump of an existing machine is one update
    q.run(&["apply", "--no-test", "-q"]).expect(0);
    let toml = fs::read_to_string(q.farm.path("quickstart.toml")).unwrap();
    q.farm.write(
        "quickstart.toml",
        toml.replace("revision = 1", "revision = 2"),
    );
    let r = q.run(&["plan"]);
    assert!(
        r.stdout.contains(
            "Plan: 0 to create, 1 to update, 0 to replace, 0 to delete (2 changes); 3 unchanged."
        ),
        "{}",
        r.stdout
    );
}

#[test]
fn quiet_prints_only_the_summary_and_json_is_json() {
    let q = Quick::new();
    let r = q.run(&["plan", "-q"]);
    r.expect(2);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert!(r.stdout.starts_with("Plan: "), "{}", r.stdout);
    assert_eq!(r.stderr, "", "{}", r.stderr);
    let r = q.run(&["apply", "-q"]);
    r.expect(0);
    assert!(
        !r.stdout
            .lines()
            .any(|l| l.starts_with("+ ") || l.starts_with("PASS")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Converged: 5 change(s) applied."),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("ok: 2 passed"), "{}", r.stdout);
    assert_eq!(r.stderr, "", "{}", r.stderr);
    // lock --json is one JSON document
    let r = q.run(&["lock", "--json"]);
    r.expect(0);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["format_version"], 1, "{doc}");
}

#[test]
fn the_lock_names_no_finished_process_and_status_shows_the_last_tests() {
    let q = Quick::new();
    q.run(&["apply"]).expect(0);
    let lock = q.farm.path(".reconcile/lock");
    assert!(lock.exists());
    assert_eq!(
        fs::read_to_string(&lock).unwrap(),
        "",
        "the holder is cleared on release"
    );
    let r = q.run(&["status"]);
    r.expect(0);
    let doc: serde_json::Value =
        serde_json::from_str(&q.run(&["status", "--json"]).stdout).unwrap();
    let run = doc["last_tests"]["run"].as_str().unwrap();
    assert!(
        r.stdout.contains(&format!("Last tests: {run}")) && r.stdout.contains("2 passed, 0 failed"),
        "{}",
        r.stdout
    );
}

#[test]
fn validate_json_names_the_file_the_same_way_valid_or_not() {
    let q = Quick::new();
    q.farm
        .write("bad.toml", "version = 1\n[plugin.x]\nversion = 3\n");
    let file = |f: &str| {
        let r = q.farm.run(&["-f", f, "validate", "--json"]);
        let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        (r.code, doc["file"].as_str().unwrap().to_string())
    };
    let (ok, good) = file("quickstart.toml");
    let (bad, invalid) = file("bad.toml");
    assert_eq!((ok, bad), (Some(0), Some(1)));
    assert_eq!(Path::new(&good), q.dir().join("quickstart.toml"));
    assert_eq!(Path::new(&invalid), q.dir().join("bad.toml"));
}

#[test]
fn markdown_test_durations_are_the_measured_milliseconds() {
    let q = Quick::new();
    q.run(&["apply", "--no-test", "-q"]).expect(0);
    let r = q.run(&["test", "--format", "markdown"]);
    r.expect(0);
    let report: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(q.farm.path(".reconcile/runs/latest/report.json")).unwrap(),
    )
    .unwrap();
    let ms = report["duration_ms"].as_u64().unwrap();
    assert!(ms > 0, "{report}");
    let shown = if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    };
    assert!(
        r.stdout.contains(&format!("| {shown} |")),
        "{ms}: {}",
        r.stdout
    );
}

#[test]
fn the_readme_lists_every_command() {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let q = Quick::new();
    let help = q.run(&["--help"]).stdout;
    let table = readme.split("## Commands and exit codes").nth(1).unwrap();
    for c in &commands_of(&help) {
        assert!(
            table.contains(&format!("| `reconcile {c}")),
            "README lacks `{c}`"
        );
    }
    assert!(
        table.contains("64"),
        "README's table lacks the usage exit code"
    );
    assert!(
        !readme.contains("later releases"),
        "README still calls shipped kinds future"
    );
}
