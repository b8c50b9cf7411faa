//! Plugins: `<dir>/<name>/` with the executable, a `plugin.json` and a receipt,
//! installed by stage-and-exchange (wfctl's guarantees, journaled).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::publish::{self, DirState};
use super::receipt::{self, record_tree, Receipt, ReceiptSource};
use super::{
    Action, ApplyContext, Change, Context, KindStatus, Observed, PluginInstalled, Resource,
    ResourceStatus, TreeInstalled,
};
use crate::config::model::{DriftMode, Plugin};
use crate::error::{Error, Result};
use crate::fault;
use crate::fsops::beneath::{self, Beneath};
use crate::fsops::{self, digest::sha256_bytes};
use crate::source::{self, archive::Written, Location};
use crate::state::now_rfc3339;

pub const KIND: &str = "plugin";

pub struct PluginResource {
    address: String,
    name: String,
    root: PathBuf,
    /// None: an owned plugin that is no longer declared.
    desired: Option<Plugin>,
}

pub fn resources(cx: &Context) -> Result<Vec<Box<dyn Resource>>> {
    let mut out: Vec<Box<dyn Resource>> = Vec::new();
    // declared names per root
    let mut declared: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for (name, p) in &cx.desired.model.plugin {
        let root = PathBuf::from(p.dir());
        declared
            .entry(root.clone())
            .or_default()
            .insert(name.clone());
        out.push(Box::new(PluginResource {
            address: format!("{KIND}.{name}"),
            name: name.clone(),
            root,
            desired: Some(p.clone()),
        }));
    }
    let roots: BTreeSet<PathBuf> = declared
        .keys()
        .cloned()
        .chain(cx.roots.of(KIND).cloned())
        .collect();
    let none = BTreeSet::new();
    for root in roots {
        // the root's names from the stat index while it is unchanged
        let listed = cx
            .dirs
            .dir_at(&root, Path::new(""))
            .and_then(|found| match found {
                Some((at, st)) => cx.fetcher.index.listing(&at, &st, cx.verify),
                None => Err(std::io::ErrorKind::NotFound.into()),
            });
        let Ok(listed) = listed else {
            continue;
        };
        let here = declared.get(&root).unwrap_or(&none);
        let mut names: Vec<String> = listed
            .iter()
            .map(|(n, _)| n.to_string_lossy())
            .filter(|n| !here.contains(n.as_ref()))
            .map(|n| n.into_owned())
            .collect();
        names.sort();
        for name in names {
            if fsops::is_staging_name(&name) {
                continue;
            }
            let path = root.join(&name);
            // only what carries our receipt is ours to prune; foreign entries are never touched
            if let Some((r, _)) = Receipt::read(&path) {
                if r.kind == KIND && r.name == name {
                    let address = if cx.desired.model.plugin.contains_key(&name) {
                        format!("{KIND}.{name}[{}]", root.display())
                    } else {
                        format!("{KIND}.{name}")
                    };
                    out.push(Box::new(PluginResource {
                        address,
                        name,
                        root: root.clone(),
                        desired: None,
                    }));
                }
            }
        }
    }
    Ok(out)
}

impl PluginResource {
    fn target(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    fn bin(&self) -> String {
        self.desired
            .as_ref()
            .and_then(|p| p.bin.clone())
            .unwrap_or_else(|| self.name.clone())
    }

    fn install(&self, p: &Plugin, cx: &mut ApplyContext) -> Result<()> {
        let mut said = Vec::new();
        let r = source::fresh_on_corrupt_cache(&mut said, || self.install_once(p, cx));
        cx.said.extend(said);
        r
    }

    fn install_once(&self, p: &Plugin, cx: &mut ApplyContext) -> Result<()> {
        // a download is verified on its way into the cache; every source is
        // verified again, in the same pass, while it is staged
        let artifact = cx.cx.fetcher.fetch(&p.source)?;
        fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let root = Beneath::open(&self.root).map_err(|e| Error::io(&self.root, e))?;
        cx.roots.add(KIND, &self.root);
        let limit = cx.cx.desired.extract_limit;
        publish::replace_dir(
            cx.journal,
            &self.address,
            &root,
            Path::new(&self.name),
            |staging, txn| self.stage(p, &artifact, staging, txn, limit),
        )
    }

    /// Build the complete new plugin directory in `staging`, verified.
    fn stage(
        &self,
        p: &Plugin,
        artifact: &source::Artifact,
        staging: &Beneath,
        txn: &str,
        limit: u64,
    ) -> Result<()> {
        let bin = self.bin();
        let strip = p.source.strip_components.unwrap_or(0);
        let staged = source::unpack(artifact, staging, &bin, strip, limit, Default::default())?;
        let mut written = staged.written;
        fault::point(&self.address, "stage-partial");
        if p.source.strip_components.is_none() {
            unwrap_single_dir(staging, &mut written)?;
        }
        normalise_bin(&self.address, staging, &bin, &mut written)?;

        let manifest = Path::new("plugin.json");
        let io = |e: std::io::Error| Error::io(staging.shown(manifest), e);
        if let Some(st) = staging.try_stat(manifest).map_err(io)? {
            if st.kind != beneath::Kind::File {
                return Err(Error::Resource {
                    address: self.address.clone(),
                    reason: format!(
                        "plugin.json in the source is a {}, not a file",
                        beneath::kind_name(st.kind)
                    ),
                });
            }
            let text = staging.read(manifest, 1 << 20).map_err(io)?;
            let doc: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| Error::Resource {
                    address: self.address.clone(),
                    reason: format!("plugin.json in the archive is not valid JSON: {e}"),
                })?;
            let found = doc
                .get("version")
                .and_then(|v| v.as_str())
                .unwrap_or("(none)")
                .to_string();
            if found.trim_start_matches('v') != p.version.trim_start_matches('v') {
                return Err(Error::VersionMismatch {
                    address: self.address.clone(),
                    found,
                    declared: p.version.clone(),
                });
            }
        } else {
            #[derive(serde::Serialize)]
            struct Manifest<'a> {
                name: &'a str,
                version: &'a str,
                bin: &'a str,
            }
            let doc = Manifest {
                name: &self.name,
                version: &p.version,
                bin: &bin,
            };
            let bytes = serde_json::to_vec_pretty(&doc).expect("json");
            let mut f = staging.create_file(manifest, 0o644).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            written.insert(PathBuf::from("plugin.json"), sha256_bytes(&bytes));
        }

        let files = record_tree(staging, &written)?;
        let receipt = Receipt {
            kind: KIND.into(),
            name: self.name.clone(),
            version: Some(p.version.clone()),
            source: ReceiptSource {
                location: Location::of(&p.source).describe(),
                // what was read while staging, not what was declared
                sha256: staged.sha256,
            },
            txn: txn.to_string(),
            installed_at: now_rfc3339(),
            reconcile_version: env!("CARGO_PKG_VERSION").into(),
            facts: BTreeMap::from([("bin".to_string(), bin)]),
            files,
        };
        receipt.write(staging)
    }

    fn remove(&self, cx: &mut ApplyContext) -> Result<()> {
        let root = Beneath::open(&self.root).map_err(|e| Error::io(&self.root, e))?;
        publish::remove_dir(cx.journal, &self.address, &root, Path::new(&self.name))
    }
}

impl Resource for PluginResource {
    fn address(&self) -> &str {
        &self.address
    }

    fn location(&self) -> PathBuf {
        self.target()
    }

    fn observe(&self, cx: &Context) -> Result<Observed> {
        publish::observe(
            cx,
            &self.root,
            Path::new(&self.name),
            KIND,
            "not installed",
            |r| format!("{} installed", r.version.as_deref().unwrap_or("?")),
        )
    }

    fn diff(&self, observed: &Observed, cx: &Context) -> Result<Vec<Change>> {
        let state = publish::state(observed);
        let Some(p) = &self.desired else {
            return Ok(publish::orphan_changes(state));
        };
        let change = |action, reason: String| Ok(vec![Change::new(action, reason)]);
        match state {
            DirState::Absent => change(
                Action::Create,
                format!("not installed (version {})", p.version),
            ),
            DirState::Foreign => Err(Error::Foreign {
                address: self.address.clone(),
                path: self.target(),
            }),
            DirState::Installed { receipt, drift } => {
                let installed = receipt.version.as_deref().unwrap_or("?");
                if installed != p.version {
                    return Ok(vec![Change::new(
                        Action::Update,
                        format!("version {installed} → {}", p.version),
                    )
                    .between(installed, p.version.as_str())]);
                }
                let want = cx.fetcher.expected_digest(&p.source)?;
                if receipt.source.sha256 != want {
                    return Ok(vec![Change::new(
                        Action::Update,
                        format!(
                            "sha256 {}… ≠ declared {}…",
                            receipt::short(&receipt.source.sha256),
                            receipt::short(&want)
                        ),
                    )
                    .between(receipt.source.sha256.as_str(), want.as_str())]);
                }
                let bin = self.bin();
                if receipt.facts.get("bin") != Some(&bin) {
                    return change(
                        Action::Update,
                        format!(
                            "executable `{}` → `{bin}`",
                            receipt.facts.get("bin").map(String::as_str).unwrap_or("?")
                        ),
                    );
                }
                if let Some(reason) = publish::drift_reason(drift) {
                    return Ok(vec![Change::new(Action::Update, reason).drift()]);
                }
                Ok(vec![])
            }
        }
    }

    fn apply(&self, observed: &Observed, cx: &mut ApplyContext) -> Result<()> {
        match (&self.desired, publish::state(observed)) {
            (Some(p), _) => self.install(p, cx),
            (None, DirState::Installed { .. }) => self.remove(cx),
            (None, _) => Ok(()),
        }
    }

    fn drift_mode(&self) -> DriftMode {
        self.desired.as_ref().map(|d| d.drift).unwrap_or_default()
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        vec![self.root.clone(), self.target()]
    }

    fn status(&self, observed: &Observed) -> ResourceStatus {
        let installed = match publish::state(observed) {
            DirState::Installed { receipt, drift } => Some(PluginInstalled {
                installed_version: receipt.version.clone(),
                bin: receipt.facts.get("bin").cloned(),
                tree: TreeInstalled::of(receipt, drift),
            }),
            _ => None,
        };
        ResourceStatus {
            address: self.address.clone(),
            path: self.target(),
            declared: self.desired.is_some(),
            state: observed.summary.clone(),
            kind: KindStatus::Plugin {
                declared_version: self.desired.as_ref().map(|p| p.version.clone()),
                installed,
            },
        }
    }
}

/// An archive holding one directory and nothing else (`kolet_1.2.0_linux_amd64/…`)
/// is unwrapped so the plugin's files sit at the top.
fn unwrap_single_dir(staging: &Beneath, written: &mut Written) -> Result<()> {
    let entries = staging
        .entries()
        .map_err(|e| Error::io(staging.path(), e))?;
    let [(wrapper, beneath::Kind::Dir)] = entries.as_slice() else {
        return Ok(());
    };
    let wrapper = PathBuf::from(wrapper);
    let inner = staging
        .open_dir(&wrapper)
        .map_err(|e| Error::io(staging.shown(&wrapper), e))?;
    for (name, _) in inner.entries().map_err(|e| Error::io(inner.path(), e))? {
        let from = wrapper.join(&name);
        staging
            .rename(&from, Path::new(&name))
            .map_err(|e| Error::io(staging.shown(&from), e))?;
    }
    staging
        .remove_dir(&wrapper)
        .map_err(|e| Error::io(staging.shown(&wrapper), e))?;
    let moved: Written = written
        .drain()
        .map(|(k, v)| {
            (
                k.strip_prefix(&wrapper).map(Path::to_path_buf).unwrap_or(k),
                v,
            )
        })
        .collect();
    *written = moved;
    Ok(())
}

/// Make `<staging>/<bin>` the executable: GoReleaser-style names such as
/// `kolet_1.2.0_linux_amd64` or `kolet-linux-amd64` are renamed to `kolet`.
/// A `bin` that is a symlink makes the file it resolves to (inside the tree)
/// executable; nothing outside the tree is ever touched.
fn normalise_bin(address: &str, staging: &Beneath, bin: &str, written: &mut Written) -> Result<()> {
    let exe = Path::new(bin);
    let io = |e: std::io::Error| Error::io(staging.shown(exe), e);
    let kind = staging.try_stat(exe).map_err(io)?.map(|s| s.kind);
    if kind.is_none() {
        let mut candidates: Vec<String> = staging
            .entries()
            .map_err(|e| Error::io(staging.path(), e))?
            .into_iter()
            .filter(|(_, k)| *k == beneath::Kind::File)
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{bin}_")) || n.starts_with(&format!("{bin}-")))
            .collect();
        candidates.sort();
        match candidates.as_slice() {
            [one] => {
                staging.rename(Path::new(one), exe).map_err(io)?;
                if let Some(sha) = written.remove(Path::new(one)) {
                    written.insert(PathBuf::from(bin), sha);
                }
            }
            [] => {
                return Err(Error::Resource {
                    address: address.into(),
                    reason: format!("the source has no executable `{bin}` (nor `{bin}_*` / `{bin}-*`); set `bin` to its name"),
                })
            }
            many => {
                return Err(Error::Resource {
                    address: address.into(),
                    reason: format!("several candidates for the executable `{bin}`: {}; set `bin` to the right one", many.join(", ")),
                })
            }
        }
    }
    let file = match kind {
        Some(beneath::Kind::Symlink) => {
            beneath::resolve_inside(staging, exe, false).map_err(|why| Error::Resource {
                address: address.into(),
                reason: format!("the executable `{bin}` is a symlink that {why}"),
            })?
        }
        _ => exe.to_path_buf(),
    };
    match staging.try_stat(&file).map_err(io)? {
        Some(s) if s.kind == beneath::Kind::File => {}
        _ => {
            return Err(Error::Resource {
                address: address.into(),
                reason: format!("the executable `{bin}` is not a regular file in the source"),
            })
        }
    }
    staging.set_mode(&file, 0o755).map_err(io)
}
