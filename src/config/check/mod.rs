//! Semantic checks over the merged model: references, names, sources, durations,
//! regexes, dates. Each problem is located at the offending value. The file as
//! a whole and the shared checks (names, sources, durations, VM tables) are
//! here; the resources' tables in [`resources`], the test plan's in [`suites`].

mod resources;
mod suites;

use std::collections::BTreeMap;
use std::path::Path;

use super::lockfile::Lockfile;
use super::model::{Console, DesiredFile, Source, SourceLocation, Vm};
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
    file(&mut c, m);
    resources::machines(&mut c, m, lock);
    resources::images(&mut c, m, lock);
    resources::plugins(&mut c, m, lock);
    resources::clouds(&mut c, m);
    suites::checks(&mut c, m);
    suites::suites(&mut c, m);
    suites::skips(&mut c, m, today);
    suites::run(&mut c, m);
    c.out
}

/// What the whole file must be: its version, valid host selectors and
/// names, settings in range.
fn file(c: &mut Checker, m: &DesiredFile) {
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

    if let Some(k) = m.settings.as_ref().and_then(|s| s.keep_runs) {
        if k == 0 || k > 100_000 {
            c.value(
                &["settings", "keep_runs"],
                "keep_runs must be between 1 and 100000".into(),
                "out of range",
                Some("the latest run is always kept; say how many runs to keep in all".into()),
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
}

struct Checker<'a> {
    src: &'a Sources,
    out: Vec<Diagnostic>,
    allow_unpinned: bool,
}

impl Checker<'_> {
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
