//! The resources' tables: machines (and their toolchains), netboot images,
//! plugins, clouds.

use std::collections::BTreeMap;

use super::super::lockfile::Lockfile;
use super::super::model::{DesiredFile, Executor, Firmware, MachineKind, Promote};
use super::{did_you_mean, names, sts_endpoint, valid_name, Checker};

/// Each machine: its volume, revision, clouds, source, the tables that suit its kind, its toolchains.
pub(super) fn machines(c: &mut Checker, m: &DesiredFile, lock: &Lockfile) {
    for (name, mach) in &m.machine {
        let at = |f: &'static str| ["machine", name.as_str(), f];
        if !m.volume.contains_key(&mach.volume)
            && !c.src.broken.contains(&format!("volume.{}", mach.volume))
        {
            c.value(
                &at("volume"),
                format!("machine `{name}` names undeclared volume `{}`", mach.volume),
                "no such volume",
                Some(did_you_mean(&mach.volume, names(&m.volume), "volume")),
            );
        }
        if mach.revision == 0 {
            c.value(
                &at("revision"),
                "revision must be a positive integer".into(),
                "zero",
                None,
            );
        }
        for (i, cloud) in mach.clouds.iter().enumerate() {
            if !m.cloud.contains_key(cloud) {
                c.value(
                    &["machine", name, "clouds", &i.to_string()],
                    format!("machine `{name}` names undeclared cloud `{cloud}`"),
                    "no such cloud",
                    Some(did_you_mean(cloud, names(&m.cloud), "cloud")),
                );
            }
        }
        c.source(&["machine", name, "source"], &mach.source, lock);
        if mach.kind == MachineKind::Disk {
            let arm = matches!(mach.arch.as_deref(), Some("aarch64" | "arm64"));
            let firmware = mach.vm.as_ref().map(|v| v.firmware).unwrap_or_default();
            if arm && firmware == Firmware::Bios {
                c.value(
                    &at("arch"),
                    format!("machine `{name}` is aarch64, which has no BIOS"),
                    "boots by UEFI only",
                    Some("set vm.firmware = \"uefi\" (AAVMF, from Debian's qemu-efi-aarch64) and put an EFI loader on the disk".into()),
                );
            }
            if mach.source.is_dir() {
                c.value(
                    &["machine", name, "source"],
                    format!(
                        "machine `{name}` is a disk image: its source is a file (raw or qcow2)"
                    ),
                    "a directory",
                    None,
                );
            }
        } else {
            for (table, present) in [
                ("vm", mach.vm.is_some()),
                ("console", mach.console.is_some()),
            ] {
                if present {
                    c.key(
                        &["machine", name, table],
                        format!("machine `{name}` is a root filesystem: `{table}` applies to disk machines"),
                        "only for kind = \"disk\"",
                        Some("set kind = \"disk\" for a bootable image, or drop the table".into()),
                    );
                }
            }
        }
        c.vm_and_console(&["machine", name], mach.vm.as_ref(), mach.console.as_ref());
        for (tc, t) in &mach.toolchain {
            c.name(&["machine", name, "toolchain", tc]);
            if !tc.is_empty() && tc.chars().all(|ch| ch.is_ascii_digit()) {
                c.key(&["machine", name, "toolchain", tc],
                    format!("toolchain `{tc}` is named like a revision"), "all digits",
                    Some("`<machine>-<digits>` is a revision in the buildos layout; give the toolchain a name with a letter".into()));
            }
            if t.bootstrap.is_empty() {
                c.value(
                    &["machine", name, "toolchain", tc, "bootstrap"],
                    "bootstrap command is empty".into(),
                    "empty",
                    None,
                );
            }
            c.duration(&["machine", name, "toolchain", tc, "timeout"], t.timeout);
        }
        if let Some(p) = &mach.promote {
            promote(c, m, name, p);
        }
    }
}

/// A netboot image's promotion gate: suites that exist and boot it.
fn promote_image(c: &mut Checker, m: &DesiredFile, name: &str, p: &Promote) {
    if p.after.is_empty() {
        c.value(
            &["image", name, "promote", "after"],
            "a promotion gate names at least one suite".into(),
            "empty",
            Some("name the suites new content must pass, or drop `promote`".into()),
        );
    }
    for (i, s) in p.after.iter().enumerate() {
        let at = ["image", name, "promote", "after", &i.to_string()];
        match m.suite.get(s) {
            None => c.value(
                &at,
                format!("image `{name}` is promoted after undeclared suite `{s}`"),
                "no such suite",
                Some(did_you_mean(s, names(&m.suite), "suite")),
            ),
            Some(suite) if !suite.images.iter().any(|x| x == name) => c.value(
                &at,
                format!("suite `{s}` does not boot image `{name}`"),
                "cannot gate this image",
                Some(format!(
                    "a gate suite lists `{name}` in `images` (executor = \"qemu\")"
                )),
            ),
            Some(_) => {}
        }
    }
}

/// A machine's promotion gate: suites that exist and test this machine
/// itself (its revision, not a toolchain snapshot or a cloud image of it).
fn promote(c: &mut Checker, m: &DesiredFile, name: &str, p: &Promote) {
    if p.after.is_empty() {
        c.value(
            &["machine", name, "promote", "after"],
            "a promotion gate names at least one suite".into(),
            "empty",
            Some("name the suites a new revision must pass, or drop `promote`".into()),
        );
    }
    for (i, s) in p.after.iter().enumerate() {
        let at = ["machine", name, "promote", "after", &i.to_string()];
        let Some(suite) = m.suite.get(s) else {
            c.value(
                &at,
                format!("machine `{name}` is promoted after undeclared suite `{s}`"),
                "no such suite",
                Some(did_you_mean(s, names(&m.suite), "suite")),
            );
            continue;
        };
        let why = if !suite.machines.iter().any(|x| x == name) {
            Some(format!("suite `{s}` does not run on machine `{name}`"))
        } else if suite.toolchain.is_some() {
            Some(format!(
                "suite `{s}` runs on a toolchain snapshot; a candidate is tested as the revision itself (toolchains are bootstrapped on it once it is current)"
            ))
        } else if suite.executor == Executor::Cloud {
            Some(format!(
                "suite `{s}` runs in the cloud, on a published image, not on the candidate revision"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            c.value(
                &at,
                why,
                "cannot gate this machine",
                Some(format!(
                    "a gate suite lists `{name}` in `machines`, with no toolchain, on the host, namespace or qemu executor"
                )),
            );
        }
    }
}

/// Each netboot image: path components, one TFTP directory per image, its files or source, its iPXE script.
pub(super) fn images(c: &mut Checker, m: &DesiredFile, lock: &Lockfile) {
    let mut targets: BTreeMap<(String, String, String, String, String), &str> = BTreeMap::new();
    for (name, img) in &m.image {
        if let Some(p) = &img.promote {
            promote_image(c, m, name, p);
        }
        for (f, v) in [
            ("arch", &img.arch),
            ("subarch", &img.subarch),
            ("release", &img.release),
            ("purpose", &img.purpose),
        ] {
            if let Err(why) = valid_name(v) {
                c.value(
                    &["image", name, f],
                    format!("image `{name}`: {f} `{v}` {why}"),
                    "not a path component",
                    Some("it becomes one directory of the TFTP path".into()),
                );
            }
        }
        let key = (
            img.root.clone(),
            img.arch.clone(),
            img.subarch.clone(),
            img.release.clone(),
            img.purpose.clone(),
        );
        if let Some(first) = targets.get(&key) {
            c.key(
                &["image", name],
                format!("images `{first}` and `{name}` publish into the same TFTP directory"),
                "same root/arch/subarch/release/purpose",
                Some("change the release or purpose of one of them".into()),
            );
        } else {
            targets.insert(key, name);
        }
        match (&img.source, img.files.is_empty()) {
            (Some(_), false) => c.key(
                &["image", name, "source"],
                format!("image `{name}` has both `source` and `files`"),
                "choose one",
                Some("use `files` for single files or `source` for one archive".into()),
            ),
            (None, true) => c.key(
                &["image", name],
                format!("image `{name}` has no `files` and no `source`"),
                "empty image",
                None,
            ),
            _ => {}
        }
        if let Some(s) = &img.source {
            c.source(&["image", name, "source"], s, lock);
        }
        for (f, s) in &img.files {
            if let Err(why) = valid_name(f) {
                c.key(
                    &["image", name, "files", f],
                    format!("file name `{f}` {why}"),
                    "bad file name",
                    None,
                );
            }
            c.source(&["image", name, "files", f], s, lock);
            if s.format.is_some() || s.strip_components.is_some() || s.is_dir() {
                c.value(
                    &["image", name, "files", f],
                    format!("image file `{f}` must be a single file (no `dir`, `format` or `strip_components`)"),
                    "not a single file",
                    Some("to unpack an archive into the image, use `source` instead of `files`".into()),
                );
            }
        }
        c.vm_and_console(&["image", name], img.vm.as_ref(), img.console.as_ref());
        if let Some(ipxe) = &img.ipxe {
            if !img.files.is_empty() {
                for (field, v) in [
                    ("kernel", Some(&ipxe.kernel)),
                    ("initrd", ipxe.initrd.as_ref()),
                ] {
                    if let Some(v) = v {
                        if !img.files.contains_key(v) {
                            c.value(
                                &["image", name, "ipxe", field],
                                format!("`{v}` is not one of the image's files"),
                                "unknown file",
                                None,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Each plugin: its executable name, version and source.
pub(super) fn plugins(c: &mut Checker, m: &DesiredFile, lock: &Lockfile) {
    for (name, p) in &m.plugin {
        if let Some(bin) = &p.bin {
            if let Err(why) = valid_name(bin) {
                c.value(
                    &["plugin", name, "bin"],
                    format!("bin `{bin}` {why}"),
                    "bad executable name",
                    None,
                );
            }
        }
        if p.version.trim().is_empty() {
            c.value(
                &["plugin", name, "version"],
                "version is empty".into(),
                "empty",
                None,
            );
        }
        c.source(&["plugin", name, "source"], &p.source, lock);
    }
}

/// Each cloud: upload parallelism and endpoints (a web identity token goes only to https or loopback).
pub(super) fn clouds(c: &mut Checker, m: &DesiredFile) {
    for (name, cl) in &m.cloud {
        let Some(p) = &cl.promote else { continue };
        if p.after.is_empty() {
            c.value(
                &["cloud", name, "promote", "after"],
                "a promotion gate names at least one suite".into(),
                "empty",
                Some("name the suites a new image must pass, or drop `promote`".into()),
            );
        }
        for (i, s) in p.after.iter().enumerate() {
            let at = ["cloud", name, "promote", "after", &i.to_string()];
            match m.suite.get(s) {
                None => c.value(
                    &at,
                    format!("cloud `{name}` is promoted after undeclared suite `{s}`"),
                    "no such suite",
                    Some(did_you_mean(s, names(&m.suite), "suite")),
                ),
                Some(suite)
                    if suite.executor != Executor::Cloud
                        || suite.cloud.as_deref() != Some(name.as_str()) =>
                {
                    c.value(
                        &at,
                        format!("suite `{s}` does not launch instances in cloud `{name}`"),
                        "cannot gate this cloud",
                        Some(format!(
                            "a gate suite has executor = \"cloud\" and cloud = \"{name}\""
                        )),
                    )
                }
                Some(_) => {}
            }
        }
    }
    for (name, cloud) in &m.cloud {
        if cloud
            .uploads_in_flight
            .is_some_and(|n| !(1..=64).contains(&n))
        {
            c.value(
                &["cloud", name, "uploads_in_flight"],
                "uploads_in_flight must be between 1 and 64".into(),
                "out of range",
                None,
            );
        }
        if let Some(e) = &cloud.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                c.value(
                    &["cloud", name, "endpoint"],
                    format!("endpoint `{e}` is not an http(s) URL"),
                    "bad URL",
                    None,
                );
            }
        }
        if let Some(e) = &cloud.sts_endpoint {
            if let Err(why) = sts_endpoint(e) {
                c.value(
                    &["cloud", name, "sts_endpoint"],
                    format!("sts_endpoint `{e}`: {why}"),
                    "refused",
                    Some(
                        "use https://, or http:// on 127.0.0.1 / ::1 / localhost for a local STS"
                            .into(),
                    ),
                );
            }
        }
    }
}
