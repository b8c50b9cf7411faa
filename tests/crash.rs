//! SIGKILL at every journal step (through the fault-injection hook): the managed
//! path is always fully old or fully new, and the next apply recovers.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

/// Content of a plugin dir (kind, mode, digest per path), receipt excluded (it holds times and ids).
fn content(dir: &Path) -> Option<BTreeMap<PathBuf, String>> {
    if !dir.exists() {
        return None;
    }
    let mut out = BTreeMap::new();
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(root.join(rel)).unwrap().flatten() {
            let r = rel.join(e.file_name());
            if r == Path::new(".reconcile-receipt.json") {
                continue;
            }
            let m = fs::symlink_metadata(root.join(&r)).unwrap();
            if m.is_dir() {
                out.insert(r.clone(), "dir".into());
                walk(root, &r, out);
            } else {
                out.insert(
                    r.clone(),
                    format!("{:o} {}", m.permissions().mode(), sha_file(&root.join(&r))),
                );
            }
        }
    }
    walk(dir, Path::new(""), &mut out);
    Some(out)
}

fn decl(farm: &Farm, version: &str) -> String {
    let archive = format!("www/kolet_{version}_linux_amd64.tar.gz");
    if !farm.path(&archive).exists() {
        farm.write(&archive, plugin_tgz("kolet", version, Some(version)));
    }
    format!("[plugin.kolet]\nversion = \"{version}\"\nsource = {{ path = \"{archive}\" }}\n")
}

/// Expected plugin dir content after installing `version`, from a clean farm.
fn reference(version: &str) -> BTreeMap<PathBuf, String> {
    let farm = Farm::new();
    farm.desired(&format!("version = 1\n{}", decl(&farm, version)));
    farm.run(&["apply"]).expect(0);
    content(&farm.path("plugins/kolet")).unwrap()
}

fn assert_recovers(
    farm: &Farm,
    target: &str,
    step: &str,
    old: &Option<BTreeMap<PathBuf, String>>,
    new: &Option<BTreeMap<PathBuf, String>>,
) {
    let killed = farm.run_env(&["apply"], &[("RECONCILE_FAULT", step)]);
    assert_eq!(
        killed.signal,
        Some(9),
        "step {step} was never reached: {}",
        killed.all()
    );
    let now = content(&farm.path(target));
    assert!(
        now == *old || now == *new,
        "step {step}: {target} is neither fully old nor fully new: {now:#?}"
    );

    let r = farm.run(&["apply"]);
    r.expect(0);
    if !step.ends_with("done") {
        assert!(
            r.stderr.contains("recovered plugin."),
            "step {step}: {}",
            r.stderr
        );
    }
    assert_eq!(
        content(&farm.path(target)),
        *new,
        "step {step}: not converged after recovery"
    );
    assert!(
        farm.leftovers("plugins").is_empty(),
        "step {step}: leftovers {:?}",
        farm.leftovers("plugins")
    );
    assert_eq!(
        fs::read_to_string(farm.path(".reconcile/journal.jsonl")).unwrap_or_default(),
        "",
        "step {step}: journal not cleared"
    );
    farm.run(&["plan"]).expect(0);
}

const INSTALL_STEPS: &[&str] = &[
    "begin",
    "stage",
    "stage-partial",
    "exchange",
    "cleanup",
    "done",
];

#[test]
fn kill_at_every_step_of_a_fresh_install() {
    let new = Some(reference("1.0.0"));
    for step in INSTALL_STEPS {
        let farm = Farm::new();
        farm.desired(&format!("version = 1\n{}", decl(&farm, "1.0.0")));
        assert_recovers(&farm, "plugins/kolet", step, &None, &new);
    }
}

#[test]
fn kill_at_every_step_of_an_upgrade() {
    let (old, new) = (Some(reference("1.0.0")), Some(reference("2.0.0")));
    for step in INSTALL_STEPS {
        let farm = Farm::new();
        farm.desired(&format!("version = 1\n{}", decl(&farm, "1.0.0")));
        farm.run(&["apply"]).expect(0);
        assert_eq!(content(&farm.path("plugins/kolet")), old);
        farm.desired(&format!("version = 1\n{}", decl(&farm, "2.0.0")));
        // the address-qualified form of the hook
        assert_recovers(
            &farm,
            "plugins/kolet",
            &format!("plugin.kolet:{step}"),
            &old,
            &new,
        );
    }
}

#[test]
fn kill_at_every_step_of_a_prune() {
    let old = Some(reference("1.0.0"));
    for step in ["begin", "retire", "cleanup", "done"] {
        let farm = Farm::new();
        farm.desired(&format!("version = 1\n{}", decl(&farm, "1.0.0")));
        farm.run(&["apply"]).expect(0);
        farm.desired("version = 1\n");
        assert_recovers(&farm, "plugins/kolet", step, &old, &None);
    }
}

#[test]
fn a_torn_journal_line_is_ignored() {
    let farm = Farm::new();
    farm.desired(&format!("version = 1\n{}", decl(&farm, "1.0.0")));
    farm.run(&["apply"]).expect(0);
    fs::write(
        farm.path(".reconcile/journal.jsonl"),
        "{\"txn\":\"x\",\"address\":\"plugin.kolet\",\"st",
    )
    .unwrap();
    farm.run(&["apply"]).expect(0);
    assert_eq!(
        content(&farm.path("plugins/kolet")),
        Some(reference("1.0.0"))
    );
}

#[test]
fn kill_at_every_step_with_the_two_rename_fallback() {
    // as on a filesystem that refuses RENAME_EXCHANGE: old aside, new in, and recovery restores
    let (old, new) = (Some(reference("1.0.0")), Some(reference("2.0.0")));
    for step in INSTALL_STEPS {
        let farm = Farm::new();
        farm.desired(&format!("version = 1\n{}", decl(&farm, "1.0.0")));
        farm.run_env(&["apply"], &[("RECONCILE_RENAME_FALLBACK", "1")])
            .expect(0);
        farm.desired(&format!("version = 1\n{}", decl(&farm, "2.0.0")));
        let killed = farm.run_env(
            &["apply"],
            &[
                ("RECONCILE_FAULT", step),
                ("RECONCILE_RENAME_FALLBACK", "1"),
            ],
        );
        assert_eq!(killed.signal, Some(9), "{step}");
        let now = content(&farm.path("plugins/kolet"));
        assert!(now == old || now == new, "step {step}: neither old nor new");
        farm.run_env(&["apply"], &[("RECONCILE_RENAME_FALLBACK", "1")])
            .expect(0);
        assert_eq!(content(&farm.path("plugins/kolet")), new, "{step}");
        assert!(
            farm.leftovers("plugins").is_empty(),
            "{step}: {:?}",
            farm.leftovers("plugins")
        );
    }
}

#[test]
fn a_kill_inside_the_fallback_window_restores_the_old_copy() {
    // simulate the one moment the fallback has a window: old renamed aside, new not yet in
    let old = Some(reference("1.0.0"));
    let farm = Farm::new();
    farm.desired(&format!("version = 1\n{}", decl(&farm, "1.0.0")));
    farm.run(&["apply"]).expect(0);
    let target = farm.path("plugins/kolet");
    let txn = "18eb6beb12477686-4242-0"; // the shape of a real transaction id
    let staging = farm.path(&format!("plugins/.kolet.reconcile-{txn}"));
    let retired = farm.path(&format!("plugins/.kolet.reconcile-{txn}.old"));
    fs::create_dir(&staging).unwrap();
    fs::rename(&target, &retired).unwrap();
    fs::write(
        farm.path(".reconcile/journal.jsonl"),
        format!(
            "{{\"txn\":\"{txn}\",\"address\":\"plugin.kolet\",\"step\":\"begin\",\"op\":\"publish\",\"target\":\"{}\",\"staging\":\"{}\",\"retired\":\"{}\"}}\n\
             {{\"txn\":\"{txn}\",\"address\":\"plugin.kolet\",\"step\":\"exchange\"}}\n",
            target.display(),
            staging.display(),
            retired.display()
        ),
    )
    .unwrap();
    let r = farm.run(&["apply"]);
    r.expect(0);
    assert!(r.stderr.contains("rolled back"), "{}", r.stderr);
    assert_eq!(content(&target), old);
    assert!(farm.leftovers("plugins").is_empty());
}
