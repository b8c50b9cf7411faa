//! Every class of malformed file: exit 1, a diagnostic with file:line:column and
//! the message, and no writes at all (not even the state dir) from validate,
//! plan or apply.

mod common;

use common::*;

const GOOD_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// (what, file, location, message fragment)
fn cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        ("syntax", "version = 1\n[plugin.x\nversion = \"1\"\n".into(), "reconcile.toml:2:", "TOML syntax error"),
        ("unknown top-level key", "version = 1\nplugins = 3\n".into(), "reconcile.toml:2:1", "unknown key `plugins`"),
        ("unknown nested key", "version = 1\n[plugin.x]\nversion = \"1\"\nsource = { path = \"a\", sha = \"b\" }\n".into(), "reconcile.toml:4:24", "unknown field `sha`"),
        ("wrong type", "version = 1\n[plugin.x]\nversion = 1\nsource = { path = \"a\" }\n".into(), "reconcile.toml:3:11", "invalid type"),
        ("missing field", "version = 1\n[plugin.x]\nsource = { path = \"a\" }\n".into(), "reconcile.toml:2:", "missing field `version`"),
        ("unsupported version", "version = 7\n".into(), "reconcile.toml:1:11", "unsupported version 7"),
        ("undeclared volume", "version = 1\n[machine.m]\nvolume = \"fast\"\nrevision = 1\nsource = { dir = \"r\" }\n".into(), "reconcile.toml:3:10", "undeclared volume `fast`"),
        ("undeclared machine", "version = 1\n[suite.s]\nmachines = [\"ghost\"]\n".into(), "reconcile.toml:3:13", "undeclared machine `ghost`"),
        (
            "undeclared toolchain",
            "version = 1\n[volume.default]\npath = \"m\"\n[machine.m]\nrevision = 1\nsource = { dir = \"r\" }\n[suite.s]\nmachines = [\"m\"]\ntoolchain = \"gcc\"\n".into(),
            "reconcile.toml:9:13",
            "has no toolchain `gcc`",
        ),
        (
            "toolchain named like a revision",
            "version = 1\n[volume.default]\npath = \"m\"\n[machine.m]\nrevision = 1\nsource = { dir = \"r\" }\n[machine.m.toolchain.42]\nbootstrap = [\"true\"]\n".into(),
            "reconcile.toml:7:22",
            "named like a revision",
        ),
        (
            "duplicate TFTP target",
            "version = 1\n[image.a]\nroot = \"t\"\narch = \"amd64\"\nrelease = \"r\"\npurpose = \"p\"\nfiles.linux = { path = \"l\" }\n[image.b]\nroot = \"t\"\narch = \"amd64\"\nrelease = \"r\"\npurpose = \"p\"\nfiles.linux = { path = \"l\" }\n".into(),
            "reconcile.toml:8:8",
            "same TFTP directory",
        ),
        ("remote without sha256", "version = 1\n[plugin.x]\nversion = \"1\"\nsource = { url = \"https://h/x.tgz\" }\n".into(), "reconcile.toml:4:18", "needs a sha256"),
        ("malformed sha256", "version = 1\n[plugin.x]\nversion = \"1\"\nsource = { path = \"a\", sha256 = \"abc\" }\n".into(), "reconcile.toml:4:33", "malformed sha256"),
        (
            "bad duration",
            "version = 1\n[suite.s]\n[suite.s.test.t]\nrun = [\"true\"]\ntimeout = \"soon\"\n".into(),
            "reconcile.toml:5:11",
            "invalid duration `soon`",
        ),
        ("bad regex", "version = 1\n[check.c]\nregex = \"a(b\"\n".into(), "reconcile.toml:3:9", "invalid regex"),
        ("bad matcher regex", "version = 1\n[suite.s.test.t]\nrun = [\"true\"]\nexpect = { stdout = [\"/a(/\"] }\n".into(), "reconcile.toml:4:22", "invalid matcher"),
        ("name with slash", "version = 1\n[plugin.\"a/b\"]\nversion = \"1\"\nsource = { path = \"a\" }\n".into(), "reconcile.toml:2:9", "contains `/`"),
        ("name with dot-dot", "version = 1\n[plugin.\"a..b\"]\nversion = \"1\"\nsource = { path = \"a\" }\n".into(), "reconcile.toml:2:9", "contains `..`"),
        ("name starting with a dot", "version = 1\n[plugin.\".hidden\"]\nversion = \"1\"\nsource = { path = \"a\" }\n".into(), "reconcile.toml:2:9", "starts with `.`"),
        ("expired skip", "version = 1\n[[skip]]\npattern = \"s.*\"\nreason = \"flaky\"\nuntil = 2020-01-31\n".into(), "reconcile.toml:5:9", "expired on 2020-01-31"),
        ("source with two locations", format!("version = 1\n[plugin.x]\nversion = \"1\"\nsource = {{ path = \"a\", url = \"https://h/x\", sha256 = \"{GOOD_SHA}\" }}\n"), "reconcile.toml:4:10", "exactly one of"),
        ("run names undeclared suite", "version = 1\n[run]\nsuites = [\"smoke\"]\n".into(), "reconcile.toml:3:11", "undeclared suite `smoke`"),
        ("qemu suite on a root filesystem", format!("{VOL}[machine.r]\nrevision = 1\nsource = {{ dir = \"r\" }}\n[suite.s]\nmachines = [\"r\"]\nexecutor = \"qemu\"\n"), "reconcile.toml:8:13", "QEMU boots disk machines"),
        ("disk machine in namespaces", format!("{VOL}[machine.d]\nrevision = 1\nkind = \"disk\"\nsource = {{ path = \"d.img\" }}\n[suite.s]\nmachines = [\"d\"]\nexecutor = \"namespace\"\n"), "reconcile.toml:9:13", "the namespace executor cannot run it"),
        ("image suite without ipxe", "version = 1\n[image.i]\nroot = \"t\"\narch = \"amd64\"\nrelease = \"r\"\npurpose = \"p\"\nfiles.linux = { path = \"l\" }\n[suite.s]\nimages = [\"i\"]\n".into(), "reconcile.toml:9:11", "has no `ipxe` table"),
        ("image suite outside qemu", "version = 1\n[image.i]\nroot = \"t\"\narch = \"amd64\"\nrelease = \"r\"\npurpose = \"p\"\nfiles.linux = { path = \"l\" }\n[suite.s]\nimages = [\"i\"]\n".into(), "reconcile.toml:9:11", "only the qemu executor can do"),
        ("bad prompt regex", format!("{VOL}[machine.d]\nrevision = 1\nkind = \"disk\"\nsource = {{ path = \"d.img\" }}\nconsole = {{ prompt = \"a(\" }}\n"), "reconcile.toml:8:22", "invalid regex in console.prompt"),
        ("bad memory size", format!("{VOL}[machine.d]\nrevision = 1\nkind = \"disk\"\nsource = {{ path = \"d.img\" }}\nvm = {{ memory = \"lots\" }}\n"), "reconcile.toml:8:17", "not a memory size"),
        ("bad boot timeout", format!("{VOL}[machine.d]\nrevision = 1\nkind = \"disk\"\nsource = {{ path = \"d.img\" }}\nconsole = {{ boot_timeout = \"soon\" }}\n"), "reconcile.toml:8:28", "invalid duration `soon`"),
        ("zero TCG factor", format!("{VOL}[machine.d]\nrevision = 1\nkind = \"disk\"\nsource = {{ path = \"d.img\" }}\nvm = {{ tcg_timeout_factor = 0.0 }}\n"), "reconcile.toml:8:29", "out of range"),
        ("zero check count", "version = 1\n[check.c]\nregex = \"x\"\ncount = 0\n".into(), "reconcile.toml:4:9", "`count` must be between 1"),
        ("cloud suite without a cloud", format!("{VOL}[suite.s]\nexecutor = \"cloud\"\n"), "reconcile.toml:4:8", "uses the cloud executor but names no `cloud`"),
        (
            "cloud suite on a machine not published there",
            format!("{VOL}[cloud.c]\nprovider = \"ec2\"\nregion = \"us-east-1\"\n[machine.d]\nrevision = 1\nkind = \"disk\"\nsource = {{ path = \"d.img\" }}\n[suite.s]\nmachines = [\"d\"]\nexecutor = \"cloud\"\ncloud = \"c\"\n"),
            "reconcile.toml:12:13",
            "is not published to cloud `c`",
        ),
        ("fresh outside the qemu executor", "version = 1\n[suite.s]\nfresh = \"boot\"\n".into(), "reconcile.toml:3:9", "sets fresh but runs with"),
        ("instance_type outside the cloud executor", "version = 1\n[suite.s]\ninstance_type = \"t3.micro\"\n".into(), "reconcile.toml:3:17", "sets instance_type but runs with"),
        ("zero uploads in flight", "version = 1\n[cloud.c]\nprovider = \"ec2\"\nregion = \"r\"\nuploads_in_flight = 0\n".into(), "reconcile.toml:5:21", "uploads_in_flight must be between 1 and 64"),
        ("env name that is no shell name", "version = 1\n[suite.s]\nenv = { \"1BAD\" = \"x\" }\n".into(), "reconcile.toml:3:", "is not an environment variable name"),
        ("upload outside a VM", "version = 1\n[suite.s]\nupload = { \"/x\" = { path = \"f\" } }\n".into(), "reconcile.toml:3:", "files are copied in and out of VMs only"),
        ("upload mode that is not octal", "version = 1\n[suite.s]\nupload = { \"/x\" = { path = \"f\", mode = \"rwx\" } }\n".into(), "reconcile.toml:3:", "is not octal permission bits"),
        ("upload to a relative guest path", "version = 1\n[suite.s]\nupload = { \"x\" = { path = \"f\" } }\n".into(), "reconcile.toml:3:", "must be an absolute file path in the guest"),
        ("collect pattern that is not absolute", "version = 1\n[suite.s]\nexecutor = \"qemu\"\ncollect = [\"log/*.txt\"]\n".into(), "reconcile.toml:4:", "must be an absolute guest path"),
        ("user data given twice", format!("{VOL}[machine.d]\nrevision = 1\nkind = \"disk\"\nsource = {{ path = \"d.img\" }}\nuser_data = \"x\"\nuser_data_file = \"u\"\n"), "reconcile.toml:9:", "not both"),
        ("aarch64 disk machine by BIOS", format!("{VOL}[machine.d]\nrevision = 1\nkind = \"disk\"\nsource = {{ path = \"d.img\" }}\narch = \"aarch64\"\n"), "reconcile.toml:8:8", "is aarch64, which has no BIOS"),
        ("cluster outside the qemu executor", "version = 1\n[suite.s]\ncluster = 2\n".into(), "reconcile.toml:3:11", "asks for a cluster but runs with the host executor"),
        ("cluster of none", "version = 1\n[suite.s]\nexecutor = \"qemu\"\ncluster = 0\n".into(), "reconcile.toml:4:11", "cluster must be between 1 and 16"),
        ("on steps without a cluster", "version = 1\n[suite.s]\nexecutor = \"qemu\"\n[suite.s.test.t]\nrun = [\"true\"]\non.\"1\" = [\"true\"]\n".into(), "reconcile.toml:6:", "but suite `s` has no cluster"),
        ("on a node the cluster lacks", "version = 1\n[suite.s]\nexecutor = \"qemu\"\ncluster = 2\n[suite.s.test.t]\nrun = [\"true\"]\non.\"2\" = [\"true\"]\n".into(), "reconcile.toml:7:", "suite `s` has 2 nodes (0 to 1)"),
        ("on a node that is no index", "version = 1\n[suite.s]\nexecutor = \"qemu\"\ncluster = 2\n[suite.s.test.t]\nrun = [\"true\"]\non.first = [\"true\"]\n".into(), "reconcile.toml:7:", "a node is named by its index"),
        ("a link fault on a node the cluster lacks", "version = 1\n[suite.s]\nexecutor = \"qemu\"\ncluster = 2\n[suite.s.test.t]\nrun = [\"true\"]\non.\"0\" = { link = \"down\", node = 5 }\n".into(), "reconcile.toml:7:", "link fault on node 5"),
        ("a link that is neither up nor down", "version = 1\n[suite.s]\nexecutor = \"qemu\"\ncluster = 2\n[suite.s.test.t]\nrun = [\"true\"]\non.\"1\" = { link = \"sideways\" }\n".into(), "reconcile.toml:7:", "an `on` step is a command"),
        ("vm on a root filesystem", format!("{VOL}[machine.r]\nrevision = 1\nsource = {{ dir = \"r\" }}\nvm = {{ cpus = 2 }}\n"), "reconcile.toml:7:1", "`vm` applies to disk machines"),
    ]
}

const VOL: &str = "version = 1\n[volume.default]\npath = \"m\"\n";

#[test]
fn every_class_of_malformed_file_is_located_and_writes_nothing() {
    for (what, toml, location, message) in cases() {
        let farm = Farm::new();
        farm.desired(&toml);
        let before = farm.snapshot(&[]);
        for args in [&["validate"][..], &["plan"], &["apply"], &["status"]] {
            let r = farm.run(args);
            assert_eq!(r.code, Some(1), "{what} / {args:?}: exit\n{}", r.all());
            assert!(
                r.stderr.contains(location),
                "{what} / {args:?}: no `{location}` in\n{}",
                r.stderr
            );
            assert!(
                r.stderr.contains(message),
                "{what} / {args:?}: no `{message}` in\n{}",
                r.stderr
            );
        }
        assert_eq!(before, farm.snapshot(&[]), "{what}: something was written");
        assert!(
            !farm.path(".reconcile").exists(),
            "{what}: state dir created"
        );
    }
}

#[test]
fn all_problems_are_reported_in_one_run() {
    let farm = Farm::new();
    farm.desired(
        r#"version = 1
colour = "red"
[plugin.x]
version = "1"
source = { path = "a", sha = "b" }
[plugin.y]
version = "1"
source = { url = "https://h/y.tgz" }
[plugin."a/b"]
version = "1"
source = { path = "a", sha256 = "abc" }
[machine.m]
volume = "fast"
revision = 1
source = { dir = "r" }
[machine.m.toolchain.42]
bootstrap = ["true"]
[check.c]
regex = "a(b"
[suite.s]
machines = ["ghost"]
[suite.t.test.u]
run = ["true"]
timeout = "soon"
[[skip]]
pattern = "s.*"
reason = "flaky"
until = 2020-01-31
"#,
    );
    let r = farm.run(&["validate", "--json"]);
    r.expect(1);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let lines: Vec<u64> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["line"].as_u64().unwrap())
        .collect();
    // unknown key, unknown field, no sha256, bad name, bad sha256, undeclared volume,
    // toolchain like a revision, bad regex, undeclared machine, bad duration, expired skip
    assert_eq!(
        lines,
        vec![2, 5, 8, 9, 11, 13, 16, 19, 21, 24, 28],
        "{:#}",
        doc
    );
}

#[test]
fn includes_are_merged_and_checked() {
    let farm = Farm::new();
    farm.write(
        "tools.tar",
        tar_bytes(&[
            Entry::File("a", b"#!/bin/sh\n", 0o755),
            Entry::File("b", b"#!/bin/sh\n", 0o755),
        ]),
    );
    farm.write(
        "farm.d/a.toml",
        "[plugin.a]\nversion = \"1\"\nsource = { path = \"../tools.tar\" }\n",
    );
    farm.write(
        "farm.d/b.toml",
        "[plugin.b]\nversion = \"1\"\nsource = { path = \"../tools.tar\" }\n",
    );
    farm.desired("version = 1\ninclude = [\"farm.d/*.toml\"]\n");
    farm.run(&["validate"]).expect(0);
    farm.run(&["apply"]).expect(0);
    assert!(
        farm.path("plugins/a/a").exists() && farm.path("plugins/b/b").exists(),
        "relative to the main file's plugin dir"
    );

    // a duplicate across files is located in the file that repeats it
    farm.write(
        "farm.d/c.toml",
        "\n[plugin.a]\nversion = \"2\"\nsource = { path = \"../tools.tar\" }\n",
    );
    let r = farm.run(&["validate"]);
    r.expect(1);
    assert!(
        r.stderr.contains("farm.d/c.toml:2:9") && r.stderr.contains("declared more than once"),
        "{}",
        r.stderr
    );

    // a semantic error inside an included file points into that file
    farm.write(
        "farm.d/c.toml",
        "[plugin.c]\nversion = \"1\"\nsource = { path = \"x\", sha256 = \"nope\" }\n",
    );
    let r = farm.run(&["validate"]);
    r.expect(1);
    assert!(
        r.stderr.contains("farm.d/c.toml:3:33") && r.stderr.contains("malformed sha256"),
        "{}",
        r.stderr
    );

    farm.desired("version = 1\ninclude = [\"nowhere/*.toml\"]\n");
    let r = farm.run(&["validate"]);
    r.expect(1);
    assert!(r.stderr.contains("matches no file"), "{}", r.stderr);
}

#[test]
fn a_missing_file_says_how_to_name_one() {
    let farm = Farm::new();
    let r = farm.run(&["plan"]);
    r.expect(1);
    assert!(
        r.stderr.contains("cannot read the desired-state file") && r.stderr.contains("-f FILE"),
        "{}",
        r.stderr
    );
    assert!(!farm.path(".reconcile").exists());
}

#[test]
fn the_full_spec_example_validates() {
    let farm = Farm::new();
    farm.desired(&format!(
        r#"version = 1
[settings]
state_dir = ".reconcile"
[volume.default]
path = "machines"
backend = "auto"
prune = "owned"
[machine.linux-gcc]
volume = "default"
revision = 3
kind = "rootfs"
source = {{ path = "fixtures/rootfs-3.tar.gz", sha256 = "{GOOD_SHA}" }}
arch = "x86_64"
distro = "debian"
version = "12.4"
keep = 2
clouds = ["ec2-dev"]
[machine.linux-gcc.toolchain.build2]
bootstrap = ["/bin/sh", "-c", "echo ok > /etc/toolchain"]
timeout = "30m"
[image.focal-amd64-install]
root = "tftp"
arch = "amd64"
subarch = "generic"
release = "focal"
purpose = "install"
files.linux = {{ url = "https://example.org/linux", sha256 = "{GOOD_SHA}" }}
files."initrd.gz" = {{ path = "initrd.gz", sha256 = "{GOOD_SHA}" }}
[plugin.kolet]
version = "1.2.0"
dir = "plugins"
source = {{ url = "https://example.org/kolet_1.2.0_linux_amd64.tar.gz", sha256 = "{GOOD_SHA}" }}
bin = "kolet"
[cloud.ec2-dev]
provider = "ec2"
region = "us-east-1"
endpoint = "http://127.0.0.1:5000"
[check.selinux-denial]
regex = 'avc:  denied'
severity = "fail"
scope = "console"
[suite.smoke]
machines = ["linux-gcc"]
toolchain = "build2"
executor = "namespace"
parallel = 4
[suite.smoke.test.uname]
run = ["/bin/uname", "-a"]
expect = {{ exit = 0, stdout = ["/Linux/", "!panic"] }}
timeout = "60s"
tags = ["fast"]
architectures = ["x86_64"]
distros = ["debian"]
min_version = "12"
skip_checks = {{ "kernel warning" = "known noisy driver, tracker #123" }}
[[skip]]
pattern = "smoke.flaky-*"
reason = "fails on slow disks"
tracker = "https://example.org/issues/7"
until = 2099-12-31
warn = true
[run]
suites = ["smoke"]
"#
    ));
    let r = farm.run(&["validate"]);
    r.expect(0);
}
