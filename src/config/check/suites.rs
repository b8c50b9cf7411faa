//! The test plan's tables: console checks, suites and their tests (what each
//! runs on must suit its executor), skips, `[run]`.

use std::collections::BTreeMap;

use super::super::model::{DesiredFile, Executor, MachineKind, Suite, Transport, Upload};
use super::{did_you_mean, last_line, names, Checker};

/// Each declared console check: its regex and counts.
pub(super) fn checks(c: &mut Checker, m: &DesiredFile) {
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
}

/// A key below `at` (a table's path) for a diagnostic.
fn under<'a>(at: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    at.iter().chain(rest).copied().collect()
}

/// User data is given once: inline or from a file, and the file is there.
fn user_data(c: &mut Checker, at: &[&str], inline: &Option<String>, file: &Option<String>) {
    let key = under(at, &["user_data_file"]);
    if inline.is_some() && file.is_some() {
        c.value(
            &key,
            "give `user_data` or `user_data_file`, not both".into(),
            "both given",
            None,
        );
    } else if let Some(f) = file
        .as_deref()
        .filter(|f| !std::path::Path::new(f).is_file())
    {
        c.value(
            &key,
            format!("user data file {f} does not exist"),
            "no such file",
            None,
        );
    }
}

/// Each suite: what it runs on, its toolchain and parallelism, then its tests.
pub(super) fn suites(c: &mut Checker, m: &DesiredFile) {
    for (name, mach) in &m.machine {
        user_data(c, &["machine", name], &mach.user_data, &mach.user_data_file);
    }
    for (sname, suite) in &m.suite {
        user_data(
            c,
            &["suite", sname],
            &suite.user_data,
            &suite.user_data_file,
        );
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
        let channel = uses_channel(m, suite);
        let suite_io = Io {
            env: &suite.env,
            cwd: &suite.cwd,
            upload: &suite.upload,
            collect: &suite.collect,
        };
        io(c, &["suite", sname], &suite_io, &channel);
        for (tname, t) in &suite.test {
            let test_io = Io {
                env: &t.env,
                cwd: &t.cwd,
                upload: &t.upload,
                collect: &t.collect,
            };
            io(c, &["suite", sname, "test", tname], &test_io, &channel);
        }
        tests(c, sname, suite);
        cluster(c, m, sname, suite);
    }
}

/// Whether a suite's commands go through a command channel (the `qemu`
/// executor with `transport = "agent"` or `"ssh"` on everything it boots), and if not, why.
fn uses_channel(m: &DesiredFile, suite: &Suite) -> Result<(), String> {
    if suite.executor != Executor::Qemu {
        return Err(format!(
            "files are copied in and out of VMs only (executor = \"qemu\"; this suite's is `{}`)",
            suite.executor.name()
        ));
    }
    let vms = suite
        .machines
        .iter()
        .filter_map(|n| m.machine.get(n).map(|x| (n, x.vm.as_ref())))
        .chain(
            suite
                .images
                .iter()
                .filter_map(|n| m.image.get(n).map(|x| (n, x.vm.as_ref()))),
        );
    for (name, vm) in vms {
        if vm.is_some_and(|v| v.transport == Transport::Console) {
            return Err(format!(
                "`{name}` has vm.transport = \"console\": files travel over the command channel (transport = \"agent\" or \"ssh\")"
            ));
        }
    }
    Ok(())
}

/// What a suite or test adds to how its commands run.
struct Io<'a> {
    env: &'a BTreeMap<String, String>,
    cwd: &'a Option<String>,
    upload: &'a BTreeMap<String, Upload>,
    collect: &'a [String],
}

/// `env` names are shell names; `upload` and `collect` name absolute guest
/// paths, need a command channel, and uploads have octal modes.
fn io(c: &mut Checker, at: &[&str], io: &Io, channel: &Result<(), String>) {
    for name in io.env.keys() {
        let shell_name = name
            .chars()
            .next()
            .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
            && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
        if !shell_name {
            c.value(
                &under(at, &["env", name]),
                format!("`{name}` is not an environment variable name"),
                "not a name",
                Some("use letters, digits and `_`, not starting with a digit".into()),
            );
        }
    }
    if io
        .cwd
        .as_deref()
        .is_some_and(|d| d.is_empty() || d.contains('\0'))
    {
        c.value(
            &under(at, &["cwd"]),
            "`cwd` must name a directory".into(),
            "empty",
            None,
        );
    }
    for (guest, u) in io.upload {
        if !guest.starts_with('/') || guest.ends_with('/') || guest.split('/').any(|p| p == "..") {
            c.value(
                &under(at, &["upload", guest]),
                format!("upload destination `{guest}` must be an absolute file path in the guest"),
                "not an absolute file path",
                None,
            );
        }
        if let Err(why) = u.mode_bits() {
            c.value(
                &under(at, &["upload", guest, "mode"]),
                why,
                "not a mode",
                None,
            );
        }
        if let Err(why) = channel {
            c.value(
                &under(at, &["upload", guest]),
                format!("cannot upload `{guest}`: {why}"),
                "no command channel",
                None,
            );
        }
    }
    for (i, pattern) in io.collect.iter().enumerate() {
        let idx = i.to_string();
        let k = under(at, &["collect", &idx]);
        if !pattern.starts_with('/') {
            c.value(
                &k,
                format!("collect pattern `{pattern}` must be an absolute guest path"),
                "not absolute",
                None,
            );
        } else if let Err(e) = glob::Pattern::new(pattern) {
            c.value(
                &k,
                format!("invalid glob `{pattern}`"),
                &e.to_string(),
                None,
            );
        } else if let Err(why) = channel {
            c.value(
                &k,
                format!("cannot collect `{pattern}`: {why}"),
                "no command channel",
                None,
            );
        }
    }
}

/// A suite's tests: commands, timeouts, matchers, suppressed checks, retries.
fn tests(c: &mut Checker, sname: &str, suite: &Suite) {
    for (tname, t) in &suite.test {
        c.name(&["suite", sname, "test", tname]);
        let at = |f: &'static str| ["suite", sname, "test", tname.as_str(), f];
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
                            "matchers are \"text\", \"!text\", \"/regex/\" or \"!/regex/\"".into(),
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
        on_steps(c, sname, tname, suite, t);
    }
}

/// The most machines one test may ask for.
pub const MAX_CLUSTER: u32 = 16;

/// A suite's `cluster`: qemu, disk machines, at most [`MAX_CLUSTER`] nodes.
fn cluster(c: &mut Checker, m: &DesiredFile, sname: &str, suite: &Suite) {
    let Some(n) = suite.cluster else {
        return;
    };
    let at = ["suite", sname, "cluster"];
    if n == 0 || n > MAX_CLUSTER {
        c.value(
            &at,
            format!("suite `{sname}`: cluster must be between 1 and {MAX_CLUSTER}"),
            "out of range",
            None,
        );
    }
    if suite.executor != Executor::Qemu {
        c.value(
            &at,
            format!(
                "suite `{sname}` asks for a cluster but runs with the {} executor",
                suite.executor.name()
            ),
            "clusters are VMs",
            Some("set executor = \"qemu\", or drop `cluster`".into()),
        );
    }
    if !suite.images.is_empty() {
        c.value(
            &at,
            format!("suite `{sname}` boots netboot images; a cluster is made of disk machines"),
            "not for images",
            Some("list disk machines in `machines`, or drop `cluster`".into()),
        );
    }
    for name in &suite.machines {
        if m.machine
            .get(name)
            .is_some_and(|x| x.kind != MachineKind::Disk)
        {
            c.value(
                &at,
                format!("machine `{name}` of suite `{sname}` is a root filesystem; a cluster is made of disk machines (kind = \"disk\")"),
                "not a disk machine",
                None,
            );
        }
    }
}

/// A test's `on` steps: node indices of its suite's cluster, commands that
/// are not empty, link faults on nodes that exist.
fn on_steps(
    c: &mut Checker,
    sname: &str,
    tname: &str,
    suite: &Suite,
    t: &super::super::model::Test,
) {
    use super::super::model::OnStep;
    let nodes = suite.cluster.unwrap_or(0);
    for (key, steps) in &t.on {
        let at = ["suite", sname, "test", tname, "on", key.as_str()];
        let index = key
            .parse::<u32>()
            .ok()
            .filter(|_| key == "0" || !key.starts_with('0'));
        match index {
            _ if suite.cluster.is_none() => {
                c.key(
                    &at,
                    format!("test `{sname}.{tname}` runs steps `on` node {key}, but suite `{sname}` has no cluster"),
                    "no cluster",
                    Some(format!("set cluster = N on suite `{sname}` (executor = \"qemu\")")),
                );
                continue;
            }
            None => {
                c.key(
                    &at,
                    format!("`on.{key}`: a node is named by its index (0, 1, …)"),
                    "not a node index",
                    None,
                );
                continue;
            }
            Some(i) if i >= nodes => {
                c.key(
                    &at,
                    format!(
                        "`on.{key}`: suite `{sname}` has {nodes} nodes (0 to {})",
                        nodes.saturating_sub(1)
                    ),
                    "no such node",
                    None,
                );
                continue;
            }
            Some(_) => {}
        }
        for step in steps.steps() {
            match step {
                OnStep::Command(argv) if argv.is_empty() => c.value(
                    &at,
                    format!("test `{sname}.{tname}` has an empty command on node {key}"),
                    "empty command",
                    None,
                ),
                OnStep::Link(l) if l.node.is_some_and(|n| n >= nodes) => c.value(
                    &at,
                    format!(
                        "`on.{key}`: link fault on node {}, but suite `{sname}` has {nodes} nodes",
                        l.node.unwrap_or_default()
                    ),
                    "no such node",
                    None,
                ),
                _ => {}
            }
        }
    }
}

/// Each skip entry: a valid glob, and an `until` date not in the past.
pub(super) fn skips(c: &mut Checker, m: &DesiredFile, today: &str) {
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
}

/// `[run]`: declared suites, valid globs.
pub(super) fn run(c: &mut Checker, m: &DesiredFile) {
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
        self.suite_cloud(m, sname, suite);
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

    /// A suite's cloud: named exactly when the executor is `cloud`, declared,
    /// with its machines published there.
    fn suite_cloud(&mut self, m: &DesiredFile, sname: &str, suite: &Suite) {
        let executor = suite.executor.name();
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
        if suite.fresh.is_some() && suite.executor != Executor::Qemu {
            self.value(
                &["suite", sname, "fresh"],
                format!("suite `{sname}` sets fresh but runs with the {executor} executor"),
                "used only by executor = \"qemu\"",
                Some("set executor = \"qemu\", or drop `fresh`".into()),
            );
        }
    }
}
