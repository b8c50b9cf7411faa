//! Pull-based GitOps against real git repositories on disk, served over
//! file:// and over `git daemon` on 127.0.0.1: a commit is applied by watch
//! within its interval, an invalid file and a rewound ref are refused with
//! the last good state kept, unsigned commits are refused when signatures are
//! verified (ssh keys generated here), and a remote that goes away and comes
//! back is retried.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn watch_applies_new_commits_keeps_the_last_good_one_and_refuses_a_rewind() {
    let f = Fleet::new();
    let first = f.commit(&["a"], "");
    let url = f.url();
    let w = f.watch(&url, &[]);
    wait_until("the first commit was not applied", LIMIT, || {
        f.installed("a")
    });
    // the state dir is beside the checkout, never inside it
    assert!(f.checkout.join(".reconcile").is_dir());
    assert!(!f.checkout.join("repo/.reconcile").exists());

    // a new commit: applied within the interval
    let second = f.commit(&["a", "b"], "");
    wait_until("the second commit was not applied", LIMIT, || {
        f.installed("b")
    });
    wait_until("status never showed the second commit", LIMIT, || {
        f.status(&url)["git"]["applied"] == second.as_str()
    });

    // a commit with an invalid file: the last good state stays in force
    fs::write(
        f.origin.join("farm.toml"),
        "version = 1\n[plugin.c]\nversion = 1\n",
    )
    .unwrap();
    git(&f.origin, &["commit", "-qam", "broken"]);
    let broken = git(&f.origin, &["rev-parse", "HEAD"]);
    wait_until("the broken commit was never refused", LIMIT, || {
        let st = f.status(&url);
        st["git"]["fetched"] == broken.as_str() && st["git"]["last_error"].is_string()
    });
    let st = f.status(&url);
    assert_eq!(st["git"]["applied"], second.as_str(), "{st}");
    assert!(
        st["git"]["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid desired-state file"),
        "{st}"
    );
    assert!(f.installed("a") && f.installed("b"));
    // the checkout is back at the good commit: a resync does not prune anything
    std::thread::sleep(Duration::from_millis(900));
    assert!(f.installed("b"));

    // a force-push that rewinds the ref to before the applied commit: refused
    git(&f.origin, &["reset", "-q", "--hard", &first]);
    wait_until("the rewind was never refused", LIMIT, || {
        let st = f.status(&url);
        st["git"]["fetched"] == first.as_str()
            && st["git"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("does not descend"))
    });
    std::thread::sleep(Duration::from_millis(700));
    let st = f.status(&url);
    assert_eq!(st["git"]["applied"], second.as_str(), "{st}");
    assert!(
        st["git"]["last_error"]
            .as_str()
            .unwrap()
            .contains("does not descend"),
        "{st}"
    );
    assert!(f.installed("b"), "a refused rewind pruned b");
    let log = stop(w);
    assert!(log.contains("\"event\":\"commit\""), "{log}");
    assert!(log.contains("not applied"), "{log}");

    // --allow-rewind takes it (once): b goes
    let mut a = vec!["apply", "--allow-rewind"];
    a.extend(f.args(&url));
    f.farm.run(&a).expect(0);
    assert!(!f.installed("b") && f.installed("a"));
    assert_eq!(f.status(&url)["git"]["applied"], first.as_str());
}

#[test]
fn with_signatures_verified_an_unsigned_commit_is_refused_and_a_signed_one_applied() {
    if Command::new("ssh-keygen").arg("-?").output().is_err() {
        skip("needs ssh-keygen (openssh-client)");
        return;
    }
    let f = Fleet::new();
    let (key, signers) = keys(&f.farm.path(""));
    let url = f.url();
    let mut args = vec!["apply", "--verify-signatures", signers.to_str().unwrap()];
    args.extend(f.args(&url));

    // unsigned: never applied, and it says which commit and why
    let unsigned = f.commit(&["a"], "");
    let r = f.farm.run(&args);
    r.expect(1);
    assert!(
        r.stderr.contains(&unsigned[..12]) && r.stderr.contains("it has no signature"),
        "{}",
        r.stderr
    );
    assert!(!f.installed("a"));

    // signed by the trusted key: applied
    fs::write(f.origin.join("src/a"), "#!/bin/sh\necho signed\n").unwrap();
    git(
        &f.origin,
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &format!("user.signingkey={}", key.display()),
            "commit",
            "-qam",
            "signed",
            "-S",
        ],
    );
    let signed = git(&f.origin, &["rev-parse", "HEAD"]);
    f.farm.run(&args).expect(0);
    assert!(f.installed("a"));
    assert_eq!(f.status(&url)["git"]["applied"], signed.as_str());

    // signed by a key the file does not trust: refused, the signed commit stays in force
    let (other, _) = keys(&f.farm.path("host"));
    fs::write(f.origin.join("src/a"), "#!/bin/sh\necho intruder\n").unwrap();
    git(
        &f.origin,
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &format!("user.signingkey={}", other.display()),
            "commit",
            "-qam",
            "intruder",
            "-S",
        ],
    );
    // (exit 1: the host converged on the last good commit, and the newest was not taken)
    let r = f.farm.run(&args);
    r.expect(1);
    assert!(
        r.stderr.contains("not applied") && r.stderr.contains("signed by a key not in"),
        "{}",
        r.stderr
    );
    assert!(fs::read_to_string(f.plugins.join("a/a"))
        .unwrap()
        .contains("signed"));
    assert_eq!(f.status(&url)["git"]["applied"], signed.as_str());
}

/// `git daemon` serving `base` on a free port of 127.0.0.1.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Daemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = git_daemon(base, port);
        wait_until("git daemon did not start", LIMIT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Daemon { child, port }
    }
}

/// git daemon in a process group of its own: the children serving connections go with it.
fn git_daemon(base: &Path, port: u16) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

#[test]
fn over_git_daemon_a_remote_that_goes_away_keeps_the_last_good_state_and_is_retried() {
    let f = Fleet::new();
    f.commit(&["a"], "");
    let daemon = Daemon::start(&f.farm.path(""));
    let url = format!("git://127.0.0.1:{}/origin", daemon.port);
    let w = f.watch(&url, &[]);
    wait_until("the first commit was not applied", LIMIT, || {
        f.installed("a")
    });
    // the remote goes away
    drop(daemon);
    let second = f.commit(&["a", "b"], "");
    wait_until("the unreachable remote was never reported", LIMIT, || {
        f.status(&url)["git"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("git fetch failed"))
    });
    assert!(f.installed("a") && !f.installed("b"));
    // back on the same port: the next try applies what was committed meanwhile
    let port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let back = Daemon {
        child: git_daemon(&f.farm.path(""), port),
        port,
    };
    wait_until(
        "the remote came back but b was never applied",
        Duration::from_secs(60),
        || f.installed("b"),
    );
    wait_until("status never showed the commit", LIMIT, || {
        f.status(&url)["git"]["applied"] == second.as_str()
    });
    assert!(f.status(&url)["git"]["last_error"].is_null());
    let log = stop(w);
    assert!(log.contains("keeping the last good state"), "{log}");
    drop(back);
}

#[test]
fn plan_with_git_previews_the_commit_and_changes_nothing() {
    let f = Fleet::new();
    let commit = f.commit(&["a"], "");
    let url = f.url();
    let mut a = vec!["plan"];
    a.extend(f.args(&url));
    let r = f.farm.run(&a);
    r.expect(2);
    assert!(r.stdout.contains("+ plugin.a"), "{}", r.stdout);
    assert!(r.stderr.contains(&commit[..12]), "{}", r.stderr);
    assert!(!f.installed("a"));
    assert!(f.status(&url)["git"]["applied"].is_null());
    // a URL that looks like an option is refused, not passed to git as one
    let checkout = format!("--checkout={}", f.checkout.display());
    let r = f.farm.run(&[
        "plan",
        "--git=--upload-pack=touch /tmp/pwned",
        "--path",
        "farm.toml",
        &checkout,
    ]);
    r.expect(1);
    assert!(r.stderr.contains("may not start with `-`"), "{}", r.stderr);
}

// ---------- host selection ----------

fn selected_farm() -> Farm {
    let farm = Farm::new();
    for p in ["a", "b", "c", "d"] {
        farm.write(&format!("src/{p}"), format!("#!/bin/sh\necho {p}\n"));
    }
    farm.write("labels", "# this host\narch = arm64\n");
    fs::create_dir_all(farm.path("rootfs/etc")).unwrap();
    farm.write("rootfs/etc/os-release", "ID=test\n");
    farm.desired(
        r#"version = 1
[settings]
labels_file = "labels"
[plugin.a]
version = "1"
source = { path = "src/a" }
hosts = ["build-*"]
[plugin.b]
version = "1"
source = { path = "src/b" }
hosts = ["!build-arm-*"]
[plugin.c]
version = "1"
source = { path = "src/c" }
hosts = ["label:arch=arm64", "!test-*"]
[plugin.d]
version = "1"
source = { path = "src/d" }
[volume.keep]
path = "machines"
backend = "dir"
prune = "none"
[machine.m]
volume = "keep"
revision = 1
source = { dir = "rootfs" }
hosts = ["build-*"]
"#,
    );
    farm
}

fn plugins(farm: &Farm) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(farm.path("plugins"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn one_file_gives_each_host_its_own_resources_and_plan_previews_several_hosts() {
    let farm = selected_farm();
    let p = farm.run(&["plan", "--hostname", "build-arm-1"]);
    p.expect(2);
    assert!(
        p.stdout.contains("+ plugin.a")
            && p.stdout.contains("+ plugin.c")
            && p.stdout.contains("+ plugin.d"),
        "{}",
        p.stdout
    );
    assert!(
        p.stdout
            .contains("= plugin.b: not for this host (build-arm-1 matches !build-arm-*)"),
        "{}",
        p.stdout
    );
    farm.run(&["apply", "--hostname", "build-1"]).expect(0);
    assert_eq!(plugins(&farm), ["a", "b", "c", "d"]);
    assert!(farm.path("machines/m/m-1").is_dir());

    // several hosts in one preview
    let r = farm.run(&[
        "plan",
        "--json",
        "--hostname",
        "build-1",
        "--hostname",
        "test-1",
    ]);
    r.expect(2);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc[0]["host"], "build-1");
    assert_eq!(
        doc[0]["plan"]["summary"]["create"], 0,
        "build-1 is converged: {doc}"
    );
    assert_eq!(doc[1]["host"], "test-1");
    let skipped: Vec<&str> = doc[1]["plan"]["not_for_host"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["address"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, ["machine.m", "plugin.a", "plugin.c"]);

    // this host becoming test-1: owned plugins not for it are pruned; the
    // machine stays because its volume says prune = "none"
    let r = farm.run(&["apply", "--hostname", "test-1"]);
    r.expect(0);
    assert_eq!(plugins(&farm), ["b", "d"], "{}", r.all());
    assert!(
        farm.path("machines/m/m-1").is_dir(),
        "prune = none keeps a machine not for this host"
    );
    // only plan takes several names: for apply a usage error (64)
    let r = farm.run(&["apply", "--hostname", "a", "--hostname", "b"]);
    r.expect(64);
}

#[test]
fn a_malformed_host_selector_is_a_located_diagnostic() {
    let farm = Farm::new();
    farm.write("src/a", "#!/bin/sh\n");
    farm.desired("version = 1\n[plugin.a]\nversion = \"1\"\nsource = { path = \"src/a\" }\nhosts = [\"ok-*\", \"label:=x\"]\n");
    let r = farm.run(&["validate"]);
    r.expect(1);
    assert!(
        r.stderr.contains("reconcile.toml:5:18") && r.stderr.contains("invalid host selector"),
        "{}",
        r.stderr
    );
}

// ---------- machines as btrfs send streams (root, a real btrfs loop mount) ----------

/// Two send streams made on another "host" (subvolumes sent, then deleted):
/// kit-1 full (zstd-compressed), kit-2 incremental against kit-1.
fn streams(farm: &Farm) -> (PathBuf, PathBuf) {
    let build = farm.path("build");
    fs::create_dir_all(&build).unwrap();
    let s1 = build.join("kit-1");
    btrfs(&["subvolume", "create", s1.to_str().unwrap()]);
    fs::create_dir_all(s1.join("etc")).unwrap();
    fs::write(s1.join("etc/os-release"), "ID=kit\nVERSION_ID=1\n").unwrap();
    fs::write(s1.join("big"), vec![7u8; 3 << 20]).unwrap();
    btrfs(&["property", "set", "-ts", s1.to_str().unwrap(), "ro", "true"]);
    let raw1 = farm.path("kit-1.btrfs");
    btrfs(&[
        "send",
        "-q",
        "-f",
        raw1.to_str().unwrap(),
        s1.to_str().unwrap(),
    ]);
    let s2 = build.join("kit-2");
    btrfs(&[
        "subvolume",
        "snapshot",
        s1.to_str().unwrap(),
        s2.to_str().unwrap(),
    ]);
    fs::write(s2.join("etc/os-release"), "ID=kit\nVERSION_ID=2\n").unwrap();
    fs::write(s2.join("new-in-2"), "added\n").unwrap();
    btrfs(&["property", "set", "-ts", s2.to_str().unwrap(), "ro", "true"]);
    let inc2 = farm.path("kit-2.btrfs");
    btrfs(&[
        "send",
        "-q",
        "-p",
        s1.to_str().unwrap(),
        "-f",
        inc2.to_str().unwrap(),
        s2.to_str().unwrap(),
    ]);
    for s in [&s2, &s1] {
        btrfs(&["subvolume", "delete", "-c", s.to_str().unwrap()]);
    }
    let zst1 = farm.path("kit-1.btrfs.zst");
    fs::write(
        &zst1,
        zstd::encode_all(&fs::read(&raw1).unwrap()[..], 3).unwrap(),
    )
    .unwrap();
    fs::remove_file(&raw1).unwrap();
    (zst1, inc2)
}

fn kit(farm: &Farm, revision: u32, source: &str) {
    farm.desired(&format!(
        "version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"btrfs\"\n[machine.kit]\nrevision = {revision}\nkeep = 2\nsource = {source}\n"
    ));
}

fn leftovers(farm: &Farm) -> Vec<String> {
    fs::read_dir(farm.path("machines/kit"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n != ".reconcile")
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root and btrfs-progs (a loop-mounted btrfs)"]
fn full_and_incremental_send_streams_are_received_as_read_only_revisions() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let (full, inc) = streams(&farm);
    kit(
        &farm,
        1,
        &format!(
            "{{ path = \"kit-1.btrfs.zst\", format = \"btrfs-send\", sha256 = \"{}\" }}",
            sha_file(&full)
        ),
    );
    farm.run(&["apply"]).expect(0);
    let rev1 = farm.path("machines/kit/kit-1");
    assert_eq!(
        fs::read_to_string(rev1.join("etc/os-release")).unwrap(),
        "ID=kit\nVERSION_ID=1\n"
    );
    assert!(btrfs(&["property", "get", "-ts", rev1.to_str().unwrap(), "ro"]).contains("ro=true"));
    assert_eq!(
        fs::read_link(farm.path("machines/kit/kit")).unwrap(),
        Path::new("kit-1")
    );
    farm.run(&["plan"]).expect(0);

    // incremental against the kept revision 1
    kit(
        &farm,
        2,
        &format!(
            "{{ path = \"kit-2.btrfs\", format = \"btrfs-send\", parent = 1, sha256 = \"{}\" }}",
            sha_file(&inc)
        ),
    );
    farm.run(&["apply"]).expect(0);
    let rev2 = farm.path("machines/kit/kit-2");
    assert_eq!(
        fs::read_to_string(rev2.join("etc/os-release")).unwrap(),
        "ID=kit\nVERSION_ID=2\n"
    );
    assert_eq!(
        fs::read_to_string(rev2.join("new-in-2")).unwrap(),
        "added\n"
    );
    assert_eq!(fs::read(rev2.join("big")).unwrap().len(), 3 << 20);
    assert!(rev1.is_dir(), "revision 1 kept (keep = 2)");
    assert!(leftovers(&farm).is_empty(), "{:?}", leftovers(&farm));

    // export: a full stream of revision 2 and an incremental one, received elsewhere they match
    let out = farm.path("out/kit-2.btrfs.zst");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    farm.run(&["export", "machine.kit@2", "-o", out.to_str().unwrap()])
        .expect(0);
    let inc_out = farm.path("out/kit-2-inc.btrfs");
    farm.run(&[
        "export",
        "machine.kit@2",
        "--parent",
        "1",
        "-o",
        inc_out.to_str().unwrap(),
    ])
    .expect(0);
    assert!(fs::read(&inc_out).unwrap().starts_with(b"btrfs-stream\0"));
    assert!(
        fs::metadata(&inc_out).unwrap().len()
            < fs::metadata(farm.path("out/kit-2.btrfs.zst"))
                .unwrap()
                .len()
                * 4
    );
    let other = mnt.farm();
    fs::copy(&out, other.path("kit-2.btrfs.zst")).unwrap();
    kit(
        &other,
        2,
        &format!(
            "{{ path = \"kit-2.btrfs.zst\", sha256 = \"{}\" }}",
            sha_file(&out)
        ),
    );
    other.run(&["apply"]).expect(0);
    assert_eq!(
        fs::read_to_string(other.path("machines/kit/kit-2/new-in-2")).unwrap(),
        "added\n"
    );
    // missing parent: a clear error, nothing made
    let third = mnt.farm();
    fs::copy(&inc, third.path("kit-2.btrfs")).unwrap();
    kit(
        &third,
        2,
        &format!(
            "{{ path = \"kit-2.btrfs\", format = \"btrfs-send\", parent = 1, sha256 = \"{}\" }}",
            sha_file(&inc)
        ),
    );
    let r = third.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr
            .contains("incremental against revision 1, which is not kept here"),
        "{}",
        r.stderr
    );
    assert!(!third.path("machines/kit/kit-2").exists() && leftovers(&third).is_empty());
}

#[test]
#[ignore = "needs root and btrfs-progs (a loop-mounted btrfs)"]
fn a_corrupted_stream_leaves_nothing_and_a_kill_mid_receive_is_recovered() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let (full, _) = streams(&farm);
    let good = fs::read(&full).unwrap();
    let sha = sha(&good);
    // flipped bytes in the middle: refused (receive fails or the digest differs), nothing left
    let mut bad = zstd::decode_all(&good[..]).unwrap();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0x5a;
    }
    fs::write(farm.path("kit-1.btrfs"), &bad).unwrap();
    kit(
        &farm,
        1,
        &format!("{{ path = \"kit-1.btrfs\", format = \"btrfs-send\", sha256 = \"{sha}\" }}"),
    );
    let r = farm.run(&["apply"]);
    r.expect(1);
    assert!(!farm.path("machines/kit/kit-1").exists());
    assert!(leftovers(&farm).is_empty(), "{:?}", leftovers(&farm));

    // SIGKILL half-way through the receive: the next apply recovers and receives it whole
    fs::write(
        farm.path("kit-1.btrfs"),
        zstd::decode_all(&good[..]).unwrap(),
    )
    .unwrap();
    let raw_sha = sha_file(&farm.path("kit-1.btrfs"));
    kit(
        &farm,
        1,
        &format!("{{ path = \"kit-1.btrfs\", format = \"btrfs-send\", sha256 = \"{raw_sha}\" }}"),
    );
    let killed = farm.run_env(
        &["apply"],
        &[("RECONCILE_FAULT", "machine.kit:receive-partial")],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    let next = farm.run(&["apply"]);
    next.expect(0);
    assert!(
        next.stderr.contains("recovered machine.kit"),
        "{}",
        next.stderr
    );
    assert_eq!(
        fs::read_to_string(farm.path("machines/kit/kit-1/etc/os-release")).unwrap(),
        "ID=kit\nVERSION_ID=1\n"
    );
    assert!(leftovers(&farm).is_empty(), "{:?}", leftovers(&farm));

    // on the dir backend: a clear diagnostic
    let plain = Farm::new();
    fs::copy(farm.path("kit-1.btrfs"), plain.path("kit-1.btrfs")).unwrap();
    plain.desired(&format!(
        "version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"dir\"\n[machine.kit]\nrevision = 1\nsource = {{ path = \"kit-1.btrfs\", sha256 = \"{raw_sha}\" }}\n"
    ));
    let r = plain.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr.contains("received into a btrfs volume"),
        "{}",
        r.stderr
    );
    let r = plain.run(&["export", "machine.kit@1", "-o", "x.btrfs"]);
    r.expect(1);
    assert!(r.stderr.contains("dir backend"), "{}", r.stderr);
}

/// A TCP proxy on 127.0.0.1 in front of `upstream`: while `cut` is set it
/// drops each connection after passing this many bytes from the server.
struct CuttingProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingProxy {
    const AFTER: usize = 4096;

    fn start(upstream: u16) -> CuttingProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let cutting = c.load(Ordering::SeqCst);
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut sent = 0;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 || c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                        if cutting && sent >= Self::AFTER {
                            // the connection goes away in the middle of the pack
                            let _ = c_out.shutdown(std::net::Shutdown::Both);
                            let _ = s_in.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                    }
                });
            }
        });
        CuttingProxy { port, cut }
    }
}

#[test]
fn a_fetch_cut_mid_transfer_keeps_the_last_good_state_and_the_next_one_applies() {
    let f = Fleet::new();
    let first = f.commit(&["a"], "");
    let daemon = Daemon::start(&f.farm.path(""));
    let proxy = CuttingProxy::start(daemon.port);
    let url = format!("git://127.0.0.1:{}/origin", proxy.port);
    let mut args = vec!["apply"];
    args.extend(f.args(&url));
    f.farm.run(&args).expect(0);
    assert!(f.installed("a"));

    // a commit with enough new data that its pack is far longer than what the proxy lets through
    let noise: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(f.origin.join("noise.bin"), &noise).unwrap();
    let second = f.commit(&["a", "b"], "");
    proxy.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    // converged on the last good commit, and exit 1: the newest was not taken
    let r = f.farm.run(&args);
    r.expect(1);
    assert!(
        r.stderr.contains("git fetch failed") && r.stderr.contains(&first[..12]),
        "{}",
        r.stderr
    );
    assert!(!f.installed("b"), "nothing of the cut fetch was applied");
    let st = f.status(&url);
    assert_eq!(st["git"]["applied"], first.as_str(), "{st}");
    assert_eq!(
        st["git"]["fetched"],
        first.as_str(),
        "a cut fetch moves no ref: {st}"
    );

    // the connection holds again: the next run takes the commit
    proxy.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    f.farm.run(&args).expect(0);
    assert!(f.installed("b"));
    assert_eq!(f.status(&url)["git"]["applied"], second.as_str());
    drop(daemon);
}

#[test]
fn a_gpg_keyring_also_decides_which_commits_are_applied() {
    if Command::new("gpg").arg("--version").output().is_err() {
        skip("needs gpg");
        return;
    }
    let f = Fleet::new();
    let trusted_home = f.farm.path("gpg-ops");
    let keys = f.farm.path("trusted.asc");
    let fpr = gpg_key(&trusted_home, &keys, "ops@example.org");
    let url = f.url();
    let mut args = vec!["apply", "--verify-signatures", keys.to_str().unwrap()];
    args.extend(f.args(&url));
    let sign = |home: &Path, key: &str, msg: &str| {
        let out = Command::new("git")
            .args(["-c", "user.email=ops@example.org", "-c", "user.name=ops"])
            .args([
                "-c",
                &format!("user.signingkey={key}"),
                "commit",
                "-qam",
                msg,
                "-S",
            ])
            .env("GNUPGHOME", home)
            .current_dir(&f.origin)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        git(&f.origin, &["rev-parse", "HEAD"])
    };
    // unsigned: refused
    let unsigned = f.commit(&["a"], "");
    let r = f.farm.run(&args);
    r.expect(1);
    assert!(
        r.stderr.contains(&unsigned[..12]) && r.stderr.contains("it has no signature"),
        "{}",
        r.stderr
    );
    // signed with the trusted key: applied
    fs::write(f.origin.join("src/a"), "#!/bin/sh\necho gpg\n").unwrap();
    let signed = sign(&trusted_home, &fpr, "signed");
    f.farm.run(&args).expect(0);
    assert_eq!(f.status(&url)["git"]["applied"], signed.as_str());
    // signed with a key the keyring does not hold: refused
    let other_home = f.farm.path("gpg-other");
    let other = gpg_key(
        &other_home,
        &f.farm.path("other.asc"),
        "intruder@example.org",
    );
    fs::write(f.origin.join("src/a"), "#!/bin/sh\necho intruder\n").unwrap();
    sign(&other_home, &other, "intruder");
    let r = f.farm.run(&args);
    r.expect(1);
    assert!(
        r.stderr.contains("not applied") && r.stderr.contains("signed by a key not in"),
        "{}",
        r.stderr
    );
    assert_eq!(f.status(&url)["git"]["applied"], signed.as_str());
    assert!(fs::read_to_string(f.plugins.join("a/a"))
        .unwrap()
        .contains("gpg"));
    for home in [&trusted_home, &other_home] {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", home)
            .args(["--kill", "gpg-agent"])
            .output();
    }
    // the keyring made for the check is gone
    let left: Vec<_> = fs::read_dir(&f.checkout)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".gnupg"))
        .collect();
    assert!(left.is_empty());
}
