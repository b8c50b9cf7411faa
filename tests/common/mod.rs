//! Test helpers: run the real binary in a temp farm, serve files over real
//! HTTP on 127.0.0.1, build (hostile) archives, and snapshot trees.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_reconcile");

mod cloud;
#[allow(unused_imports)]
pub use cloud::*;
mod git;
#[allow(unused_imports)]
pub use git::*;

/// Run a tool the test relies on; its stdout. A failure fails the test with
/// the command and what it printed.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Skip a test whose component is missing, loudly; under CI (`RECONCILE_REQUIRE_ALL=1`) fail instead.
pub fn skip(reason: &str) {
    if std::env::var("RECONCILE_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("required component missing (RECONCILE_REQUIRE_ALL=1): {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

pub struct Farm {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: o.status.code(),
            signal: o.status.signal(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Farm {
    pub fn new() -> Farm {
        Farm {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        p
    }

    pub fn desired(&self, toml: &str) {
        self.write("reconcile.toml", toml);
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path())
            .args(args)
            .env_remove("RECONCILE_FAULT")
            .env("NO_COLOR", "1");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().unwrap())
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.output().unwrap())
    }

    /// Every path under the farm (optionally excluding a subtree) with kind, size, content digest and inode.
    pub fn snapshot(&self, exclude: &[&str]) -> BTreeMap<PathBuf, String> {
        snapshot(self.dir.path(), exclude)
    }

    /// Names in `dir` that are staging or retired leftovers.
    pub fn leftovers(&self, dir: &str) -> Vec<String> {
        match fs::read_dir(self.path(dir)) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".reconcile-"))
                .collect(),
            Err(_) => vec![],
        }
    }
}

pub fn snapshot(root: &Path, exclude: &[&str]) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, rel: &Path, exclude: &[&str], out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            if exclude.iter().any(|x| r.starts_with(x)) {
                continue;
            }
            let m = fs::symlink_metadata(root.join(&r)).unwrap();
            let desc = if m.is_dir() {
                walk(root, &r, exclude, out);
                format!("dir {:o} ino {}", m.permissions().mode(), m.ino())
            } else if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(root.join(&r)).unwrap().display())
            } else {
                let data = fs::read(root.join(&r)).unwrap();
                format!(
                    "file {:o} {} {} ino {} mtime {}",
                    m.permissions().mode(),
                    data.len(),
                    sha(&data),
                    m.ino(),
                    m.mtime_nsec()
                )
            };
            out.insert(r, desc);
        }
    }
    walk(root, Path::new(""), exclude, &mut out);
    out
}

pub fn sha(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

pub fn sha_file(p: &Path) -> String {
    sha(&fs::read(p).unwrap())
}

// ---------- archives ----------

pub enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
    Fifo(&'a str),
}

/// A tar stream with raw names written straight into the header, so hostile
/// names (`../x`, `/etc/x`) get through the builder untouched.
pub fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, data): (&str, &[u8]) = match e {
            Entry::File(n, d, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(d.len() as u64);
                (n, d)
            }
            Entry::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                (n, &[])
            }
            Entry::Symlink(n, t) | Entry::HardLink(n, t) => {
                h.set_entry_type(if matches!(e, Entry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                h.set_size(0);
                let raw = &mut h.as_old_mut().linkname;
                raw[..t.len()].copy_from_slice(t.as_bytes());
                (n, &[])
            }
            Entry::CharDevice(n) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o644);
                h.set_size(0);
                (n, &[])
            }
            Entry::Fifo(n) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o644);
                h.set_size(0);
                (n, &[])
            }
        };
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zst(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// A zip with raw names; `Symlink` entries carry the unix symlink mode.
pub fn zip_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for e in entries {
        match e {
            Entry::File(n, d, mode) => {
                let o = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
                w.start_file(*n, o).unwrap();
                w.write_all(d).unwrap();
            }
            Entry::Dir(n) => w
                .add_directory(*n, zip::write::SimpleFileOptions::default())
                .unwrap(),
            Entry::Symlink(n, t) => w
                .add_symlink(*n, *t, zip::write::SimpleFileOptions::default())
                .unwrap(),
            _ => panic!("not supported in zip fixtures"),
        }
    }
    w.finish().unwrap().into_inner()
}

/// A plugin archive: the GoReleaser layout with a binary that prints its version.
pub fn plugin_tgz(name: &str, version: &str, manifest_version: Option<&str>) -> Vec<u8> {
    let script = format!("#!/bin/sh\necho {name} {version}\n");
    let bin = format!("{name}_{version}_linux_amd64");
    let manifest = manifest_version.map(|v| format!("{{\"name\":\"{name}\",\"version\":\"{v}\"}}"));
    let mut entries = vec![
        Entry::File(&bin, script.as_bytes(), 0o755),
        Entry::File("README.md", b"docs\n", 0o644),
    ];
    if let Some(m) = &manifest {
        entries.push(Entry::File("plugin.json", m.as_bytes(), 0o644));
    }
    gz(&tar_bytes(&entries))
}

// ---------- HTTP ----------

/// A real HTTP server on 127.0.0.1 serving files from a directory, counting requests.
pub struct Http {
    pub base: String,
    pub hits: Arc<AtomicUsize>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Http {
    pub fn serve(root: &Path) -> Http {
        Self::serve_slow(root, Duration::ZERO)
    }

    /// Every response is delayed by `delay` (to keep an apply busy).
    pub fn serve_slow(root: &Path, delay: Duration) -> Http {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h, root) = (server.clone(), hits.clone(), root.to_path_buf());
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                h.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(delay);
                let path = root.join(req.url().trim_start_matches('/'));
                let _ = match fs::File::open(&path) {
                    Ok(f) => req.respond(tiny_http::Response::from_file(f)),
                    Err(_) => req.respond(
                        tiny_http::Response::from_string("not found").with_status_code(404),
                    ),
                };
            }
        });
        Http {
            base: format!("http://127.0.0.1:{port}"),
            hits,
            server,
            thread: Some(thread),
        }
    }

    pub fn url(&self, rel: &str) -> String {
        format!("{}/{rel}", self.base)
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn make_executable(p: &Path) {
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

// ---------- machines: a real btrfs loop mount and busybox root filesystems ----------

/// The repository's `examples/` as a fresh clone has it (nothing a run made), copied to `to`.
pub fn copy_examples(to: &Path) {
    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if [".reconcile", "plugins", "tftp", "machines"].contains(&name.as_str()) {
                continue;
            }
            let (s, d) = (e.path(), to.join(&name));
            if e.file_type().unwrap().is_dir() {
                copy_dir(&s, &d);
            } else {
                fs::copy(&s, &d).unwrap();
            }
        }
    }
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"), to);
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Run `cmd` as an ordinary user (nobody): when the tests run as root, the farm
/// is handed to uid 65534 and the command drops to it.
pub fn as_ordinary_user(farm: &Farm, cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(farm.dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown failed");
        cmd.uid(65534).gid(65534);
    }
}

/// A btrfs filesystem on a loop device, mounted for the test and unmounted after.
/// The btrfs CLI, insisted on (its stdout).
pub fn btrfs(args: &[&str]) -> String {
    stdout_of(Command::new("btrfs").args(args))
}

pub struct BtrfsMount {
    pub dir: tempfile::TempDir,
    image: PathBuf,
}

impl BtrfsMount {
    /// None (after a visible skip, or a failure under CI) when root, btrfs-progs or loop devices are missing.
    pub fn new() -> Option<BtrfsMount> {
        if !is_root() {
            skip("btrfs tests need root (loop mount, subvolume ioctls)");
            return None;
        }
        let mkfs = [
            "/usr/sbin/mkfs.btrfs",
            "/sbin/mkfs.btrfs",
            "/usr/bin/mkfs.btrfs",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists());
        let Some(mkfs) = mkfs else {
            skip("mkfs.btrfs missing (apt-get install btrfs-progs; scripts/test does it)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().with_extension("btrfs.img");
        let f = fs::File::create(&image).unwrap();
        f.set_len(1 << 30).unwrap();
        drop(f);
        let ok = Command::new(mkfs)
            .args(["-q", "-f"])
            .arg(&image)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "mkfs.btrfs failed");
        let mount = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(dir.path())
            .output()
            .unwrap();
        if !mount.status.success() {
            let _ = fs::remove_file(&image);
            skip(&format!(
                "cannot loop-mount a btrfs image here: {}",
                String::from_utf8_lossy(&mount.stderr).trim()
            ));
            return None;
        }
        Some(BtrfsMount { dir, image })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A farm directory on the btrfs filesystem.
    pub fn farm(&self) -> Farm {
        Farm {
            dir: tempfile::tempdir_in(self.dir.path()).unwrap(),
        }
    }
}

impl Drop for BtrfsMount {
    fn drop(&mut self) {
        for _ in 0..50 {
            if Command::new("umount")
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success())
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = fs::remove_file(&self.image);
    }
}

/// Build a busybox root filesystem (tests/fixtures/make-rootfs.sh) at `rel` in the farm; None after a skip.
pub fn rootfs(farm: &Farm, rel: &str, marker: &str) -> Option<PathBuf> {
    let out = farm.path(rel);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-rootfs.sh");
    let r = Command::new("bash")
        .arg(script)
        .arg(&out)
        .arg(marker)
        .output()
        .unwrap();
    if !r.status.success() {
        skip(&format!(
            "cannot build a test rootfs: {}",
            String::from_utf8_lossy(&r.stderr).trim()
        ));
        return None;
    }
    Some(out)
}

/// The same root filesystem as a .tar.gz in the farm.
pub fn rootfs_tar(farm: &Farm, rel: &str, marker: &str) -> Option<PathBuf> {
    let dir = rootfs(farm, &format!("{rel}.d"), marker)?;
    let tar = farm.path(rel);
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-czf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar failed");
    fs::remove_dir_all(&dir).unwrap();
    Some(tar)
}

// ---------- QEMU guests built from Debian packages ----------

/// The test guest of tests/fixtures/make-guest.sh, built once into
/// target/guest (kernel, busybox initramfs, raw and qcow2 BIOS disks).
pub struct Guest {
    pub dir: PathBuf,
}

impl Guest {
    /// None (after a visible skip, or a failure under CI) when QEMU or the
    /// tools the fixture needs are missing.
    pub fn get() -> Option<Guest> {
        static BUILT: Built = std::sync::Mutex::new(None);
        if !have_tools(&[("qemu-system-x86_64", "qemu-system-x86")]) {
            return None;
        }
        match build_fixture(&BUILT, "make-guest.sh", &[], "guest") {
            Ok(dir) => Some(Guest { dir }),
            Err(e) => {
                skip(&format!("cannot build the test guest: {e}"));
                None
            }
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Copy a guest file into the farm (sources are relative to the farm).
    pub fn copy_to(&self, farm: &Farm, name: &str, rel: &str) -> String {
        let to = farm.path(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(self.file(name), &to).unwrap();
        sha_file(&to)
    }
}

/// The Debian 12 guest of tests/fixtures/make-debian.sh (systemd, getty on
/// ttyS0, cloud-init, one disk that boots by BIOS and by UEFI), built once
/// into target/debian-guest and rebuilt when the script changes.
pub struct DebianGuest {
    pub disk: PathBuf,
}

impl DebianGuest {
    pub fn get() -> Option<DebianGuest> {
        static BUILT: Built = std::sync::Mutex::new(None);
        let tools = [
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("mmdebstrap", "mmdebstrap"),
        ];
        if !have_tools(&tools) {
            return None;
        }
        match build_fixture(&BUILT, "make-debian.sh", &[], "debian-guest") {
            Ok(dir) => Some(DebianGuest {
                disk: dir.join("debian.qcow2"),
            }),
            Err(e) => {
                skip(&format!("cannot build the Debian guest: {e}"));
                None
            }
        }
    }
}

/// The busybox guest for arm64 (tests/fixtures/make-guest.sh DIR arm64):
/// Debian's arm64 kernel and busybox, systemd-boot on a UEFI disk, built
/// once into target/guest-arm64.
pub struct Arm64Guest {
    pub disk: PathBuf,
}

impl Arm64Guest {
    pub fn get() -> Option<Arm64Guest> {
        static BUILT: Built = std::sync::Mutex::new(None);
        if !have_tools(&[("qemu-system-aarch64", "qemu-system-arm")]) {
            return None;
        }
        if !Path::new("/usr/share/AAVMF/AAVMF_CODE.fd").exists() {
            skip("no UEFI firmware for aarch64 (apt-get install qemu-efi-aarch64; scripts/test does it)");
            return None;
        }
        match build_fixture(&BUILT, "make-guest.sh", &["arm64"], "guest-arm64") {
            Ok(dir) => Some(Arm64Guest {
                disk: dir.join("disk.img"),
            }),
            Err(e) => {
                skip(&format!("cannot build the arm64 test guest: {e}"));
                None
            }
        }
    }
}

/// What a fixture build gave, once per test binary.
type Built = std::sync::Mutex<Option<Result<PathBuf, String>>>;

/// Every tool there, or a visible skip (a failure under CI) naming the first missing one.
fn have_tools(tools: &[(&str, &str)]) -> bool {
    for (tool, package) in tools {
        if Command::new(tool).arg("--version").output().is_err() {
            skip(&format!(
                "{tool} missing (apt-get install {package}; scripts/test does it)"
            ));
            return false;
        }
    }
    true
}

/// Run tests/fixtures/`script` into target/`dir` once per test binary; test
/// binaries run side by side, so one builds under a lock and the others wait
/// (the script itself does nothing when its stamp says it is up to date).
fn build_fixture(built: &Built, script: &str, args: &[&str], dir: &str) -> Result<PathBuf, String> {
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    built
        .get_or_insert_with(|| {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
            let dir = repo.join("target").join(dir);
            fs::create_dir_all(&dir).unwrap();
            let lock = fs::File::create(dir.with_extension("lock")).unwrap();
            nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e.to_string())
                .and_then(|_held| {
                    let out = Command::new("bash")
                        .arg(repo.join("tests/fixtures").join(script))
                        .arg(&dir)
                        .args(args)
                        .output()
                        .map_err(|e| e.to_string())?;
                    if out.status.success() {
                        Ok(dir)
                    } else {
                        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
                    }
                })
        })
        .clone()
}

/// QEMU processes whose command line mentions `needle` (a farm's path).
pub fn qemu_processes(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("qemu-system") && cmdline.contains(&needle) {
            out.push(cmdline);
        }
    }
    out
}

/// Wait (up to 30 s) until no QEMU mentions `needle`; the ones still there.
pub fn no_qemu_left(needle: &Path) -> Vec<String> {
    for _ in 0..300 {
        let left = qemu_processes(needle);
        if left.is_empty() {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    qemu_processes(needle)
}

// ---------- test runs ----------

impl Farm {
    /// The `report.json` of the latest test run.
    pub fn report(&self) -> serde_json::Value {
        let text = fs::read_to_string(self.path(".reconcile/runs/latest/report.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// Wait (polling) until `ready` holds; panic naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Send SIGINT to a child, as Ctrl-C would.
pub fn interrupt(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
}

/// Processes whose command line contains `needle`.
pub fn processes(needle: &str) -> Vec<i32> {
    processes_where(|cmd| cmd.contains(needle))
}

/// Processes whose command line (arguments joined by spaces) starts with `prefix`:
/// the program itself, not a shell that names it in its script.
pub fn processes_starting(prefix: &str) -> Vec<i32> {
    processes_where(|cmd| cmd.starts_with(prefix))
}

pub fn processes_where(pred: impl Fn(&str) -> bool) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            pred(&String::from_utf8_lossy(&cmd).replace('\0', " ")).then_some(pid)
        })
        .collect()
}
