//! Property tests of archive extraction: archives generated with hostile
//! names (`..`, absolute paths, deep paths), link chains, hard links and
//! device nodes are extracted beside a sentinel directory. Whatever the
//! archive, extraction never panics, never writes outside its destination,
//! and a tree it accepts has no symlink that leads out of it.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::archive::{self, ArchiveInput, Policy};
use crate::config::model::ArchiveFormat;
use crate::error::Error;
use crate::fsops::beneath::{self, Beneath, Kind};

#[derive(Debug, Clone)]
enum Gen {
    File(String),
    Dir(String),
    Symlink(String, String),
    HardLink(String, String),
    Device(String),
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("plugin.json".to_string()),
        Just(".reconcile-receipt.json".to_string()),
        "[a-c]{1,3}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.1),
        prop::collection::vec(component(), 1..4),
    )
        .prop_map(|(abs, parts)| {
            let p = parts.join("/");
            if abs {
                format!("/{p}")
            } else {
                p
            }
        })
}

fn entry() -> impl Strategy<Value = Gen> {
    prop_oneof![
        3 => path().prop_map(Gen::File),
        2 => path().prop_map(Gen::Dir),
        3 => (path(), path()).prop_map(|(a, b)| Gen::Symlink(a, b)),
        1 => (path(), path()).prop_map(|(a, b)| Gen::HardLink(a, b)),
        1 => path().prop_map(Gen::Device),
    ]
}

/// A tar with the names written raw into the headers (the builder would clean them).
fn tar(entries: &[Gen]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, link, data): (&str, Option<&str>, &[u8]) = match e {
            Gen::File(n) => {
                h.set_entry_type(tar::EntryType::Regular);
                (n, None, b"data")
            }
            Gen::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                (n, None, b"")
            }
            Gen::Symlink(n, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                (n, Some(t), b"")
            }
            Gen::HardLink(n, t) => {
                h.set_entry_type(tar::EntryType::Link);
                (n, Some(t), b"")
            }
            Gen::Device(n) => {
                h.set_entry_type(tar::EntryType::Char);
                (n, None, b"")
            }
        };
        h.set_mode(0o4755);
        h.set_size(data.len() as u64);
        let raw = &mut h.as_old_mut().name;
        let n = name.as_bytes();
        raw[..n.len().min(99)].copy_from_slice(&n[..n.len().min(99)]);
        if let Some(t) = link {
            let raw = &mut h.as_old_mut().linkname;
            let t = t.as_bytes();
            raw[..t.len().min(99)].copy_from_slice(&t[..t.len().min(99)]);
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Every path under `root` with what it is (symlinks not followed).
fn listing(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let what = if m.is_file() {
            format!("file {:?}", fs::read(e.path()).unwrap())
        } else {
            format!("{:?}", m.file_type())
        };
        out.push((e.path().to_path_buf(), what));
    }
    out
}

fn links_stay_inside(dest: &Beneath, rel: &Path, chroot: bool) {
    let dir = dest.open_dir(rel).unwrap();
    for (name, kind) in dir.entries().unwrap() {
        let r = rel.join(&name);
        match kind {
            Kind::Dir => links_stay_inside(dest, &r, chroot),
            Kind::Symlink => {
                beneath::resolve_inside(dest, &r, chroot)
                    .unwrap_or_else(|why| panic!("accepted a symlink {} that {why}", r.display()));
            }
            Kind::Other if !chroot => panic!("accepted a device node at {}", r.display()),
            _ => {}
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn hostile_archives_never_write_outside_or_leave_a_way_out(
        entries in prop::collection::vec(entry(), 1..12),
        rootfs in prop::bool::ANY,
    ) {
        let top = tempfile::tempdir().unwrap();
        let sentinel = top.path().join("outside");
        fs::create_dir(&sentinel).unwrap();
        fs::write(sentinel.join("keep"), "keep").unwrap();
        let dest_path = top.path().join("dest");
        fs::create_dir(&dest_path).unwrap();
        let before = listing(&sentinel);
        let dest = Beneath::open(&dest_path).unwrap();
        let bytes = tar(&entries);
        let r = archive::extract(
            ArchiveInput::Stream(Box::new(&bytes[..])),
            ArchiveFormat::Tar,
            &dest,
            "fuzz.tar",
            0,
            1 << 20,
            Policy { rootfs },
        );
        // nothing outside changed, whatever happened
        prop_assert_eq!(listing(&sentinel), before);
        let top_names: Vec<_> = fs::read_dir(top.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        prop_assert_eq!(top_names.len(), 2, "{:?}", top_names);
        match r {
            Ok(_) => links_stay_inside(&dest, Path::new(""), rootfs),
            Err(Error::HostileArchive { .. } | Error::Archive { .. } | Error::Io { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
        }
    }
}
