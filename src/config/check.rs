//! Semantic checks over the merged model: references, names, sources, durations,
//! regexes, dates. Each problem is located at the offending value.

use std::collections::BTreeMap;
use std::path::Path;

use super::lockfile::Lockfile;
use super::model::{
    Console, DesiredFile, Executor, MachineKind, Source, SourceLocation, Suite, Vm,
};
use super::Sources;
use crate::diagnostic::Diagnostic;

pub(crate) fn check(
    m: &DesiredFile,
    src: &Sources,
    lock: &Lockfile,
    today: &str,
    allow_unpinned: bool,
) -> Vec<Diagnostic> {
    let mut c = Checker {
        src,
        out: Vec::new(),
        allow_unpinned,
    };

    match m.version {
        Some(1) => {}
        Some(v) => c.value(
            &["version"],
            format!("unsupported version {v}"),
            "unsupported",
            Some("this reconcile understands `version = 1`".into()),
        ),
        None => c.value(
            &["version"],
            "missing `version`".into(),
            "",
            Some("start the file with `version = 1`".into()),
        ),
    }

    // host selectors of every kind that has them
    let selectors = m
        .machine
        .iter()
        .map(|(n, x)| ("machine", n, &x.hosts))
        .chain(m.image.iter().map(|(n, x)| ("image", n, &x.hosts)))
        .chain(m.plugin.iter().map(|(n, x)| ("plugin", n, &x.hosts)))
        .chain(m.suite.iter().map(|(n, x)| ("suite", n, &x.hosts)));
    for (kind, name, hosts) in selectors {
        for (i, why) in super::hosts::check(hosts) {
            c.value(
                &[kind, name, "hosts", &i.to_string()],
                format!("{kind} `{name}`: invalid host selector {why}"),
                "not a host selector",
                Some("write a glob over host names (`build-*`), `label:KEY=VALUE`, or either with a leading `!`".into()),
            );
        }
    }

    if let Some(l) = m.settings.as_ref().and_then(|s| s.extract_limit) {
        if l.0 == 0 {
            c.value(
                &["settings", "extract_limit"],
                "extract_limit must be more than 0".into(),
                "zero",
                None,
            );
        }
    }

    for (kind, names) in [
        ("volume", keys(&m.volume)),
        ("machine", keys(&m.machine)),
        ("image", keys(&m.image)),
        ("plugin", keys(&m.plugin)),
        ("cloud", keys(&m.cloud)),
        ("check", keys(&m.check)),
        ("suite", keys(&m.suite)),
    ] {
        for n in names {
            c.name(&[kind, n]);
        }
    }

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
    }

    let mut targets: BTreeMap<(String, String, String, String, String), &str> = BTreeMap::new();
    for (name, img) in &m.image {
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

    for (name, chk) in &m.check {
        if let Err(e) = regex::Regex::new(&chk.regex) {
            c.value(
                &["check", name, "regex"],
                format!("invalid regex in check `{name}`"),
                &last_line(&e.to_string()),
                None,
            );
        }
        for (key, v, max) in [("count", chk.count, 1_000_000), ("lines", chk.lines, 1000)] {
            if v.is_some_and(|v| v == 0 || v > max) {
                c.value(
                    &["check", name, key],
                    format!("`{key}` must be between 1 and {max}"),
                    "out of range",
                    None,
                );
            }
        }
    }

    for (sname, suite) in &m.suite {
        c.suite_targets(m, sname, suite);
        for (i, mach) in suite.machines.iter().enumerate() {
            if !m.machine.contains_key(mach) && !c.src.broken.contains(&format!("machine.{mach}")) {
                c.value(
                    &["suite", sname, "machines", &i.to_string()],
                    format!("suite `{sname}` names undeclared machine `{mach}`"),
                    "no such machine",
                    Some(did_you_mean(mach, names(&m.machine), "machine")),
                );
            } else if let (Some(tc), Some(md)) = (&suite.toolchain, m.machine.get(mach)) {
                if !md.toolchain.contains_key(tc) {
                    c.value(
                        &["suite", sname, "toolchain"],
                        format!("machine `{mach}` has no toolchain `{tc}`"),
                        "no such toolchain",
                        Some(format!(
                            "declare [machine.{mach}.toolchain.{tc}] or drop `toolchain`"
                        )),
                    );
                }
            }
        }
        if suite.toolchain.is_some() && suite.machines.is_empty() {
            c.value(
                &["suite", sname, "toolchain"],
                format!("suite `{sname}` names a toolchain but no machines"),
                "no machine to take it from",
                None,
            );
        }
        if suite.parallel == Some(0) {
            c.value(
                &["suite", sname, "parallel"],
                "parallel must be at least 1".into(),
                "zero",
                None,
            );
        }
        for (tname, t) in &suite.test {
            c.name(&["suite", sname, "test", tname]);
            let at = |f: &'static str| ["suite", sname.as_str(), "test", tname.as_str(), f];
            if t.run.is_empty() {
                c.value(
                    &at("run"),
                    format!("test `{sname}.{tname}` has an empty `run`"),
                    "empty command",
                    None,
                );
            }
            c.duration(&at("timeout"), t.timeout);
            for (stream, list) in [
                ("stdout", &t.expect.stdout),
                ("stderr", &t.expect.stderr),
                ("console", &t.expect.console),
            ] {
                for (i, matcher) in list.iter().enumerate() {
                    if let Err(e) = &matcher.parsed {
                        let (matcher, e) = (&matcher.text, e.as_str());
                        c.value(
                            &[
                                "suite",
                                sname,
                                "test",
                                tname,
                                "expect",
                                stream,
                                &i.to_string(),
                            ],
                            format!("invalid matcher `{matcher}`"),
                            e,
                            Some(
                                "matchers are \"text\", \"!text\", \"/regex/\" or \"!/regex/\""
                                    .into(),
                            ),
                        );
                    }
                }
            }
            for (check, reason) in &t.skip_checks {
                if reason.trim().is_empty() {
                    c.value(
                        &["suite", sname, "test", tname, "skip_checks", check],
                        format!("suppressing check `{check}` needs a reason"),
                        "empty reason",
                        Some("say why, e.g. \"known noisy driver, tracker #123\"".into()),
                    );
                }
            }
            if t.retries.values().any(|n| *n > 100) {
                c.value(
                    &["suite", sname, "test", tname, "retries"],
                    "more than 100 retries of one class".into(),
                    "too many",
                    None,
                );
            }
        }
    }

    for (i, skip) in m.skip.iter().enumerate() {
        let idx = i.to_string();
        if let Err(e) = glob::Pattern::new(&skip.pattern) {
            c.value(
                &["skip", &idx, "pattern"],
                format!("invalid glob `{}`", skip.pattern),
                &e.to_string(),
                None,
            );
        }
        if let Some(until) = &skip.until {
            match until.date {
                Some(d) if until.time.is_none() => {
                    let date = format!("{:04}-{:02}-{:02}", d.year, d.month, d.day);
                    if date.as_str() < today {
                        c.value(&["skip", &idx, "until"], format!("skip entry for `{}` expired on {date}", skip.pattern),
                            "in the past", Some("fix the test and remove the entry, or move `until` forward with a reason".into()));
                    }
                }
                _ => c.value(
                    &["skip", &idx, "until"],
                    "`until` must be a date (YYYY-MM-DD)".into(),
                    "not a date",
                    None,
                ),
            }
        }
    }

    if let Some(run) = &m.run {
        for (i, s) in run.suites.iter().enumerate() {
            if !m.suite.contains_key(s) {
                c.value(
                    &["run", "suites", &i.to_string()],
                    format!("[run] names undeclared suite `{s}`"),
                    "no such suite",
                    Some(did_you_mean(s, names(&m.suite), "suite")),
                );
            }
        }
        for (i, p) in run.tests.iter().enumerate() {
            if let Err(e) = glob::Pattern::new(p) {
                c.value(
                    &["run", "tests", &i.to_string()],
                    format!("invalid glob `{p}`"),
                    &e.to_string(),
                    None,
                );
            }
        }
    }
    c.out
}

struct Checker<'a> {
    src: &'a Sources,
    out: Vec<Diagnostic>,
    allow_unpinned: bool,
}

impl Checker<'_> {
    /// What a suite runs on must suit its executor: disk machines and netboot
    /// images boot only in QEMU, root filesystems never do.
    fn suite_targets(&mut self, m: &DesiredFile, sname: &str, suite: &Suite) {
        let qemu = suite.executor == Executor::Qemu;
        let executor = suite.executor.name();
        for (i, mach) in suite.machines.iter().enumerate() {
            let Some(md) = m.machine.get(mach) else {
                continue;
            };
            let path = ["suite", sname, "machines", &i.to_string()];
            match (md.kind, qemu) {
                (MachineKind::Disk, false) if suite.executor != Executor::Cloud => self.value(
                    &path,
                    format!("machine `{mach}` is a disk image; the {executor} executor cannot run it"),
                    "boots only in QEMU",
                    Some("set executor = \"qemu\" on the suite".into()),
                ),
                (MachineKind::Rootfs, true) => self.value(
                    &path,
                    format!("machine `{mach}` is a root filesystem; QEMU boots disk machines"),
                    "not bootable",
                    Some("use executor = \"namespace\" (or \"host\"), or give the machine kind = \"disk\"".into()),
                ),
                _ => {}
            }
        }
        for (i, img) in suite.images.iter().enumerate() {
            let path = ["suite", sname, "images", &i.to_string()];
            match m.image.get(img) {
                None if !self.src.broken.contains(&format!("image.{img}")) => self.value(
                    &path,
                    format!("suite `{sname}` names undeclared image `{img}`"),
                    "no such image",
                    Some(did_you_mean(img, names(&m.image), "image")),
                ),
                Some(d) if d.ipxe.is_none() => self.value(
                    &path,
                    format!("image `{img}` has no `ipxe` table, so nothing boots it over PXE"),
                    "not bootable",
                    Some(format!(
                        "declare [image.{img}.ipxe] with the kernel, initrd and cmdline"
                    )),
                ),
                _ => {}
            }
            if !qemu {
                self.value(
                    &path,
                    format!(
                        "suite `{sname}` boots netboot images, which only the qemu executor can do"
                    ),
                    "needs executor = \"qemu\"",
                    Some("set executor = \"qemu\" on the suite".into()),
                );
            }
        }
        let cloud_executor = suite.executor == Executor::Cloud;
        match (&suite.cloud, cloud_executor) {
            (None, true) => self.key(
                &["suite", sname],
                format!("suite `{sname}` uses the cloud executor but names no `cloud`"),
                "which cloud?",
                Some(format!(
                    "add cloud = \"<name>\" (declared: {})",
                    names(&m.cloud).collect::<Vec<_>>().join(", ")
                )),
            ),
            (Some(cloud), true) => {
                if !m.cloud.contains_key(cloud) {
                    self.value(
                        &["suite", sname, "cloud"],
                        format!("suite `{sname}` names undeclared cloud `{cloud}`"),
                        "no such cloud",
                        Some(did_you_mean(cloud, names(&m.cloud), "cloud")),
                    );
                }
                for (i, mach) in suite.machines.iter().enumerate() {
                    if m.machine
                        .get(mach)
                        .is_some_and(|md| !md.clouds.contains(cloud))
                    {
                        self.value(
                            &["suite", sname, "machines", &i.to_string()],
                            format!("machine `{mach}` is not published to cloud `{cloud}`, so no instance can boot it there"),
                            "not published there",
                            Some(format!("add \"{cloud}\" to machine.{mach}.clouds")),
                        );
                    }
                }
                if suite.machines.is_empty() {
                    self.key(
                        &["suite", sname],
                        format!("suite `{sname}` uses the cloud executor but names no `machines`"),
                        "nothing to launch",
                        None,
                    );
                }
                if suite.toolchain.is_some() {
                    self.value(
                        &["suite", sname, "toolchain"],
                        format!("suite `{sname}` launches published revisions; toolchain snapshots are not published"),
                        "not in the cloud",
                        Some("drop `toolchain`, or run the suite with executor = \"qemu\"".into()),
                    );
                }
            }
            (Some(_), false) => self.value(
                &["suite", sname, "cloud"],
                format!("suite `{sname}` names a cloud but runs with the {executor} executor"),
                "used only by executor = \"cloud\"",
                Some("set executor = \"cloud\", or drop `cloud`".into()),
            ),
            (None, false) => {}
        }
        if suite.instance_type.is_some() && !cloud_executor {
            self.value(
                &["suite", sname, "instance_type"],
                format!("suite `{sname}` sets instance_type but runs with the {executor} executor"),
                "used only by executor = \"cloud\"",
                Some("set executor = \"cloud\", or drop `instance_type`".into()),
            );
        }
        if qemu && suite.machines.is_empty() && suite.images.is_empty() {
            self.key(
                &["suite", sname],
                format!(
                    "suite `{sname}` uses the qemu executor but names no `machines` or `images`"
                ),
                "nothing to boot",
                None,
            );
        }
        if !suite.images.is_empty() && suite.toolchain.is_some() {
            self.value(
                &["suite", sname, "toolchain"],
                format!("suite `{sname}` boots images, which have no toolchains"),
                "not for images",
                None,
            );
        }
    }

    /// The `vm` and `console` tables of a machine or image at `at`.
    fn vm_and_console(&mut self, at: &[&str], vm: Option<&Vm>, console: Option<&Console>) {
        let path = |tail: &[&str]| -> Vec<String> {
            at.iter().chain(tail).map(|s| s.to_string()).collect()
        };
        if let Some(vm) = vm {
            if vm.cpus == Some(0) {
                let p = path(&["vm", "cpus"]);
                self.value(&refs(&p), "cpus must be at least 1".into(), "zero", None);
            }
            if let Some(f) = vm.tcg_timeout_factor {
                if !(f.is_finite() && (0.1..=1000.0).contains(&f)) {
                    let p = path(&["vm", "tcg_timeout_factor"]);
                    self.value(
                        &refs(&p),
                        format!("tcg_timeout_factor {f} is out of range"),
                        "between 0.1 and 1000",
                        None,
                    );
                }
            }
        }
        if let Some(c) = console {
            for (key, re) in [("ready", &c.ready), ("prompt", &c.prompt)] {
                if let Some(Err(e)) = re.as_deref().map(regex::Regex::new) {
                    let p = path(&["console", key]);
                    self.value(
                        &refs(&p),
                        format!("invalid regex in console.{key}"),
                        &last_line(&e.to_string()),
                        None,
                    );
                }
            }
            if c.prompt.as_deref() == Some("") {
                let p = path(&["console", "prompt"]);
                self.value(
                    &refs(&p),
                    "an empty prompt matches anything".into(),
                    "empty",
                    None,
                );
            }
            for (key, d) in [
                ("boot_timeout", c.boot_timeout),
                ("stall_timeout", c.stall_timeout),
            ] {
                let p = path(&["console", key]);
                self.duration(&refs(&p), d);
            }
        }
    }

    fn value(&mut self, path: &[&str], msg: String, label: &str, help: Option<String>) {
        self.out.push(self.src.at(path, false, msg, label, help));
    }

    fn key(&mut self, path: &[&str], msg: String, label: &str, help: Option<String>) {
        self.out.push(self.src.at(path, true, msg, label, help));
    }

    fn name(&mut self, path: &[&str]) {
        let n = path[path.len() - 1];
        if let Err(why) = valid_name(n) {
            self.key(
                path,
                format!("name `{n}` {why}"),
                "invalid name",
                Some("names become file names: use letters, digits, `-`, `_` and `.`".into()),
            );
        }
    }

    /// A duration is more than zero and at most 30 days (longer is a typo, and
    /// multiplied by a TCG factor it must still fit).
    fn duration(&mut self, path: &[&str], d: Option<std::time::Duration>) {
        if d.is_some_and(|d| d.is_zero() || d > MAX_DURATION) {
            self.value(
                path,
                "a duration must be more than 0 and at most 30 days".into(),
                "out of range",
                None,
            );
        }
    }

    fn source(&mut self, path: &[&str], s: &Source, lock: &Lockfile) {
        if let Some(sha) = &s.sha256 {
            if !is_sha256(sha) {
                let mut p = path.to_vec();
                p.push("sha256");
                self.value(
                    &p,
                    format!("malformed sha256 `{sha}`"),
                    "not 64 hex digits",
                    Some("`sha256sum FILE` prints the right value".into()),
                );
            }
        }
        let local = match &s.location {
            SourceLocation::Path(p) => Some(("path", p.as_str())),
            SourceLocation::Dir(p) => Some(("dir", p.as_str())),
            SourceLocation::Url(u) => u.strip_prefix("file://").map(|p| ("url", p)),
        };
        if let Some((key, p)) = local.filter(|(_, p)| kernel_view(p)) {
            let mut at = path.to_vec();
            at.push(key);
            self.value(
                &at,
                format!("`{p}` is the kernel's view of a process or device, not a file to install"),
                "not a source",
                Some("a source is a file or directory of your own (/proc, /sys and /dev are never read)".into()),
            );
        }
        if let Some(url) = s.url() {
            let mut p = path.to_vec();
            p.push("url");
            if !(url.starts_with("http://")
                || url.starts_with("https://")
                || url.starts_with("file://"))
            {
                self.value(
                    &p,
                    format!("unsupported URL `{url}`"),
                    "not http, https or file",
                    Some("use an http://, https:// or file:// URL, or a `path` source".into()),
                );
            } else if s.sha256.is_none() && lock.sha256_for(url).is_none() && !self.allow_unpinned {
                self.value(
                    &p,
                    "a remote source needs a sha256".into(),
                    "no sha256",
                    Some(
                        "add `sha256 = \"…\"`, or run `reconcile lock` to pin it in reconcile.lock"
                            .into(),
                    ),
                );
            }
        }
        if s.format == Some(crate::config::model::ArchiveFormat::BtrfsSend)
            && path.first() != Some(&"machine")
        {
            let mut p = path.to_vec();
            p.push("format");
            self.value(
                &p,
                "a btrfs send stream is received as a machine revision".into(),
                "machines only",
                Some("use it as a `[machine.*]` source on a btrfs volume".into()),
            );
        }
    }
}

/// Where a web identity token may be sent: an https URL, or plain http to a
/// loopback address only (the token is a credential).
pub fn sts_endpoint(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("not an http(s) URL".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "plain http to {host}, which is not a loopback address: the token would cross the network unencrypted"
        ))
    }
}

/// A path in /proc, /sys or /dev (reconcile's own environment, a device): never a source.
pub fn kernel_view(p: &str) -> bool {
    let p = Path::new(p);
    ["/proc", "/sys", "/dev"].iter().any(|k| p.starts_with(k))
}

/// The longest duration the file may name (a timeout of centuries is a typo).
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

fn refs(p: &[String]) -> Vec<&str> {
    p.iter().map(String::as_str).collect()
}

fn names<T>(m: &BTreeMap<String, T>) -> impl ExactSizeIterator<Item = &str> + Clone {
    m.keys().map(String::as_str)
}

fn keys<T>(m: &BTreeMap<String, T>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

/// Names become path components: no `/`, no `..`, no leading `.`, no control characters.
pub fn valid_name(n: &str) -> Result<(), &'static str> {
    if n.is_empty() {
        Err("is empty")
    } else if n.contains('/') {
        Err("contains `/`")
    } else if n.contains("..") {
        Err("contains `..`")
    } else if n.starts_with('.') {
        Err("starts with `.`")
    } else if n.chars().any(|c| c.is_control() || c == '\\') {
        Err("contains a control character or backslash")
    } else {
        Ok(())
    }
}

pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Regex errors end with the line that says what is wrong.
fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").trim().to_string()
}

/// A hint naming a close declared name and what is declared. It looks at a
/// bounded number of names, so a file with thousands of both names and
/// mistakes stays linear to check.
fn did_you_mean<'k>(
    wanted: &str,
    known: impl ExactSizeIterator<Item = &'k str> + Clone,
    what: &str,
) -> String {
    const LOOK: usize = 256;
    const LIST: usize = 10;
    if known.len() == 0 {
        return format!("no {what} is declared; declare [{what}.{wanted}]");
    }
    let b = wanted.to_lowercase();
    let close = known.clone().take(LOOK).find(|k| {
        let a = k.to_lowercase();
        a.contains(&b) || b.contains(&a)
    });
    let mut listed = known.clone().take(LIST).collect::<Vec<_>>().join(", ");
    if known.len() > LIST {
        listed.push_str(&format!(", … ({} in all)", known.len()));
    }
    match close {
        Some(k) => format!("did you mean `{k}`? declared: {listed}"),
        None => format!("declared: {listed}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("linux-gcc_12.4").is_ok());
        assert!(valid_name("a/b").is_err());
        assert!(valid_name("a..b").is_err());
        assert!(valid_name(".hidden").is_err());
        assert!(valid_name("").is_err());
    }

    #[test]
    fn a_web_identity_token_goes_over_http_only_to_loopback() {
        assert!(sts_endpoint("https://sts.us-east-1.amazonaws.com").is_ok());
        assert!(sts_endpoint("http://127.0.0.1:5000").is_ok());
        assert!(sts_endpoint("http://[::1]:5000/").is_ok());
        assert!(sts_endpoint("http://localhost/").is_ok());
        assert!(sts_endpoint("http://10.0.0.8:5000").is_err());
        assert!(sts_endpoint("http://127.0.0.1.evil.example:80").is_err());
        assert!(sts_endpoint("ftp://x").is_err());
    }

    #[test]
    fn sha256_format() {
        assert!(is_sha256(&"a".repeat(64)));
        assert!(is_sha256(&"A".repeat(64)));
        assert!(!is_sha256(&"a".repeat(63)));
        assert!(!is_sha256(&"g".repeat(64)));
    }
}
