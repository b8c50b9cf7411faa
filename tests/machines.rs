//! Machines in the buildos layout, on a real btrfs loop mount (as root) and on
//! the plain-directory backend: revisions, the current link, toolchain
//! snapshots, rollback, retention, working snapshots and their protection,
//! the namespace executor, and SIGKILL at every journal step.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BOOTSTRAP: &str = r#"bootstrap = ["/bin/sh", "-c", "echo built-on $(grep VERSION_ID /etc/os-release) > /etc/toolchain"]"#;

fn declare(farm: &Farm, backend: &str, rev: u32, keep: u32, extra: &str) {
    farm.desired(&format!(
        "version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"{backend}\"\n{extra}\n\
         [machine.deb]\nrevision = {rev}\nsource = {{ path = \"rootfs-{rev}.tar.gz\" }}\nkeep = {keep}\n\
         [machine.deb.toolchain.gcc]\n{BOOTSTRAP}\n"
    ));
}

/// rootfs-1..n.tar.gz, each with its own marker in /etc/os-release.
fn revisions(farm: &Farm, n: u32) -> Option<()> {
    for i in 1..=n {
        rootfs_tar(farm, &format!("rootfs-{i}.tar.gz"), &format!("r{i}"))?;
    }
    Some(())
}

fn btrfs_cmd(args: &[&str], path: &Path) -> String {
    stdout_of(Command::new("btrfs").args(args).arg(path))
}

fn subvolume_id(path: &Path) -> String {
    btrfs_cmd(&["subvolume", "show"], path)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Subvolume ID:")
                .map(|v| v.trim().to_string())
        })
        .expect("Subvolume ID line")
}

fn read(farm: &Farm, rel: &str) -> String {
    fs::read_to_string(farm.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
#[ignore = "needs root, btrfs-progs and busybox-static"]
fn btrfs_revisions_link_toolchains_and_rollback() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let Some(()) = revisions(&farm, 2) else {
        return;
    };
    declare(&farm, "btrfs", 1, 2, "");
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("+ machine.deb") && plan.stdout.contains("revision 1 missing"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("toolchain gcc not bootstrapped"),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);

    // the kernel's own view: subvolume roots (inode 256), read-only, the link
    for entry in ["deb-1", "deb-gcc"] {
        let p = farm.path(&format!("machines/deb/{entry}"));
        assert_eq!(
            fs::metadata(&p).unwrap().ino(),
            256,
            "{entry} is a subvolume root"
        );
        btrfs_cmd(&["subvolume", "show"], &p);
        assert_eq!(
            btrfs_cmd(&["property", "get", "-ts"], &p).trim(),
            "ro=true",
            "{entry} is read-only"
        );
    }
    assert_eq!(
        fs::read_link(farm.path("machines/deb/deb")).unwrap(),
        Path::new("deb-1")
    );
    assert_eq!(
        read(&farm, "machines/deb/deb-gcc/etc/toolchain"),
        "built-on VERSION_ID=\"r1\"\n"
    );
    farm.run(&["plan"]).expect(0);

    // a new revision: built, switched to, toolchain rebuilt on it
    let id1 = subvolume_id(&farm.path("machines/deb/deb-1"));
    declare(&farm, "btrfs", 2, 2, "");
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("current revision 1 → 2"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("toolchain gcc built on revision 1, current is 2"),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    assert_eq!(
        fs::read_link(farm.path("machines/deb/deb")).unwrap(),
        Path::new("deb-2")
    );
    assert_eq!(
        read(&farm, "machines/deb/deb-gcc/etc/toolchain"),
        "built-on VERSION_ID=\"r2\"\n"
    );
    let id2 = subvolume_id(&farm.path("machines/deb/deb-2"));

    // rollback: O(1) — the link moves, no revision is copied or recreated
    let subvolumes_before = btrfs_cmd(&["subvolume", "list"], mnt.path())
        .lines()
        .count();
    declare(&farm, "btrfs", 1, 2, "");
    let plan = farm.run(&["plan"]);
    assert!(
        plan.stdout.contains("current revision 2 → 1")
            && !plan.stdout.contains("revision 1 missing"),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    assert_eq!(
        fs::read_link(farm.path("machines/deb/deb")).unwrap(),
        Path::new("deb-1")
    );
    assert_eq!(
        subvolume_id(&farm.path("machines/deb/deb-1")),
        id1,
        "revision 1 is the same subvolume"
    );
    assert_eq!(
        subvolume_id(&farm.path("machines/deb/deb-2")),
        id2,
        "revision 2 is kept as it was"
    );
    assert_eq!(
        btrfs_cmd(&["subvolume", "list"], mnt.path())
            .lines()
            .count(),
        subvolumes_before,
        "no new subvolume but the toolchain's"
    );
    assert_eq!(
        read(&farm, "machines/deb/deb-gcc/etc/toolchain"),
        "built-on VERSION_ID=\"r1\"\n",
        "toolchain rebuilt on rollback"
    );
    farm.run(&["plan"]).expect(0);
    assert!(
        farm.leftovers("machines/deb").is_empty(),
        "{:?}",
        farm.leftovers("machines/deb")
    );
}

#[test]
#[ignore = "needs root, btrfs-progs and busybox-static"]
fn retention_keeps_n_older_revisions_and_what_a_live_working_snapshot_needs() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let Some(()) = revisions(&farm, 4) else {
        return;
    };
    declare(&farm, "btrfs", 1, 1, "");
    farm.run(&["apply"]).expect(0);
    // a long-running command in a working snapshot of revision 1's toolchain
    let mut user = farm
        .cmd(&["exec", "deb", "-t", "gcc", "--", "/bin/sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let working = loop {
        let found = fs::read_dir(farm.path("machines/deb"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("deb-gcc-"));
        if let Some(w) = found {
            break w;
        }
        assert!(Instant::now() < deadline, "no working snapshot appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    for rev in 2..=4 {
        declare(&farm, "btrfs", rev, 1, "");
        // the snapshot's directory appears while exec still holds the state
        // lock to finish its receipt: wait for it rather than race it
        farm.run(&["apply", "--lock-timeout", "1m"]).expect(0);
    }
    // keep = 1: revision 3 stays for rollback, 2 goes, 1 stays because the live snapshot was made from it
    let names: Vec<String> = fs::read_dir(farm.path("machines/deb"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for want in ["deb-1", "deb-3", "deb-4", "deb-gcc", working.as_str()] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n == "deb-2"),
        "revision 2 should be gone: {names:?}"
    );

    // once its owner is gone (SIGKILL: no cleanup), the snapshot is stale and both go;
    // the test process it started dies with it, a moment later (PR_SET_PDEATHSIG),
    // and holds the snapshot's lock until then
    user.kill().unwrap();
    user.wait().unwrap();
    wait_until(
        "the killed run's test process to let go of its snapshot",
        Duration::from_secs(10),
        || farm.run(&["plan"]).code == Some(2),
    );
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout
            .contains(&format!("stale working snapshot {working}")),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("revision 1 beyond keep = 1"),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    let names: Vec<String> = fs::read_dir(farm.path("machines/deb"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n == "deb-1" || n == &working),
        "{names:?}"
    );
    farm.run(&["plan"]).expect(0);
}

#[test]
#[ignore = "needs root, btrfs-progs and busybox-static"]
fn exec_runs_isolated_in_a_working_snapshot_and_cleans_up() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let Some(()) = revisions(&farm, 1) else {
        return;
    };
    declare(&farm, "btrfs", 1, 1, "");
    farm.run(&["apply"]).expect(0);
    let before = snapshot(&farm.path("machines/deb"), &[]);
    let script = "echo pid=$$; echo host=$(hostname); ls /proc | grep -c '^[0-9]'; cat /etc/toolchain; echo leak > /leak; ls /dev | tr '\\n' ' '";
    let r = farm.run(&["exec", "deb", "-t", "gcc", "--", "/bin/sh", "-c", script]);
    r.expect(0);
    assert!(
        r.stdout.contains("pid=1\n"),
        "a new pid namespace: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("host=deb-gcc-"),
        "a new uts namespace: {}",
        r.stdout
    );
    let procs: u32 = r.stdout.lines().nth(2).unwrap().trim().parse().unwrap();
    assert!(
        (1..=3).contains(&procs),
        "/proc shows only the namespace's processes: {procs}"
    );
    assert!(
        r.stdout.contains("built-on VERSION_ID=\"r1\""),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("null") && r.stdout.contains("urandom"),
        "minimal /dev: {}",
        r.stdout
    );
    // nothing leaked into the base, the revision or the host, and the snapshot is gone
    assert_eq!(
        before,
        snapshot(&farm.path("machines/deb"), &[]),
        "the machine directory is unchanged"
    );
    assert!(!Path::new("/leak").exists());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("deb-gcc-"),
        "no mount of the working snapshot is left on the host"
    );

    // exit status is passed through; a timeout kills everything and exits 124
    farm.run(&["exec", "deb", "--", "/bin/sh", "-c", "exit 7"])
        .expect(7);
    let r = farm.run(&[
        "exec",
        "deb",
        "--timeout",
        "500ms",
        "--",
        "/bin/sh",
        "-c",
        "sleep 1931 & sleep 1932",
    ]);
    r.expect(124);
    assert_eq!(before, snapshot(&farm.path("machines/deb"), &[]));
    let sleepers = Command::new("pgrep")
        .args(["-f", "sleep 193[12]"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&sleepers.stdout).trim().is_empty(),
        "processes survived the timeout"
    );
}

#[test]
#[ignore = "needs root, btrfs-progs and busybox-static"]
fn exec_deletes_its_snapshot_on_sigterm() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let Some(()) = revisions(&farm, 1) else {
        return;
    };
    declare(&farm, "btrfs", 1, 1, "");
    farm.run(&["apply"]).expect(0);
    let before = snapshot(&farm.path("machines/deb"), &[]);
    let child = farm
        .cmd(&["exec", "deb", "--", "/bin/sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_dir(farm.path("machines/deb"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("deb-1-"))
    {
        assert!(Instant::now() < deadline, "no working snapshot appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    assert_eq!(
        before,
        snapshot(&farm.path("machines/deb"), &[]),
        "the working snapshot was deleted"
    );
}

#[test]
#[ignore = "needs root, btrfs-progs and busybox-static"]
fn a_failed_bootstrap_keeps_the_previous_toolchain_and_shows_its_output() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let Some(()) = revisions(&farm, 2) else {
        return;
    };
    declare(&farm, "btrfs", 1, 1, "");
    farm.run(&["apply"]).expect(0);
    let id = subvolume_id(&farm.path("machines/deb/deb-gcc"));
    farm.desired(
        "version = 1\n[volume.default]\npath = \"machines\"\n[machine.deb]\nrevision = 2\nsource = { path = \"rootfs-2.tar.gz\" }\nkeep = 1\n\
         [machine.deb.toolchain.gcc]\nbootstrap = [\"/bin/sh\", \"-c\", \"echo compiling; echo no space left >&2; exit 3\"]\n",
    );
    let r = farm.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr.contains("bootstrap failed (exit status 3)") && r.stderr.contains("no space left"),
        "{}",
        r.stderr
    );
    assert_eq!(
        subvolume_id(&farm.path("machines/deb/deb-gcc")),
        id,
        "the previous toolchain snapshot stays"
    );
    assert_eq!(
        read(&farm, "machines/deb/deb-gcc/etc/toolchain"),
        "built-on VERSION_ID=\"r1\"\n"
    );
    assert!(
        farm.leftovers("machines/deb").is_empty(),
        "{:?}",
        farm.leftovers("machines/deb")
    );

    farm.desired(
        "version = 1\n[volume.default]\npath = \"machines\"\n[machine.deb]\nrevision = 2\nsource = { path = \"rootfs-2.tar.gz\" }\nkeep = 1\n\
         [machine.deb.toolchain.gcc]\nbootstrap = [\"/bin/sleep\", \"60\"]\ntimeout = \"300ms\"\n",
    );
    let r = farm.run(&["apply"]);
    r.expect(1);
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);
    assert_eq!(subvolume_id(&farm.path("machines/deb/deb-gcc")), id);
}

fn entries(farm: &Farm) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(farm.path("machines/deb"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
#[ignore = "needs busybox-static for a test root filesystem"]
fn dir_backend_gives_the_same_layout_on_an_ordinary_filesystem() {
    let farm = Farm::new();
    let Some(()) = revisions(&farm, 2) else {
        return;
    };
    declare(&farm, "dir", 1, 0, "");
    farm.run(&["apply"]).expect(0);
    assert_eq!(
        fs::read_link(farm.path("machines/deb/deb")).unwrap(),
        Path::new("deb-1")
    );
    assert_eq!(
        read(&farm, "machines/deb/deb-gcc/etc/toolchain"),
        "built-on VERSION_ID=\"r1\"\n"
    );
    assert_eq!(
        read(&farm, "machines/deb/deb-1/etc/os-release"),
        "ID=reconcile-test\nVERSION_ID=\"r1\"\n"
    );
    farm.run(&["plan"]).expect(0);
    declare(&farm, "dir", 2, 0, "");
    let plan = farm.run(&["plan"]);
    assert!(
        plan.stdout.contains("- machine.deb") && plan.stdout.contains("revision 1 beyond keep = 0"),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    assert_eq!(
        entries(&farm),
        vec![".reconcile", "deb", "deb-2", "deb-gcc"]
    );
    assert_eq!(
        read(&farm, "machines/deb/deb-gcc/etc/toolchain"),
        "built-on VERSION_ID=\"r2\"\n"
    );
    let status = farm.run(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let m = doc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "machine.deb")
        .unwrap();
    assert_eq!(m["current"], "deb-2");
    assert_eq!(m["backend"], "dir");
}

#[test]
#[ignore = "needs busybox-static for a test root filesystem"]
fn prune_modes_and_undeclared_machines() {
    let farm = Farm::new();
    let Some(()) = revisions(&farm, 1) else {
        return;
    };
    declare(&farm, "dir", 1, 0, "");
    farm.run(&["apply"]).expect(0);
    // hand-made entries: kept with prune = "owned", deleted with prune = "all"
    fs::create_dir_all(farm.path("machines/deb/deb-scratch/etc")).unwrap();
    fs::create_dir_all(farm.path("machines/handmade/handmade-1")).unwrap();
    farm.run(&["plan"]).expect(0);
    farm.desired(
        &fs::read_to_string(farm.path("reconcile.toml"))
            .unwrap()
            .replace("backend = \"dir\"", "backend = \"dir\"\nprune = \"all\""),
    );
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("stray deb-scratch (prune = \"all\")"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("- machine.handmade"),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    assert!(!farm.path("machines/deb/deb-scratch").exists());
    assert!(!farm.path("machines/handmade").exists());
    // an undeclared machine reconcile made goes with prune = "owned"
    farm.desired("version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"dir\"\n");
    let plan = farm.run(&["plan"]);
    assert!(
        plan.stdout.contains("- machine.deb")
            && plan.stdout.contains("of a machine no longer declared"),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    assert!(!farm.path("machines/deb").exists());
    // prune = "none" deletes nothing
    declare(&farm, "dir", 1, 0, "prune = \"none\"");
    farm.run(&["apply"]).expect(0);
    farm.desired(
        "version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"dir\"\nprune = \"none\"\n",
    );
    farm.run(&["apply"]).expect(0);
    assert!(farm.path("machines/deb/deb-1").exists());
}

/// (entry name → content marker) of the machine directory, for crash checks.
fn layout(farm: &Farm) -> Vec<(String, String)> {
    entries(farm)
        .into_iter()
        .filter(|n| n != ".reconcile")
        .map(|n| {
            let p = farm.path(&format!("machines/deb/{n}"));
            let what = if let Ok(t) = fs::read_link(&p) {
                format!("-> {}", t.display())
            } else {
                let tc = fs::read_to_string(p.join("etc/toolchain")).unwrap_or_default();
                let os = fs::read_to_string(p.join("etc/os-release")).unwrap_or_default();
                format!("{}{}", os.trim(), tc.trim())
            };
            (n, what)
        })
        .collect()
}

/// Apply with a SIGKILL at `step`; every entry must then be as it was or
/// complete for revision `rev`, the link never missing; the next apply recovers
/// and converges to revision `rev` with nothing staged left over.
fn kill_and_recover(farm: &Farm, what: &str, step: &str, rev: u32) {
    let before = layout(farm);
    let killed = farm.run_env(&["apply"], &[("RECONCILE_FAULT", step)]);
    assert_eq!(killed.signal, Some(9), "{what}: {}", killed.all());
    let marker = format!("r{rev}");
    // managed entries (staging names hold copies on their way in or out; recovery removes them)
    for (name, state) in layout(farm).iter().filter(|(n, _)| !n.starts_with('.')) {
        let unchanged = before.iter().any(|(n, s)| n == name && s == state);
        assert!(
            unchanged || state.contains(&marker) || state.starts_with("->"),
            "{what}: {name} is {state:?}"
        );
    }
    assert!(
        layout(farm).iter().any(|(n, _)| n == "deb"),
        "{what}: the link is never missing"
    );
    farm.run(&["apply"]).expect(0);
    farm.run(&["plan"]).expect(0);
    let after = layout(farm);
    assert!(
        after.contains(&("deb".into(), format!("-> deb-{rev}"))),
        "{what}: {after:?}"
    );
    let toolchain = format!("built-on VERSION_ID=\"{marker}\"");
    assert!(
        after
            .iter()
            .any(|(n, s)| n == "deb-gcc" && s.contains(&toolchain)),
        "{what}: {after:?}"
    );
    assert!(
        farm.leftovers("machines/deb").is_empty(),
        "{what}: {:?}",
        farm.leftovers("machines/deb")
    );
}

/// SIGKILL at every journal step of a revision build and of a toolchain rebuild, each in a fresh farm.
fn crash_at_every_step(new_farm: &dyn Fn() -> Farm, fixtures: &Farm, backend: &str) {
    for step in [
        "begin",
        "stage",
        "stage-partial",
        "commit",
        "receipt",
        "cleanup",
        "done",
    ] {
        let farm = new_farm();
        for rev in [1, 2] {
            let name = format!("rootfs-{rev}.tar.gz");
            fs::copy(fixtures.path(&name), farm.path(&name)).unwrap();
        }
        declare(&farm, backend, 1, 1, "");
        farm.run(&["apply"]).expect(0);
        // a new revision: build, link, toolchain; the first transaction (the build) is killed
        declare(&farm, backend, 2, 1, "");
        kill_and_recover(&farm, &format!("{backend} {step}"), step, 2);
        // a rollback is a link switch and a toolchain rebuild: the rebuild is killed
        declare(&farm, backend, 1, 1, "");
        kill_and_recover(&farm, &format!("{backend} rollback {step}"), step, 1);
    }
}

#[test]
#[ignore = "needs root, btrfs-progs and busybox-static"]
fn kill_at_every_step_on_btrfs() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let fixtures = Farm::new();
    let Some(()) = revisions(&fixtures, 2) else {
        return;
    };
    crash_at_every_step(&|| mnt.farm(), &fixtures, "btrfs");
    // nothing reconcile staged is left as a subvolume
    let list = btrfs_cmd(&["subvolume", "list"], mnt.path());
    assert!(!list.contains(".reconcile-"), "{list}");
}

#[test]
#[ignore = "needs busybox-static for a test root filesystem"]
fn kill_at_every_step_with_the_dir_backend() {
    let fixtures = Farm::new();
    let Some(()) = revisions(&fixtures, 2) else {
        return;
    };
    crash_at_every_step(&Farm::new, &fixtures, "dir");
}

#[test]
#[ignore = "needs qemu-utils"]
fn disk_machines_are_stored_by_content_and_must_be_self_contained() {
    let farm = Farm::new();
    let qemu_img = |args: &[&str]| {
        Command::new("qemu-img")
            .args(args)
            .current_dir(farm.path(""))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !qemu_img(&["--version"]) {
        return skip("qemu-img missing (apt-get install qemu-utils; scripts/test does it)");
    }
    let desired = |rev: u32, src: &str| {
        farm.desired(&format!("version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"dir\"\n[machine.win]\nrevision = {rev}\nkind = \"disk\"\nsource = {{ path = \"images/{src}\" }}\n"));
    };
    // raw bytes named like a qcow2 are stored as the raw image they are
    farm.write("images/win-7.qcow2", vec![7u8; 65536]);
    desired(7, "win-7.qcow2");
    farm.run(&["apply"]).expect(0);
    assert_eq!(
        fs::read(farm.path("machines/win/win-7/disk.img")).unwrap(),
        fs::read(farm.path("images/win-7.qcow2")).unwrap()
    );
    assert!(!farm.path("machines/win/win-7/disk.qcow2").exists());
    assert_eq!(
        fs::read_link(farm.path("machines/win/win")).unwrap(),
        Path::new("win-7")
    );
    farm.run(&["plan"]).expect(0);
    // a real qcow2 named like a raw image is stored as a qcow2
    fs::create_dir_all(farm.path("images")).unwrap();
    assert!(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "images/win-8.img",
        "1M"
    ]));
    desired(8, "win-8.img");
    farm.run(&["apply"]).expect(0);
    let stored = fs::read(farm.path("machines/win/win-8/disk.qcow2")).unwrap();
    assert_eq!(&stored[..4], b"QFI\xfb");
    // a qcow2 naming a backing file would let the guest read that host file: refused, nothing changes
    assert!(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-F",
        "raw",
        "-b",
        "/etc/shadow",
        "images/evil.qcow2",
        "1M"
    ]));
    desired(9, "evil.qcow2");
    let r = farm.run(&["apply"]);
    r.expect(1);
    assert!(r.stderr.contains("backing file"), "{}", r.stderr);
    assert!(r.stderr.contains("/etc/shadow"), "{}", r.stderr);
    assert_eq!(
        fs::read_link(farm.path("machines/win/win")).unwrap(),
        Path::new("win-8")
    );
    assert!(!farm.path("machines/win/win-9").exists());
    assert!(
        farm.leftovers("machines/win").is_empty(),
        "{:?}",
        farm.leftovers("machines/win")
    );
}

#[test]
#[ignore = "needs busybox-static for a test root filesystem"]
fn without_root_the_dir_backend_bootstraps_on_the_host() {
    let farm = Farm::new();
    let Some(_) = rootfs(&farm, "rootfs", "r1") else {
        return;
    };
    farm.desired(
        "version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"dir\"\n[machine.deb]\nrevision = 1\nsource = { dir = \"rootfs\" }\n\
         [machine.deb.toolchain.tc]\nbootstrap = [\"/bin/sh\", \"-c\", \"test -d \\\"$RECONCILE_ROOT/etc\\\" && echo host-bootstrap > \\\"$RECONCILE_ROOT/etc/toolchain\\\"\"]\n",
    );
    let mut cmd = farm.cmd(&["apply"]);
    as_ordinary_user(&farm, &mut cmd);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read(&farm, "machines/deb/deb-tc/etc/toolchain"),
        "host-bootstrap\n"
    );
}
