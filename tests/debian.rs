//! A real Debian 12 guest (tests/fixtures/make-debian.sh: systemd, getty on
//! ttyS0, cloud-init, BIOS and UEFI from one disk) under the qemu executor:
//! a test on it behaves like a test on the host, over the command channel.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::*;

fn output(t: &serde_json::Value, file: &str) -> String {
    let dir = Path::new(t["output"].as_str().unwrap());
    fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// The ssh transport's key directories in the temporary directory.
fn ssh_dirs() -> std::collections::BTreeSet<String> {
    fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("reconcile-ssh-"))
        .collect()
}

/// What the test runs in the guest, in order; each step says it worked on stdout.
const SYSTEM: &str = r#"
systemctl is-system-running --wait
journalctl -b -o short-precise | tail -n 1 >/dev/null && echo journal-read-to-the-end
if read x; then echo stdin-had-data; else echo stdin-eof; fi
echo "columns=${COLUMNS:-none} term=$TERM"
echo to-stderr >&2
echo kmsg-from-the-test >/dev/kmsg
cloud-init status --wait >/dev/null
cat /run/reconcile-user-data
/opt/app/run.sh
systemctl start reconcile-broken.service 2>/dev/null || echo broken-unit-failed
# the journal travels on a port of its own: give its last lines a moment
sleep 3
"#;

/// The same over ssh (`transport = "ssh"`): ends with status 3.
const SSH: &str = r#"
if read x; then echo stdin-had-data; else echo stdin-eof; fi
echo "term=$TERM tty=$(tty >/dev/null 2>&1 && echo yes || echo none)"
echo "$GREETING in $(pwd)"
echo to-stderr-over-ssh >&2
echo kmsg-over-ssh >/dev/kmsg
/opt/app/run.sh
journalctl -b | tail -n 1 >/dev/null && echo journal-read-to-the-end
p=$$; while [ "$p" -gt 1 ]; do case $(ps -o comm= -p "$p") in sshd*) echo sshd-is-an-ancestor; break ;; esac; p=$(ps -o ppid= -p "$p" | tr -d ' '); done
sleep 3
exit 3
"#;

#[test]
#[ignore = "needs qemu-system-x86, mmdebstrap and network access to Debian's archive (scripts/test installs them)"]
fn a_debian_guest_runs_tests_like_the_host_with_user_data_journal_and_uefi() {
    let Some(guest) = DebianGuest::get() else {
        return;
    };
    let farm = Farm::new();
    let disk = farm.path("images/debian.qcow2");
    fs::create_dir_all(disk.parent().unwrap()).unwrap();
    if fs::hard_link(&guest.disk, &disk).is_err() {
        fs::copy(&guest.disk, &disk).unwrap();
    }
    let sha = sha_file(&disk);
    fs::create_dir_all(farm.path("files")).unwrap();
    fs::write(
        farm.path("files/run.sh"),
        "#!/bin/sh\nmkdir -p /var/log/app\necho \"app ran as $(id -un)\" >/var/log/app/app.log\necho app-ran\n",
    )
    .unwrap();
    let machine = |name: &str, firmware: &str, password: &str, transport: &str| {
        format!(
            r#"
[machine.{name}]
revision = 1
kind = "disk"
source = {{ path = "images/debian.qcow2", sha256 = "{sha}" }}
arch = "x86_64"
vm = {{ accel = "tcg", memory = "1G", firmware = "{firmware}", transport = "{transport}" }}
console = {{ login = {{ user = "root", password = "{password}" }} }}
"#
        )
    };
    farm.desired(&format!(
        r##"version = 1
[volume.default]
path = "machines"
backend = "dir"
{bios}{uefi}{wrong}{ssh}
[suite.deb]
machines = ["deb"]
executor = "qemu"
user_data = """#cloud-config
runcmd:
  - [ sh, -c, "echo user-data-ran >/run/reconcile-user-data" ]
"""
upload = {{ "/opt/app/run.sh" = {{ path = "files/run.sh", mode = "0755" }} }}
collect = ["/var/log/app/*.log"]
[suite.deb.test.system]
run = ["sh", "-c", '''{SYSTEM}''']
timeout = "5m"
expect = {{ stdout = ["running", "journal-read-to-the-end", "stdin-eof", "columns=none term=dumb", "user-data-ran", "app-ran", "broken-unit-failed", "!kmsg-from-the-test"], stderr = ["to-stderr"] }}

[suite.uefi]
machines = ["deb-uefi"]
executor = "qemu"
[suite.uefi.test.firmware]
run = ["sh", "-c", "test -d /sys/firmware/efi && echo booted-by-uefi"]
expect = {{ stdout = ["booted-by-uefi"] }}

[suite.wrong]
machines = ["deb-wrong"]
executor = "qemu"
[suite.wrong.test.login]
run = ["true"]

[suite.ssh]
machines = ["deb-ssh"]
executor = "qemu"
env = {{ GREETING = "hello over ssh" }}
cwd = "/var"
upload = {{ "/opt/app/run.sh" = {{ path = "files/run.sh", mode = "0755" }} }}
collect = ["/var/log/app/*.log"]
[suite.ssh.test.session]
run = ["sh", "-c", '''{SSH}''']
timeout = "3m"
expect = {{ exit = 3, stdout = ["stdin-eof", "term=dumb tty=none", "hello over ssh in /var", "app-ran", "journal-read-to-the-end", "sshd-is-an-ancestor", "!kmsg-over-ssh"], stderr = ["to-stderr-over-ssh"] }}
[suite.ssh.test.limit]
run = ["sh", "-c", "/opt/app/run.sh; sleep 1000"]
timeout = "20s"
"##,
        bios = machine("deb", "bios", "debpass", "agent"),
        uefi = machine("deb-uefi", "uefi", "debpass", "agent"),
        wrong = machine("deb-wrong", "bios", "not-the-password", "agent"),
        ssh = machine("deb-ssh", "bios", "debpass", "ssh"),
    ));
    farm.run(&["apply", "--no-test"]).expect(0);
    let ssh_before = ssh_dirs();
    farm.run(&["test", "-j", "2"]).expect(4);
    let t: BTreeMap<String, serde_json::Value> = farm.report()["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t.clone()))
        .collect();

    // the system test passed (with the unit's warning): every step said so
    // on stdout, stderr matched on its own
    let s = &t["deb.system"];
    assert_eq!(
        s["result"],
        "WARN",
        "{s:#}\nstdout: {}\nstderr: {}",
        output(s, "stdout.txt"),
        output(s, "stderr.txt")
    );
    // a kernel message written during the test is the console's
    assert!(output(s, "console.txt").contains("kmsg-from-the-test"));
    // the file the test's program wrote came back
    assert_eq!(
        output(s, "collected/var/log/app/app.log"),
        "app ran as root\n"
    );
    // the journal of the boot was streamed, and the failing unit was caught there (a warning)
    let journal = output(s, "journal.txt");
    assert!(journal.contains("systemd[1]"), "{journal}");
    let hit = s["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["check"] == "systemd unit failed to start")
        .unwrap_or_else(|| panic!("no journal hit: {:#}", s["checks"]));
    assert_eq!(hit["log"], "journal.txt", "{hit:#}");
    assert_eq!(hit["severity"], "warn", "{hit:#}");
    assert!(
        hit["excerpt"]
            .as_str()
            .unwrap()
            .contains("reconcile-broken.service"),
        "{hit:#}"
    );

    // the same disk boots by UEFI (OVMF, a VARS copy per VM)
    let u = &t["uefi.firmware"];
    assert_eq!(u["result"], "PASS", "{u:#}");
    assert!(output(u, "qemu.log").contains("if=pflash"));

    // a wrong password ends the boot at once, as the test's fault
    let w = &t["wrong.login"];
    assert_eq!(w["class"], "test", "{w:#}");
    assert!(
        w["reason"].as_str().unwrap().contains("Login incorrect"),
        "{w:#}"
    );
    // over ssh: the same behaviour, and its exit status exactly (expected 3)
    let h = &t["ssh.session"];
    assert_eq!(
        h["result"],
        "PASS",
        "{h:#}\nstdout: {}\nstderr: {}",
        output(h, "stdout.txt"),
        output(h, "stderr.txt")
    );
    assert!(output(h, "console.txt").contains("kmsg-over-ssh"));
    assert_eq!(
        output(h, "collected/var/log/app/app.log"),
        "app ran as root\n"
    );
    assert!(
        output(h, "journal.txt").contains("sshd"),
        "the journal came over ssh too"
    );
    // at its limit the command's session is killed in the guest, and its
    // files still come back
    let l = &t["ssh.limit"];
    assert_eq!(l["class"], "timeout", "{l:#}");
    assert_eq!(output(l, "stdout.txt"), "app-ran\n", "{l:#}");
    assert_eq!(
        output(l, "collected/var/log/app/app.log"),
        "app ran as root\n"
    );
    assert_eq!(no_qemu_left(farm.dir.path()), Vec::<String>::new());
    let left: Vec<_> = ssh_dirs().difference(&ssh_before).cloned().collect();
    assert!(left.is_empty(), "an ssh key directory was left: {left:?}");
}
