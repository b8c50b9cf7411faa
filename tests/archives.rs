//! Hostile archives of every kind are refused: exit 1, the entry named, the old
//! version kept, no staging left, nothing written outside the target.

mod common;

use std::fs;

use common::*;

fn good() -> Vec<u8> {
    tar_bytes(&[Entry::File("t", b"#!/bin/sh\necho good\n", 0o755)])
}

/// Install a good version, then try `archive`; everything must stay as it was.
fn refused(file: &str, archive: Vec<u8>, expect: &[&str]) {
    let farm = Farm::new();
    farm.write("good.tar", good());
    farm.desired("version = 1\n[settings]\nextract_limit = \"1 MiB\"\n[plugin.t]\nversion = \"1\"\nsource = { path = \"good.tar\" }\n");
    farm.run(&["apply"]).expect(0);
    farm.write(file, &archive);
    farm.desired(&format!("version = 1\n[settings]\nextract_limit = \"1 MiB\"\n[plugin.t]\nversion = \"2\"\nsource = {{ path = \"{file}\" }}\n"));
    let before = farm.snapshot(&[".reconcile", "reconcile.toml"]);
    let r = farm.run(&["apply"]);
    r.expect(1);
    for e in expect {
        assert!(
            r.stderr.contains(e),
            "{file}: expected `{e}` in:\n{}",
            r.stderr
        );
    }
    assert!(
        r.stderr.contains("refusing archive") || r.stderr.contains("cannot read archive"),
        "{}",
        r.stderr
    );
    assert_eq!(
        before,
        farm.snapshot(&[".reconcile", "reconcile.toml"]),
        "{file}: something was written"
    );
    assert!(
        farm.leftovers("plugins").is_empty(),
        "{file}: {:?}",
        farm.leftovers("plugins")
    );
    assert_eq!(
        fs::read_to_string(farm.path("plugins/t/t")).unwrap(),
        "#!/bin/sh\necho good\n"
    );
    farm.run(&["plan"]).expect(2);
}

#[test]
fn absolute_paths() {
    let target = format!("/tmp/reconcile-hostile-{}/evil", std::process::id());
    refused(
        "abs.tar",
        tar_bytes(&[
            Entry::File("t", b"x", 0o755),
            Entry::File(&target, b"pwned", 0o644),
        ]),
        &["has an absolute path", &target],
    );
    assert!(!std::path::Path::new(&target).exists());
}

#[test]
fn parent_directory_components() {
    refused(
        "dotdot.tar.gz",
        gz(&tar_bytes(&[
            Entry::File("t", b"x", 0o755),
            Entry::File("../escape.txt", b"pwned", 0o644),
        ])),
        &["../escape.txt", "contains `..`"],
    );
    refused(
        "deep.tar",
        tar_bytes(&[Entry::File("a/../../escape.txt", b"pwned", 0o644)]),
        &["contains `..`"],
    );
}

#[test]
fn symlinks_leaving_the_tree() {
    refused(
        "abs-link.tar",
        tar_bytes(&[Entry::File("t", b"x", 0o755), Entry::Symlink("etc", "/etc")]),
        &["symlink to the absolute path /etc"],
    );
    refused(
        "rel-link.tar",
        tar_bytes(&[Entry::Dir("d/"), Entry::Symlink("d/up", "../../outside")]),
        &["d/up", "leaves the tree"],
    );
}

#[test]
fn writing_through_a_symlink() {
    refused(
        "through.tar",
        tar_bytes(&[
            Entry::Dir("real/"),
            Entry::Symlink("alias", "real"),
            Entry::File("alias/t", b"x", 0o755),
        ]),
        &["alias/t", "written through a symlink"],
    );
}

#[test]
fn hard_links_leaving_the_tree() {
    refused(
        "hard-abs.tar",
        tar_bytes(&[
            Entry::File("t", b"x", 0o755),
            Entry::HardLink("passwd", "/etc/passwd"),
        ]),
        &["passwd"],
    );
    refused(
        "hard-up.tar",
        tar_bytes(&[
            Entry::File("t", b"x", 0o755),
            Entry::HardLink("x", "../secret"),
        ]),
        &["leaves the tree"],
    );
    refused(
        "hard-missing.tar",
        tar_bytes(&[
            Entry::HardLink("x", "not-yet"),
            Entry::File("not-yet", b"x", 0o644),
        ]),
        &["not a file extracted before it"],
    );
}

#[test]
fn device_nodes_and_fifos() {
    refused(
        "dev.tar",
        tar_bytes(&[Entry::File("t", b"x", 0o755), Entry::CharDevice("null")]),
        &["null", "device node"],
    );
    refused(
        "fifo.tar",
        tar_bytes(&[Entry::File("t", b"x", 0o755), Entry::Fifo("pipe")]),
        &["pipe", "fifo"],
    );
}

#[test]
fn archive_bombs_are_capped() {
    let zeros = vec![0u8; 3 << 20];
    let bomb = gz(&tar_bytes(&[
        Entry::File("t", b"x", 0o755),
        Entry::File("zeros", &zeros, 0o644),
    ]));
    assert!(bomb.len() < 64 << 10, "the bomb is small on disk");
    refused(
        "bomb.tar.gz",
        bomb,
        &["zeros", "more than 1048576 bytes", "extract_limit"],
    );
    let zip_bomb = zip_bytes(&[Entry::File("zeros", &zeros, 0o644)]);
    refused("bomb.zip", zip_bomb, &["extract_limit"]);
}

#[test]
fn duplicate_entries() {
    refused(
        "dup.tar",
        tar_bytes(&[
            Entry::File("t", b"one", 0o755),
            Entry::File("t", b"two", 0o755),
        ]),
        &["appears twice"],
    );
}

#[test]
fn hostile_zips() {
    refused(
        "up.zip",
        zip_bytes(&[
            Entry::File("t", b"x", 0o755),
            Entry::File("../evil", b"x", 0o644),
        ]),
        &["../evil"],
    );
    refused(
        "abs.zip",
        zip_bytes(&[Entry::File("/tmp/evil-zip", b"x", 0o644)]),
        &["absolute path"],
    );
    refused(
        "link.zip",
        zip_bytes(&[
            Entry::File("t", b"x", 0o755),
            Entry::Symlink("l", "../../x"),
        ]),
        &["leaves the tree"],
    );
}

#[test]
fn corrupt_archives_are_reported() {
    let mut bytes = gz(&good());
    bytes.truncate(bytes.len() / 2);
    refused("cut.tar.gz", bytes, &["cut.tar.gz"]);
}
