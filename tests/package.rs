//! The Debian package (`scripts/package`, cargo-deb): what it holds, checked
//! with dpkg-deb, and unpacked into a scratch root with dpkg, where the
//! installed binary runs, validates the shipped farm file and the units pass
//! `systemd-analyze verify`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
#[ignore = "needs cargo-deb and dpkg (scripts/test installs cargo-deb)"]
fn the_debian_package_installs_the_binary_man_pages_completions_and_units() {
    if !have("cargo-deb") || !have("dpkg-deb") {
        skip("needs cargo-deb (cargo install cargo-deb) and dpkg");
        return;
    }
    stdout_of(Command::new(repo().join("scripts/package")).current_dir(repo()));
    let deb = fs::read_dir(repo().join("target/debian"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .max_by_key(|p| fs::metadata(p).unwrap().modified().unwrap())
        .expect("a .deb");
    let listing = stdout_of(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    let has = |p: &str| files.iter().any(|f| f.trim_start_matches('.') == p);
    for want in [
        "/usr/bin/reconcile",
        "/usr/share/man/man1/reconcile.1.gz",
        "/usr/share/man/man1/reconcile-apply.1.gz",
        "/usr/share/man/man1/reconcile-watch.1.gz",
        "/usr/share/bash-completion/completions/reconcile",
        "/usr/share/zsh/vendor-completions/_reconcile",
        "/usr/share/fish/vendor_completions.d/reconcile.fish",
        "/etc/reconcile/farm.toml",
        "/usr/share/doc/reconcile/guide.md",
    ] {
        assert!(has(want), "{want} missing from the package:\n{listing}");
    }
    let unit = |name: &str| {
        files
            .iter()
            .find(|f| f.ends_with(&format!("systemd/system/{name}")))
            .map(|f| f.trim_start_matches('.').to_string())
            .unwrap_or_else(|| panic!("{name} missing:\n{listing}"))
    };
    let watch_unit = unit("reconcile-watch.service");
    let pull_unit = unit("reconcile-pull.service");
    let depends = stdout_of(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
    assert!(depends.contains("git"), "{depends}");

    // maintainer scripts: the watch unit is enabled and started after dpkg -i, the pull unit is not
    let control = tempfile::tempdir().unwrap();
    stdout_of(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(control.path()),
    );
    let postinst = fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(
        postinst.contains("enable reconcile-watch.service"),
        "{postinst}"
    );
    assert!(
        postinst.contains("reconcile-watch.service")
            && postinst.contains("deb-systemd-invoke $_dh_action"),
        "{postinst}"
    );
    // the pull unit: enabled only when it was before (an upgrade), never started by the package
    assert!(
        postinst.contains("debian-installed reconcile-pull.service"),
        "{postinst}"
    );
    assert!(
        !postinst.contains("deb-systemd-invoke $_dh_action reconcile-pull.service"),
        "{postinst}"
    );
    let conffiles = fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/reconcile/farm.toml"),
        "{conffiles}"
    );

    // unpacked into a scratch root by dpkg itself
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    let preinst = control.path().join("preinst").exists();
    let mut dpkg = Command::new("dpkg");
    dpkg.arg(format!("--root={}", r.display())).args([
        "--force-not-root",
        "--force-depends",
        "--no-triggers",
        "--unpack",
    ]);
    if preinst {
        dpkg.arg("--force-script-chrootless");
    }
    stdout_of(dpkg.arg(&deb));
    let bin = r.join("usr/bin/reconcile");
    let version = stdout_of(Command::new(&bin).arg("--version"));
    assert!(version.starts_with("reconcile "), "{version}");
    // stripped: no debug info left, and far below the 73 MB of the release build with line tables
    let size = fs::metadata(&bin).unwrap().len();
    assert!(size < 30 << 20, "{size} bytes");
    let sections = stdout_of(Command::new("readelf").arg("-S").arg(&bin));
    assert!(
        !sections.contains(".debug_info"),
        "debug info in the packaged binary"
    );
    // the shipped farm file is valid
    // unpacked, not configured: dpkg keeps a conffile under .dpkg-new until configure
    let farm = [
        "etc/reconcile/farm.toml",
        "etc/reconcile/farm.toml.dpkg-new",
    ]
    .iter()
    .map(|p| r.join(p))
    .find(|p| p.exists())
    .expect("the farm file was unpacked");
    stdout_of(Command::new(&bin).args(["validate", "-f"]).arg(&farm));
    // the man page carries the exit codes
    let page =
        stdout_of(Command::new("zcat").arg(r.join("usr/share/man/man1/reconcile-apply.1.gz")));
    assert!(
        page.contains(".SH \"EXIT STATUS\"") && page.contains("held the lock past"),
        "{page}"
    );
    // the units are valid for systemd, against the unpacked root
    if !have("systemd-analyze") {
        skip("needs systemd-analyze (package systemd) to verify the units");
    } else {
        // what the units call besides reconcile comes from the base system
        fs::create_dir_all(r.join("bin")).unwrap();
        fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
        for u in [&watch_unit, &pull_unit] {
            let out = Command::new("systemd-analyze")
                .arg(format!("--root={}", r.display()))
                .args(["verify", "--man=no"])
                .arg(Path::new(u).strip_prefix("/").map(|p| r.join(p)).unwrap())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(
                !text
                    .lines()
                    .any(|l| l.contains(u.rsplit('/').next().unwrap()) && !l.contains("Failed to")),
                "systemd-analyze verify {u}:\n{text}"
            );
        }
    }
}
