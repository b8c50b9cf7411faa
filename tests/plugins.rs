//! Plugins end to end: the real binary, real HTTP downloads, real directories.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;

/// A farm serving `kolet` archives of two versions over HTTP.
struct Setup {
    farm: Farm,
    http: Http,
    v1: String,
    v2: String,
}

fn setup() -> Setup {
    let farm = Farm::new();
    let v1 = sha(&fs::read(farm.write(
        "www/kolet_1.0.0_linux_amd64.tar.gz",
        plugin_tgz("kolet", "1.0.0", Some("1.0.0")),
    ))
    .unwrap());
    let v2 = sha(&fs::read(farm.write(
        "www/kolet_2.0.0_linux_amd64.tar.gz",
        plugin_tgz("kolet", "2.0.0", None),
    ))
    .unwrap());
    let http = Http::serve(&farm.path("www"));
    Setup { farm, http, v1, v2 }
}

impl Setup {
    fn declare(&self, version: &str, sha: &str) {
        self.farm.desired(&format!(
            "version = 1\n[plugin.kolet]\nversion = \"{version}\"\nsource = {{ url = \"{}\", sha256 = \"{sha}\" }}\n",
            self.http.url(&format!("kolet_{version}_linux_amd64.tar.gz"))
        ));
    }

    fn bin(&self) -> String {
        fs::read_to_string(self.farm.path("plugins/kolet/kolet")).unwrap()
    }
}

#[test]
fn install_is_idempotent_and_plan_is_clean_after_apply() {
    let s = setup();
    s.declare("1.0.0", &s.v1);
    let plan = s.farm.run(&["plan"]);
    plan.expect(2);
    assert!(plan.stdout.contains("+ plugin.kolet"), "{}", plan.stdout);
    assert!(plan.stdout.contains("not installed"), "{}", plan.stdout);

    s.farm.run(&["apply"]).expect(0);
    assert_eq!(s.bin(), "#!/bin/sh\necho kolet 1.0.0\n");
    let meta = fs::metadata(s.farm.path("plugins/kolet/kolet")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755, "executable");
    // GoReleaser name normalised, archive's plugin.json kept, receipt written
    assert!(!s
        .farm
        .path("plugins/kolet/kolet_1.0.0_linux_amd64")
        .exists());
    assert!(fs::read_to_string(s.farm.path("plugins/kolet/plugin.json"))
        .unwrap()
        .contains("1.0.0"));
    assert!(s
        .farm
        .path("plugins/kolet/.reconcile-receipt.json")
        .exists());

    let before = s.farm.snapshot(&[".reconcile"]);
    let hits = s.http.hits.load(std::sync::atomic::Ordering::SeqCst);
    let again = s.farm.run(&["apply"]);
    again.expect(0);
    assert!(again.stdout.contains("No changes"), "{}", again.stdout);
    assert_eq!(
        before,
        s.farm.snapshot(&[".reconcile"]),
        "a second apply must write nothing"
    );
    assert_eq!(
        hits,
        s.http.hits.load(std::sync::atomic::Ordering::SeqCst),
        "no download for a no-op"
    );
    s.farm.run(&["plan"]).expect(0);
}

#[test]
fn upgrade_replaces_the_stale_binary() {
    let s = setup();
    s.declare("1.0.0", &s.v1);
    s.farm.run(&["apply"]).expect(0);
    s.declare("2.0.0", &s.v2);
    let plan = s.farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("~ plugin.kolet") && plan.stdout.contains("version 1.0.0 → 2.0.0"),
        "{}",
        plan.stdout
    );
    s.farm.run(&["apply"]).expect(0);
    assert_eq!(s.bin(), "#!/bin/sh\necho kolet 2.0.0\n");
    // the 2.0.0 archive has no plugin.json: written from the declaration
    let manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(s.farm.path("plugins/kolet/plugin.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["version"], "2.0.0");
    // the rest of the archive comes along
    assert_eq!(
        fs::read_to_string(s.farm.path("plugins/kolet/README.md")).unwrap(),
        "docs\n"
    );
    assert!(
        s.farm.leftovers("plugins").is_empty(),
        "{:?}",
        s.farm.leftovers("plugins")
    );
    s.farm.run(&["plan"]).expect(0);
}

#[test]
fn checksum_mismatch_keeps_the_old_version() {
    let s = setup();
    s.declare("1.0.0", &s.v1);
    s.farm.run(&["apply"]).expect(0);
    let before = s.farm.snapshot(&[".reconcile", "reconcile.toml"]);
    let wrong = "ab".repeat(32);
    s.declare("2.0.0", &wrong); // not the digest of the 2.0.0 archive
    let r = s.farm.run(&["apply"]);
    r.expect(1);
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("declared {wrong}")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&s.v2),
        "names the actual digest: {}",
        r.stderr
    );
    assert!(r.stderr.contains("old version stays"), "{}", r.stderr);
    assert_eq!(before, s.farm.snapshot(&[".reconcile", "reconcile.toml"]));
    assert!(s.farm.leftovers("plugins").is_empty());
    // nothing bad stays in the download cache either
    let cache = fs::read_dir(s.farm.path(".reconcile/cache"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("download-"))
        .count();
    assert_eq!(cache, 0);
}

#[test]
fn version_mismatch_keeps_the_old_version() {
    let s = setup();
    s.declare("1.0.0", &s.v1);
    s.farm.run(&["apply"]).expect(0);
    let liar = s.farm.write(
        "www/kolet_3.0.0_linux_amd64.tar.gz",
        plugin_tgz("kolet", "3.0.0", Some("2.9.9")),
    );
    s.declare("3.0.0", &sha_file(&liar));
    let before = s.farm.snapshot(&[".reconcile", "reconcile.toml"]);
    let r = s.farm.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr
            .contains("version mismatch: plugin.json says 2.9.9, the file declares 3.0.0"),
        "{}",
        r.stderr
    );
    assert_eq!(before, s.farm.snapshot(&[".reconcile", "reconcile.toml"]));
    assert!(
        s.farm.leftovers("plugins").is_empty(),
        "{:?}",
        s.farm.leftovers("plugins")
    );
    assert_eq!(s.bin(), "#!/bin/sh\necho kolet 1.0.0\n");
}

#[test]
fn failed_download_keeps_the_old_version() {
    let s = setup();
    s.declare("1.0.0", &s.v1);
    s.farm.run(&["apply"]).expect(0);
    s.farm.desired(&format!(
        "version = 1\n[plugin.kolet]\nversion = \"9.0.0\"\nsource = {{ url = \"{}\", sha256 = \"{}\" }}\n",
        s.http.url("missing.tar.gz"),
        s.v2
    ));
    let r = s.farm.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr.contains("download of") && r.stderr.contains("404"),
        "{}",
        r.stderr
    );
    assert_eq!(s.bin(), "#!/bin/sh\necho kolet 1.0.0\n");
    assert!(s.farm.leftovers("plugins").is_empty());
}

#[test]
fn drift_is_shown_and_repaired() {
    let s = setup();
    s.declare("1.0.0", &s.v1);
    s.farm.run(&["apply"]).expect(0);
    let bin = s.farm.path("plugins/kolet/kolet");
    fs::write(&bin, "#!/bin/sh\necho evil\n").unwrap();
    let plan = s.farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("file kolet modified"),
        "{}",
        plan.stdout
    );
    s.farm.run(&["apply"]).expect(0);
    assert_eq!(s.bin(), "#!/bin/sh\necho kolet 1.0.0\n");

    fs::remove_file(&bin).unwrap();
    let plan = s.farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("file kolet missing"),
        "{}",
        plan.stdout
    );
    s.farm.run(&["apply"]).expect(0);
    s.farm.run(&["plan"]).expect(0);

    s.farm.write("plugins/kolet/dropped-in", "x");
    let plan = s.farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout
            .contains("dropped-in is not part of the installed tree"),
        "{}",
        plan.stdout
    );
}

#[test]
fn drift_warn_reports_drift_and_leaves_it_but_a_new_version_still_applies() {
    let s = setup();
    let declare = |version: &str, sha: &str, drift: &str| {
        s.farm.desired(&format!(
            "version = 1\n[plugin.kolet]\nversion = \"{version}\"\nsource = {{ url = \"{}\", sha256 = \"{sha}\" }}\n{drift}",
            s.http.url(&format!("kolet_{version}_linux_amd64.tar.gz"))
        ));
    };
    declare("1.0.0", &s.v1, "drift = \"warn\"\n");
    s.farm.run(&["apply"]).expect(0);
    let bin = s.farm.path("plugins/kolet/kolet");
    fs::write(&bin, "#!/bin/sh\necho by hand\n").unwrap();

    // the plan shows it, marked, and exits 2
    let plan = s.farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout
            .contains("file kolet modified (size 23 ≠ installed 27) (drift = \"warn\": reported, not repaired)"),
        "{}",
        plan.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&s.farm.run(&["plan", "--json"]).stdout).unwrap();
    assert_eq!(json["resources"][0]["drift_warn"], true, "{json}");
    assert_eq!(json["resources"][0]["changes"][0]["drift"], true, "{json}");

    // apply leaves it, says so, and succeeds
    let apply = s.farm.run(&["apply"]);
    apply.expect(0);
    assert!(
        apply
            .stderr
            .contains("drifted and left so (drift = \"warn\"): plugin.kolet"),
        "{}",
        apply.all()
    );
    assert_eq!(s.bin(), "#!/bin/sh\necho by hand\n");
    let json: serde_json::Value =
        serde_json::from_str(&s.farm.run(&["apply", "--json"]).stdout).unwrap();
    assert_eq!(json["drift_kept"][0], "plugin.kolet", "{json}");
    assert_eq!(s.bin(), "#!/bin/sh\necho by hand\n");

    // a change of the desired state is applied (and replaces the edited tree)
    declare("2.0.0", &s.v2, "drift = \"warn\"\n");
    let plan = s.farm.run(&["plan", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert!(json["resources"][0].get("drift_warn").is_none(), "{json}");
    s.farm.run(&["apply"]).expect(0);
    assert_eq!(s.bin(), "#!/bin/sh\necho kolet 2.0.0\n");
    s.farm.run(&["plan"]).expect(0);

    // drift = "repair" (the default) marks the change as drift and repairs it
    declare("2.0.0", &s.v2, "");
    fs::write(&bin, "#!/bin/sh\necho by hand\n").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&s.farm.run(&["plan", "--json"]).stdout).unwrap();
    assert_eq!(json["resources"][0]["changes"][0]["drift"], true, "{json}");
    assert!(json["resources"][0].get("drift_warn").is_none(), "{json}");
    s.farm.run(&["apply"]).expect(0);
    assert_eq!(s.bin(), "#!/bin/sh\necho kolet 2.0.0\n");

    // anything else is refused, with the choices
    declare("2.0.0", &s.v2, "drift = \"ignore\"\n");
    let r = s.farm.run(&["validate"]);
    r.expect(1);
    assert!(
        r.all()
            .contains("unknown variant `ignore`, expected `repair` or `warn`"),
        "{}",
        r.all()
    );
}

#[test]
fn tampering_that_keeps_size_and_mtime_is_caught() {
    let s = setup();
    s.declare("1.0.0", &s.v1);
    s.farm.run(&["apply"]).expect(0);
    let bin = s.farm.path("plugins/kolet/kolet");
    let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&bin).unwrap());
    let original = fs::read(&bin).unwrap();
    let mut forged = original.clone();
    let i = forged.len() - 3;
    forged[i] = b'X';
    fs::write(&bin, &forged).unwrap();
    filetime::set_file_mtime(&bin, mtime).unwrap();
    assert_eq!(fs::metadata(&bin).unwrap().len(), original.len() as u64);
    // ctime is part of the stat key, so even the fast path re-hashes; --verify always does
    for args in [&["plan"][..], &["plan", "--verify"][..]] {
        let plan = s.farm.run(args);
        plan.expect(2);
        assert!(
            plan.stdout.contains("file kolet modified (sha256"),
            "{args:?}: {}",
            plan.stdout
        );
    }
}

#[test]
fn prune_removes_owned_plugins_and_never_touches_foreign_ones() {
    let s = setup();
    s.farm.write(
        "www/old_1.0.0_linux_amd64.tar.gz",
        plugin_tgz("old", "1.0.0", None),
    );
    s.farm.desired(&format!(
        "version = 1\n[plugin.kolet]\nversion = \"1.0.0\"\nsource = {{ url = \"{}\", sha256 = \"{}\" }}\n\
         [plugin.old]\nversion = \"1.0.0\"\nsource = {{ url = \"{}\", sha256 = \"{}\" }}\n",
        s.http.url("kolet_1.0.0_linux_amd64.tar.gz"), s.v1,
        s.http.url("old_1.0.0_linux_amd64.tar.gz"), sha_file(&s.farm.path("www/old_1.0.0_linux_amd64.tar.gz"))
    ));
    s.farm.run(&["apply"]).expect(0);
    s.farm.write("plugins/handmade/tool", "mine");
    s.farm.write("plugins/stray-file", "mine too");
    s.declare("1.0.0", &s.v1);
    let plan = s.farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("- plugin.old")
            && plan.stdout.contains("not declared any more (owned)"),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("handmade"), "{}", plan.stdout);
    s.farm.run(&["apply"]).expect(0);
    assert!(!s.farm.path("plugins/old").exists());
    assert_eq!(
        fs::read_to_string(s.farm.path("plugins/handmade/tool")).unwrap(),
        "mine"
    );
    assert_eq!(
        fs::read_to_string(s.farm.path("plugins/stray-file")).unwrap(),
        "mine too"
    );
    s.farm.run(&["plan"]).expect(0);

    // a plugin whose whole directory is no longer declared is still found through the roots record
    s.farm.desired("version = 1\n");
    let plan = s.farm.run(&["plan"]);
    plan.expect(2);
    assert!(plan.stdout.contains("- plugin.kolet"), "{}", plan.stdout);
    s.farm.run(&["apply"]).expect(0);
    assert!(!s.farm.path("plugins/kolet").exists());
    assert!(s.farm.path("plugins/handmade/tool").exists());
}

#[test]
fn a_foreign_directory_in_the_way_is_an_error_and_untouched() {
    let s = setup();
    s.farm.write("plugins/kolet/kolet", "hand-installed");
    s.declare("1.0.0", &s.v1);
    let r = s.farm.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr.contains("was not made by reconcile"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("move it away"), "{}", r.stderr);
    assert_eq!(
        fs::read_to_string(s.farm.path("plugins/kolet/kolet")).unwrap(),
        "hand-installed"
    );
}

#[test]
fn every_archive_format_and_a_raw_binary_install() {
    let farm = Farm::new();
    let script: &[u8] = b"#!/bin/sh\necho t\n";
    let tar = tar_bytes(&[
        Entry::Dir("t_1.0_linux_amd64/"),
        Entry::File("t_1.0_linux_amd64/t", script, 0o755),
        Entry::Symlink("t_1.0_linux_amd64/t-link", "t"),
    ]);
    farm.write("www/a.tar", &tar);
    farm.write("www/a.tar.xz", xz(&tar));
    farm.write("www/a.tar.zst", zst(&tar));
    farm.write(
        "www/a.zip",
        zip_bytes(&[
            Entry::File("t", script, 0o755),
            Entry::File("docs/x.txt", b"x", 0o644),
        ]),
    );
    farm.write("www/t_1.0_linux_amd64", script);
    let http = Http::serve(&farm.path("www"));
    let mut toml = String::from("version = 1\n");
    for (name, file) in [
        ("ptar", "a.tar"),
        ("pxz", "a.tar.xz"),
        ("pzst", "a.tar.zst"),
        ("pzip", "a.zip"),
        ("praw", "t_1.0_linux_amd64"),
    ] {
        toml.push_str(&format!(
            "[plugin.{name}]\nversion = \"1.0\"\nbin = \"t\"\nsource = {{ url = \"{}\", sha256 = \"{}\" }}\n",
            http.url(file),
            sha_file(&farm.path(&format!("www/{file}")))
        ));
    }
    // a local path and a file:// URL too
    toml.push_str(
        "[plugin.plocal]\nversion = \"1.0\"\nbin = \"t\"\nsource = { path = \"www/a.tar\" }\n",
    );
    toml.push_str(&format!(
        "[plugin.pfile]\nversion = \"1.0\"\nbin = \"t\"\nsource = {{ url = \"file://{}\", sha256 = \"{}\" }}\n",
        farm.path("www/a.tar.xz").display(),
        sha_file(&farm.path("www/a.tar.xz"))
    ));
    farm.desired(&toml);
    farm.run(&["apply"]).expect(0);
    for name in ["ptar", "pxz", "pzst", "pzip", "praw", "plocal", "pfile"] {
        assert_eq!(
            fs::read(farm.path(&format!("plugins/{name}/t"))).unwrap(),
            script,
            "{name}"
        );
    }
    assert_eq!(
        fs::read_link(farm.path("plugins/ptar/t-link")).unwrap(),
        std::path::Path::new("t")
    );
    assert_eq!(
        fs::read_to_string(farm.path("plugins/pzip/docs/x.txt")).unwrap(),
        "x"
    );
    farm.run(&["plan"]).expect(0);
}

#[test]
fn setuid_and_setgid_bits_are_stripped() {
    let farm = Farm::new();
    farm.write(
        "a.tar",
        tar_bytes(&[
            Entry::File("t", b"#!/bin/sh\n", 0o6755),
            Entry::File("helper", b"x", 0o4711),
        ]),
    );
    farm.desired("version = 1\n[plugin.t]\nversion = \"1\"\nsource = { path = \"a.tar\" }\n");
    farm.run(&["apply"]).expect(0);
    for f in ["t", "helper"] {
        let mode = fs::metadata(farm.path(&format!("plugins/t/{f}")))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o7000, 0, "{f}: {mode:o}");
    }
}

#[test]
fn a_second_concurrent_apply_exits_3_naming_the_holder() {
    let farm = Farm::new();
    farm.write("www/k.tar.gz", plugin_tgz("k", "1", None));
    let http = Http::serve_slow(&farm.path("www"), Duration::from_secs(3));
    farm.desired(&format!(
        "version = 1\n[plugin.k]\nversion = \"1\"\nsource = {{ url = \"{}\", sha256 = \"{}\" }}\n",
        http.url("k.tar.gz"),
        sha_file(&farm.path("www/k.tar.gz"))
    ));
    let mut first = farm
        .cmd(&["apply"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // wait until the first apply holds the lock (its holder record is written)
    let lock = farm.path(".reconcile/lock");
    for _ in 0..200 {
        if fs::read_to_string(&lock)
            .map(|t| t.contains("pid"))
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = farm.run(&["apply"]);
    second.expect(3);
    assert!(
        second.stderr.contains(&format!("pid {}", first.id())),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("--lock-timeout"),
        "{}",
        second.stderr
    );
    // waiting long enough succeeds
    let third = farm.run(&["apply", "--lock-timeout", "30s"]);
    third.expect(0);
    assert!(first.wait().unwrap().success());
    assert!(farm.path("plugins/k/k").exists());
}

#[test]
fn the_lock_times_out_with_exit_3() {
    let farm = Farm::new();
    farm.write("www/k.tar.gz", plugin_tgz("k", "1", None));
    let http = Http::serve_slow(&farm.path("www"), Duration::from_secs(4));
    farm.desired(&format!(
        "version = 1\n[plugin.k]\nversion = \"1\"\nsource = {{ url = \"{}\", sha256 = \"{}\" }}\n",
        http.url("k.tar.gz"),
        sha_file(&farm.path("www/k.tar.gz"))
    ));
    let mut first = farm
        .cmd(&["apply"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if fs::read_to_string(farm.path(".reconcile/lock"))
            .map(|t| t.contains("pid"))
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = farm.run(&["apply", "--lock-timeout", "300ms"]);
    r.expect(3);
    assert!(r.stderr.contains("raise --lock-timeout"), "{}", r.stderr);
    assert!(first.wait().unwrap().success());
}

#[test]
fn plan_writes_nothing_outside_the_state_dir() {
    let s = setup();
    s.farm.write(
        "www/old_1.0.0_linux_amd64.tar.gz",
        plugin_tgz("old", "1.0.0", None),
    );
    s.farm.desired(&format!(
        "version = 1\n[plugin.kolet]\nversion = \"1.0.0\"\nsource = {{ url = \"{}\", sha256 = \"{}\" }}\n\
         [plugin.old]\nversion = \"1.0.0\"\nsource = {{ url = \"{}\", sha256 = \"{}\" }}\n",
        s.http.url("kolet_1.0.0_linux_amd64.tar.gz"), s.v1,
        s.http.url("old_1.0.0_linux_amd64.tar.gz"), sha_file(&s.farm.path("www/old_1.0.0_linux_amd64.tar.gz"))
    ));
    s.farm.run(&["apply"]).expect(0);
    // pending: an upgrade, a prune, a drift and a new plugin
    s.farm.write("plugins/kolet/kolet", "tampered");
    s.farm.desired(&format!(
        "version = 1\n[plugin.kolet]\nversion = \"2.0.0\"\nsource = {{ url = \"{}\", sha256 = \"{}\" }}\n\
         [plugin.new]\nversion = \"1.0.0\"\nsource = {{ path = \"www/old_1.0.0_linux_amd64.tar.gz\" }}\nbin = \"old\"\n",
        s.http.url("kolet_2.0.0_linux_amd64.tar.gz"), s.v2
    ));
    let before = s.farm.snapshot(&[".reconcile"]);
    let hits = s.http.hits.load(std::sync::atomic::Ordering::SeqCst);
    for args in [
        &["plan"][..],
        &["plan", "--verify"],
        &["plan", "--json"],
        &["status"],
        &["plan", "--out", ".reconcile/p.json"],
    ] {
        let r = s.farm.run(args);
        assert!(matches!(r.code, Some(0) | Some(2)), "{args:?}: {}", r.all());
    }
    assert_eq!(
        before,
        s.farm.snapshot(&[".reconcile"]),
        "plan wrote outside the state dir"
    );
    assert_eq!(
        hits,
        s.http.hits.load(std::sync::atomic::Ordering::SeqCst),
        "plan downloaded something"
    );
}

#[test]
fn saved_plans_apply_or_refuse_when_stale() {
    let s = setup();
    s.declare("1.0.0", &s.v1);
    s.farm.run(&["plan", "--out", "p1.json"]).expect(2);
    let doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(s.farm.path("p1.json")).unwrap()).unwrap();
    assert_eq!(doc["format_version"], 1);
    assert_eq!(doc["desired"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(doc["resources"][0]["address"], "plugin.kolet");
    assert_eq!(doc["resources"][0]["changes"][0]["action"], "create");
    s.farm.run(&["apply", "p1.json"]).expect(0);
    assert!(s.farm.path("plugins/kolet/kolet").exists());

    // the world moved on: the same saved plan is refused, naming the resource
    let r = s.farm.run(&["apply", "p1.json"]);
    r.expect(1);
    assert!(
        r.stderr.contains("stale") && r.stderr.contains("plugin.kolet changed since the plan"),
        "{}",
        r.stderr
    );

    // the file changed
    s.farm.run(&["plan", "--out", "p2.json"]).expect(0);
    s.declare("2.0.0", &s.v2);
    let r = s.farm.run(&["apply", "p2.json"]);
    r.expect(1);
    assert!(
        r.stderr.contains("desired-state file changed"),
        "{}",
        r.stderr
    );
    assert_eq!(
        s.bin(),
        "#!/bin/sh\necho kolet 1.0.0\n",
        "a refused plan applies nothing"
    );

    fs::write(s.farm.path("garbage.json"), "{}").unwrap();
    let r = s.farm.run(&["apply", "garbage.json"]);
    r.expect(1);
    assert!(r.stderr.contains("not a reconcile plan"), "{}", r.stderr);
}

#[test]
fn lock_pins_remote_sources_and_locked_refuses_unpinned() {
    let s = setup();
    let url = s.http.url("kolet_1.0.0_linux_amd64.tar.gz");
    s.farm.desired(&format!(
        "version = 1\n[plugin.kolet]\nversion = \"1.0.0\"\nsource = {{ url = \"{url}\" }}\n"
    ));
    let v = s.farm.run(&["validate"]);
    v.expect(1);
    assert!(
        v.stderr.contains("a remote source needs a sha256") && v.stderr.contains("reconcile lock"),
        "{}",
        v.stderr
    );
    s.farm.run(&["lock"]).expect(0);
    let lock = fs::read_to_string(s.farm.path("reconcile.lock")).unwrap();
    assert!(lock.contains(&s.v1) && lock.contains(&url), "{lock}");
    s.farm.run(&["validate"]).expect(0);
    s.farm.run(&["apply", "--locked"]).expect(0);
    assert!(s.farm.path("plugins/kolet/kolet").exists());

    // an inline sha256 that is not in the lock file is refused with --locked, accepted without
    s.declare("2.0.0", &s.v2);
    let r = s.farm.run(&["plan", "--locked"]);
    r.expect(1);
    assert!(
        r.stderr.contains("not pinned in reconcile.lock"),
        "{}",
        r.stderr
    );
    s.farm.run(&["plan"]).expect(2);
}

#[test]
fn status_reports_installed_plugins() {
    let s = setup();
    s.declare("1.0.0", &s.v1);
    let r = s.farm.run(&["status"]);
    r.expect(0);
    assert!(
        r.stdout.contains("not installed") && r.stdout.contains("Last apply: never"),
        "{}",
        r.stdout
    );
    assert!(
        !s.farm.path(".reconcile").exists(),
        "status creates nothing"
    );
    s.farm.run(&["apply"]).expect(0);
    let r = s.farm.run(&["status", "--json"]);
    r.expect(0);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["format_version"], 1);
    let p = &doc["resources"][0];
    assert_eq!(p["address"], "plugin.kolet");
    assert_eq!(p["installed_version"], "1.0.0");
    assert_eq!(p["source"]["sha256"], s.v1);
    assert_eq!(p["drift"].as_array().unwrap().len(), 0);
    assert_eq!(doc["last_apply"]["result"], "converged");
}

/// Once what a plan looked at is older than the stat index's settle time, a
/// no-op plan takes directory listings, source digests and receipts from the
/// index instead of reading them. None of that may hide a change: each
/// plugin below is changed in one way after the index remembered it, and one
/// plan must report every change and nothing for the untouched plugin.
#[test]
fn remembered_listings_digests_and_receipts_never_hide_a_change() {
    let farm = Farm::new();
    let names = ["added", "rewritten", "nested", "extra", "tampered", "same"];
    let mut toml = String::from("version = 1\n");
    for n in names {
        let tool = farm.write(&format!("src/{n}/tool"), format!("#!/bin/sh\necho {n}\n"));
        make_executable(&tool);
        farm.write(&format!("src/{n}/share/README"), "readme\n");
        toml.push_str(&format!(
            "[plugin.{n}]\nversion = \"1\"\nbin = \"tool\"\nsource = {{ dir = \"src/{n}\" }}\n"
        ));
    }
    farm.desired(&toml);
    farm.run(&["apply"]).expect(0);
    // past the settle time (2 s): changes after this land in a later clock tick
    std::thread::sleep(Duration::from_millis(2_300));
    farm.run(&["plan"]).expect(0);
    let index = fs::read(farm.path(".reconcile/statindex.bin")).unwrap();
    for remembered in [
        "src/added/share",
        "plugins/extra/.reconcile-receipt.json",
        "src/same/tool",
    ] {
        let needle = farm.path(remembered).into_os_string().into_encoded_bytes();
        assert!(
            index.windows(needle.len()).any(|w| w == needle.as_slice()),
            "the index remembers {remembered}"
        );
    }
    farm.run(&["plan"]).expect(0);

    let keep_mtime = |p: &std::path::Path, data: &[u8]| {
        let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(p).unwrap());
        fs::write(p, data).unwrap();
        filetime::set_file_mtime(p, mtime).unwrap();
    };
    // a source directory gains a file
    farm.write("src/added/new-file", "x");
    // a source file is rewritten in place: same size, mtime put back
    keep_mtime(
        &farm.path("src/rewritten/tool"),
        b"#!/bin/sh\necho XXXXXXXXX\n",
    );
    // a nested source directory gains a file
    farm.write("src/nested/share/more", "y");
    // the installed tree gains a file
    farm.write("plugins/extra/dropped-in", "z");
    // an installed file is rewritten in place: same size, mtime put back
    keep_mtime(
        &farm.path("plugins/tampered/tool"),
        b"#!/bin/sh\necho XXXXXXXX\n",
    );

    let plan = farm.run(&["plan"]);
    plan.expect(2);
    let line = |addr: &str| {
        plan.stdout
            .lines()
            .find(|l| l.contains(&format!("plugin.{addr}")))
            .unwrap_or_else(|| panic!("no line for plugin.{addr} in\n{}", plan.stdout))
            .to_string()
    };
    for changed in ["added", "rewritten", "nested"] {
        assert!(line(changed).contains("≠ declared"), "{}", plan.stdout);
    }
    assert!(
        line("extra").contains("dropped-in is not part of the installed tree"),
        "{}",
        plan.stdout
    );
    assert!(
        line("tampered").contains("tool modified (sha256"),
        "{}",
        plan.stdout
    );
    assert!(
        !plan.stdout.contains("plugin.same"),
        "the untouched plugin stays in sync:\n{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    farm.run(&["plan"]).expect(0);
}
