//! The README's main command: the quickstart converges on a fresh copy with no
//! root and no btrfs, and a second run changes nothing.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn quickstart_converges_without_root() {
    let farm = Farm::new();
    let dir = farm.path("examples");
    copy_examples(&dir);
    let run = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("-f")
            .arg(dir.join("quickstart.toml"))
            .current_dir(&dir)
            .env("NO_COLOR", "1");
        // as an ordinary user, the way the README promises it works
        as_ordinary_user(&farm, &mut c);
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["apply"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(dir.join("plugins/hello/hello").exists() && dir.join("plugins/greet/greet").exists());
    assert!(dir
        .join("tftp/amd64/generic/bookworm/install/boot.ipxe")
        .exists());
    assert_eq!(
        fs::read_link(dir.join("machines/qs/qs")).unwrap(),
        Path::new("qs-1")
    );
    let (code, out, err) = run(&["apply"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("No changes"), "{out}");
    let (code, out, _) = run(&["plan"]);
    assert_eq!(code, Some(0), "{out}");
}
