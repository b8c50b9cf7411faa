//! Booted snapshots (`suite.fresh = "restore"`): a disk machine booted
//! once, logged in with its command channel up, paused and saved — a frozen
//! overlay and QEMU's saved state — so every later test gets a machine in
//! the state "just booted" for the cost of loading that state.
//!
//! Under the state directory, `booted/<machine>/<key>/` holds `disk.qcow2`
//! (the frozen overlay, read-only, backed by the revision's image),
//! `state` (QEMU's migration stream), `meta.json`, and what the saved VM
//! was started with and a restored one must have the same of: the UEFI
//! variables (`vars.fd`), the cloud-init seed (`seed.img`), the ssh key
//! (`ssh/`). The key is a digest of everything that makes the state what it
//! is: the revision's image (path, inode, size, mtime — entries never
//! change in place), the VM and console settings, the user data and the
//! QEMU version. A key's directory appears whole or not at all (made under
//! a temporary name and renamed); one process builds it while others wait
//! on its lock.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the saved VM is made of, for the key.
pub struct Inputs<'a> {
    pub base_image: &'a Path,
    pub settings: String,
    pub user_data: Option<&'a str>,
    pub program: &'a str,
}

/// The first line of `program --version`, once per program and process.
pub fn qemu_version(program: &str) -> String {
    static SEEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, v)) = seen.iter().find(|(p, _)| p == program) {
        return v.clone();
    }
    let v = std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    seen.push((program.to_string(), v.clone()));
    v
}

pub fn key(i: &Inputs) -> io::Result<String> {
    let m = std::fs::metadata(i.base_image)?;
    let mut h = Sha256::new();
    let mut part = |s: &[u8]| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s);
    };
    part(i.base_image.as_os_str().as_encoded_bytes());
    part(
        format!(
            "{} {} {} {}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000
        )
        .as_bytes(),
    );
    part(i.settings.as_bytes());
    part(i.user_data.unwrap_or("").as_bytes());
    part(qemu_version(i.program).as_bytes());
    Ok(hex::encode(&h.finalize()[..8]))
}

/// `meta.json`: what `status` and retention read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub machine: String,
    pub revision: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<String>,
    /// The image the frozen overlay reads through.
    pub base_image: PathBuf,
    pub qemu: String,
    pub created: String,
    /// How long the boot took that made it.
    pub boot_ms: u64,
}

/// One machine's booted snapshots.
pub struct Store {
    pub root: PathBuf,
}

/// A saved, loadable booted snapshot.
#[derive(Debug, Clone)]
pub struct Saved {
    pub dir: PathBuf,
}

impl Saved {
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn vars(&self) -> Option<PathBuf> {
        Some(self.dir.join("vars.fd")).filter(|p| p.exists())
    }
    pub fn seed(&self) -> Option<PathBuf> {
        Some(self.dir.join("seed.img")).filter(|p| p.exists())
    }
    pub fn ssh(&self) -> Option<PathBuf> {
        Some(self.dir.join("ssh")).filter(|p| p.exists())
    }
    /// Which state file this is (a rebuilt one is another inode).
    pub fn state_id(&self) -> Option<u64> {
        std::fs::metadata(self.state()).ok().map(|m| m.ino())
    }
}

impl Store {
    pub fn new(state_booted: &Path, machine: &str) -> Store {
        Store {
            root: state_booted.join(machine),
        }
    }

    /// The key's lock: exclusive while its snapshot is checked, made or
    /// removed, shared while a restore reads it (so no rebuild replaces the
    /// state under a loading QEMU); `waiting` is called once if it must
    /// wait, `cancelled` is polled.
    pub fn lock(
        &self,
        key: &str,
        shared: bool,
        mut waiting: impl FnMut(),
        cancelled: impl Fn() -> bool,
    ) -> io::Result<Option<Flock<File>>> {
        std::fs::create_dir_all(&self.root)?;
        let path = self.root.join(format!("{key}.lock"));
        let mut told = false;
        loop {
            let f = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            let how = if shared {
                FlockArg::LockSharedNonblock
            } else {
                FlockArg::LockExclusiveNonblock
            };
            match Flock::lock(f, how) {
                Ok(l) => return Ok(Some(l)),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if cancelled() {
                        return Ok(None);
                    }
                    if !told {
                        waiting();
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((_, e)) => return Err(e.into()),
            }
        }
    }

    pub fn find(&self, key: &str) -> Option<Saved> {
        let dir = self.root.join(key);
        let s = Saved { dir };
        (s.state().is_file() && s.disk().is_file() && s.dir.join("meta.json").is_file())
            .then_some(s)
    }

    /// A new, empty directory to build `key` in.
    pub fn begin(&self, key: &str) -> io::Result<PathBuf> {
        let tmp = self
            .root
            .join(format!(".{key}.tmp-{}", super::driver::nonce()));
        std::fs::create_dir_all(&tmp)?;
        Ok(tmp)
    }

    /// The built directory becomes `key` (replacing one that did not load).
    pub fn commit(&self, tmp: &Path, key: &str, meta: &Meta) -> io::Result<Saved> {
        std::fs::write(
            tmp.join("meta.json"),
            serde_json::to_vec_pretty(meta).map_err(io::Error::other)?,
        )?;
        // the frozen overlay never changes again: later overlays read through it
        let disk = tmp.join("disk.qcow2");
        let mut perm = std::fs::metadata(&disk)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
        std::fs::set_permissions(&disk, perm)?;
        let to = self.root.join(key);
        self.discard(key);
        std::fs::rename(tmp, &to)?;
        Ok(Saved { dir: to })
    }

    /// Remove `key`'s snapshot (it does not load).
    pub fn discard(&self, key: &str) {
        let _ = std::fs::remove_dir_all(self.root.join(key));
    }
}

/// Every booted snapshot under `booted`: (dir, meta, bytes on disk).
pub fn list(booted: &Path) -> Vec<(PathBuf, Meta, u64)> {
    let mut out = Vec::new();
    let Ok(machines) = std::fs::read_dir(booted) else {
        return out;
    };
    for m in machines.flatten() {
        let Ok(keys) = std::fs::read_dir(m.path()) else {
            continue;
        };
        for k in keys.flatten() {
            let dir = k.path();
            if k.file_name().to_string_lossy().starts_with('.') {
                continue; // being made
            }
            let Some(meta) = std::fs::read(dir.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
            else {
                continue;
            };
            let size = walkdir::WalkDir::new(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum();
            out.push((dir, meta, size));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Remove the booted snapshots whose revision image is gone (retention
/// deleted the revision) and half-made ones no process is making; the
/// directories removed.
pub fn prune(booted: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for (dir, meta, _) in list(booted) {
        if !meta.base_image.exists() && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    let Ok(machines) = std::fs::read_dir(booted) else {
        return removed;
    };
    for m in machines.flatten() {
        let Ok(entries) = std::fs::read_dir(m.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name
                .strip_prefix('.')
                .and_then(|n| n.split_once(".tmp-"))
                .map(|(k, _)| k.to_string())
            else {
                continue;
            };
            // a build in progress holds its key's lock
            let lock = m.path().join(format!("{key}.lock"));
            let free = File::options()
                .write(true)
                .open(&lock)
                .ok()
                .and_then(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).ok());
            if free.is_some() || !lock.exists() {
                let _ = std::fs::remove_dir_all(e.path());
                removed.push(e.path());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_image_the_settings_and_the_user_data() {
        let dir = std::env::temp_dir().join(format!("rc-booted-{}", super::super::driver::nonce()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("disk.img");
        std::fs::write(&img, b"one").unwrap();
        let inputs = |settings: &str, ud: Option<&'static str>| Inputs {
            base_image: Box::leak(img.clone().into_boxed_path()),
            settings: settings.into(),
            user_data: ud,
            program: "true",
        };
        let a = key(&inputs("vm=1", None)).unwrap();
        assert_eq!(a, key(&inputs("vm=1", None)).unwrap(), "stable");
        assert_ne!(a, key(&inputs("vm=2", None)).unwrap());
        assert_ne!(a, key(&inputs("vm=1", Some("#cloud-config"))).unwrap());
        std::fs::remove_file(&img).unwrap();
        std::fs::write(&img, b"two, longer").unwrap();
        assert_ne!(a, key(&inputs("vm=1", None)).unwrap(), "a new image");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn snapshots_of_gone_revisions_and_abandoned_builds_are_pruned() {
        let root = std::env::temp_dir().join(format!("rc-prune-{}", super::super::driver::nonce()));
        let store = Store::new(&root, "kit");
        let live_image = root.join("kit-1.img");
        std::fs::create_dir_all(&store.root).unwrap();
        std::fs::write(&live_image, b"x").unwrap();
        for (key, base) in [
            ("live", live_image.clone()),
            ("gone", root.join("kit-0.img")),
        ] {
            let tmp = store.begin(key).unwrap();
            std::fs::write(tmp.join("disk.qcow2"), b"q").unwrap();
            std::fs::write(tmp.join("state"), b"s").unwrap();
            let meta = Meta {
                machine: "kit".into(),
                revision: 1,
                toolchain: None,
                base_image: base,
                qemu: "QEMU 7.2".into(),
                created: "now".into(),
                boot_ms: 1,
            };
            store.commit(&tmp, key, &meta).unwrap();
        }
        let abandoned = store.begin("half").unwrap();
        let held = store.lock("busy", false, || {}, || false).unwrap();
        let building = store.begin("busy").unwrap();
        let removed = prune(&root);
        assert!(store.find("live").is_some());
        assert!(store.find("gone").is_none());
        assert!(!abandoned.exists(), "{removed:?}");
        assert!(building.exists(), "a build holding its lock stays");
        drop(held);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
