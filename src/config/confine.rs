//! Reading a desired state with a directory as its root (a git checkout):
//! every file it names — the file itself, its includes, its lock file, local
//! sources, suite directories — must lie in that directory, and a symlink on
//! the way is followed only while it stays inside. A committed symlink that
//! leads out (to `/etc/shadow`, to `/proc/self/environ`) is refused with the
//! link named, never read; what is read is opened beneath the root with
//! nothing followed, at the path the links resolved to.

use std::path::{Path, PathBuf};

use super::model::{DesiredFile, Source, SourceLocation};
use super::{Diagnostic, Sources};
use crate::fsops::beneath::{self, Beneath};

/// The root and what to call it in messages.
pub struct Confine {
    root: PathBuf,
    dir: Beneath,
    what: &'static str,
}

impl Confine {
    pub fn open(root: &Path, what: &'static str) -> std::io::Result<Confine> {
        let root = std::path::absolute(root)?;
        Ok(Confine {
            dir: Beneath::open(&root)?,
            root,
            what,
        })
    }

    /// `path` (absolute) with every symlink along it resolved inside the root,
    /// or why it is refused (outside the root, a link that leads out).
    pub fn resolve(&self, path: &Path) -> Result<PathBuf, String> {
        let rel = path.strip_prefix(&self.root).map_err(|_| {
            format!(
                "{} is outside {} ({}): a file read from it must be part of it",
                path.display(),
                self.what,
                self.root.display()
            )
        })?;
        if rel.as_os_str().is_empty() {
            return Ok(self.root.clone());
        }
        beneath::resolve_path(&self.dir, rel)
            .map(|r| self.root.join(r))
            .map_err(|why| {
                format!(
                    "{} {}",
                    rel.display(),
                    why.to_string().replacen(
                        "leaves the tree",
                        &format!("leads outside {}", self.what),
                        1
                    )
                )
            })
    }

    /// Read a file at `path` beneath the root (at most `limit` bytes).
    pub fn read(&self, path: &Path, limit: u64) -> std::io::Result<String> {
        let real = self
            .resolve(path)
            .map_err(|why| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why))?;
        let rel = real
            .strip_prefix(&self.root)
            .expect("resolved beneath the root");
        let bytes = self.dir.read(rel, limit)?;
        String::from_utf8(bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }
}

/// Resolve every local source and suite directory of `m` beneath the root
/// (rewritten to the resolved paths, so nothing later follows a link), with
/// a located diagnostic for each one that is refused.
pub(crate) fn sources(m: &mut DesiredFile, c: &Confine, at: &Sources) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut one = |path: Vec<String>, s: &mut Source| {
        let (key, p) = match &mut s.location {
            SourceLocation::Path(p) => ("path", p),
            SourceLocation::Dir(p) => ("dir", p),
            SourceLocation::Url(_) => return,
        };
        match c.resolve(Path::new(p.as_str())) {
            Ok(real) => *p = real.to_string_lossy().into_owned(),
            Err(why) => {
                let mut at_key: Vec<&str> = path.iter().map(String::as_str).collect();
                at_key.push(key);
                out.push(at.at(
                    &at_key,
                    false,
                    format!("source {why}"),
                    "refused",
                    Some(
                        "in pull mode a source is read from the commit only; commit the file itself, or use a url source with a sha256"
                            .into(),
                    ),
                ));
            }
        }
    };
    for (n, p) in m.plugin.iter_mut() {
        one(
            vec!["plugin".into(), n.clone(), "source".into()],
            &mut p.source,
        );
    }
    for (n, mach) in m.machine.iter_mut() {
        one(
            vec!["machine".into(), n.clone(), "source".into()],
            &mut mach.source,
        );
    }
    for (n, img) in m.image.iter_mut() {
        if let Some(s) = img.source.as_mut() {
            one(vec!["image".into(), n.clone(), "source".into()], s);
        }
        for (f, s) in img.files.iter_mut() {
            one(
                vec!["image".into(), n.clone(), "files".into(), f.clone()],
                s,
            );
        }
    }
    // other files a commit names: user data, uploads, test directories
    let mut paths: Vec<(Vec<&str>, &str, &mut String)> = Vec::new();
    for (n, mach) in m.machine.iter_mut() {
        if let Some(f) = mach.user_data_file.as_mut() {
            paths.push((vec!["machine", n, "user_data_file"], "user data", f));
        }
    }
    for (n, suite) in m.suite.iter_mut() {
        if let Some(f) = suite.user_data_file.as_mut() {
            paths.push((vec!["suite", n, "user_data_file"], "user data", f));
        }
        if let Some(d) = suite.dir.as_mut() {
            paths.push((vec!["suite", n, "dir"], "test directory", d));
        }
        for (g, u) in suite.upload.iter_mut() {
            paths.push((vec!["suite", n, "upload", g, "path"], "upload", &mut u.path));
        }
        for (t, test) in suite.test.iter_mut() {
            for (g, u) in test.upload.iter_mut() {
                let key = vec!["suite", n, "test", t, "upload", g, "path"];
                paths.push((key, "upload", &mut u.path));
            }
        }
    }
    for (key, what, p) in paths {
        match c.resolve(Path::new(p.as_str())) {
            Ok(real) => *p = real.to_string_lossy().into_owned(),
            Err(why) => out.push(at.at(&key, false, format!("{what} {why}"), "refused", None)),
        }
    }
    out
}
