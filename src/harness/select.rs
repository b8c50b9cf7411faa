//! Which tests exist (from `[suite.S.test.T]` and from executables in a
//! suite's `dir`) and which of them run: glob patterns, tags, required tags,
//! architectures, distros, platforms, version ranges and the `[[skip]]` list.
//! Every test left out carries the reason, for `test --list --explain`.

use crate::config::model::{Executor, Image, Machine, Test, Volume};
use crate::config::Desired;
use crate::error::{Error, Result};

/// What a test runs on, resolved from the file once, when the tests are
/// found: the run, the notes and the provisioner read these, never the
/// model by name again.
#[derive(Debug, Clone, Copy)]
pub enum On<'d> {
    /// No machine: the host itself.
    Host,
    Machine {
        name: &'d str,
        machine: &'d Machine,
        volume: &'d Volume,
    },
    /// A netboot image booted over PXE instead of a machine.
    Image { name: &'d str, image: &'d Image },
}

impl<'d> On<'d> {
    pub fn machine_name(&self) -> Option<&'d str> {
        match self {
            On::Machine { name, .. } => Some(name),
            _ => None,
        }
    }

    pub fn image_name(&self) -> Option<&'d str> {
        match self {
            On::Image { name, .. } => Some(name),
            _ => None,
        }
    }

    pub fn machine(&self) -> Option<&'d Machine> {
        match self {
            On::Machine { machine, .. } => Some(machine),
            _ => None,
        }
    }

    pub fn image(&self) -> Option<&'d Image> {
        match self {
            On::Image { image, .. } => Some(image),
            _ => None,
        }
    }
}

/// One test on one machine (or image, or the host).
#[derive(Debug, Clone)]
pub struct TestCase<'d> {
    /// `suite.test`, or `suite.test[machine]` when the suite has several machines or images.
    pub name: String,
    pub suite: String,
    pub on: On<'d>,
    pub toolchain: Option<String>,
    pub executor: Executor,
    /// Nodes each attempt gets (`suite.cluster`); none: one machine, no cluster network.
    pub cluster: Option<u32>,
    pub spec: Test,
}

/// What the skip list says about a selected test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SkipEntry {
    pub reason: String,
    /// Run it, but a failure only warns.
    pub warn: bool,
}

#[derive(Debug, Clone)]
pub struct Selected<'d> {
    pub case: TestCase<'d>,
    pub skip: Option<SkipEntry>,
}

#[derive(Debug, Default)]
pub struct Selection<'d> {
    pub selected: Vec<Selected<'d>>,
    /// (name, why it is not selected)
    pub excluded: Vec<(String, String)>,
}

/// `test --list --json`: the selected tests, and (with `--explain`) the others with why.
#[derive(Debug, serde::Serialize)]
pub struct Listing<'a> {
    pub format_version: u32,
    pub selected: Vec<Listed<'a>>,
    pub excluded: Vec<Excluded<'a>>,
}

#[derive(Debug, serde::Serialize)]
pub struct Listed<'a> {
    pub name: &'a str,
    pub suite: &'a str,
    pub machine: Option<&'a str>,
    pub skip: Option<&'a SkipEntry>,
}

#[derive(Debug, serde::Serialize)]
pub struct Excluded<'a> {
    pub name: &'a str,
    pub reason: &'a str,
}

impl Selection<'_> {
    pub fn listing(&self, explain: bool) -> Listing<'_> {
        Listing {
            format_version: 1,
            selected: self
                .selected
                .iter()
                .map(|s| Listed {
                    name: &s.case.name,
                    suite: &s.case.suite,
                    machine: s.case.on.machine_name(),
                    skip: s.skip.as_ref(),
                })
                .collect(),
            excluded: if explain {
                self.excluded
                    .iter()
                    .map(|(n, r)| Excluded { name: n, reason: r })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub patterns: Vec<String>,
    pub suites: Vec<String>,
    /// `T` requires the tag, `!T` excludes it.
    pub tags: Vec<String>,
    /// Exact names (from `--rerun-failed`); patterns and tags are ignored then.
    pub names: Option<Vec<String>>,
    /// Only this share of what the rest selects (`--partition`).
    pub partition: Option<Partition>,
}

/// `--partition hash:K/N` or `count:K/N`, with cargo-nextest's syntax and
/// meaning: of the selected tests, partition K of N takes those whose name
/// hashes to K (`hash`: stable across runs, machines and changes to the
/// selection — a test stays in its partition when others are added), or every
/// N-th test in name order starting with the K-th (`count`: even shares).
/// Every selected test is in exactly one of the N partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    Hash { k: u64, n: u64 },
    Count { k: u64, n: u64 },
}

impl std::str::FromStr for Partition {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Partition, String> {
        let usage = || format!("`{s}`: write hash:K/N or count:K/N with 1 ≤ K ≤ N (e.g. hash:1/3)");
        let (kind, kn) = s.split_once(':').ok_or_else(usage)?;
        let (k, n) = kn.split_once('/').ok_or_else(usage)?;
        let (k, n): (u64, u64) = (
            k.parse().map_err(|_| usage())?,
            n.parse().map_err(|_| usage())?,
        );
        if k == 0 || n == 0 || k > n {
            return Err(usage());
        }
        match kind {
            "hash" => Ok(Partition::Hash { k, n }),
            "count" => Ok(Partition::Count { k, n }),
            _ => Err(usage()),
        }
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partition::Hash { k, n } => write!(f, "hash:{k}/{n}"),
            Partition::Count { k, n } => write!(f, "count:{k}/{n}"),
        }
    }
}

impl Partition {
    /// The partition (1-based) of the `index`-th selected test named `name`.
    pub fn of(&self, index: usize, name: &str) -> u64 {
        match self {
            Partition::Hash { n, .. } => {
                use sha2::Digest;
                let d = sha2::Sha256::digest(name.as_bytes());
                u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) % n + 1
            }
            Partition::Count { n, .. } => index as u64 % n + 1,
        }
    }

    fn k(&self) -> u64 {
        match self {
            Partition::Hash { k, .. } | Partition::Count { k, .. } => *k,
        }
    }

    /// Keep this partition's tests; the others are excluded, saying where they went.
    pub fn split(&self, sel: &mut Selection<'_>) {
        let all = std::mem::take(&mut sel.selected);
        for (i, s) in all.into_iter().enumerate() {
            let p = self.of(i, &s.case.name);
            if p == self.k() {
                sel.selected.push(s);
            } else {
                let n = match self {
                    Partition::Hash { n, .. } | Partition::Count { n, .. } => n,
                };
                sel.excluded.push((
                    s.case.name.clone(),
                    format!("in partition {p} of {n}, not {self}"),
                ));
            }
        }
    }
}

impl Filters {
    /// The `[run]` section (the test plan of `apply` and `watch`); None when it names nothing.
    pub fn from_run(desired: &Desired) -> Option<Filters> {
        let run = desired.model.run.as_ref()?;
        if run.suites.is_empty() && run.tests.is_empty() {
            return None;
        }
        Some(Filters {
            patterns: run.tests.clone(),
            suites: run.suites.clone(),
            tags: run.tags.clone(),
            names: None,
            partition: None,
        })
    }
}

/// Every test the file declares, expanded per machine.
pub fn discover(desired: &Desired) -> Result<Vec<TestCase<'_>>> {
    let machine = |name: &str| -> Result<On<'_>> {
        let (name, machine, volume) = desired.machine_on_volume(name)?;
        Ok(On::Machine {
            name,
            machine,
            volume,
        })
    };
    let image = |name: &str| -> Result<On<'_>> {
        let (name, image) = desired.image(name)?;
        Ok(On::Image { name, image })
    };
    let mut out = Vec::new();
    for (sname, suite) in &desired.model.suite {
        let mut tests: Vec<(String, Test)> = suite
            .test
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        // read (and checked) with the file
        if let Some(found) = desired.dir_tests.get(sname) {
            tests.extend(found.iter().cloned());
        }
        // each test runs on every machine and every image of its suite (or once, on the host)
        let mut targets: Vec<On<'_>> = suite
            .machines
            .iter()
            .map(|m| machine(m))
            .chain(suite.images.iter().map(|i| image(i)))
            .collect::<Result<_>>()?;
        if targets.is_empty() {
            targets.push(On::Host);
        }
        for (tname, spec) in tests {
            for on in &targets {
                let name = match (on.machine_name().or(on.image_name()), targets.len()) {
                    (Some(t), n) if n > 1 => format!("{sname}.{tname}[{t}]"),
                    _ => format!("{sname}.{tname}"),
                };
                out.push(TestCase {
                    name,
                    suite: sname.clone(),
                    on: *on,
                    toolchain: suite.toolchain.clone(),
                    executor: suite.executor,
                    cluster: suite.cluster,
                    spec: spec.clone(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `["x86_64", "!arm64"]` against a value: None when allowed, else why not.
fn list_filter(what: &str, list: &[String], value: Option<&str>) -> Option<String> {
    let (exclude, include): (Vec<&String>, Vec<&String>) =
        list.iter().partition(|s| s.starts_with('!'));
    if let Some(v) = value {
        if exclude.iter().any(|x| &x[1..] == v) {
            return Some(format!("{what} {v} is excluded"));
        }
    }
    if include.is_empty() {
        return None;
    }
    match value {
        Some(v) if include.iter().any(|x| x.as_str() == v) => None,
        Some(v) => Some(format!(
            "{what} {v} is not one of {}",
            include
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => Some(format!(
            "the machine declares no {what}, the test needs one of {}",
            include
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Compare dotted versions numerically where both parts are numbers (`12.10` > `12.9`).
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| {
        s.split(['.', '-', '_', '~'])
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let (x, y) = (
            pa.get(i).map(String::as_str).unwrap_or("0"),
            pb.get(i).map(String::as_str).unwrap_or("0"),
        );
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    std::cmp::Ordering::Equal
}

pub fn select<'d>(desired: &'d Desired, filters: &Filters) -> Result<Selection<'d>> {
    let cases = discover(desired)?;
    if filters.names.is_none() {
        unknown_selectors(desired, &cases, filters)?;
    }
    let patterns: Vec<(String, glob::Pattern)> = filters
        .patterns
        .iter()
        .map(|p| {
            glob::Pattern::new(p)
                .map(|g| (p.clone(), g))
                .map_err(|e| Error::BadArgument(format!("invalid pattern `{p}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut matched = vec![false; patterns.len()];
    // validated globs, compiled once for every test
    let skips: Vec<(glob::Pattern, &crate::config::model::Skip)> = desired
        .model
        .skip
        .iter()
        .filter_map(|s| glob::Pattern::new(&s.pattern).ok().map(|g| (g, s)))
        .collect();
    let mut sel = Selection::default();
    for case in cases {
        let base = case
            .name
            .split('[')
            .next()
            .unwrap_or(&case.name)
            .to_string();
        match exclusion(desired, filters, &case, &base, &patterns, &mut matched) {
            Some(reason) => sel.excluded.push((case.name.clone(), reason)),
            None => {
                let skip = skips
                    .iter()
                    .find(|(g, _)| g.matches(&case.name) || g.matches(&base));
                let skip = skip.map(|(_, s)| SkipEntry {
                    reason: match &s.tracker {
                        Some(t) => format!("{} ({t})", s.reason),
                        None => s.reason.clone(),
                    },
                    warn: s.warn,
                });
                sel.selected.push(Selected { case, skip });
            }
        }
    }
    let unmatched: Vec<&str> = patterns
        .iter()
        .zip(&matched)
        .filter(|(_, m)| !**m)
        .map(|((p, _), _)| p.as_str())
        .collect();
    if !unmatched.is_empty() {
        return Err(Error::Usage(format!(
            "pattern {} matches no test; `reconcile test --list` shows every test",
            quoted(&unmatched)
        )));
    }
    if let Some(p) = &filters.partition {
        p.split(&mut sel);
    }
    Ok(sel)
}

/// `--suite` naming no suite, `--tag` naming a tag no test has (an excluded
/// `!tag` may name any): an error, as an unmatched pattern is.
fn unknown_selectors(desired: &Desired, cases: &[TestCase], filters: &Filters) -> Result<()> {
    let suites: Vec<&str> = filters
        .suites
        .iter()
        .filter(|s| !desired.model.suite.contains_key(s.as_str()))
        .map(String::as_str)
        .collect();
    if !suites.is_empty() {
        return Err(Error::Usage(format!(
            "--suite {} names no suite; `reconcile test --list --explain` shows every test and its suite",
            quoted(&suites)
        )));
    }
    let known = |tag: &str| {
        cases.iter().any(|c| c.spec.tags.iter().any(|t| t == tag))
            || desired
                .model
                .suite
                .values()
                .any(|s| s.required_tag.as_deref() == Some(tag))
    };
    let tags: Vec<&str> = filters
        .tags
        .iter()
        .filter(|t| !t.starts_with('!') && !known(t))
        .map(String::as_str)
        .collect();
    if !tags.is_empty() {
        return Err(Error::Usage(format!(
            "--tag {} is the tag of no test",
            quoted(&tags)
        )));
    }
    Ok(())
}

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `case` is not selected (none: it is), marking the patterns it matched.
fn exclusion(
    desired: &Desired,
    filters: &Filters,
    case: &TestCase,
    base: &str,
    patterns: &[(String, glob::Pattern)],
    matched: &mut [bool],
) -> Option<String> {
    if let Some(names) = &filters.names {
        return (!names.contains(&case.name)).then(|| "did not fail in the last run".to_string());
    }
    if !filters.suites.is_empty() && !filters.suites.contains(&case.suite) {
        return Some(format!("suite {} not selected", case.suite));
    }
    if !patterns.is_empty() {
        let hits: Vec<usize> = patterns
            .iter()
            .enumerate()
            .filter(|(_, (_, g))| g.matches(&case.name) || g.matches(base))
            .map(|(i, _)| i)
            .collect();
        for i in &hits {
            matched[*i] = true;
        }
        if hits.is_empty() {
            return Some("matches no pattern".into());
        }
    }
    // a suite's required tag counts as a tag of each of its tests
    let required = desired.model.suite[&case.suite].required_tag.as_ref();
    let has =
        |tag: &str| case.spec.tags.iter().any(|y| y == tag) || required.is_some_and(|r| r == tag);
    for t in &filters.tags {
        match t.strip_prefix('!') {
            Some(x) if has(x) => return Some(format!("has excluded tag {x}")),
            None if !has(t) => return Some(format!("lacks tag {t}")),
            _ => {}
        }
    }
    if let Some(req) = &desired.model.suite[&case.suite].required_tag {
        if !filters.tags.contains(req) {
            return Some(format!("suite needs --tag {req}"));
        }
    }
    let (m, image) = (case.on.machine(), case.on.image());
    // an image names its architecture the Debian way (amd64): compare the kernel's name
    let arch = match (m, image) {
        (Some(m), _) => m.arch.as_deref(),
        (None, Some(i)) => Some(crate::platform::normalise_arch(&i.arch)),
        (None, None) => Some(std::env::consts::ARCH),
    };
    if let Some(w) = list_filter("architecture", &case.spec.architectures, arch) {
        return Some(w);
    }
    if let Some(w) = list_filter(
        "distro",
        &case.spec.distros,
        m.and_then(|m| m.distro.as_deref()),
    ) {
        return Some(w);
    }
    if let Some(w) = list_filter("platform", &case.spec.platforms, Some(case.executor.name())) {
        return Some(w);
    }
    let version = m.and_then(|m| m.version.as_deref());
    if case.spec.min_version.is_some() || case.spec.end_version.is_some() {
        let Some(v) = version else {
            return Some("the machine declares no version".into());
        };
        if let Some(min) = &case.spec.min_version {
            if version_cmp(v, min).is_lt() {
                return Some(format!("version {v} < min_version {min}"));
            }
        }
        if let Some(end) = &case.spec.end_version {
            if version_cmp(v, end).is_ge() {
                return Some(format!("version {v} ≥ end_version {end}"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(version_cmp("12.10", "12.9"), Greater);
        assert_eq!(version_cmp("12", "12.0"), Equal);
        assert_eq!(version_cmp("11.7", "12"), Less);
    }

    #[test]
    fn include_and_exclude_lists() {
        assert_eq!(list_filter("architecture", &[], Some("x86_64")), None);
        assert_eq!(
            list_filter("architecture", &["x86_64".into()], Some("x86_64")),
            None
        );
        assert!(list_filter("architecture", &["aarch64".into()], Some("x86_64")).is_some());
        assert!(list_filter("architecture", &["!x86_64".into()], Some("x86_64")).is_some());
        assert_eq!(
            list_filter("architecture", &["!s390x".into()], Some("x86_64")),
            None
        );
    }
}
