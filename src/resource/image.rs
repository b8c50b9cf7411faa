//! Netboot images: kernels, initrds (and an optional iPXE script) published
//! into `<root>/<arch>/<subarch>/<release>/<purpose>/` — MAAS's
//! `install_pxe_image` without its critical window: the new directory is staged
//! beside the purpose directory and exchanged in with one RENAME_EXCHANGE.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::publish::{self, DirState};
use super::receipt::{self, record_tree, Receipt, ReceiptSource};
use super::{
    Action, ApplyContext, Candidate, Change, Context, KindStatus, Observed, Resource,
    ResourceStatus, TreeInstalled,
};
use crate::config::model::{ArchiveFormat, DriftMode, Image, Source};
use crate::error::{Error, Result};
use crate::fault;
use crate::fsops::beneath::{self, Beneath};
use crate::fsops::digest::sha256_bytes;
use crate::source::{self, archive::Written, Location};
use crate::state::{now_rfc3339, Roots};

pub const KIND: &str = "image";
/// Roots-record kind for the parent directories reconcile created (pruned when empty).
const CREATED_DIRS: &str = "image-dir";
pub use crate::config::model::IPXE_SCRIPT;

pub struct ImageResource {
    address: String,
    name: String,
    root: PathBuf,
    target: PathBuf,
    /// None: an owned image that is no longer declared.
    desired: Option<Image>,
}

pub fn resources(cx: &Context) -> Result<Vec<Box<dyn Resource>>> {
    let mut out: Vec<Box<dyn Resource>> = Vec::new();
    let mut declared: BTreeSet<PathBuf> = BTreeSet::new();
    let mut roots: BTreeSet<PathBuf> = cx.roots.of(KIND).cloned().collect();
    for (name, img) in &cx.desired.model.image {
        let target = img.target();
        declared.insert(target.clone());
        roots.insert(PathBuf::from(&img.root));
        out.push(Box::new(ImageResource {
            address: format!("{KIND}.{name}"),
            name: name.clone(),
            root: PathBuf::from(&img.root),
            target,
            desired: Some(img.clone()),
        }));
    }
    // owned images no longer declared: <root>/<arch>/<subarch>/<release>/<purpose> with our receipt
    for root in roots {
        for target in dirs_at_depth(cx, &root, 4) {
            if declared.contains(&target) {
                continue;
            }
            let Some((r, _)) = Receipt::read(&target) else {
                continue;
            };
            if r.kind != KIND {
                continue;
            }
            let address = if cx.desired.model.image.contains_key(&r.name) {
                format!("{KIND}.{}[{}]", r.name, target.display())
            } else {
                format!("{KIND}.{}", r.name)
            };
            out.push(Box::new(ImageResource {
                address,
                name: r.name,
                root: root.clone(),
                target,
                desired: None,
            }));
        }
    }
    Ok(out)
}

/// Directories exactly `depth` levels below `root`, skipping staging names
/// and never following a symlink. Each directory's names come from the stat
/// index when it is unchanged (found by one `fstatat` from the root); a
/// directory is opened only to list it afresh.
fn dirs_at_depth(cx: &Context, root: &Path, depth: usize) -> Vec<PathBuf> {
    let Ok(Some((top, _))) = cx.dirs.dir_at(root, Path::new("")) else {
        return Vec::new();
    };
    let mut level = vec![(top, PathBuf::new())];
    for _ in 0..depth {
        let mut next = Vec::new();
        for (dir, rel) in level {
            let Ok(names) = dir
                .stat()
                .and_then(|st| cx.fetcher.index.listing(&dir, &st, cx.verify))
            else {
                continue;
            };
            for (name, kind) in names.iter() {
                if kind == beneath::Kind::Dir
                    && !crate::fsops::is_staging_name(&name.to_string_lossy())
                {
                    next.push((dir.join(name), rel.join(name)));
                }
            }
        }
        level = next;
    }
    let mut out: Vec<PathBuf> = level.into_iter().map(|(_, rel)| root.join(rel)).collect();
    out.sort();
    out
}

/// What the image should contain, as digests: per declared file (or the archive), and the iPXE script.
struct Wanted {
    /// `file:<name>`, `archive` and `ipxe` → sha256
    parts: BTreeMap<String, String>,
    combined: String,
}

fn render_ipxe(img: &Image) -> Option<String> {
    let ipxe = img.ipxe.as_ref()?;
    let mut s = String::from("#!ipxe\n");
    s.push_str(&format!("kernel {} {}\n", ipxe.kernel, ipxe.cmdline).replace(" \n", "\n"));
    if let Some(initrd) = &ipxe.initrd {
        s.push_str(&format!("initrd {initrd}\n"));
    }
    s.push_str("boot\n");
    Some(s)
}

/// One digest over the parts' digests (`file:<name>`, `archive`, `ipxe`).
fn combined(parts: &BTreeMap<String, String>) -> String {
    let text: String = parts.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    sha256_bytes(text.as_bytes())
}

/// Sources of `files` are the files themselves, never unpacked.
fn as_file(s: &Source) -> Source {
    Source {
        format: Some(ArchiveFormat::File),
        ..s.clone()
    }
}

impl ImageResource {
    fn wanted(&self, img: &Image, cx: &Context) -> Result<Wanted> {
        let mut parts = BTreeMap::new();
        for (name, s) in &img.files {
            parts.insert(format!("file:{name}"), cx.fetcher.expected_digest(s)?);
        }
        if let Some(s) = &img.source {
            let strip = s.strip_components.unwrap_or(0);
            parts.insert(
                "archive".into(),
                format!("{}/strip={strip}", cx.fetcher.expected_digest(s)?),
            );
        }
        if let Some(script) = render_ipxe(img) {
            parts.insert("ipxe".into(), sha256_bytes(script.as_bytes()));
        }
        Ok(Wanted {
            combined: combined(&parts),
            parts,
        })
    }

    /// Publish the image at `rel` beneath its root: its tree, or its candidate beside it.
    fn install(&self, img: &Image, rel: &Path, cx: &mut ApplyContext) -> Result<()> {
        let mut said = Vec::new();
        let r = source::fresh_on_corrupt_cache(&mut said, || self.install_once(img, rel, cx));
        cx.said.extend(said);
        r
    }

    /// With a promotion gate and content other than what is published (or
    /// nothing published yet): the candidate, and whether its tree beside
    /// the published one must be (re)published first.
    fn gate(
        &self,
        img: &Image,
        state: &DirState,
        cx: &Context,
    ) -> Result<Option<(Candidate, bool)>> {
        let Some(p) = &img.promote else {
            return Ok(None);
        };
        let wanted = self.wanted(img, cx)?;
        let differs = match state {
            DirState::Installed { receipt, .. } => receipt.source.sha256 != wanted.combined,
            _ => true,
        };
        if !differs {
            return Ok(None);
        }
        let staged = Receipt::read(&self.root.join(self.candidate_rel()))
            .is_some_and(|(r, _)| r.kind == KIND && r.source.sha256 == wanted.combined);
        let c = Candidate::new(
            cx,
            &self.address,
            &self.name,
            format!("content {}…", receipt::short(&wanted.combined)),
            0,
            &wanted.combined,
            &p.after,
        );
        Ok(Some((c, !staged)))
    }

    /// Where the candidate waits: beside the tree, under a name no TFTP client asks for.
    fn candidate_rel(&self) -> PathBuf {
        crate::fsops::candidate_path(&self.rel())
    }

    fn install_once(&self, img: &Image, rel: &Path, cx: &mut ApplyContext) -> Result<()> {
        // downloads are verified on their way into the cache; every file again while it is staged
        let mut files = Vec::new();
        for (name, s) in &img.files {
            files.push((name.clone(), cx.cx.fetcher.fetch(&as_file(s))?));
        }
        let archive = match &img.source {
            Some(s) => Some(cx.cx.fetcher.fetch(s)?),
            None => None,
        };
        let root = self.open_root(cx.roots)?;
        cx.roots.add(KIND, &self.root);
        let limit = cx.cx.desired.extract_limit;
        publish::replace_dir(cx.journal, &self.address, &root, rel, |staging, txn| {
            let mut written = Written::new();
            let mut actual: BTreeMap<String, String> = BTreeMap::new();
            for (i, (name, artifact)) in files.iter().enumerate() {
                let staged = source::unpack(artifact, staging, name, 0, limit, Default::default())?;
                staging
                    .set_mode(Path::new(name), 0o644)
                    .map_err(|e| Error::io(staging.shown(Path::new(name)), e))?;
                actual.insert(format!("file:{name}"), staged.sha256);
                written.extend(staged.written);
                if i == 0 {
                    fault::point(&self.address, "stage-partial");
                }
            }
            if let (Some(a), Some(s)) = (&archive, &img.source) {
                let strip = s.strip_components.unwrap_or(0);
                let staged = source::unpack(a, staging, "image", strip, limit, Default::default())?;
                actual.insert("archive".into(), format!("{}/strip={strip}", staged.sha256));
                written.extend(staged.written);
                fault::point(&self.address, "stage-partial");
            }
            if let Some(script) = render_ipxe(img) {
                let ipxe = img.ipxe.as_ref().expect("rendered");
                for f in [Some(&ipxe.kernel), ipxe.initrd.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    let kind = staging
                        .try_stat(Path::new(f))
                        .ok()
                        .flatten()
                        .map(|s| s.kind);
                    if kind != Some(beneath::Kind::File) {
                        return Err(Error::Resource {
                            address: self.address.clone(),
                            reason: format!(
                                "the iPXE script boots `{f}`, which the image does not contain as a file"
                            ),
                        });
                    }
                }
                let p = Path::new(IPXE_SCRIPT);
                let mut out = staging.create_file(p, 0o644).map_err(|e| Error::Resource {
                    address: self.address.clone(),
                    reason: if e.kind() == std::io::ErrorKind::AlreadyExists {
                        format!("the image source carries {IPXE_SCRIPT}, which reconcile writes from `ipxe`")
                    } else {
                        e.to_string()
                    },
                })?;
                out.write_all(script.as_bytes())
                    .map_err(|e| Error::io(staging.shown(p), e))?;
                let sha = sha256_bytes(script.as_bytes());
                actual.insert("ipxe".into(), sha.clone());
                written.insert(PathBuf::from(IPXE_SCRIPT), sha);
            }
            // what was read while staging, not what was declared
            let combined = combined(&actual);
            let mut facts: BTreeMap<String, String> = actual;
            facts.insert("target".into(), self.target.display().to_string());
            let location = match &img.source {
                Some(s) => Location::of(s).describe(),
                None => format!(
                    "files: {}",
                    img.files.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            };
            Receipt {
                kind: KIND.into(),
                name: self.name.clone(),
                version: Some(img.release.clone()),
                source: ReceiptSource {
                    location,
                    sha256: combined,
                },
                txn: txn.to_string(),
                installed_at: now_rfc3339(),
                reconcile_version: env!("CARGO_PKG_VERSION").into(),
                facts,
                files: record_tree(staging, &written)?,
            }
            .write(staging)
        })
    }

    /// The target relative to the TFTP root.
    fn rel(&self) -> PathBuf {
        self.target
            .strip_prefix(&self.root)
            .expect("an image is published under its root")
            .to_path_buf()
    }

    /// The TFTP root, opened, with the image's parents made beneath it (never
    /// through a symlink), remembering which ones reconcile created.
    fn open_root(&self, roots: &mut Roots) -> Result<Beneath> {
        fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let root = Beneath::open(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let parent = self
            .rel()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let made = root
            .create_dir_all(&parent, 0o755)
            .map_err(|e| Error::io(root.shown(&parent), e))?;
        for m in made {
            roots.add(CREATED_DIRS, &self.root.join(m));
        }
        Ok(root)
    }

    fn remove(&self, cx: &mut ApplyContext) -> Result<()> {
        let root = Beneath::open(&self.root).map_err(|e| Error::io(&self.root, e))?;
        publish::remove_dir(cx.journal, &self.address, &root, &self.rel())?;
        // empty parents reconcile created go too; anything else (foreign files, other images) keeps them
        let mut dir = self.rel().parent().map(Path::to_path_buf);
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            let full = self.root.join(&d);
            if !cx.roots.of(CREATED_DIRS).any(|c| *c == full) || root.remove_dir(&d).is_err() {
                break;
            }
            if let Some(set) = cx.roots.by_kind.get_mut(CREATED_DIRS) {
                set.remove(&full);
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }
}

impl Resource for ImageResource {
    fn address(&self) -> &str {
        &self.address
    }

    fn location(&self) -> PathBuf {
        self.target.clone()
    }

    fn observe(&self, cx: &Context) -> Result<Observed> {
        let rel = self.target.strip_prefix(&self.root).unwrap_or(&self.target);
        publish::observe(cx, &self.root, rel, KIND, "not published", |r| {
            format!("published ({} files)", r.file_count())
        })
    }

    fn diff(&self, observed: &Observed, cx: &Context) -> Result<Vec<Change>> {
        let state = publish::state(observed);
        let Some(img) = &self.desired else {
            return Ok(publish::orphan_changes(state));
        };
        let change = |action, reason: String| Ok(vec![Change::new(action, reason)]);
        match state {
            _ if !matches!(state, DirState::Foreign) && img.promote.is_some() => {
                match self.gate(img, state, cx)? {
                    Some((c, publish)) => {
                        let mut out = Vec::new();
                        if publish {
                            out.push(Change::new(
                                Action::Create,
                                format!(
                                    "candidate {}: published beside the tree, as {}",
                                    c.what,
                                    self.candidate_rel().display()
                                ),
                            ));
                        }
                        out.push(Change::new(Action::Update, c.reason()).held(c));
                        Ok(out)
                    }
                    None => match state {
                        DirState::Installed { drift, .. } => match publish::drift_reason(drift) {
                            Some(reason) => Ok(vec![Change::new(Action::Update, reason).drift()]),
                            None => Ok(vec![]),
                        },
                        _ => Ok(vec![]),
                    },
                }
            }
            DirState::Absent => {
                let n = img.files.len() + usize::from(img.source.is_some());
                change(Action::Create, format!("not published ({n} source(s))"))
            }
            DirState::Foreign => Err(Error::Foreign {
                address: self.address.clone(),
                path: self.target.clone(),
            }),
            DirState::Installed { receipt, drift } => {
                let wanted = self.wanted(img, cx)?;
                if receipt.source.sha256 != wanted.combined {
                    return change(
                        Action::Update,
                        content_reason(&receipt.facts, &wanted.parts),
                    );
                }
                match publish::drift_reason(drift) {
                    Some(reason) => Ok(vec![Change::new(Action::Update, reason).drift()]),
                    None => Ok(vec![]),
                }
            }
        }
    }

    fn apply(&self, observed: &Observed, cx: &mut ApplyContext) -> Result<()> {
        match (&self.desired, publish::state(observed)) {
            (Some(img), state) => match self.gate(img, state, cx.cx)? {
                Some((c, publish)) => {
                    if publish {
                        self.install(img, &self.candidate_rel(), cx)?;
                    }
                    cx.held.push(c);
                    Ok(())
                }
                None => self.install(img, &self.rel(), cx),
            },
            (None, DirState::Installed { .. }) => self.remove(cx),
            (None, _) => Ok(()),
        }
    }

    /// The candidate is exchanged in (RENAME_EXCHANGE, journaled): PXE
    /// clients see the old tree or the new one, never neither.
    fn promote(&self, c: &Candidate, cx: &mut ApplyContext) -> Result<()> {
        let Some(img) = &self.desired else {
            return Err(Error::Resource {
                address: self.address.clone(),
                reason: "is not declared any more".into(),
            });
        };
        match self.gate(img, &DirState::Absent, cx.cx)? {
            Some((now, false)) if now.inputs == c.inputs => {}
            _ => {
                return Err(Error::Resource {
                    address: self.address.clone(),
                    reason: format!(
                        "candidate {} is not the one beside the tree any more",
                        c.what
                    ),
                })
            }
        }
        let root = self.open_root(cx.roots)?;
        publish::switch_in(
            cx.journal,
            &self.address,
            &root,
            &self.rel(),
            &self.candidate_rel(),
        )
    }

    fn drift_mode(&self) -> DriftMode {
        self.desired.as_ref().map(|d| d.drift).unwrap_or_default()
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        vec![self.target.clone()]
    }

    fn status(&self, observed: &Observed) -> ResourceStatus {
        let installed = match publish::state(observed) {
            DirState::Installed { receipt, drift } => Some(TreeInstalled::of(receipt, drift)),
            _ => None,
        };
        ResourceStatus {
            address: self.address.clone(),
            path: self.target.clone(),
            declared: self.desired.is_some(),
            state: observed.summary.clone(),
            kind: KindStatus::Image { installed },
        }
    }
}

/// Name the first content difference between what is published and what is declared.
fn content_reason(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> String {
    for (k, w) in want {
        let what = match k.strip_prefix("file:") {
            Some(name) => format!("file {name}"),
            None if k == "ipxe" => "iPXE script".to_string(),
            None => "archive".to_string(),
        };
        match have.get(k) {
            None => return format!("{what} added"),
            Some(h) if h != w => {
                return format!(
                    "{what}: sha256 {}… ≠ declared {}…",
                    receipt::short(h),
                    receipt::short(w)
                )
            }
            _ => {}
        }
    }
    let gone = have.keys().find(|k| {
        (k.starts_with("file:") || *k == "ipxe" || *k == "archive") && !want.contains_key(*k)
    });
    match gone {
        Some(k) => format!(
            "{} no longer declared",
            k.strip_prefix("file:")
                .map(|n| format!("file {n}"))
                .unwrap_or_else(|| k.clone())
        ),
        None => "content changed".into(),
    }
}
