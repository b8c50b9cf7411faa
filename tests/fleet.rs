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

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.email=ops@example.org",
            "-c",
            "user.name=ops",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The farm's repository (a plain one: file:// fetches from it) and a host
/// directory where plugins land (outside any checkout, as on a farm).
struct Fleet {
    farm: Farm,
    origin: PathBuf,
    checkout: PathBuf,
    plugins: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let farm = Farm::new();
        let origin = farm.path("origin");
        fs::create_dir_all(&origin).unwrap();
        git(&origin, &["init", "-q"]);
        Fleet {
            checkout: farm.path("host/reconcile"),
            plugins: farm.path("host/plugins"),
            origin,
            farm,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.origin.display())
    }

    /// Commit a farm file declaring these plugins (each a script printing its name).
    fn commit(&self, plugins: &[&str], extra: &str) -> String {
        let mut toml = String::from("version = 1\n");
        for p in plugins {
            fs::create_dir_all(self.origin.join("src")).unwrap();
            fs::write(
                self.origin.join(format!("src/{p}")),
                format!("#!/bin/sh\necho {p}\n"),
            )
            .unwrap();
            toml.push_str(&format!(
                "[plugin.{p}]\nversion = \"1\"\ndir = \"{}\"\nsource = {{ path = \"src/{p}\" }}\n",
                self.plugins.display()
            ));
        }
        toml.push_str(extra);
        fs::write(self.origin.join("farm.toml"), toml).unwrap();
        git(&self.origin, &["add", "-A"]);
        git(
            &self.origin,
            &["commit", "-qm", &format!("farm: {plugins:?}")],
        );
        git(&self.origin, &["rev-parse", "HEAD"])
    }

    fn args<'a>(&'a self, url: &'a str) -> Vec<&'a str> {
        vec![
            "--git",
            url,
            "--path",
            "farm.toml",
            "--checkout",
            self.checkout.to_str().unwrap(),
        ]
    }

    fn status(&self, url: &str) -> serde_json::Value {
        let mut a = vec!["status", "--json"];
        a.extend(self.args(url));
        let r = self.farm.run(&a);
        r.expect(0);
        serde_json::from_str(&r.stdout).unwrap()
    }

    fn installed(&self, p: &str) -> bool {
        self.plugins.join(p).join(p).exists()
    }

    fn watch(&self, url: &str, extra: &[&str]) -> Child {
        let mut a = vec!["watch", "--interval", "300ms", "--json"];
        a.extend(self.args(url));
        a.extend_from_slice(extra);
        self.farm
            .cmd(&a)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

fn stop(child: Child) -> String {
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const LIMIT: Duration = Duration::from_secs(30);

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

/// An ssh key pair and an allowed-signers file trusting it.
fn keys(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("signing-key");
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ops@example.org",
            "-f",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let signers = dir.join("allowed_signers");
    fs::write(&signers, format!("ops@example.org {public}")).unwrap();
    (key, signers)
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
        r.stderr.contains(&unsigned[..12]) && r.stderr.contains("signature does not verify"),
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
    let r = f.farm.run(&args);
    r.expect(0);
    assert!(
        r.stderr.contains("not applied") && r.stderr.contains("signature"),
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
    // only plan takes several names
    let r = farm.run(&["apply", "--hostname", "a", "--hostname", "b"]);
    r.expect(1);
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
