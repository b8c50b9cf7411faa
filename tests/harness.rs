//! The test harness end to end: selection, matchers, results and classes,
//! timeouts, retries, working snapshots, Ctrl-C, reports parsed back (JUnit
//! with an XML parser, TAP 14 against its grammar, JSON against its schema),
//! console checks over a corpus of real-looking logs, and `apply` running `[run]`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const SUITE: &str = r#"version = 1
[check.bad-word]
regex = "BADWORD"
severity = "fail"
scope = "output"

[suite.smoke]
dir = "tests.d"

[suite.smoke.test.uname]
run = ["/bin/uname", "-a"]
expect = { stdout = ["/Linux/", "!panic"] }
tags = ["fast"]

[suite.smoke.test.exit3]
run = ["/bin/sh", "-c", "echo hello; exit 3"]
expect = { exit = 3, stdout = ["hello"] }

[suite.smoke.test.fails]
run = ["/bin/sh", "-c", "echo hello; exit 3"]

[suite.smoke.test.stderr-matcher]
run = ["/bin/sh", "-c", "echo oops >&2"]
expect = { stderr = ["!/oo+ps/"] }

[suite.smoke.test.panics]
run = ["/bin/sh", "-c", "echo 'Kernel panic - not syncing: boom'; sleep 20; echo never"]

[suite.smoke.test.bad-word]
run = ["/bin/sh", "-c", "echo a BADWORD here"]

[suite.smoke.test.suppressed]
run = ["/bin/sh", "-c", "echo 'WARNING: CPU: 0 PID: 1 at drivers/x.c:1 f+0x1/0x2'"]
skip_checks = { "kernel warning" = "known noisy driver, tracker #123" }

[suite.smoke.test.slow]
run = ["/bin/sh", "-c", "sleep 1001 & sleep 1002"]
timeout = "300ms"

[suite.smoke.test.warny]
run = ["/bin/sh", "-c", "echo 'INFO: task kworker/0:1:77 blocked for more than 120 seconds.'"]

[suite.smoke.test.flaky-tolerated]
run = ["/bin/sh", "-c", "exit 1"]

[suite.smoke.test.skipped]
run = ["/bin/true"]

[suite.smoke.test.retried]
run = ["/bin/sh", "-c", "n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; [ $n -ge 1 ]"]
retries = { test = 2 }

[[skip]]
pattern = "smoke.flaky-*"
reason = "known flaky"
tracker = "https://example.org/issues/7"
warn = true

[[skip]]
pattern = "smoke.skipped"
reason = "not on this farm"

[run]
suites = ["smoke"]
"#;

fn suite_farm() -> Farm {
    let farm = Farm::new();
    farm.desired(SUITE);
    let t = farm.write("tests.d/from-dir", "#!/bin/sh\n# reconcile: {\"tags\": [\"fast\"], \"timeout\": \"5s\", \"expect\": {\"stdout\": [\"from dir\"]}}\necho from dir test\n");
    make_executable(&t);
    farm
}

fn report(farm: &Farm) -> serde_json::Value {
    farm.report()
}

fn by_name(report: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

#[test]
fn results_classes_matchers_and_exit_codes() {
    let farm = suite_farm();
    let r = farm.run(&["test", "-j", "4"]);
    r.expect(4);
    let rep = report(&farm);
    assert_eq!(rep["format_version"], 1);
    assert_eq!(rep["incomplete"], false);
    let t = by_name(&rep);
    let expect = [
        ("smoke.uname", "PASS", None),
        ("smoke.from-dir", "PASS", None),
        ("smoke.exit3", "PASS", None),
        ("smoke.fails", "FAIL", Some("test")),
        ("smoke.stderr-matcher", "FAIL", Some("test")),
        ("smoke.panics", "FAIL", Some("check")),
        ("smoke.bad-word", "FAIL", Some("check")),
        ("smoke.suppressed", "PASS", None),
        ("smoke.slow", "FAIL", Some("timeout")),
        ("smoke.warny", "WARN", None),
        ("smoke.flaky-tolerated", "WARN", Some("test")),
        ("smoke.skipped", "SKIP", None),
        ("smoke.retried", "PASS", None),
    ];
    for (name, result, class) in expect {
        let got = &t[name];
        assert_eq!(got["result"], result, "{name}: {got:#}");
        assert_eq!(got["class"].as_str(), class, "{name}: {got:#}");
    }
    assert_eq!(t.len(), expect.len());
    // details that matter to someone reading the report
    assert!(t["smoke.fails"]["reason"]
        .as_str()
        .unwrap()
        .contains("exit status 3, expected exit status 0"));
    assert!(t["smoke.stderr-matcher"]["reason"]
        .as_str()
        .unwrap()
        .contains("stderr: /oo+ps/ matches"));
    let panic = &t["smoke.panics"];
    assert_eq!(panic["checks"][0]["check"], "kernel panic");
    assert_eq!(panic["checks"][0]["line"], 1);
    // a fatal check stops the test at once: what it would print after its 20 s sleep never comes
    assert_eq!(panic["class"], "check");
    let out = panic["output"].as_str().unwrap();
    assert!(!fs::read_to_string(Path::new(out).join("stdout.txt"))
        .unwrap()
        .contains("never"));
    assert_eq!(
        t["smoke.suppressed"]["checks"][0]["suppressed"],
        "known noisy driver, tracker #123"
    );
    assert!(t["smoke.flaky-tolerated"]["reason"]
        .as_str()
        .unwrap()
        .contains("known flaky"));
    assert!(t["smoke.skipped"]["reason"]
        .as_str()
        .unwrap()
        .contains("not on this farm"));
    let retried = t["smoke.retried"]["attempts"].as_array().unwrap();
    assert_eq!(retried.len(), 2, "every attempt is recorded");
    assert_eq!(retried[0]["result"], "FAIL");
    assert_eq!(retried[1]["result"], "PASS");
    // the retry is said as it happens, once, naming the attempt and its class
    assert_eq!(
        r.stderr
            .matches("RETRY smoke.retried (attempt 1 failed, test:")
            .count(),
        1,
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("RETRY smoke.fails"), "{}", r.stderr);
    // per-test files
    for f in ["stdout.txt", "stderr.txt", "console.txt", "result.json"] {
        assert!(
            Path::new(t["smoke.uname"]["output"].as_str().unwrap())
                .join(f)
                .exists(),
            "{f}"
        );
    }
    // the human summary lists each failure with its reason and output path
    assert!(
        r.stdout
            .contains("failed: smoke.slow: the command timed out after 300ms"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("output: .reconcile/runs/"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("5 passed, 5 failed, 2 warned, 1 skipped"),
        "{}",
        r.stdout
    );

    // passing selection exits 0; warnings are allowed
    farm.run(&["test", "smoke.uname", "smoke.warny", "smoke.from-dir"])
        .expect(0);
    // a pattern that matches nothing is a harness error
    let r = farm.run(&["test", "smoke.nothing*"]);
    r.expect(1);
    assert!(r.stderr.contains("matches no test"), "{}", r.stderr);
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let farm = Farm::new();
    // sleeps no other test uses, so pgrep sees only this test's processes
    farm.desired("version = 1\n[suite.t.test.slow]\nrun = [\"/bin/sh\", \"-c\", \"sleep 1777 & sleep 1778\"]\ntimeout = \"300ms\"\n");
    farm.run(&["test"]).expect(4);
    assert_eq!(by_name(&report(&farm))["t.slow"]["class"], "timeout");
    std::thread::sleep(Duration::from_millis(200));
    let left = Command::new("pgrep")
        .args(["-f", "sleep 177[78]"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "processes survived the timeout"
    );
}

#[test]
fn selection_tags_lists_explanations_and_rerun_failed() {
    let farm = suite_farm();
    let r = farm.run(&["test", "--list", "--explain", "--tag", "fast"]);
    r.expect(0);
    assert!(
        r.stdout.contains("smoke.uname\n") && r.stdout.contains("smoke.from-dir\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("not selected: smoke.fails: lacks tag fast"),
        "{}",
        r.stdout
    );
    let r = farm.run(&["test", "--list", "--tag", "!fast", "smoke.*"]);
    assert!(
        !r.stdout.contains("smoke.uname") && r.stdout.contains("smoke.fails"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("smoke.skipped  (skipped: not on this farm)"),
        "{}",
        r.stdout
    );

    farm.run(&["test"]).expect(4);
    let failed: Vec<String> = by_name(&report(&farm))
        .into_iter()
        .filter(|(_, t)| t["result"] == "FAIL")
        .map(|(n, _)| n)
        .collect();
    farm.run(&["test", "--rerun-failed"]).expect(4);
    let rerun: Vec<String> = by_name(&report(&farm)).into_keys().collect();
    assert_eq!(
        rerun, failed,
        "--rerun-failed runs exactly the last failures"
    );
}

#[test]
#[ignore = "needs busybox-static for a test root filesystem"]
fn machine_filters_and_version_ranges() {
    let farm = Farm::new();
    let Some(_) = rootfs(&farm, "rootfs", "r1") else {
        return;
    };
    farm.desired(
        r#"version = 1
[volume.default]
path = "machines"
backend = "dir"
[machine.deb]
revision = 1
source = { dir = "rootfs" }
arch = "x86_64"
distro = "debian"
version = "12.4"
[suite.m]
machines = ["deb"]
[suite.m.test.any]
run = ["/bin/true"]
[suite.m.test.arm]
run = ["/bin/true"]
architectures = ["aarch64"]
[suite.m.test.not-debian]
run = ["/bin/true"]
distros = ["!debian"]
[suite.m.test.new]
run = ["/bin/true"]
min_version = "12.10"
[suite.m.test.old]
run = ["/bin/true"]
end_version = "12.4"
[suite.m.test.range]
run = ["/bin/true"]
min_version = "12"
end_version = "13"
[suite.m.test.ns-only]
run = ["/bin/true"]
platforms = ["namespace"]
"#,
    );
    let r = farm.run(&["test", "--list", "--explain"]);
    r.expect(0);
    for (name, why) in [
        ("m.arm", "architecture x86_64 is not one of aarch64"),
        ("m.not-debian", "distro debian is excluded"),
        ("m.new", "version 12.4 < min_version 12.10"),
        ("m.old", "version 12.4 ≥ end_version 12.4"),
        ("m.ns-only", "platform host is not one of namespace"),
    ] {
        assert!(
            r.stdout.contains(&format!("not selected: {name}: {why}")),
            "{name}: {}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains("m.any\n") && r.stdout.contains("m.range\n"),
        "{}",
        r.stdout
    );
}

fn working_snapshots(farm: &Farm) -> Vec<String> {
    fs::read_dir(farm.path("machines/deb"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("deb-1-"))
                .collect()
        })
        .unwrap_or_default()
}

const MACHINE_SUITE: &str = r#"version = 1
[volume.default]
path = "machines"
backend = "dir"
[machine.deb]
revision = 1
source = { dir = "rootfs" }
[suite.m]
machines = ["deb"]
[suite.m.test.cwd]
run = ["/bin/sh", "-c", "test -f etc/os-release && test \"$RECONCILE_ROOT\" = \"$PWD\" && echo scratch > scratch"]
[suite.m.test.fail]
run = ["/bin/sh", "-c", "exit 1"]
[suite.m.test.timeout]
run = ["/bin/sleep", "30"]
timeout = "200ms"
[suite.m.test.long]
run = ["/bin/sleep", "60"]
tags = ["long"]
"#;

#[test]
#[ignore = "needs busybox-static for a test root filesystem"]
fn each_test_gets_a_fresh_working_snapshot_deleted_whatever_happens() {
    let farm = Farm::new();
    let Some(_) = rootfs(&farm, "rootfs", "r1") else {
        return;
    };
    farm.desired(MACHINE_SUITE);
    farm.run(&["apply", "--no-test"]).expect(0);
    let r = farm.run(&["test", "--tag", "!long"]);
    r.expect(4);
    let t = by_name(&report(&farm));
    assert_eq!(
        t["m.cwd"]["result"], "PASS",
        "host executor: cwd in the snapshot, $RECONCILE_ROOT set: {:#}",
        t["m.cwd"]
    );
    assert_eq!(t["m.cwd"]["machine"], "deb");
    assert_eq!(t["m.cwd"]["revision"], 1);
    assert_eq!(t["m.fail"]["class"], "test");
    assert_eq!(t["m.timeout"]["class"], "timeout");
    assert!(
        working_snapshots(&farm).is_empty(),
        "left behind: {:?}",
        working_snapshots(&farm)
    );
    assert!(
        !farm.path("machines/deb/deb-1/scratch").exists(),
        "writes stay in the working snapshot"
    );

    // Ctrl-C: running tests are killed, snapshots deleted, the report still written (incomplete)
    let child = farm
        .cmd(&["test", "--tag", "long"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the test never started", Duration::from_secs(30), || {
        !working_snapshots(&farm).is_empty()
    });
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let rep = report(&farm);
    assert_eq!(rep["incomplete"], true);
    assert_eq!(rep["tests"][0]["class"], "infra");
    assert!(
        working_snapshots(&farm).is_empty(),
        "left behind after Ctrl-C: {:?}",
        working_snapshots(&farm)
    );
}

#[test]
#[ignore = "needs root, btrfs-progs and busybox-static"]
fn namespace_executor_tests_on_btrfs() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let Some(_) = rootfs(&farm, "rootfs", "r1") else {
        return;
    };
    farm.desired(
        r#"version = 1
[volume.default]
path = "machines"
backend = "btrfs"
[machine.deb]
revision = 1
source = { dir = "rootfs" }
[machine.deb.toolchain.tc]
bootstrap = ["/bin/sh", "-c", "echo tc > /etc/toolchain"]
[suite.ns]
machines = ["deb"]
toolchain = "tc"
executor = "namespace"
[suite.ns.test.isolated]
run = ["/bin/sh", "-c", "echo pid=$$; cat /etc/toolchain; ls /proc/1 >/dev/null && echo proc"]
expect = { stdout = ["pid=1", "tc", "proc"] }
[suite.ns.test.console-check]
run = ["/bin/sh", "-c", "echo 'BUG: unable to handle page fault for address: 0000'"]
"#,
    );
    farm.run(&["apply", "--no-test"]).expect(0);
    farm.run(&["test"]).expect(4);
    let t = by_name(&report(&farm));
    assert_eq!(t["ns.isolated"]["result"], "PASS", "{:#}", t["ns.isolated"]);
    assert_eq!(t["ns.console-check"]["class"], "check");
    assert_eq!(t["ns.console-check"]["checks"][0]["check"], "kernel BUG");
    let left: Vec<String> = fs::read_dir(farm.path("machines/deb"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("deb-tc-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// TAP version 14: the version line, a plan, test points, and YAML blocks between `  ---` and `  ...`.
fn check_tap14(tap: &str) -> usize {
    let re_point = regex::Regex::new(r"^(not )?ok (\d+)( - [^#]*)?( # (SKIP|TODO)\b.*)?$").unwrap();
    let mut lines = tap.lines();
    assert_eq!(lines.next(), Some("TAP version 14"));
    let plan = lines.next().unwrap();
    let n: usize = plan
        .strip_prefix("1..")
        .expect("plan line")
        .parse()
        .unwrap();
    let (mut points, mut in_yaml) = (0, false);
    for l in lines {
        if in_yaml {
            if l == "  ..." {
                in_yaml = false;
            } else {
                assert!(l.starts_with("  "), "YAML block lines are indented: {l:?}");
            }
        } else if l == "  ---" {
            in_yaml = true;
        } else {
            let c = re_point
                .captures(l)
                .unwrap_or_else(|| panic!("not a TAP 14 line: {l:?}"));
            points += 1;
            assert_eq!(
                c[2].parse::<usize>().unwrap(),
                points,
                "test points are numbered in order"
            );
        }
    }
    assert!(!in_yaml, "unterminated YAML block");
    assert_eq!(points, n, "the plan matches the test points");
    points
}

#[test]
fn reports_parse_back_junit_tap_and_json() {
    let farm = suite_farm();
    farm.run(&["test"]).expect(4);
    let dir = farm.path(".reconcile/runs/latest");
    let rep = report(&farm);
    let n = rep["tests"].as_array().unwrap().len();

    // JUnit, with a real XML parser: classname = suite, failures and skips where they belong
    let xml = fs::read_to_string(dir.join("junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), n);
    assert!(cases
        .iter()
        .all(|c| c.attribute("classname") == Some("smoke")));
    let failures = cases
        .iter()
        .filter(|c| c.children().any(|x| x.has_tag_name("failure")))
        .count();
    assert_eq!(failures, rep["summary"]["fail"].as_u64().unwrap() as usize);
    let skipped = cases
        .iter()
        .filter(|c| c.children().any(|x| x.has_tag_name("skipped")))
        .count();
    assert_eq!(skipped, 1);
    let slow = cases
        .iter()
        .find(|c| c.attribute("name") == Some("slow"))
        .unwrap();
    let f = slow.children().find(|x| x.has_tag_name("failure")).unwrap();
    assert_eq!(f.attribute("type"), Some("timeout"));

    // TAP 14
    let tap = fs::read_to_string(dir.join("results.tap")).unwrap();
    assert_eq!(check_tap14(&tap), n);
    assert!(tap.contains("# SKIP skip list: not on this farm"));
}

#[test]
#[ignore = "needs python jsonschema (target/venv, made by scripts/test)"]
fn report_json_validates_against_its_own_schema() {
    let farm = suite_farm();
    farm.run(&["test"]).expect(4);
    let dir = farm.path(".reconcile/runs/latest");
    // report.json against its own JSON Schema, with a real validator
    let py = [
        std::env::var_os("RECONCILE_PYTHON").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python3")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.exists());
    let Some(py) = py else {
        skip("python with jsonschema (target/venv, made by scripts/test)");
        return;
    };
    let schema = Command::new(BIN)
        .args(["schema", "--report"])
        .output()
        .unwrap();
    fs::write(farm.path("report.schema.json"), &schema.stdout).unwrap();
    let script = "import json,sys,jsonschema; s=json.load(open(sys.argv[1])); jsonschema.Draft202012Validator.check_schema(s); jsonschema.validate(json.load(open(sys.argv[2])), s); d=json.load(open(sys.argv[2])); d['tests'][0]['result']='MAYBE'\ntry:\n  jsonschema.validate(d, s); print('accepted a bad report')\nexcept jsonschema.ValidationError: print('ok')";
    let out = Command::new(py)
        .args(["-c", script])
        .arg(farm.path("report.schema.json"))
        .arg(dir.join("report.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn console_check_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/console");
    let run = |log: &str| {
        let o = Command::new(BIN)
            .args(["checks", "--json"])
            .arg(corpus.join(log))
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let hits: Vec<(String, u64, u64)> = doc["logs"][0]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["check"].as_str().unwrap().to_string(),
                    h["line"].as_u64().unwrap(),
                    h["count"].as_u64().unwrap(),
                )
            })
            .collect();
        (o.status.code(), hits)
    };
    let (code, hits) = run("clean.log");
    assert_eq!(
        code,
        Some(0),
        "near misses (panic=10, coredump socket, OOM killer service…) must not hit: {hits:?}"
    );
    assert!(hits.is_empty(), "{hits:?}");

    let (code, hits) = run("kernel-panic.log");
    assert_eq!(code, Some(4));
    assert_eq!(hits, vec![("kernel panic".to_string(), 6, 2)]);

    let (code, hits) = run("systemd-boot.log");
    assert_eq!(code, Some(4));
    let names: BTreeMap<String, (u64, u64)> =
        hits.into_iter().map(|(c, l, n)| (c, (l, n))).collect();
    assert_eq!(names["ordering cycle"], (7, 1));
    assert_eq!(names["core dump"], (9, 1));
    assert_eq!(names["segfault"], (10, 1));
    assert_eq!(names["kernel warning"], (12, 1));
    assert_eq!(names["oom-killer"], (14, 2));
    assert_eq!(names["hung task"], (16, 1));

    let (code, hits) = run("go-panic-emergency.log");
    assert_eq!(code, Some(4));
    let names: BTreeMap<String, (u64, u64)> =
        hits.into_iter().map(|(c, l, n)| (c, (l, n))).collect();
    assert_eq!(names["Go panic"], (2, 2));
    assert_eq!(names["ext4 delayed allocation failure"], (8, 1));
    assert_eq!(names["offline device I/O"], (9, 1));
    assert_eq!(names["GRUB magic broken"], (10, 1));
    assert_eq!(names["emergency shell"], (12, 1));

    // human output: file:line: check
    let o = Command::new(BIN)
        .args(["checks"])
        .arg(corpus.join("kernel-panic.log"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("kernel-panic.log:6: kernel panic (fatal, 2 hit(s)): [    1.235001] Kernel panic - not syncing"), "{text}");

    // hits come in log order, as a reader goes through the log
    let o = Command::new(BIN)
        .args(["checks"])
        .arg(corpus.join("kola-parity.log"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4));
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<u64> = text
        .lines()
        .map(|l| l.split(':').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(lines.len() >= 15, "{text}");
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{text}");
    assert!(
        text.contains(
            "kola-parity.log:10: excessive bonding link status messages (fail, 10 hit(s))"
        ),
        "{text}"
    );
}

#[test]
fn apply_runs_the_test_plan_and_exits_4_when_it_fails() {
    let farm = suite_farm();
    let r = farm.run(&["apply"]);
    r.expect(4);
    assert!(r.stdout.contains("FAILED:"), "{}", r.stdout);
    // --json: one document, the apply with the test report inside
    let r = farm.run(&["apply", "--json"]);
    r.expect(4);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document: {e}\n{}", r.stdout));
    assert_eq!(doc["result"], "converged");
    assert!(
        doc["tests"]["summary"]["fail"].as_u64().unwrap() > 0,
        "{doc:#}"
    );
    farm.run(&["apply", "--no-test"]).expect(0);
    farm.desired(&SUITE.replace(
        "suites = [\"smoke\"]",
        "tests = [\"smoke.uname\", \"smoke.from-dir\"]",
    ));
    farm.run(&["apply"]).expect(0);
}

#[test]
fn dir_test_headers_and_required_tags() {
    let farm = Farm::new();
    farm.desired("version = 1\n[suite.gated]\nrequired_tag = \"nightly\"\n[suite.gated.test.t]\nrun = [\"/bin/true\"]\n[suite.d]\ndir = \"d\"\n");
    make_executable(&farm.write(
        "d/ok",
        "#!/bin/sh\n# reconcile: {\"tags\": [\"x\"]}\ntrue\n",
    ));
    let r = farm.run(&["test", "--list", "--explain"]);
    r.expect(0);
    assert!(
        r.stdout
            .contains("not selected: gated.t: suite needs --tag nightly"),
        "{}",
        r.stdout
    );
    let r = farm.run(&["test", "--list", "--tag", "nightly"]);
    assert!(r.stdout.contains("gated.t"), "{}", r.stdout);
    // an unknown key in a header is an error, not silently ignored
    make_executable(&farm.write(
        "d/bad",
        "#!/bin/sh\n# reconcile: {\"tag\": [\"typo\"]}\ntrue\n",
    ));
    let r = farm.run(&["test", "--list"]);
    r.expect(1);
    assert!(
        r.stderr.contains("bad `# reconcile:` header") && r.stderr.contains("unknown field `tag`"),
        "{}",
        r.stderr
    );
}

/// The run directories under .reconcile/runs (not `latest`), oldest first.
fn run_dirs(farm: &Farm) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(farm.path(".reconcile/runs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn old_runs_are_pruned_but_never_the_latest_nor_one_in_use() {
    let farm = Farm::new();
    let desired = |keep: u32| {
        format!("version = 1\n[settings]\nkeep_runs = {keep}\n[suite.s.test.t]\nrun = [\"true\"]\n")
    };
    farm.desired(&desired(2));
    let mut made = Vec::new();
    for _ in 0..4 {
        farm.run(&["test"]).expect(0);
        let latest = fs::read_link(farm.path(".reconcile/runs/latest")).unwrap();
        made.push(latest.file_name().unwrap().to_string_lossy().into_owned());
        // run names have a one-second stamp: keep them apart
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(run_dirs(&farm), made[2..].to_vec(), "the two newest stay");
    // a run in use (its directory locked, as a running `reconcile test`
    // holds it) outlives the limit
    let older = farm.path(".reconcile/runs").join(&made[2]);
    // (-o: the lock is flock's own, gone when it is killed; its sleep does not inherit it)
    let mut holder = Command::new("flock")
        .args(["-s", "-o"])
        .arg(&older)
        .args(["sleep", "60"])
        .process_group(0)
        .spawn()
        .expect("flock (util-linux)");
    std::thread::sleep(Duration::from_millis(300));
    farm.desired(&desired(1));
    farm.run(&["test"]).expect(0);
    let after = run_dirs(&farm);
    let newest = fs::read_link(farm.path(".reconcile/runs/latest")).unwrap();
    let newest = newest.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        after,
        vec![made[2].clone(), newest.clone()],
        "in use and latest stay"
    );
    assert!(!after.contains(&made[3]), "{after:?}");
    // flock and its sleep, the whole group
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", holder.id())])
        .status();
    let _ = holder.wait();
    // once it is no longer in use, it goes
    std::thread::sleep(Duration::from_millis(1100));
    farm.run(&["test"]).expect(0);
    assert_eq!(run_dirs(&farm).len(), 1, "{:?}", run_dirs(&farm));
    // validation
    farm.desired(&desired(0));
    let r = farm.run(&["validate"]);
    r.expect(1);
    assert!(
        r.all().contains("keep_runs must be between 1 and 100000"),
        "{}",
        r.all()
    );
}
