//! Promotion gates (`promote = { after = [...] }` on a machine): a new
//! revision is a candidate, built beside the current one and tested on
//! fresh snapshots of itself; the link switches only when its suites
//! passed. A failed candidate stays for inspection, is not tested again
//! until it changes, never pushes out the current revision's rollback, and
//! a SIGKILL around the switch leaves the old revision current or the new
//! one, never neither.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Revision `rev` from `rootfs-<src>.tar.gz`; the gate suite checks the
/// machine's /etc/os-release says r1, r2 or r3 (a revision built from a
/// root filesystem marked `bad` fails it).
fn declare(farm: &Farm, rev: u32, src: &str, keep: u32) {
    farm.desired(&format!(
        "version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"dir\"\n\
         [machine.deb]\nrevision = {rev}\nsource = {{ path = \"rootfs-{src}.tar.gz\" }}\nkeep = {keep}\n\
         promote = {{ after = [\"smoke\"] }}\n\
         [suite.smoke]\nmachines = [\"deb\"]\nexecutor = \"host\"\n\
         [suite.smoke.test.os]\nrun = [\"/bin/sh\", \"-c\", \"cat etc/os-release; grep -q 'VERSION_ID=\\\"r[123]\\\"' etc/os-release\"]\n\
         [suite.smoke.test.shell]\nrun = [\"/bin/sh\", \"-c\", \"test -x bin/busybox\"]\n"
    ));
}

fn current(farm: &Farm) -> String {
    fs::read_link(farm.path("machines/deb/deb"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("no link: {e}"))
}

fn runs(farm: &Farm) -> usize {
    fs::read_dir(farm.path(".reconcile/runs"))
        .map(|d| d.flatten().filter(|e| e.file_name() != "latest").count())
        .unwrap_or(0)
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.all()))
}

#[test]
#[ignore = "needs busybox-static for a test root filesystem"]
fn a_candidate_is_switched_in_only_after_its_suites_pass_on_it() {
    let farm = Farm::new();
    for (name, marker) in [("1", "r1"), ("2", "r2"), ("3-bad", "bad"), ("3", "r3")] {
        if rootfs_tar(&farm, &format!("rootfs-{name}.tar.gz"), marker).is_none() {
            return;
        }
    }
    // the first revision is gated too: no link until it passed
    declare(&farm, 1, "1", 1);
    let a = farm.run(&["apply"]);
    a.expect(0);
    assert!(
        a.stderr
            .contains("testing candidate revision 1 of machine.deb (promoted after smoke)"),
        "{}",
        a.all()
    );
    assert!(
        a.stderr
            .contains("promoted machine.deb: revision 1 is current"),
        "{}",
        a.all()
    );
    assert_eq!(current(&farm), "deb-1");
    farm.run(&["plan"]).expect(0);

    // a new revision: the plan says it is a candidate, not a switch
    declare(&farm, 2, "2", 1);
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout
            .contains("candidate revision 2: not tested (promoted after smoke)"),
        "{}",
        plan.stdout
    );
    let p = json(&farm.run(&["plan", "--json"]));
    let change = p["resources"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c.get("candidate").is_some())
        .unwrap_or_else(|| panic!("{p}"))
        .clone();
    assert_eq!(change["candidate"]["state"], "not-tested", "{change}");
    assert_eq!(change["candidate"]["revision"], 2, "{change}");
    assert_eq!(
        (change["from"].as_str(), change["to"].as_str()),
        (Some("1"), Some("2")),
        "{change}"
    );
    let md = farm.run(&["plan", "--format", "markdown"]);
    assert!(
        md.stdout.contains("candidate revision 2: not tested"),
        "{}",
        md.stdout
    );
    let r = json(&farm.run(&["apply", "--json"]));
    assert_eq!(r["gates"][0]["result"], "promoted", "{r}");
    assert_eq!(r["gates"][0]["tested"], true, "{r}");
    assert_eq!(current(&farm), "deb-2");

    // a candidate that fails: the old revision stays current, the candidate
    // stays beside it, apply exits 4 naming it and the failed test
    declare(&farm, 3, "3-bad", 1);
    let a = farm.run(&["apply"]);
    a.expect(4);
    assert!(
        a.stdout
            .contains("Not promoted: machine.deb: candidate revision 3 failed smoke.os (run "),
        "{}",
        a.all()
    );
    let line = a
        .stdout
        .lines()
        .find(|l| l.starts_with("Not promoted:"))
        .unwrap();
    assert!(
        !line.contains("smoke.shell"),
        "only what failed is named: {line}"
    );
    assert_eq!(current(&farm), "deb-2");
    assert!(
        farm.path("machines/deb/deb-3/etc/os-release").exists(),
        "kept for inspection"
    );
    // retention: keep = 1 keeps revision 1, the current revision's rollback, beside the candidate
    assert!(
        farm.path("machines/deb/deb-1").exists(),
        "the rollback was pushed out"
    );
    let st = json(&farm.run(&["status", "--json"]));
    assert_eq!(st["candidates"][0]["address"], "machine.deb", "{st}");
    assert_eq!(st["candidates"][0]["state"], "failed", "{st}");
    assert_eq!(st["candidates"][0]["failed"][0], "smoke.os", "{st}");
    let text = farm.run(&["status"]);
    assert!(
        text.stdout
            .contains("Candidate: machine.deb revision 3 — failed (promoted after smoke)"),
        "{}",
        text.stdout
    );
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout
            .contains("candidate revision 3: failed smoke.os at "),
        "{}",
        plan.stdout
    );

    // not tested again while it is the same…
    let before = runs(&farm);
    let a = farm.run(&["apply"]);
    a.expect(4);
    assert!(
        a.stdout
            .contains("it did not change since, so it was not tested again (apply --retest)"),
        "{}",
        a.stdout
    );
    assert_eq!(runs(&farm), before, "a failed candidate was tested again");
    // …unless asked
    farm.run(&["apply", "--retest"]).expect(4);
    assert_eq!(runs(&farm), before + 1);
    assert_eq!(current(&farm), "deb-2");

    // fixed (its inputs changed): tested, passed, switched in; then
    // retention applies to the new current revision
    declare(&farm, 3, "3", 1);
    farm.run(&["apply"]).expect(0);
    assert_eq!(current(&farm), "deb-3");
    assert!(
        !farm.path("machines/deb/deb-1").exists(),
        "keep = 1: revision 1 goes once 3 is current"
    );
    assert!(farm.path("machines/deb/deb-2").exists());
    farm.run(&["plan"]).expect(0);
    let st = json(&farm.run(&["status", "--json"]));
    assert_eq!(st["candidates"], serde_json::json!([]), "{st}");

    // validation: a gate that names a suite that does not test this machine
    farm.desired(
        "version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"dir\"\n\
         [machine.deb]\nrevision = 3\nsource = { path = \"rootfs-3.tar.gz\" }\npromote = { after = [\"other\", \"nope\"] }\n\
         [suite.other]\nexecutor = \"host\"\n[suite.other.test.t]\nrun = [\"true\"]\n",
    );
    let v = farm.run(&["validate"]);
    v.expect(1);
    assert!(
        v.all()
            .contains("suite `other` does not run on machine `deb`"),
        "{}",
        v.all()
    );
    assert!(
        v.all()
            .contains("machine `deb` is promoted after undeclared suite `nope`"),
        "{}",
        v.all()
    );
}

#[test]
#[ignore = "needs busybox-static for a test root filesystem"]
fn a_kill_around_the_switch_leaves_the_old_revision_current_or_the_new_one() {
    let farm = Farm::new();
    for (name, marker) in [("1", "r1"), ("2", "r2")] {
        if rootfs_tar(&farm, &format!("rootfs-{name}.tar.gz"), marker).is_none() {
            return;
        }
    }
    for (step, after) in [
        ("machine.deb:promote", "deb-1"),
        ("machine.deb:switch", "deb-1"),
        ("machine.deb:switched", "deb-2"),
    ] {
        let _ = fs::remove_dir_all(farm.path("machines"));
        let _ = fs::remove_dir_all(farm.path(".reconcile"));
        declare(&farm, 1, "1", 1);
        farm.run(&["apply"]).expect(0);
        declare(&farm, 2, "2", 1);
        let killed = farm.run_env(&["apply"], &[("RECONCILE_FAULT", step)]);
        assert_eq!(killed.signal, Some(9), "{step}: {}", killed.all());
        assert_eq!(current(&farm), after, "{step}");
        assert!(
            Path::new(&farm.path("machines/deb/deb-2")).exists(),
            "{step}"
        );
        // the next apply finishes: the gate passed already, so no test runs again
        let before = runs(&farm);
        let a = farm.run(&["apply"]);
        a.expect(0);
        assert_eq!(current(&farm), "deb-2", "{step}: {}", a.all());
        assert_eq!(runs(&farm), before, "{step}: tested again: {}", a.all());
        farm.run(&["plan"]).expect(0);
        assert!(
            farm.leftovers("machines/deb").is_empty(),
            "{step}: {:?}",
            farm.leftovers("machines/deb")
        );
    }
}

#[test]
#[ignore = "needs busybox-static for a test root filesystem"]
fn a_kill_while_the_candidate_is_tested_leaves_the_old_revision_current_and_the_next_apply_tests_again(
) {
    let farm = Farm::new();
    for (name, marker) in [("1", "r1"), ("2", "r2")] {
        if rootfs_tar(&farm, &format!("rootfs-{name}.tar.gz"), marker).is_none() {
            return;
        }
    }
    declare(&farm, 1, "1", 1);
    farm.run(&["apply"]).expect(0);
    // the gate's test waits for a file: the apply is killed while it waits
    let gate = |rev: u32| {
        farm.desired(&format!(
            "version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"dir\"\n\
             [machine.deb]\nrevision = {rev}\nsource = {{ path = \"rootfs-{rev}.tar.gz\" }}\nkeep = 1\n\
             promote = {{ after = [\"smoke\"] }}\n\
             [suite.smoke]\nmachines = [\"deb\"]\nexecutor = \"host\"\n\
             [suite.smoke.test.waits]\nrun = [\"/bin/sh\", \"-c\", \"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done\"]\n",
            started = farm.path("started").display(),
            go = farm.path("go").display(),
        ))
    };
    gate(2);
    let mut child = farm
        .cmd(&["apply"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the gate's test never started",
        std::time::Duration::from_secs(60),
        || farm.path("started").exists(),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(current(&farm), "deb-1", "the old revision stays current");
    assert!(
        farm.path("machines/deb/deb-2").exists(),
        "the candidate stays"
    );
    let st = json(&farm.run(&["status", "--json"]));
    assert_eq!(st["candidates"][0]["state"], "not-tested", "{st}");
    // the next apply tests it again, and it passes
    fs::write(farm.path("go"), "").unwrap();
    let a = farm.run(&["apply"]);
    a.expect(0);
    assert!(
        a.stderr.contains("testing candidate revision 2"),
        "{}",
        a.all()
    );
    assert_eq!(current(&farm), "deb-2");
}
