//! Loading and checking the desired-state file: TOML → typed model (with
//! includes merged and relative paths resolved), then semantic checks. Every
//! problem becomes a located [`Diagnostic`]; a file with any problem is never
//! acted upon.

pub(crate) mod check;
mod confine;

pub mod dirtests;
#[cfg(test)]
mod fuzz;
pub mod hosts;
pub mod lockfile;
pub mod matcher;
pub mod model;
mod parse;
pub mod units;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use crate::diagnostic::Diagnostic;
pub use lockfile::Lockfile;
pub use model::DesiredFile;
pub use parse::SourceFile;

use crate::error::Error;

/// A loaded, checked desired state.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The main file, absolute.
    pub path: PathBuf,
    /// Merged model; every path in it is absolute.
    pub model: DesiredFile,
    /// SHA-256 over the texts of every file (and the lock file) it came from.
    pub digest: String,
    pub state_dir: PathBuf,
    pub extract_limit: u64,
    pub lock: Lockfile,
    /// Every file read, main first (kept for diagnostics and watch paths).
    pub files: Vec<PathBuf>,
    /// The host this desired state is for.
    pub host: String,
    /// Resources declared for other hosts and left out here: (address, why).
    pub not_for_host: Vec<(String, String)>,
    /// The executable tests found in each suite's `dir` when the file was read.
    pub dir_tests: BTreeMap<String, Vec<(String, model::Test)>>,
}

pub const DEFAULT_EXTRACT_LIMIT: u64 = 8 << 30;

/// Largest desired-state file (and include) read.
pub const MAX_FILE: u64 = 16 << 20;
/// Entries an include pattern may look at before it is refused as too broad.
pub const MAX_INCLUDE_WALK: usize = 100_000;
/// Files an include pattern may match.
pub const MAX_INCLUDES: usize = 1_000;

/// Read a desired-state file: a regular file (a fifo or a device would block
/// or never end) of at most [`MAX_FILE`] bytes, opened without blocking.
pub fn read_file(path: &Path) -> std::io::Result<String> {
    let bytes = crate::fsops::read_regular(path, MAX_FILE)?;
    String::from_utf8(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// The files an include pattern names, found by a bounded walk from the
/// pattern's literal directory: symlinks are not followed, only regular
/// files match, and a pattern that looks at more than [`MAX_INCLUDE_WALK`]
/// entries (say `/**/*`) is refused instead of walking the filesystem.
fn expand_include(full: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let text = full.to_string_lossy();
    let pattern = glob::Pattern::new(&text).map_err(|e| format!("invalid include pattern: {e}"))?;
    let parts: Vec<&std::ffi::OsStr> = full.iter().collect();
    let first_glob = parts
        .iter()
        .position(|p| p.to_string_lossy().contains(['*', '?', '[']))
        .unwrap_or(parts.len());
    let base: PathBuf = parts[..first_glob].iter().collect();
    if first_glob == parts.len() {
        // a literal name: whatever is there is read (and refused) by read_file
        return Ok(if std::fs::symlink_metadata(&base).is_ok() {
            vec![base]
        } else {
            vec![]
        });
    }
    let rest = &parts[first_glob..];
    let deep = rest.iter().any(|p| *p == "**");
    let mut walk = walkdir::WalkDir::new(&base)
        .follow_links(false)
        .min_depth(1);
    if !deep {
        walk = walk.max_depth(rest.len());
    }
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut out = Vec::new();
    for (seen, entry) in walk.into_iter().enumerate() {
        if seen >= MAX_INCLUDE_WALK {
            return Err(format!(
                "include pattern `{text}` looks at more than {MAX_INCLUDE_WALK} entries; narrow it (e.g. farm.d/*.toml)"
            ));
        }
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_file() && pattern.matches_path_with(entry.path(), opts) {
            out.push(entry.into_path());
            if out.len() > MAX_INCLUDES {
                return Err(format!(
                    "include pattern `{text}` matches more than {MAX_INCLUDES} files"
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// An include pattern of a confined file, its literal directory resolved
/// beneath the root (a symlinked `farm.d` inside the checkout is followed; one
/// leading out is refused). The walk itself follows no link.
fn confined_pattern(c: &confine::Confine, full: &Path) -> std::result::Result<PathBuf, String> {
    let parts: Vec<&std::ffi::OsStr> = full.iter().collect();
    let first_glob = parts
        .iter()
        .position(|p| p.to_string_lossy().contains(['*', '?', '[']))
        .unwrap_or(parts.len());
    let base: PathBuf = parts[..first_glob].iter().collect();
    if first_glob == parts.len() {
        // a literal name: read (and refused) by the confined read
        return Ok(full.to_path_buf());
    }
    let real = c.resolve(&base).map_err(|why| format!("include {why}"))?;
    Ok(parts[first_glob..]
        .iter()
        .fold(real, |p, part| p.join(part)))
}

/// Where each merged entry came from, for locating diagnostics.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    /// `plugin.kolet` or `skip.3` → (file index, key path prefix in that file)
    entries: HashMap<String, (usize, Vec<String>)>,
}

pub(crate) struct Sources {
    pub files: Vec<SourceFile>,
    pub origins: Origins,
    pub broken: HashSet<String>,
}

impl Sources {
    /// A diagnostic at the value (or key) that `path` names in the merged model.
    pub fn at(
        &self,
        path: &[&str],
        on_key: bool,
        message: String,
        label: &str,
        help: Option<String>,
    ) -> Diagnostic {
        let (file_idx, local) = self.locate(path);
        let file = &self.files[file_idx];
        let span = if on_key {
            file.spans().key(&local)
        } else {
            file.spans().value(&local)
        };
        file.diagnostic(span, message, label, help)
    }

    fn locate(&self, path: &[&str]) -> (usize, Vec<String>) {
        for n in [2, 1] {
            if path.len() < n {
                continue;
            }
            if let Some((idx, prefix)) = self.origins.entries.get(&path[..n].join(".")) {
                let mut local = prefix.clone();
                local.extend(path[n..].iter().map(|s| s.to_string()));
                return (*idx, local);
            }
        }
        (0, path.iter().map(|s| s.to_string()).collect())
    }
}

/// How strict loading is.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Accept remote sources without a sha256 or pin (only `reconcile lock`, which pins them).
    pub allow_unpinned: bool,
    /// Take the file as host `hostname` sees it (`--hostname`; default: this host's kernel name).
    pub hostname: Option<String>,
    /// Keep what is for other hosts too (`reconcile lock` pins the whole fleet's sources).
    pub all_hosts: bool,
    /// Read every file the desired state names beneath this directory (a git
    /// checkout): a path outside it, or a symlink leading out of it, is refused.
    pub confine: Option<PathBuf>,
    /// Name the files under this directory in diagnostics as this prefix and
    /// their path inside it (`3f2a…:farm.toml` for a commit's export).
    pub shown_as: Option<(PathBuf, String)>,
}

/// Load, merge and check `path`. `Err(Error::Invalid)` carries every diagnostic.
pub fn load(path: &Path) -> Result<Desired, Error> {
    load_with(path, LoadOptions::default())
}

pub fn load_with(path: &Path, opts: LoadOptions) -> Result<Desired, Error> {
    let path = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    let confine = match &opts.confine {
        Some(root) => {
            Some(confine::Confine::open(root, "the checkout").map_err(|e| Error::io(root, e))?)
        }
        None => None,
    };
    // every file of the desired state is read this way: beneath the checkout's root when confined
    let read = |p: &Path| match &confine {
        Some(c) => c.read(p, MAX_FILE),
        None => read_file(p),
    };
    let text = read(&path).map_err(|e| Error::ReadDesired {
        path: path.clone(),
        source: e,
    })?;
    let main_dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut diagnostics = Vec::new();
    let shown = |p: &Path| match &opts.shown_as {
        Some((root, prefix)) => match p.strip_prefix(root) {
            Ok(rel) => format!("{prefix}{}", rel.display()),
            Err(_) => display_name(p),
        },
        None => display_name(p),
    };
    let main = parse::parse_file(&shown(&path), text);
    diagnostics.extend(main.diagnostics);
    let mut sources = Sources {
        files: vec![main.file],
        origins: Origins::default(),
        broken: main.broken,
    };
    let mut model = main.fragment;
    absolutize(&mut model, &main_dir);
    record_origins(&mut sources.origins, &model, 0, 0);

    // includes, in pattern order then name order; no nesting
    let mut files = vec![path.clone()];
    let mut seen: HashSet<PathBuf> = [path.clone()].into();
    for (i, pattern) in model.include.clone().iter().enumerate() {
        let full = main_dir.join(pattern);
        let expanded = match &confine {
            Some(c) => confined_pattern(c, &full).and_then(|f| expand_include(&f)),
            None => expand_include(&full),
        };
        let matches: Vec<PathBuf> = match expanded {
            Ok(paths) => paths,
            Err(why) => {
                diagnostics.push(sources.at(
                    &["include", &i.to_string()],
                    false,
                    why,
                    "here",
                    None,
                ));
                continue;
            }
        };
        if matches.is_empty() {
            diagnostics.push(sources.at(
                &["include", &i.to_string()],
                false,
                format!("include pattern `{pattern}` matches no file"),
                "matches nothing",
                Some(format!("looked for {}", full.display())),
            ));
        }
        for inc in matches {
            if !seen.insert(inc.clone()) {
                continue;
            }
            let text = match read(&inc) {
                Ok(t) => t,
                Err(e) => {
                    diagnostics.push(sources.at(
                        &["include", &i.to_string()],
                        false,
                        format!("cannot read included file {}: {e}", inc.display()),
                        "included here",
                        None,
                    ));
                    continue;
                }
            };
            let parsed = parse::parse_file(&shown(&inc), text);
            diagnostics.extend(parsed.diagnostics);
            let idx = sources.files.len();
            sources.files.push(parsed.file);
            sources.broken.extend(parsed.broken);
            let mut frag = parsed.fragment;
            absolutize(&mut frag, inc.parent().unwrap_or(Path::new("/")));
            merge(&mut model, frag, idx, &mut sources, &mut diagnostics);
            files.push(inc);
        }
    }

    // defaults that name paths are relative to the main file
    for p in model.plugin.values_mut() {
        p.dir
            .get_or_insert_with(|| main_dir.join("plugins").to_string_lossy().into_owned());
    }

    let lock = match Lockfile::load_by(&lockfile::path_for(&path), read) {
        Ok(l) => l,
        Err(e) => {
            diagnostics.push(Diagnostic::whole_file(
                &shown(&lockfile::path_for(&path)),
                e.to_string(),
                Some("delete reconcile.lock and run `reconcile lock` again".into()),
            ));
            Lockfile::default()
        }
    };

    if let Some(c) = &confine {
        diagnostics.extend(confine::sources(&mut model, c, &sources));
    }
    let today = today_utc();
    diagnostics.extend(check::check(
        &model,
        &sources,
        &lock,
        &today,
        opts.allow_unpinned,
    ));
    // executable tests in suite dirs: their headers are part of the file's contract
    let mut dir_tests = BTreeMap::new();
    for (name, suite) in &model.suite {
        if let Some(dir) = &suite.dir {
            match dirtests::read(Path::new(dir)) {
                Ok(tests) => {
                    dir_tests.insert(name.clone(), tests);
                }
                Err(problems) => diagnostics.extend(problems),
            }
        }
    }
    if !diagnostics.is_empty() {
        let order: HashMap<String, usize> = sources
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        diagnostics.sort_by_key(|d| {
            (
                order.get(&d.file).copied().unwrap_or(usize::MAX),
                d.line,
                d.column,
            )
        });
        return Err(Error::Invalid(diagnostics));
    }

    // files named relative to the main file's directory: a saved plan stays
    // valid in another checkout of the same repository (a CI job's own directory)
    let mut hasher = Sha256::new();
    for (f, src) in files.iter().zip(&sources.files) {
        hasher.update(
            f.strip_prefix(&main_dir)
                .unwrap_or(f)
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update([0]);
        hasher.update(src.text.as_bytes());
        hasher.update([0]);
    }
    hasher.update(lock.text.as_bytes());
    let settings = model.settings.clone().unwrap_or_default();
    let state_dir = PathBuf::from(
        settings
            .state_dir
            .unwrap_or_else(|| main_dir.join(".reconcile").to_string_lossy().into_owned()),
    );
    let extract_limit = settings
        .extract_limit
        .map(|s| s.0)
        .unwrap_or(DEFAULT_EXTRACT_LIMIT);
    let host = hosts::Host {
        name: opts
            .hostname
            .clone()
            .unwrap_or_else(crate::process::identity::kernel_hostname),
        labels: match model
            .settings
            .as_ref()
            .and_then(|s| s.labels_file.as_deref())
        {
            // the host's own file (outside a checkout, as a rule): never the kernel's view of anything
            Some(f) if check::kernel_view(&main_dir.join(f).to_string_lossy()) => {
                return Err(Error::Usage(format!(
                    "labels_file: {f} is in /proc, /sys or /dev; name a file of key=value lines"
                )))
            }
            Some(f) => hosts::read_labels(&main_dir.join(f))
                .map_err(|why| Error::Usage(format!("labels_file: {why}")))?,
            None => Default::default(),
        },
    };
    let not_for_host = if opts.all_hosts {
        Vec::new()
    } else {
        for_host(&mut model, &host)
    };
    Ok(Desired {
        path,
        model,
        digest: crate::fsops::digest::to_hex(&hasher.finalize()),
        state_dir,
        extract_limit,
        lock,
        files,
        host: host.name,
        not_for_host,
        dir_tests,
    })
}

/// Leave out what is not for `host` (see [`hosts`]); returns (address, why) of each.
fn for_host(m: &mut DesiredFile, host: &hosts::Host) -> Vec<(String, String)> {
    use hosts::excludes;
    let mut out = Vec::new();
    let mut drop = |kind: &str, name: &str, hosts: &[hosts::Selector]| -> bool {
        match excludes(hosts, host) {
            Some(why) => {
                out.push((format!("{kind}.{name}"), why));
                true
            }
            None => false,
        }
    };
    m.machine.retain(|n, x| !drop("machine", n, &x.hosts));
    m.image.retain(|n, x| !drop("image", n, &x.hosts));
    m.plugin.retain(|n, x| !drop("plugin", n, &x.hosts));
    let (machines, images): (Vec<String>, Vec<String>) = (
        m.machine.keys().cloned().collect(),
        m.image.keys().cloned().collect(),
    );
    let mut empty = Vec::new();
    m.suite.retain(|n, s| {
        if drop("suite", n, &s.hosts) {
            return false;
        }
        // a suite on machines (or images) none of which are for this host has nothing to run on
        let had = !s.machines.is_empty() || !s.images.is_empty();
        s.machines.retain(|x| machines.contains(x));
        s.images.retain(|x| images.contains(x));
        if had && s.machines.is_empty() && s.images.is_empty() {
            empty.push(format!("suite.{n}"));
            return false;
        }
        true
    });
    out.extend(empty.into_iter().map(|a| {
        (
            a,
            "none of its machines or images is for this host".to_string(),
        )
    }));
    if let Some(run) = m.run.as_mut() {
        let suites: Vec<String> = m.suite.keys().cloned().collect();
        run.suites.retain(|s| suites.contains(s));
    }
    out.sort();
    out
}

pub use crate::output::display_name;

fn record_origins(origins: &mut Origins, m: &DesiredFile, file: usize, skip_base: usize) {
    fn names<T>(o: &mut Origins, kind: &str, map: &BTreeMap<String, T>, file: usize) {
        for name in map.keys() {
            o.entries.insert(
                format!("{kind}.{name}"),
                (file, vec![kind.to_string(), name.clone()]),
            );
        }
    }
    names(origins, "volume", &m.volume, file);
    names(origins, "machine", &m.machine, file);
    names(origins, "image", &m.image, file);
    names(origins, "plugin", &m.plugin, file);
    names(origins, "cloud", &m.cloud, file);
    names(origins, "check", &m.check, file);
    names(origins, "suite", &m.suite, file);
    for i in 0..m.skip.len() {
        origins.entries.insert(
            format!("skip.{}", skip_base + i),
            (file, vec!["skip".into(), i.to_string()]),
        );
    }
    // single tables: remember which included file defined them
    for (key, present) in [
        ("settings", m.settings.is_some()),
        ("run", m.run.is_some()),
        ("watch", m.watch.is_some()),
    ] {
        if present && file != 0 {
            origins
                .entries
                .insert(key.to_string(), (file, vec![key.to_string()]));
        }
    }
}

fn merge(
    into: &mut DesiredFile,
    frag: DesiredFile,
    file: usize,
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
) {
    let inc = &sources.files[file];
    let name = inc.name.clone();
    let mut dup = |path: &[&str], what: String| {
        let f = &sources.files[file];
        let local: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        diags.push(f.diagnostic(
            f.spans().key(&local),
            what,
            "declared again here",
            Some("names are unique across the file and its includes; rename or remove one".into()),
        ));
    };
    if frag.version.is_some() && frag.version != into.version {
        dup(
            &["version"],
            format!("included file {name} declares a different `version`"),
        );
    }
    if !frag.include.is_empty() {
        dup(
            &["include"],
            "an included file cannot include further files".to_string(),
        );
    }
    for (key, present, already) in [
        ("settings", frag.settings.is_some(), into.settings.is_some()),
        ("run", frag.run.is_some(), into.run.is_some()),
        ("watch", frag.watch.is_some(), into.watch.is_some()),
    ] {
        if present && already {
            dup(&[key], format!("`[{key}]` is declared more than once"));
        }
    }
    into.settings = into.settings.take().or(frag.settings.clone());
    into.run = into.run.take().or(frag.run.clone());
    into.watch = into.watch.take().or(frag.watch.clone());

    macro_rules! merge_map {
        ($field:ident, $kind:literal) => {
            for (k, v) in frag.$field.clone() {
                if into.$field.contains_key(&k) {
                    dup(
                        &[$kind, &k],
                        format!("{} `{}` is declared more than once", $kind, k),
                    );
                } else {
                    into.$field.insert(k, v);
                }
            }
        };
    }
    merge_map!(volume, "volume");
    merge_map!(machine, "machine");
    merge_map!(image, "image");
    merge_map!(plugin, "plugin");
    merge_map!(cloud, "cloud");
    merge_map!(check, "check");
    merge_map!(suite, "suite");
    let skip_base = into.skip.len();
    record_origins(&mut sources.origins, &frag, file, skip_base);
    // entries already declared keep their first origin
    into.skip.extend(frag.skip);
}

/// Resolve every relative path of a fragment against the directory of its file.
fn absolutize(m: &mut DesiredFile, base: &Path) {
    let abs = |p: &mut String| {
        if !p.is_empty() && !Path::new(p.as_str()).is_absolute() {
            *p = base.join(&*p).to_string_lossy().into_owned();
        }
    };
    let source = |s: &mut model::Source| match &mut s.location {
        model::SourceLocation::Path(p) | model::SourceLocation::Dir(p) => abs(p),
        model::SourceLocation::Url(_) => {}
    };
    if let Some(st) = m.settings.as_mut() {
        if let Some(p) = st.state_dir.as_mut() {
            abs(p)
        }
    }
    for v in m.volume.values_mut() {
        abs(&mut v.path);
    }
    for mach in m.machine.values_mut() {
        source(&mut mach.source);
        if let Some(f) = mach.user_data_file.as_mut() {
            abs(f)
        }
    }
    for img in m.image.values_mut() {
        abs(&mut img.root);
        img.files.values_mut().for_each(source);
        if let Some(s) = img.source.as_mut() {
            source(s)
        }
    }
    for p in m.plugin.values_mut() {
        if let Some(d) = p.dir.as_mut() {
            abs(d)
        }
        source(&mut p.source);
    }
    for s in m.suite.values_mut() {
        if let Some(d) = s.dir.as_mut() {
            abs(d)
        }
        if let Some(f) = s.user_data_file.as_mut() {
            abs(f)
        }
        let uploads = s.upload.values_mut();
        for u in uploads.chain(s.test.values_mut().flat_map(|t| t.upload.values_mut())) {
            abs(&mut u.path)
        }
    }
}

/// Today's date in UTC as `YYYY-MM-DD`.
pub fn today_utc() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_string()
}

impl Desired {
    /// Every source in the file with the address of what declares it.
    pub fn sources(&self) -> Vec<(String, &model::Source)> {
        let m = &self.model;
        let mut out = Vec::new();
        for (n, p) in &m.plugin {
            out.push((format!("plugin.{n}"), &p.source));
        }
        for (n, mach) in &m.machine {
            out.push((format!("machine.{n}"), &mach.source));
        }
        for (n, img) in &m.image {
            if let Some(s) = &img.source {
                out.push((format!("image.{n}"), s));
            }
            for (f, s) in &img.files {
                out.push((format!("image.{n}.files.{f}"), s));
            }
        }
        out
    }

    /// The declared machine `name`, or a usage error naming the declared ones.
    /// Machine `name` with its volume, the name as the file spells it (a
    /// valid file has both).
    pub fn machine_on_volume(
        &self,
        name: &str,
    ) -> Result<(&str, &model::Machine, &model::Volume), Error> {
        let (name, machine) = self
            .model
            .machine
            .get_key_value(name)
            .ok_or_else(|| self.no_machine(name))?;
        let volume =
            self.model.volume.get(&machine.volume).ok_or_else(|| {
                Error::Usage(format!("machine `{name}` names no declared volume"))
            })?;
        Ok((name, machine, volume))
    }

    /// Netboot image `name`, the name as the file spells it.
    pub fn image(&self, name: &str) -> Result<(&str, &model::Image), Error> {
        self.model
            .image
            .get_key_value(name)
            .map(|(n, i)| (n.as_str(), i))
            .ok_or_else(|| Error::Usage(format!("no image `{name}` is declared")))
    }

    pub fn machine(&self, name: &str) -> Result<&model::Machine, Error> {
        self.model
            .machine
            .get(name)
            .ok_or_else(|| self.no_machine(name))
    }

    /// `name` is not a machine of the file: say which ones are.
    fn no_machine(&self, name: &str) -> Error {
        Error::Usage(format!(
            "no machine `{name}` in {} (declared: {})",
            display_name(&self.path),
            self.model
                .machine
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// Every file and directory the desired state reads: its files and lock
    /// file, local sources, suite directories (what must be as committed in
    /// a git checkout).
    pub fn inputs(&self) -> Vec<PathBuf> {
        let mut out = self.files.clone();
        out.push(lockfile::path_for(&self.path));
        for (_, s) in self.sources() {
            match &s.location {
                model::SourceLocation::Path(p) | model::SourceLocation::Dir(p) => {
                    out.push(PathBuf::from(p))
                }
                model::SourceLocation::Url(_) => {}
            }
        }
        out.extend(
            self.model
                .suite
                .values()
                .filter_map(|s| s.dir.as_ref().map(PathBuf::from)),
        );
        out.sort();
        out.dedup();
        out
    }

    /// `--locked`: every remote source pinned in reconcile.lock (and agreeing with it).
    pub fn require_locked(&self) -> Result<(), Error> {
        let problems = self.unlocked_sources();
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Usage(format!(
            "--locked: {}; run `reconcile lock`",
            problems.join("; ")
        )))
    }

    /// `--locked`: every remote source must be pinned in reconcile.lock, and an
    /// inline sha256 must agree with its pin. Returns the problems.
    pub fn unlocked_sources(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (addr, s) in self.sources() {
            let Some(url) = s.url() else { continue };
            match (self.lock.sha256_for(url), &s.sha256) {
                (None, _) => out.push(format!("{addr}: {url} is not pinned in reconcile.lock")),
                (Some(pin), Some(inline)) if !pin.eq_ignore_ascii_case(inline) => out.push(
                    format!("{addr}: sha256 in the file differs from the pin in reconcile.lock"),
                ),
                _ => {}
            }
        }
        out
    }
}
