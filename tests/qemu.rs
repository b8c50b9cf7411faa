//! The QEMU executor against real guests booted by real `qemu-system-x86_64`
//! under TCG: disk machines (raw and qcow2), exact output and exit status over
//! the serial console, fatal checks, the stall guard, timeouts and Ctrl-C
//! each tearing everything down, PXE boots of a published netboot image,
//! toolchain bootstraps of a disk machine surviving SIGKILL, `exec` and
//! `spawn`. The guest is built from Debian packages by
//! tests/fixtures/make-guest.sh. A missing QEMU skips loudly (and fails CI).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CONSOLE: &str = r#"console = { ready = 'kit: up', prompt = 'kit# ', shutdown = "sync; umount /mnt; poweroff -f" }"#;

/// A farm with disk machines `kit` (raw) and `kitq` (qcow2), forced to TCG,
/// and `extra` declarations (images/hang.img and images/login.img are there
/// for them too).
fn disk_farm(guest: &Guest, extra: &str) -> Farm {
    let farm = Farm::new();
    let raw = guest.copy_to(&farm, "disk.img", "images/kit.img");
    let q = guest.copy_to(&farm, "disk.qcow2", "images/kit.qcow2");
    guest.copy_to(&farm, "disk-hang.img", "images/hang.img");
    guest.copy_to(&farm, "disk-login.img", "images/login.img");
    farm.desired(&format!(
        r#"version = 1
[volume.default]
path = "machines"
backend = "dir"

[machine.kit]
revision = 1
kind = "disk"
source = {{ path = "images/kit.img", sha256 = "{raw}" }}
arch = "x86_64"
vm = {{ accel = "tcg", memory = "256M" }}
{CONSOLE}

[machine.kitq]
revision = 1
kind = "disk"
source = {{ path = "images/kit.qcow2", sha256 = "{q}" }}
arch = "x86_64"
vm = {{ accel = "tcg", memory = "256M", transport = "console" }}
{CONSOLE}
{extra}"#
    ));
    farm.run(&["apply", "--no-test"]).expect(0);
    farm
}

/// A machine `name` booting images/login.img (a `login:` prompt) with `login` in its console table.
fn login_machine(guest: &Guest, name: &str, login: &str) -> String {
    let sha = sha_file(&guest.file("disk-login.img"));
    format!(
        r#"
[machine.{name}]
revision = 1
kind = "disk"
source = {{ path = "images/login.img", sha256 = "{sha}" }}
vm = {{ accel = "tcg", memory = "256M" }}
console = {{ ready = 'kit: up', prompt = 'kit# ', {login} }}
"#
    )
}

/// The farm's file `desired` with `[settings] vm_memory = size`.
fn with_vm_memory(farm: &Farm, desired: &str, size: &str) {
    let settings = format!("version = 1\n[settings]\nvm_memory = \"{size}\"\n");
    fs::write(
        farm.path("reconcile.toml"),
        desired.replacen("version = 1\n", &settings, 1),
    )
    .unwrap();
}

/// No QEMU of the farm is left running and no working snapshot is left behind.
fn assert_nothing_left(farm: &Farm) {
    assert_eq!(no_qemu_left(farm.dir.path()), Vec::<String>::new());
    assert_eq!(working_entries(farm), Vec::<String>::new());
}

fn report(farm: &Farm) -> serde_json::Value {
    farm.report()
}

fn tests_by_name(report: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

fn output(t: &serde_json::Value, file: &str) -> String {
    let dir = Path::new(t["output"].as_str().unwrap());
    fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// Entries of machine directories other than revisions, links and receipts:
/// working snapshots (overlays) and staging leftovers.
fn working_entries(farm: &Farm) -> Vec<String> {
    let mut out = Vec::new();
    for m in fs::read_dir(farm.path("machines")).unwrap().flatten() {
        let machine = m.file_name().to_string_lossy().into_owned();
        for e in fs::read_dir(m.path()).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let rev = n
                .strip_prefix(&format!("{machine}-"))
                .is_some_and(|r| r.parse::<u32>().is_ok());
            if !(rev || n == machine || n == ".reconcile" || n == format!("{machine}-build2")) {
                out.push(format!("{machine}/{n}"));
            }
        }
    }
    out
}

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn disk_machines_boot_from_raw_and_qcow2_with_exact_output_and_status() {
    let Some(guest) = Guest::get() else { return };
    let long = "x".repeat(700);
    let farm = disk_farm(
        &guest,
        &format!(
            r#"
[suite.vm]
machines = ["kit", "kitq"]
executor = "qemu"
[suite.vm.test.hello]
run = ["sh", "-c", "echo hello; echo to-stderr >&2; printf 'no newline'"]
expect = {{ stdout = ["hello"] }}

[suite.one]
machines = ["kit", "kitq"]
executor = "qemu"
# each test boots: what is typed on the console during a boot is checked below
fresh = "boot"
[suite.one.test.exit3]
run = ["sh", "-c", "exit 3 # Kernel panic - not syncing: typed, never printed"]
[suite.one.test.unsafe]
run = ["printf", "%s\n%s\n", "tab	here", "{long}"]
"#
        ),
    );
    let r = farm.run(&["test", "-j", "2"]);
    r.expect(4);
    assert!(
        r.stderr.contains("qemu: TCG") || r.stdout.contains("qemu: TCG"),
        "the accelerator is said once: {}",
        r.all()
    );
    let rep = report(&farm);
    let t = tests_by_name(&rep);
    for name in ["vm.hello[kit]", "vm.hello[kitq]"] {
        assert_eq!(t[name]["result"], "PASS", "{name}: {:#}", t[name]);
        let console = output(&t[name], "console.txt");
        assert!(console.contains("kit: up"), "{console}");
        assert!(console.contains("Linux version 6."), "{console}");
        let a = &t[name]["attempts"][0];
        assert_eq!(a["accel"], "tcg");
        assert_eq!(a["timeout_factor"], 4.0);
        assert!(a["phases"]["boot_ms"].as_u64().unwrap() > 0, "{a:#}");
        let log = output(&t[name], "qemu.log");
        assert!(log.starts_with("# qemu-system-x86_64 "), "{log}");
    }
    // over the command channel (kit, the default): stdout and stderr apart, exactly
    let agent = &t["vm.hello[kit]"];
    assert_eq!(output(agent, "stdout.txt"), "hello\nno newline");
    assert_eq!(output(agent, "stderr.txt"), "to-stderr\n");
    assert!(output(agent, "qemu.log").contains("name=reconcile.ctl"));
    // and none of it on the console
    assert!(!output(agent, "console.txt").contains("to-stderr"));
    // typed on the console (kitq, transport = "console"): both share the serial line
    let console = &t["vm.hello[kitq]"];
    assert_eq!(
        output(console, "stdout.txt"),
        "hello\nto-stderr\nno newline"
    );
    assert!(output(console, "qemu.log").contains("format=qcow2"));
    assert!(!output(console, "qemu.log").contains("virtio-serial"));
    for on in ["kit", "kitq"] {
        // an exit status is exact: 3 fails the test as `test`, with the status recorded
        let e = &t[&format!("one.exit3[{on}]")];
        assert_eq!(e["result"], "FAIL");
        assert_eq!(e["class"], "test");
        assert_eq!(e["attempts"][0]["exit_status"], 3);
        assert!(
            e["reason"].as_str().unwrap().contains("exit status 3"),
            "{e:#}"
        );
        // arguments no terminal line could carry (a tab, 700 characters) arrive intact
        let u = &t[&format!("one.unsafe[{on}]")];
        assert_eq!(u["result"], "PASS", "{u:#}");
        assert_eq!(
            output(u, "stdout.txt"),
            format!("tab\there\n{long}\n"),
            "{}",
            output(u, "console.txt")
        );
    }
    // what was typed (a panic named in a comment) is no console line: the
    // harness did not count it, and `reconcile checks` on the log agrees
    let e = &t["one.exit3[kitq]"];
    let dir = Path::new(e["output"].as_str().unwrap());
    assert!(output(e, "typed.txt").contains("Kernel panic"));
    farm.run(&["checks", dir.join("console.txt").to_str().unwrap()])
        .expect(0);
    // what was typed is kept apart from what the console said (and the checks saw)
    let u = &t["one.unsafe[kitq]"];
    assert!(output(u, "typed.txt").contains("base64 -d"));
    assert!(!output(u, "console.txt").contains("base64 -d"));
    // the agent is typed once, and its text never reaches the console log either
    let a = &t["one.unsafe[kit]"];
    assert!(output(a, "typed.txt").contains("base64 -d"));
    assert!(!output(a, "console.txt").contains("__rc_agent"));
    assert!(!output(a, "typed.txt").contains("tab\there"));
    assert_nothing_left(&farm);
}

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn over_the_channel_a_vm_test_runs_like_a_host_test_with_files_in_and_out() {
    let Some(guest) = Guest::get() else { return };
    let farm = disk_farm(
        &guest,
        &format!(
            r#"
{good}{wrong}{nopass}
[suite.ch]
machines = ["kit"]
executor = "qemu"
env = {{ GREETING = "suite", ONLY_SUITE = "s" }}
upload = {{ "/usr/local/bin/greet" = {{ path = "bin/greet", mode = "0755" }} }}
collect = ["/var/log/app/*.log"]
[suite.ch.test.terminal]
run = ["sh", "-c", "echo \"term=$TERM tty=$(tty 2>&1 | head -c 9)\"; if read x; then echo got; else echo eof; fi; echo oops >&2; exit 0"]
expect = {{ stdout = ["term=dumb tty=not a tty", "eof"], stderr = ["oops"] }}
[suite.ch.test.env]
run = ["sh", "-c", "echo \"$GREETING $ONLY_SUITE $ONLY_TEST $RECONCILE_TEST $(pwd)\""]
env = {{ GREETING = "test", ONLY_TEST = "t" }}
cwd = "/usr/local"
expect = {{ stdout = ["test s t ch.env /usr/local"] }}
[suite.ch.test.files]
run = ["sh", "-c", "/usr/local/bin/greet; ls -a /usr/local/bin /data; stat -c %a /usr/local/bin/greet; sha256sum /data/data.bin"]
upload = {{ "/data/data.bin" = {{ path = "bin/data.bin" }} }}
expect = {{ stdout = ["greetings from greet", "755", "!.reconcile-upload"] }}
[suite.ch.test.collect-failed]
run = ["sh", "-c", "mkdir -p /var/log/app && echo first >/var/log/app/a.log && echo second >/var/log/app/b.log && echo skipped >/var/log/app/c.txt; exit 7"]
[suite.ch.test.collect-timeout]
run = ["sh", "-c", "mkdir -p /var/log/app && echo before-the-limit >/var/log/app/slow.log; sleep 600"]
timeout = "2s"

[suite.login]
machines = ["login-good", "login-wrong", "login-nopass"]
executor = "qemu"
[suite.login.test.whoami]
run = ["sh", "-c", "id -u"]
expect = {{ stdout = ["0"] }}
"#,
            good = login_machine(
                &guest,
                "login-good",
                r#"login = { user = "root", password = "kitpass" }"#
            ),
            wrong = login_machine(
                &guest,
                "login-wrong",
                r#"login = { user = "root", password = "wrong" }"#
            ),
            nopass = login_machine(&guest, "login-nopass", r#"login = { user = "root" }"#),
        ),
    );
    fs::create_dir_all(farm.path("bin")).unwrap();
    fs::write(
        farm.path("bin/greet"),
        "#!/bin/sh\necho \"greetings from $(basename \"$0\")\"\n",
    )
    .unwrap();
    fs::write(
        farm.path("bin/data.bin"),
        (0..=255u8).cycle().take(300_000).collect::<Vec<u8>>(),
    )
    .unwrap();
    farm.run(&["test", "-j", "2"]).expect(4);
    let t = tests_by_name(&report(&farm));
    for name in ["ch.terminal", "ch.env", "ch.files"] {
        assert_eq!(
            t[name]["result"],
            "PASS",
            "{name}: {:#} {}",
            t[name],
            output(&t[name], "stdout.txt")
        );
    }
    // the upload arrived whole, under its name only
    let files = output(&t["ch.files"], "stdout.txt");
    assert!(
        files.contains(&sha_file(&farm.path("bin/data.bin"))),
        "{files}"
    );
    // files are collected after a failure and after a timeout, under their guest paths
    let f = &t["ch.collect-failed"];
    assert_eq!(f["class"], "test", "{f:#}");
    assert_eq!(output(f, "collected/var/log/app/a.log"), "first\n");
    assert_eq!(output(f, "collected/var/log/app/b.log"), "second\n");
    assert!(!Path::new(f["output"].as_str().unwrap())
        .join("collected/var/log/app/c.txt")
        .exists());
    let s = &t["ch.collect-timeout"];
    assert_eq!(s["class"], "timeout", "{s:#}");
    assert_eq!(
        output(s, "collected/var/log/app/slow.log"),
        "before-the-limit\n"
    );
    // a console login: the right password gets a shell, a wrong one or none fails at once, as the test's fault
    assert_eq!(
        t["login.whoami[login-good]"]["result"], "PASS",
        "{:#}",
        t["login.whoami[login-good]"]
    );
    for (name, said) in [
        ("login.whoami[login-wrong]", "Login incorrect"),
        ("login.whoami[login-nopass]", "Password:"),
    ] {
        let w = &t[name];
        assert_eq!(w["class"], "test", "{name}: {w:#}");
        let reason = w["reason"].as_str().unwrap();
        // the line that showed it, not the stall guard (which would be `infra`)
        assert!(
            reason.contains("the console login failed") && reason.contains(said),
            "{reason}"
        );
    }
    // the unterminated last line (a password prompt) is in console.txt too
    let console = output(&t["login.whoami[login-nopass]"], "console.txt");
    assert!(console.trim_end().ends_with("Password:"), "{console}");
    assert_nothing_left(&farm);
}

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn fatal_checks_stalls_timeouts_and_ctrl_c_leave_no_vm_and_no_overlay() {
    let Some(guest) = Guest::get() else { return };
    let hang = sha_file(&guest.file("disk-hang.img"));
    let farm = disk_farm(
        &guest,
        &format!(
            r#"
[machine.hang]
revision = 1
kind = "disk"
source = {{ path = "images/hang.img", sha256 = "{hang}" }}
vm = {{ accel = "tcg", memory = "256M", tcg_timeout_factor = 1 }}
console = {{ ready = 'kit: up', prompt = 'kit# ', boot_timeout = "10m", stall_timeout = "20s" }}

[suite.p]
machines = ["kit"]
executor = "qemu"
[suite.p.test.panic]
run = ["sh", "-c", "printf 'Kernel panic - not syncing: %s\n' injected >/dev/kmsg; sleep 100; echo never"]
[suite.p.test.slow]
run = ["sleep", "600"]
timeout = "2s"

[suite.h]
machines = ["hang"]
executor = "qemu"
[suite.h.test.anything]
run = ["true"]
"#
        ),
    );
    farm.run(&["test", "-j", "2"]).expect(4);
    let t = tests_by_name(&report(&farm));

    // a fatal check kills the VM at once: the command never got to finish
    let p = &t["p.panic"];
    assert_eq!(p["class"], "check", "{p:#}");
    assert!(p["reason"]
        .as_str()
        .unwrap()
        .contains("fatal console check: kernel panic"));
    assert!(!output(p, "stdout.txt").contains("never"));
    // a kernel message during a test is the console's, never the test's stdout
    assert!(!output(p, "stdout.txt").contains("not syncing"));
    let hits = p["checks"].as_array().unwrap();
    assert_eq!(
        hits.len(),
        1,
        "only the output hit, not the typed command's echo: {hits:?}"
    );
    assert_eq!(hits[0]["step"], "p.panic");
    let line = hits[0]["line"].as_u64().unwrap() as usize;
    let console = output(p, "console.txt");
    assert!(
        console
            .lines()
            .nth(line - 1)
            .unwrap()
            .contains("not syncing: injected"),
        "line {line} of console.txt"
    );

    // a test timeout is its own class, scaled under TCG and saying so
    let s = &t["p.slow"];
    assert_eq!(s["class"], "timeout", "{s:#}");
    assert!(s["reason"].as_str().unwrap().contains("×4"), "{s:#}");

    // a guest that goes quiet before its prompt: the stall guard names the last line
    let h = &t["h.anything"];
    assert_eq!(h["class"], "infra", "{h:#}");
    let reason = h["reason"].as_str().unwrap();
    assert!(reason.contains("printed nothing for 20s"), "{reason}");
    assert!(reason.contains("kit: hanging"), "{reason}");

    assert_nothing_left(&farm);

    // Ctrl-C while a VM boots: it is killed, its overlay deleted, the report incomplete
    let mut child = farm
        .cmd(&["test", "p.slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("no VM started", Duration::from_secs(60), || {
        !qemu_processes(farm.dir.path()).is_empty()
    });
    interrupt(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert_nothing_left(&farm);
    assert_eq!(report(&farm)["incomplete"], true);
}

/// The busybox guest's kernel and `initrd` as the netboot image
/// `kit-netboot` (booting with `cmdline`, plus `image_extra` lines), and the
/// suite `pxe` whose test `release` runs `run` in it.
fn netboot_toml(
    kernel: &str,
    initrd: &str,
    sha: &str,
    cmdline: &str,
    image_extra: &str,
    run: &str,
) -> String {
    format!(
        r#"version = 1
[image.kit-netboot]
root = "tftp"
arch = "amd64"
release = "kit"
purpose = "test"
files.vmlinuz = {{ path = "netboot/vmlinuz", sha256 = "{kernel}" }}
files."initrd.img" = {{ path = "netboot/{initrd}", sha256 = "{sha}" }}
ipxe = {{ kernel = "vmlinuz", initrd = "initrd.img", cmdline = "{cmdline}" }}
vm = {{ accel = "tcg", memory = "256M" }}
console = {{ ready = 'kit: up', prompt = 'kit# ' }}
{image_extra}
[suite.pxe]
images = ["kit-netboot"]
executor = "qemu"
[suite.pxe.test.release]
run = ["sh", "-c", "{run}"]
"#
    )
}

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn pxe_boots_the_published_image_and_the_next_boot_sees_a_new_initrd() {
    let Some(guest) = Guest::get() else { return };
    let farm = Farm::new();
    let kernel = guest.copy_to(&farm, "vmlinuz", "netboot/vmlinuz");
    let initrd_a = guest.copy_to(&farm, "initrd.img", "netboot/initrd-a.img");
    let initrd_b = guest.copy_to(&farm, "initrd-b.img", "netboot/initrd-b.img");
    let desired = |initrd: &str, sha: &str| {
        farm.desired(&netboot_toml(
            &kernel,
            initrd,
            sha,
            "console=ttyS0 kit.tag=pxe",
            "",
            "cat /proc/cmdline /etc/release",
        ))
    };
    desired("initrd-a.img", &initrd_a);
    farm.run(&["apply", "--no-test"]).expect(0);
    farm.run(&["test"]).expect(0);
    let t = tests_by_name(&report(&farm));
    let r = &t["pxe.release"];
    assert_eq!(r["image"], "kit-netboot");
    let out = output(r, "stdout.txt");
    assert!(out.contains("console=ttyS0 kit.tag=pxe"), "{out}");
    assert!(out.ends_with("\nA\n"), "{out}");
    // what a PXE client fetches from the farm's TFTP tree
    let console = output(r, "console.txt");
    assert!(
        console.contains("amd64/generic/kit/test/boot.ipxe"),
        "{console}"
    );
    let log = output(r, "qemu.log");
    assert!(log.contains("restrict=on"), "{log}");
    assert!(
        log.contains(&format!("tftp={}", farm.path("tftp").display())),
        "{log}"
    );

    // publish another initrd: the next boot gets it
    desired("initrd-b.img", &initrd_b);
    farm.run(&["apply", "--no-test"]).expect(0);
    farm.run(&["test"]).expect(0);
    let t = tests_by_name(&report(&farm));
    let out = output(&t["pxe.release"], "stdout.txt");
    assert!(out.ends_with("\nB\n"), "{out}");
    assert_eq!(no_qemu_left(farm.dir.path()), Vec::<String>::new());
}

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn a_disk_toolchain_is_bootstrapped_over_the_console_and_survives_sigkill() {
    let Some(guest) = Guest::get() else { return };
    let farm = disk_farm(
        &guest,
        r#"
[machine.kit.toolchain.build2]
bootstrap = ["sh", "-c", "echo built > /mnt/toolchain"]

[suite.tc]
machines = ["kit"]
toolchain = "build2"
executor = "qemu"
[suite.tc.test.toolchain]
run = ["cat", "/mnt/toolchain"]
expect = { stdout = ["built"] }
"#,
    );
    // the first apply already bootstrapped; remove it and kill the next one mid-bootstrap
    assert!(farm.path("machines/kit/kit-build2/disk.qcow2").is_file());
    fs::write(
        farm.path("reconcile.toml"),
        fs::read_to_string(farm.path("reconcile.toml"))
            .unwrap()
            .replace("> /mnt/toolchain", "> /mnt/toolchain; sync"),
    )
    .unwrap();
    let killed = farm.run_env(
        &["apply", "--no-test"],
        &[("RECONCILE_FAULT", "machine.kit:bootstrapped")],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    // QEMU dies with reconcile; the old toolchain snapshot is still the one in place
    assert_eq!(no_qemu_left(farm.dir.path()), Vec::<String>::new());
    let receipt = fs::read_to_string(farm.path("machines/kit/.reconcile/kit-build2.json")).unwrap();
    let before: serde_json::Value = serde_json::from_str(&receipt).unwrap();
    assert!(
        !farm.leftovers("machines/kit").is_empty(),
        "the half-made snapshot is there"
    );

    let r = farm.run(&["apply", "--no-test"]);
    r.expect(0);
    assert!(r.all().contains("recovered machine.kit"), "{}", r.all());
    assert!(
        farm.leftovers("machines/kit").is_empty(),
        "{:?}",
        farm.leftovers("machines/kit")
    );
    farm.run(&["plan"]).expect(0);
    let receipt = fs::read_to_string(farm.path("machines/kit/.reconcile/kit-build2.json")).unwrap();
    let after: serde_json::Value = serde_json::from_str(&receipt).unwrap();
    assert_ne!(before["bootstrap_sha256"], after["bootstrap_sha256"]);

    // the toolchain is an overlay of the revision, sealed read-only
    let overlay = farm.path("machines/kit/kit-build2/disk.qcow2");
    let mode = fs::metadata(&overlay).unwrap().permissions();
    assert!(mode.readonly(), "{mode:?}");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["backing-filename"], "../kit-1/disk.img");

    // tests run on a working snapshot of the toolchain and see what the bootstrap wrote
    farm.run(&["test"]).expect(0);
    assert_nothing_left(&farm);
}

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn exec_runs_a_command_in_a_booted_snapshot_and_exits_with_its_status() {
    let Some(guest) = Guest::get() else { return };
    let farm = disk_farm(&guest, "");
    let r = farm.run(&[
        "exec",
        "kitq",
        "--",
        "sh",
        "-c",
        "echo out-$((40+2)); exit 7",
    ]);
    assert_eq!(r.code, Some(7), "{}", r.all());
    assert_eq!(r.stdout, "out-42\n");
    // over the channel (kit): stderr is the command's stderr, the boot is in console.txt
    let r = farm.run(&[
        "exec",
        "kit",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(r.code, Some(3), "{}", r.all());
    assert_eq!(r.stdout, "out\n");
    assert!(r.stderr.contains("err\n"), "{}", r.all());
    let console = fs::read_to_string(farm.path(".reconcile/logs/exec/console.txt")).unwrap();
    assert!(console.contains("kit: up"), "{console}");
    assert!(!console.contains("out\n"), "{console}");
    assert_nothing_left(&farm);
}

/// Read from a pty master until `want` shows up (or panic after two minutes).
fn read_until(master: &mut fs::File, seen: &mut Vec<u8>, want: &str) {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(want) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no {want:?} in {}",
            String::from_utf8_lossy(seen)
        );
        match master.read(&mut buf) {
            Ok(0) => panic!(
                "pty closed before {want:?}: {}",
                String::from_utf8_lossy(seen)
            ),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn pty() -> (fs::File, fs::File) {
    let p = nix::pty::openpty(None, None).unwrap();
    let master = fs::File::from(p.master);
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    (master, fs::File::from(p.slave))
}

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn spawn_attaches_a_terminal_to_the_console_and_restores_it() {
    let Some(guest) = Guest::get() else { return };
    let login = login_machine(
        &guest,
        "login",
        r#"login = { user = "root", password = "kitpass" }"#,
    );
    let farm = disk_farm(&guest, &login);
    let (mut master, slave) = pty();
    let before = nix::sys::termios::tcgetattr(&slave).unwrap();
    let mut child = farm
        .cmd(&["spawn", "kit"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut master, &mut seen, "kit# ");
    // raw mode: the guest's line editor gets every key
    let raw = nix::sys::termios::tcgetattr(&slave).unwrap();
    assert!(!raw
        .local_flags
        .contains(nix::sys::termios::LocalFlags::ICANON));
    master.write_all(b"echo spawned-$((6*7))\r").unwrap();
    read_until(&mut master, &mut seen, "spawned-42");
    // Ctrl-] detaches: the VM is stopped, the snapshot deleted, the terminal restored
    master.write_all(&[0x1d]).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", String::from_utf8_lossy(&seen));
    let after = nix::sys::termios::tcgetattr(&slave).unwrap();
    assert_eq!(after.local_flags, before.local_flags);
    assert_eq!(after.input_flags, before.input_flags);
    assert_eq!(after.output_flags, before.output_flags);
    assert_nothing_left(&farm);
    let log = fs::read_to_string(farm.path(".reconcile/logs/spawn-kit/console.txt")).unwrap();
    assert!(log.contains("spawned-42"), "{log}");

    // --keep: the snapshot stays, self-contained, and apply leaves it alone
    let mut child = farm
        .cmd(&["spawn", "kit", "--keep"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut master, &mut seen, "SeaBIOS");
    master.write_all(&[0x1d]).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let kept = working_entries(&farm);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let overlay = farm.path("machines").join(&kept[0]).join("disk.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info:#}");
    farm.run(&["plan"]).expect(0);
    farm.run(&["apply", "--no-test"]).expect(0);
    assert_eq!(working_entries(&farm), kept);

    // with console.login, spawn logs in first: the shell prompt comes without typing a password
    let mut child = farm
        .cmd(&["spawn", "login"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut master, &mut seen, "kit# ");
    master.write_all(b"echo logged-in-as-$(id -u)\r").unwrap();
    read_until(&mut master, &mut seen, "logged-in-as-0");
    master.write_all(&[0x1d]).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let log = fs::read_to_string(farm.path(".reconcile/logs/spawn-login/console.txt")).unwrap();
    assert!(
        log.contains("login:") && log.contains("logged-in-as-0"),
        "{log}"
    );
}

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn kvm_declared_where_kvm_is_unusable_is_an_infra_error() {
    let Some(guest) = Guest::get() else { return };
    let Some(why) = reconcile::platform::qemu::accel::kvm_unusable("x86_64") else {
        // KVM works here: nothing to refuse
        return;
    };
    let farm = disk_farm(
        &guest,
        r#"
[machine.fast]
revision = 1
kind = "disk"
source = { path = "images/kit.img" }
vm = { accel = "kvm" }

[suite.k]
machines = ["fast"]
executor = "qemu"
[suite.k.test.t]
run = ["true"]
"#,
    );
    farm.run(&["test"]).expect(4);
    let t = tests_by_name(&report(&farm));
    assert_eq!(t["k.t"]["class"], "infra");
    let reason = t["k.t"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("KVM is unusable") && reason.contains(&why),
        "{reason}"
    );
    assert_eq!(no_qemu_left(farm.dir.path()), Vec::<String>::new());
}

#[test]
#[ignore = "needs qemu-system-arm, qemu-efi-aarch64 and Debian's arm64 packages (scripts/test installs them)"]
fn an_aarch64_disk_machine_boots_by_uefi_under_qemu_system_aarch64() {
    let Some(guest) = Arm64Guest::get() else {
        return;
    };
    let farm = Farm::new();
    let disk = farm.path("images/arm.img");
    fs::create_dir_all(disk.parent().unwrap()).unwrap();
    fs::copy(&guest.disk, &disk).unwrap();
    let sha = sha_file(&disk);
    farm.desired(&format!(
        r#"version = 1
[volume.default]
path = "machines"
backend = "dir"

[machine.arm]
revision = 1
kind = "disk"
source = {{ path = "images/arm.img", sha256 = "{sha}" }}
arch = "aarch64"
vm = {{ accel = "tcg", memory = "512M", firmware = "uefi" }}
{CONSOLE}

[suite.arm]
machines = ["arm"]
executor = "qemu"
[suite.arm.test.uname]
run = ["sh", "-c", "uname -m; test -d /sys/firmware/efi && echo booted-by-uefi; cat /mnt/README; echo apart >&2"]
expect = {{ stdout = ["aarch64", "booted-by-uefi", "written by make-guest.sh"], stderr = ["apart"] }}
"#
    ));
    farm.run(&["apply", "--no-test"]).expect(0);
    farm.run(&["test"]).expect(0);
    let t = tests_by_name(&report(&farm));
    let u = &t["arm.uname"];
    assert_eq!(u["result"], "PASS", "{u:#}");
    // the serial console of the virt machine is the PL011 (ttyAMA0)
    assert!(output(u, "console.txt").contains("kit: up"));
    let qemu = output(u, "qemu.log");
    assert!(qemu.starts_with("# qemu-system-aarch64 "), "{qemu}");
    assert!(
        qemu.contains("virt,graphics=off") && qemu.contains("AAVMF_CODE.fd"),
        "{qemu}"
    );
    assert_eq!(
        output(u, "stdout.txt"),
        "aarch64\nbooted-by-uefi\nwritten by make-guest.sh\n"
    );
    assert_nothing_left(&farm);
}

/// What each restore test prints: whether an earlier test's file is there,
/// the guest's clock, 16 random bytes.
const FRESH: &str = "test -e /root/mark && echo dirty || echo clean; echo written >/root/mark; date +%s; head -c 16 /dev/urandom | od -A n -t x1 | tr -d ' \\n'; echo";

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn restored_machines_start_just_booted_share_nothing_and_survive_a_bad_state_file() {
    let Some(guest) = Guest::get() else { return };
    let farm = disk_farm(
        &guest,
        &format!(
            r#"
[suite.r]
machines = ["kit"]
executor = "qemu"
[suite.r.test.a]
run = ["sh", "-c", "{FRESH}"]
[suite.r.test.b]
run = ["sh", "-c", "{FRESH}"]
[suite.r.test.c]
run = ["sh", "-c", "{FRESH}"]
[suite.booting]
machines = ["kitq"]
executor = "qemu"
fresh = "boot"
[suite.booting.test.one]
run = ["sh", "-c", "{FRESH}"]
"#
        ),
    );
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = now();
    farm.run(&["test", "-j", "2"]).expect(0);
    let after = now();
    let t = tests_by_name(&report(&farm));
    let mut random = Vec::new();
    for name in ["r.a", "r.b", "r.c", "booting.one"] {
        let r = &t[name];
        assert_eq!(r["result"], "PASS", "{r:#}");
        let out = output(r, "stdout.txt");
        let lines: Vec<&str> = out.lines().collect();
        // nothing an earlier test wrote is there
        assert_eq!(lines[0], "clean", "{name}: {out}");
        // the clock is now, not the moment the state was saved
        let clock: u64 = lines[1].parse().unwrap();
        assert!(
            (before - 5..=after + 5).contains(&clock),
            "{name}: the guest's clock {clock} is not between {before} and {after}"
        );
        random.push(lines[2].to_string());
        // the boot is in every console.txt, restored or not
        assert!(output(r, "console.txt").contains("kit: up"), "{name}");
        let how = if name.starts_with("r.") {
            "restore"
        } else {
            "boot"
        };
        assert_eq!(r["attempts"][0]["fresh"], how, "{r:#}");
    }
    random.sort();
    random.dedup();
    assert_eq!(
        random.len(),
        4,
        "restored machines share their random numbers"
    );
    // one booted snapshot, of kit's revision 1 (kitq booted), listed by status
    let booted: Vec<_> = fs::read_dir(farm.path(".reconcile/booted/kit"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(booted.len(), 1, "{booted:?}");
    assert!(!farm.path(".reconcile/booted/kitq").exists());
    let status = farm.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("Booted snapshot: machine.kit revision 1"),
        "{}",
        status.stdout
    );
    let st = farm.run(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st["booted"][0]["machine"], "kit", "{st:#}");
    assert!(st["booted"][0]["bytes"].as_u64().unwrap() > 0);

    // a state file that does not load is made anew, once, and said so
    let state = booted[0].path().join("state");
    let bytes = fs::read(&state).unwrap();
    fs::write(&state, &bytes[..bytes.len() / 10]).unwrap();
    farm.run(&["test", "--suite", "r"]).expect(0);
    let t = tests_by_name(&report(&farm));
    let notes: Vec<_> = ["r.a", "r.b", "r.c"]
        .iter()
        .filter_map(|n| t[*n]["attempts"][0]["fresh_note"].as_str())
        .collect();
    // made anew once; a test that found it broken at the same time (-j 2)
    // restores the new one and says so
    let remade: Vec<_> = notes
        .iter()
        .filter(|n| n.contains("booted again and saved anew"))
        .collect();
    assert_eq!(remade.len(), 1, "{notes:?}");
    assert!(
        notes
            .iter()
            .all(|n| n.contains("the saved state did not load")),
        "{notes:?}"
    );
    for n in ["r.a", "r.b", "r.c"] {
        assert_eq!(t[n]["result"], "PASS");
        assert_eq!(t[n]["attempts"][0]["fresh"], "restore");
    }

    // a new revision, and the old one pruned (keep = 0): its booted snapshot goes with it
    let desired = fs::read_to_string(farm.path("reconcile.toml")).unwrap();
    fs::write(
        farm.path("reconcile.toml"),
        desired.replacen(
            "[machine.kit]\nrevision = 1",
            "[machine.kit]\nrevision = 2\nkeep = 0",
            1,
        ),
    )
    .unwrap();
    farm.run(&["apply", "--no-test"]).expect(0);
    farm.run(&["test", "--suite", "r"]).expect(0);
    let metas: Vec<serde_json::Value> = fs::read_dir(farm.path(".reconcile/booted/kit"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| serde_json::from_slice(&fs::read(e.path().join("meta.json")).unwrap()).unwrap())
        .collect();
    let revisions: Vec<u64> = metas
        .iter()
        .map(|m| m["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, vec![2], "{metas:#?}");
    assert_nothing_left(&farm);
}

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn vms_never_start_beyond_the_memory_of_the_run_and_the_run_says_so() {
    let Some(guest) = Guest::get() else { return };
    let farm = disk_farm(
        &guest,
        r#"
[suite.m]
machines = ["kit"]
executor = "qemu"
[suite.m.test.a]
run = ["sh", "-c", "date +%s%N"]
[suite.m.test.b]
run = ["sh", "-c", "date +%s%N"]
"#,
    );
    // room for one 256 MiB VM at a time
    let desired = fs::read_to_string(farm.path("reconcile.toml")).unwrap();
    with_vm_memory(&farm, &desired, "300 MiB");
    let r = farm.run(&["test", "-j", "2"]);
    r.expect(0);
    assert!(
        r.all()
            .contains("waits for memory: its VM needs 256 MiB, 256 of 300 MiB are in use"),
        "{}",
        r.all()
    );
    // with room for both, nothing waits
    with_vm_memory(&farm, &desired, "1 GiB");
    let r = farm.run(&["test", "-j", "2"]);
    r.expect(0);
    assert!(!r.all().contains("waits for memory"), "{}", r.all());
    assert_nothing_left(&farm);
}

/// Node 1 serves a page naming itself and its test; node 0 fetches it.
const SERVE: &str = "mkdir -p /www && echo served-by-$RECONCILE_NODE-for-$RECONCILE_TEST >/www/index.html && httpd -p 80 -h /www";

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn a_cluster_test_gets_nodes_on_a_private_network_of_its_own_with_cables_to_pull() {
    let Some(guest) = Guest::get() else { return };
    // `fetch` reads node 1's page six times over three seconds, while the
    // other test's cluster, at the same addresses, serves its own page
    // (busybox nc: the static busybox's wget crashes looking up the service)
    let get =
        "get() { printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $1 80 | grep served; }; ";
    let fetch = format!("{get}{}", "echo node=$RECONCILE_NODE nodes=$RECONCILE_NODES; set -- $RECONCILE_NODES; \
                 echo start=$(date +%s); for i in 1 2 3 4 5 6; do get $2; sleep 0.5; done; echo end=$(date +%s)");
    let unreachable = format!(
        "{get}{}",
        "set -- $RECONCILE_NODES; if get $2; then echo reached; else echo unreachable; fi"
    );
    let farm = disk_farm(
        &guest,
        &format!(
            r#"
[suite.c]
machines = ["kit"]
executor = "qemu"
cluster = 2
[suite.c.test.reach]
on."1" = ["sh", "-c", "{SERVE}"]
run = ["sh", "-c", "{fetch}"]
expect.stdout = ["node=0 nodes=10.0.77.1 10.0.77.2", "served-by-1-for-c.reach", "!for-c.other"]
[suite.c.test.other]
on."1" = ["sh", "-c", "{SERVE}"]
run = ["sh", "-c", "{fetch}"]
expect.stdout = ["served-by-1-for-c.other", "!for-c.reach"]
[suite.c.test.cable]
on."0" = {{ link = "down", node = 1 }}
on."1" = ["sh", "-c", "{SERVE}"]
run = ["sh", "-c", "{unreachable}"]
expect.stdout = ["unreachable", "!served-by"]
[suite.c.test.replugged]
on."1" = [["sh", "-c", "{SERVE}"], {{ link = "down" }}, {{ link = "up" }}]
run = ["sh", "-c", "{unreachable}"]
expect.stdout = ["served-by-1-for-c.replugged"]
[suite.c.test.broken]
on."1" = ["sh", "-c", "echo node one says no; exit 7"]
run = ["true"]
"#
        ),
    );
    // the two clusters at the same addresses first, at the same time
    farm.run(&["test", "-j", "2", "c.reach", "c.other"])
        .expect(0);
    let t = tests_by_name(&report(&farm));
    let span = |name: &str| {
        let out = output(&t[name], "stdout.txt");
        let at = |key: &str| -> u64 {
            let line = out.lines().find_map(|l| l.strip_prefix(key));
            line.unwrap_or_else(|| panic!("{name}: no {key} in {out}"))
                .trim()
                .parse()
                .unwrap()
        };
        (at("start="), at("end="), out)
    };
    let (a0, a1, reach) = span("c.reach");
    let (b0, b1, other) = span("c.other");
    assert!(
        a0 <= b1 && b0 <= a1,
        "the two clusters did not run at the same time: {reach}\n{other}"
    );
    // each saw only its own node 1, all six times
    assert_eq!(
        reach.matches("served-by-1-for-c.reach").count(),
        6,
        "{reach}"
    );
    assert_eq!(
        other.matches("served-by-1-for-c.other").count(),
        6,
        "{other}"
    );
    // room for one cluster of two 256 MiB nodes at a time: a cluster
    // reserves the memory of all its nodes
    let desired = fs::read_to_string(farm.path("reconcile.toml")).unwrap();
    with_vm_memory(&farm, &desired, "600 MiB");
    let r = farm.run(&["test", "-j", "2"]);
    r.expect(4);
    assert!(
        r.all()
            .contains("waits for memory: its 2 VMs need 512 MiB, 512 of 600 MiB are in use"),
        "{}",
        r.all()
    );
    let t = tests_by_name(&report(&farm));
    for name in ["c.reach", "c.other", "c.cable", "c.replugged"] {
        let x = &t[name];
        assert_eq!(x["result"], "PASS", "{name}: {x:#}\n{}", r.all());
        assert_eq!(x["attempts"][0]["fresh"], "restore", "{x:#}");
        // each node's console and QEMU log in the run folder, through the checks
        assert!(output(x, "console.txt").contains("kit: up"), "{name}");
        assert!(output(x, "node1/console.txt").contains("kit: up"), "{name}");
        assert!(
            output(x, "node1/qemu.log").contains("dgram,id=rc-cluster"),
            "{name}"
        );
    }
    let broken = &t["c.broken"];
    assert_eq!(broken["result"], "FAIL", "{broken:#}");
    assert_eq!(broken["class"], "test", "{broken:#}");
    let why = broken["reason"].as_str().unwrap();
    assert!(
        why.contains("on node 1") && why.contains("exit status 7"),
        "{why}"
    );
    assert!(output(broken, "node1/stdout.txt").contains("node one says no"));
    assert_nothing_left(&farm);
}

#[test]
#[ignore = "needs qemu-system-x86 and the guest-building tools (scripts/test installs them)"]
fn an_image_candidate_is_pxe_booted_beside_the_tree_and_exchanged_in_only_when_its_suite_passes() {
    let Some(guest) = Guest::get() else { return };
    let farm = Farm::new();
    let kernel = guest.copy_to(&farm, "vmlinuz", "netboot/vmlinuz");
    let initrd_a = guest.copy_to(&farm, "initrd.img", "netboot/initrd-a.img");
    let initrd_b = guest.copy_to(&farm, "initrd-b.img", "netboot/initrd-b.img");
    // the gate passes on release A only
    let desired_with = |initrd: &str, sha: &str, extra: &str| {
        farm.desired(&netboot_toml(
            &kernel,
            initrd,
            sha,
            &format!("console=ttyS0{extra}"),
            "promote = { after = [\"pxe\"] }\n",
            "cat /etc/release; grep -qx A /etc/release",
        ))
    };
    let desired = |initrd: &str, sha: &str| desired_with(initrd, sha, "");
    let published = farm.path("tftp/amd64/generic/kit/test");
    let candidate = farm.path("tftp/amd64/generic/kit/.test.reconcile-candidate");
    desired("initrd-a.img", &initrd_a);
    let a = farm.run(&["apply", "--json"]);
    a.expect(0);
    let r: serde_json::Value = serde_json::from_str(&a.stdout).unwrap();
    assert_eq!(r["gates"][0]["result"], "promoted", "{r}");
    assert_eq!(sha_file(&published.join("initrd.img")), initrd_a);
    assert!(!candidate.exists(), "the candidate became the tree");
    // the gate booted the candidate from beside the tree
    let run = r["gates"][0]["run"].as_str().unwrap();
    let console = fs::read_to_string(
        farm.path(".reconcile/runs")
            .join(run)
            .join("pxe.release/console.txt"),
    )
    .unwrap();
    assert!(
        console.contains("amd64/generic/kit/.test.reconcile-candidate/boot.ipxe"),
        "{console}"
    );
    farm.run(&["plan"]).expect(0);

    // new content that fails: PXE clients keep getting A, B waits beside it
    desired("initrd-b.img", &initrd_b);
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("published beside the tree"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(": not tested (promoted after pxe)"),
        "{}",
        plan.stdout
    );
    let a = farm.run(&["apply"]);
    a.expect(4);
    assert!(
        a.stdout
            .contains("Not promoted: image.kit-netboot: candidate content ")
            && a.stdout.contains("failed pxe.release"),
        "{}",
        a.all()
    );
    assert_eq!(sha_file(&published.join("initrd.img")), initrd_a);
    assert_eq!(sha_file(&candidate.join("initrd.img")), initrd_b);
    let plan = farm.run(&["plan"]);
    assert!(
        plan.stdout.contains("failed pxe.release at "),
        "{}",
        plan.stdout
    );
    // not tested again: no VM boots
    let a = farm.run(&["apply"]);
    a.expect(4);
    assert!(a.stdout.contains("not tested again"), "{}", a.stdout);

    // a kill around the exchange: the old tree or the new one, never neither
    let script = || fs::read_to_string(published.join("boot.ipxe")).unwrap_or_default();
    // a kill while the candidate is published: the old tree stays, and the
    // next apply recovers, publishes it again and tests it
    let before = script();
    desired_with("initrd-a.img", &initrd_a, " x=1");
    let killed = farm.run_env(
        &["apply"],
        &[("RECONCILE_FAULT", "image.kit-netboot:exchange")],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    assert_eq!(script(), before);
    let a = farm.run(&["apply"]);
    a.expect(0);
    assert!(
        a.stderr.contains("recovered image.kit-netboot"),
        "{}",
        a.all()
    );
    assert!(script().contains("x=1"), "{}", script());
    // a kill around the exchange: the old tree or the new one, never neither
    for (step, x, after) in [("switch", " x=2", "x=1"), ("switched", " x=3", "x=3")] {
        let before = script();
        desired_with("initrd-a.img", &initrd_a, x);
        let killed = farm.run_env(
            &["apply"],
            &[("RECONCILE_FAULT", &format!("image.kit-netboot:{step}"))],
        );
        assert_eq!(killed.signal, Some(9), "{step}: {}", killed.all());
        assert!(script().contains(after), "{step}: {}", script());
        assert!(step == "switched" || script() == before, "{step}");
        // the next apply finishes without testing again (the gate passed)
        let a = farm.run(&["apply"]);
        a.expect(0);
        assert!(
            !a.stderr.contains("testing candidate"),
            "{step}: {}",
            a.all()
        );
        assert!(script().contains(x.trim()), "{step}: {}", script());
        farm.run(&["plan"]).expect(0);
        assert!(
            farm.leftovers("tftp/amd64/generic/kit").is_empty(),
            "{step}: {:?}",
            farm.leftovers("tftp/amd64/generic/kit")
        );
    }
    assert_eq!(no_qemu_left(farm.dir.path()), Vec::<String>::new());
}
